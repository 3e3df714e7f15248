"""The installed ``lwd-rules`` script in real subprocesses, and start-up without torch/timm/transformers."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

import lwd_rules_convnext

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "finetune-convnext.yaml"
SCRIPT = Path(sys.executable).parent / "lwd-rules"
PLUGIN = "lwd-rules-convnext"
PLUGIN_VERSION = version(PLUGIN)
HEAVY = {"torch", "timm", "transformers", "torchvision"}


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["LWD_RULES_PLUGINS"] = "convnext"  # other test plugins may come and go in the environment
    env.pop("LWD_RULES_STRICT_PLUGINS", None)
    env["COLUMNS"] = "200"
    env["NO_COLOR"] = "1"
    return env


def script(*args: object, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=environment(), timeout=timeout, cwd=ROOT
    )
    assert "Traceback" not in result.stdout and "Traceback" not in result.stderr, result.stderr
    return result


# --------------------------------------------------------------------------------------------
# Start-up: no heavy imports for validate, rules, schema, plugins


def imported_modules(args: list[str], tmp_path: Path) -> tuple[int, set[str]]:
    code = f"import sys; from lwd_rules.cli import app; sys.argv = ['lwd-rules', *{args!r}]; app()"
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, env=environment(), timeout=60, cwd=tmp_path
    )
    modules = set()
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":  # the header line
                modules.add(name)
    return result.returncode, modules


@pytest.mark.parametrize(
    ("args", "exit_code"),
    [
        (["validate", str(EXAMPLE)], 0),
        (["validate", "bad.yaml"], 1),
        (["rules"], 0),
        (["rules", "convnext-timm"], 0),
        (["schema"], 0),
        (["plugins"], 0),
    ],
    ids=["validate", "validate-bad", "rules", "rules-name", "schema", "plugins"],
)
def test_command_starts_without_torch_timm_or_transformers(tmp_path: Path, args: list[str], exit_code: int) -> None:
    (tmp_path / "bad.yaml").write_text("version: 1\nextends: convnext\nlayer_decay:\n  rate: 2\n")
    code, modules = imported_modules(args, tmp_path)
    assert code == exit_code
    assert "lwd_rules.cli" in modules  # the importtime output was read
    heavy = sorted(name for name in modules if name.split(".")[0] in HEAVY)
    assert heavy == []


# --------------------------------------------------------------------------------------------
# The installed script


def test_script_is_installed_next_to_the_interpreter() -> None:
    assert SCRIPT.is_file()
    assert os.access(SCRIPT, os.X_OK)


def test_script_version() -> None:
    result = script("--version")
    assert result.returncode == 0
    assert result.stdout == f"lwd-rules {version('lwd-rules')}\n"


def test_script_validate_good_and_bad(tmp_path: Path) -> None:
    good = script("validate", EXAMPLE)
    assert good.returncode == 0
    assert good.stdout == f"{EXAMPLE}: ok\n"
    assert good.stderr == ""

    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nlayers:\n  num_layers: 4\n  default: num_layer + 1\nlayer_decay:\n  rate: 0\n")
    result = script("validate", EXAMPLE, bad)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"{EXAMPLE}: ok",
        f"{bad}:4: layers.default: unknown variable 'num_layer' (did you mean 'num_layers'?)",
        f"{bad}:6: layer_decay.rate: Input should be greater than 0 (got 0)",
    ]


def test_script_usage_error_exits_2() -> None:
    result = script("explain", "--format", "json")
    assert result.returncode == 2
    assert "Missing option '--model'" in result.stderr


def test_script_explain_timm_atto_with_the_example() -> None:
    result = script("explain", "--model", "timm:convnext_atto", EXAMPLE)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == (
        f"timm:convnext_atto  rules: {EXAMPLE} <- convnext-timm ({PLUGIN} {PLUGIN_VERSION})"
        f" <- convnext ({PLUGIN} {PLUGIN_VERSION})  num_layers: 12"
    )
    rows = {}
    for line in lines:
        cells = [cell.strip() for cell in line.strip("│").split("│")] if line.startswith("│") else []
        if cells and cells[0].isdigit():
            rows[int(cells[0])] = cells[1:5]
    # rate 0.8 from the example: id i of N = 12 trains at 0.8 ** (13 - i); the head gets lr_mult 10
    assert sorted(rows) == list(range(1, 14))
    assert {i: row[0] for i, row in rows.items()} == {**{i: f"{0.8 ** (13 - i):.6g}" for i in range(1, 13)}, 13: "10"}
    assert {row[3] for row in rows.values()} == {"0, 0.05"}
    assert sum(int(row[1]) for row in rows.values()) == 128
    assert sum(int(row[2].replace(",", "")) for row in rows.values()) == 3_695_520
    assert "unmatched parameters: 0" in lines
    assert "groups: 26  trainable tensors: 128  left out: 0" in lines


def test_script_explain_bad_spec_is_one_line() -> None:
    result = script("explain", "--model", "timm:no_such_model_xyz")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == ["timm has no model 'no_such_model_xyz'"]


def test_script_plugins() -> None:
    result = script("plugins")
    assert result.returncode == 0
    assert result.stdout.splitlines() == [
        f"convnext: {PLUGIN} {PLUGIN_VERSION}",
        "  hooks: lwd_detect, lwd_layer_variables, lwd_rule_sets",
        "  rule sets: " + ", ".join(sorted(p.stem for p in lwd_rules_convnext.RULES.glob("*.yaml"))),
    ]

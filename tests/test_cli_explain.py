"""``lwd-rules explain``: the per-layer-id table, json and csv output, coverage, model specs, --plot.

In-process through typer's CliRunner. ``lwdcli_fixtures.models:convnext_mini`` (tests/data/cli/) is
the official ConvNeXt layout with depths [1, 1, 1, 1]: its ids, scales and sizes are written by hand.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import re
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

import lwd_rules_convnext
from cli_support import ANSI, Run, only_convnext_plugin, run  # noqa: F401 - the autouse fixture applies here

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data" / "cli"
EXAMPLE = ROOT / "examples" / "finetune-convnext.yaml"
PARTIAL = DATA / "partial-rules.yaml"
MINI = "lwdcli_fixtures.models:convnext_mini"
PLUGIN = "lwd-rules-convnext"
PLUGIN_VERSION = version(PLUGIN)
CONVNEXT_YAML = lwd_rules_convnext.RULES / "convnext.yaml"
DOWN_START = "- match: '^downsample_layers"
STAGE_START = "- match: '^stages"
NOTHING_START = "- match: '^nothing_is_called_this"
BETA_START = "- {pattern: '*.beta'"


@pytest.fixture(autouse=True)
def factories_importable(monkeypatch: pytest.MonkeyPatch):
    """The fixture model factories importable (only_convnext_plugin, from cli_support, does the rest)."""
    monkeypatch.syspath_prepend(str(DATA))





def line_of(path: Path, start: str) -> int:
    """1-based number of the only line of ``path`` that starts with ``start`` (after indentation)."""
    found = [n for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip().startswith(start)]
    assert len(found) == 1, (path, start, found)
    return found[0]


def table_rows(stdout: str) -> dict[int, tuple[str, str, str, str, list[str]]]:
    """The rich table's rows by layer id: (lr scale, tensors, parameters, weight decay, rules)."""
    rows: dict[int, tuple[str, str, str, str, list[str]]] = {}
    current = None
    for line in stdout.splitlines():
        if not line.startswith("│"):
            continue
        cells = [cell.strip() for cell in line.strip("│").split("│")]
        if cells[0]:
            current = int(cells[0])
            rows[current] = (cells[1], cells[2], cells[3], cells[4], [cells[5]])
        else:
            assert current is not None
            rows[current][4].append(cells[5])
    return rows


def coverage(stdout: str) -> list[str]:
    """The lines after the table."""
    lines = stdout.splitlines()
    last = max(i for i, line in enumerate(lines) if line.startswith("└"))
    return lines[last + 1 :]


# --------------------------------------------------------------------------------------------
# The hand-built ConvNeXt, detected: num_layers = sum(depths) = 4, ids 1..5, rate 0.5 → 0.5 ** (5 - id)

def test_json_of_the_mini_convnext_is_exact() -> None:
    result = run("explain", "--model", MINI, "--layer-decay", "0.5", "--format", "json")
    assert result.code == 0, result.stderr
    data = json.loads(result.stdout)

    r_down = f"{CONVNEXT_YAML}:{line_of(CONVNEXT_YAML, DOWN_START)}"
    r_stage = f"{CONVNEXT_YAML}:{line_of(CONVNEXT_YAML, STAGE_START)}"
    r_default = f"{CONVNEXT_YAML}:{line_of(CONVNEXT_YAML, 'default:')}"
    beta = line_of(CONVNEXT_YAML, BETA_START)

    assert data["model"] == MINI
    assert data["num_layers"] == 4
    assert data["rules"][0] == {"file": str(CONVNEXT_YAML), "name": "convnext", "plugin": PLUGIN, "version": PLUGIN_VERSION}
    assert re.fullmatch(r"[0-9a-f]{16}", data["fingerprint"])
    assert data["layers"] == [
        {"layer_id": 1, "lr_scales": [0.0625], "tensors": 7, "numel": 38, "weight_decays": [0.05, 0.0], "rules": [r_down, r_stage]},
        {"layer_id": 2, "lr_scales": [0.125], "tensors": 7, "numel": 18, "weight_decays": [0.0, 0.05], "rules": [r_down, r_stage]},
        {"layer_id": 3, "lr_scales": [0.25], "tensors": 7, "numel": 18, "weight_decays": [0.0, 0.05], "rules": [r_down, r_stage]},
        {"layer_id": 4, "lr_scales": [0.5], "tensors": 7, "numel": 18, "weight_decays": [0.0, 0.05], "rules": [r_down, r_stage]},
        {"layer_id": 5, "lr_scales": [1.0], "tensors": 4, "numel": 13, "weight_decays": [0.0, 0.05], "rules": [r_default]},
    ]
    assert data["groups"] == [
        {"lr_scale": 0.0625, "weight_decay": 0.05, "group_name": "layer_1_decay", "layer_ids": [1], "tensors": 2},
        {"lr_scale": 0.0625, "weight_decay": 0.0, "group_name": "layer_1_no_decay", "layer_ids": [1], "tensors": 5},
        {"lr_scale": 0.125, "weight_decay": 0.0, "group_name": "layer_2_no_decay", "layer_ids": [2], "tensors": 5},
        {"lr_scale": 0.125, "weight_decay": 0.05, "group_name": "layer_2_decay", "layer_ids": [2], "tensors": 2},
        {"lr_scale": 0.25, "weight_decay": 0.0, "group_name": "layer_3_no_decay", "layer_ids": [3], "tensors": 5},
        {"lr_scale": 0.25, "weight_decay": 0.05, "group_name": "layer_3_decay", "layer_ids": [3], "tensors": 2},
        {"lr_scale": 0.5, "weight_decay": 0.0, "group_name": "layer_4_no_decay", "layer_ids": [4], "tensors": 5},
        {"lr_scale": 0.5, "weight_decay": 0.05, "group_name": "layer_4_decay", "layer_ids": [4], "tensors": 2},
        {"lr_scale": 1.0, "weight_decay": 0.0, "group_name": "layer_5_no_decay", "layer_ids": [5], "tensors": 3},
        {"lr_scale": 1.0, "weight_decay": 0.05, "group_name": "layer_5_decay", "layer_ids": [5], "tensors": 1},
    ]
    fields = ("name", "layer_id", "lr_scale", "weight_decay", "group", "rule", "numel", "ndim")
    expected = []
    for stage, scale in zip(range(4), (0.0625, 0.125, 0.25, 0.5)):
        i = stage + 1
        if stage == 0:
            expected += [
                ("downsample_layers.0.0.weight", 1, scale, 0.05, "layer_1_decay", r_down, 24, 4),
                ("downsample_layers.0.0.bias", 1, scale, 0.0, "layer_1_no_decay", r_down, 2, 1),
                ("downsample_layers.0.1.weight", 1, scale, 0.0, "layer_1_no_decay", r_down, 2, 1),
                ("downsample_layers.0.1.bias", 1, scale, 0.0, "layer_1_no_decay", r_down, 2, 1),
            ]
        else:
            expected += [
                (f"downsample_layers.{stage}.0.weight", i, scale, 0.0, f"layer_{i}_no_decay", r_down, 2, 1),
                (f"downsample_layers.{stage}.0.bias", i, scale, 0.0, f"layer_{i}_no_decay", r_down, 2, 1),
                (f"downsample_layers.{stage}.1.weight", i, scale, 0.05, f"layer_{i}_decay", r_down, 4, 4),
                (f"downsample_layers.{stage}.1.bias", i, scale, 0.0, f"layer_{i}_no_decay", r_down, 2, 1),
            ]
    for stage, scale in zip(range(4), (0.0625, 0.125, 0.25, 0.5)):
        i = stage + 1
        expected += [
            (f"stages.{stage}.0.gamma", i, scale, 0.0, f"layer_{i}_no_decay", r_stage, 2, 1),
            (f"stages.{stage}.0.pwconv.weight", i, scale, 0.05, f"layer_{i}_decay", r_stage, 4, 2),
            (f"stages.{stage}.0.pwconv.bias", i, scale, 0.0, f"layer_{i}_no_decay", r_stage, 2, 1),
        ]
    expected += [
        ("norm.weight", 5, 1.0, 0.0, "layer_5_no_decay", r_default, 2, 1),
        ("norm.bias", 5, 1.0, 0.0, "layer_5_no_decay", r_default, 2, 1),
        ("head.weight", 5, 1.0, 0.05, "layer_5_decay", r_default, 6, 2),
        ("head.bias", 5, 1.0, 0.0, "layer_5_no_decay", r_default, 3, 1),
    ]
    assert [tuple(row[f] for f in fields) for row in data["params"]] == expected
    assert data["skipped"] == []
    assert data["unused"] == [f"weight_decay.exclude[3] ({CONVNEXT_YAML}:{beta}): '*.beta' (allowed)"]
    assert data["problems"] == []


def test_csv_of_the_mini_convnext_has_a_header_and_one_row_per_tensor() -> None:
    result = run("explain", "--model", MINI, "--format", "csv", "--layer-decay", "0.5", "--weight-decay", "0.1")
    assert result.code == 0, result.stderr
    rows = list(csv.reader(io.StringIO(result.stdout)))
    header = rows[0]
    assert header[:6] == ["name", "layer_id", "lr_scale", "weight_decay", "group", "rule"]
    assert header[-3:] == ["numel", "ndim", "chain"]
    assert len(rows) == 1 + 32
    by_name = {row[0]: dict(zip(header, row)) for row in rows[1:]}
    assert len(by_name) == 32
    head = by_name["head.weight"]
    assert (head["layer_id"], head["lr_scale"], head["weight_decay"], head["group"], head["numel"], head["ndim"]) == (
        "5", "1.0", "0.1", "layer_5_decay", "6", "2",
    )
    stem = by_name["downsample_layers.0.0.weight"]
    assert (stem["layer_id"], stem["lr_scale"], stem["weight_decay"], stem["group"]) == ("1", "0.0625", "0.1", "layer_1_decay")
    gamma = by_name["stages.2.0.gamma"]
    assert (gamma["layer_id"], gamma["lr_scale"], gamma["weight_decay"]) == ("3", "0.25", "0.0")


def test_table_of_the_mini_convnext() -> None:
    result = run("explain", "--model", MINI)  # rate 0.9 from the detected "convnext" rule set
    assert result.code == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert first.startswith(f"{MINI}  rules: ")
    assert first.endswith(f"convnext ({PLUGIN} {PLUGIN_VERSION})  num_layers: 4")
    down = f"convnext.yaml:{line_of(CONVNEXT_YAML, DOWN_START)}"
    stage = f"convnext.yaml:{line_of(CONVNEXT_YAML, STAGE_START)}"
    default = f"convnext.yaml:{line_of(CONVNEXT_YAML, 'default:')}"
    assert table_rows(result.stdout) == {
        1: (f"{0.9 ** 4:.6g}", "7", "38", "0, 0.05", [down, stage]),
        2: (f"{0.9 ** 3:.6g}", "7", "18", "0, 0.05", [down, stage]),
        3: ("0.81", "7", "18", "0, 0.05", [down, stage]),
        4: ("0.9", "7", "18", "0, 0.05", [down, stage]),
        5: ("1", "4", "13", "0, 0.05", [default]),
    }
    beta = line_of(CONVNEXT_YAML, BETA_START)
    assert coverage(result.stdout) == [
        "unmatched parameters: 0",
        "rules that matched nothing: 1",
        f"  weight_decay.exclude[3] ({CONVNEXT_YAML}:{beta}): '*.beta' (allowed)",
        "groups: 10  trainable tensors: 32  left out: 0",
    ]


def test_rules_that_leave_parameters_unmatched_are_shown_in_the_coverage_and_exit_1() -> None:
    result = run("explain", "--model", MINI, PARTIAL)
    assert result.code == 1
    assert table_rows(result.stdout) == {
        i: ("1", "3", "8", "0", [f"partial-rules.yaml:{line_of(PARTIAL, STAGE_START)}"]) for i in (1, 2, 3, 4)
    }
    unmatched = [f"downsample_layers.{s}.{m}.{p}" for s in range(4) for m in range(2) for p in ("weight", "bias")]
    unmatched += ["norm.weight", "norm.bias", "head.weight", "head.bias"]
    lines = coverage(result.stdout)
    nothing = line_of(PARTIAL, NOTHING_START)
    assert lines[: 1 + 20 + 2] == [
        "unmatched parameters: 20",
        *(f"  {name}" for name in unmatched),
        "rules that matched nothing: 1",
        f"  layers.rules[1].match ({PARTIAL}:{nothing}): '^nothing_is_called_this\\\\.'",
    ]
    assert lines[23] == "groups: 1  trainable tensors: 12  left out: 20"
    problems = lines[24:]
    assert len(problems) == 2
    assert problems[0].startswith("problem: ") and "20 parameter(s) match no rule" in problems[0]
    assert problems[1] == f"problem: {PARTIAL}:{nothing}: layers.rules[1].match: '^nothing_is_called_this\\\\.' matches no parameter (set allow_unused: true to keep it)"


def test_rules_with_errors_are_reported_as_located_lines(tmp_path: Path) -> None:
    rules = tmp_path / "bad.yaml"
    rules.write_text("version: 1\nlayers:\n  num_layers: 4\n  default: num_layer + 1\n")
    result = run("explain", "--model", MINI, rules)
    assert result.code == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [f"{rules}:4: layers.default: unknown variable 'num_layer' (did you mean 'num_layers'?)"]


def test_missing_rules_file(tmp_path: Path) -> None:
    result = run("explain", "--model", MINI, tmp_path / "nope.yaml")
    assert result.code == 1
    assert result.stderr.splitlines() == [f"{tmp_path / 'nope.yaml'}:1: <root>: no such file"]


# --------------------------------------------------------------------------------------------
# Real models: timm, torchvision, Hugging Face; detection picks the layout's rule set


def _json(spec: str, *rules: str) -> dict:
    result = run("explain", "--model", spec, *rules, "--format", "json")
    assert result.code == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize(
    ("spec", "rule_set", "num_layers", "tensors"),
    [
        ("timm:convnext_atto", "convnext-timm", 12, 128),
        ("torchvision:convnext_tiny", "convnext-torchvision", 18, 182),
        ("hf:convnext", "convnext-hf", 18, 180),
    ],
)
def test_real_models_are_detected(spec: str, rule_set: str, num_layers: int, tensors: int) -> None:
    data = _json(spec)
    assert [r["name"] for r in data["rules"]][:2] == ["convnext", rule_set]
    assert data["rules"][1]["plugin"] == PLUGIN
    assert data["num_layers"] == num_layers
    assert [layer["layer_id"] for layer in data["layers"]] == list(range(1, num_layers + 2))
    assert [layer["lr_scales"] for layer in data["layers"]] == [[0.9 ** (num_layers + 1 - i)] for i in range(1, num_layers + 2)]
    assert sum(layer["tensors"] for layer in data["layers"]) == tensors == len(data["params"])
    assert data["skipped"] == [] and data["problems"] == []


def test_registered_rule_set_by_name() -> None:
    data = _json("timm:convnext_atto", "convnext-timm-group")
    assert data["num_layers"] == 12
    assert [r["name"] for r in data["rules"]] == ["convnext", "convnext-timm", "convnext-timm-group"]
    # group type: stem 0, stage 0 blocks 1, stage 1 downsample and blocks 2, stage 2 (6 blocks) 3 + b // 3, stage 3 12
    assert [layer["layer_id"] for layer in data["layers"]] == [0, 1, 2, 3, 4, 12, 13]


def test_example_rules_with_timm_atto() -> None:
    data = _json("timm:convnext_atto", str(EXAMPLE))
    assert data["num_layers"] == 12
    assert [layer["lr_scales"] for layer in data["layers"]] == [[0.8 ** (13 - i)] for i in range(1, 13)] + [[10.0]]


# --------------------------------------------------------------------------------------------
# Bad model specs: one line on stderr, exit 1


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("bogus", "bad model spec 'bogus': use timm:NAME, torchvision:NAME, hf:MODEL_TYPE or package.module:factory"),
        ("timm:", "bad model spec 'timm:': use timm:NAME, torchvision:NAME, hf:MODEL_TYPE or package.module:factory"),
        ("timm:no_such_model_xyz", "timm has no model 'no_such_model_xyz'"),
        ("torchvision:no_such_model_xyz", "torchvision has no model 'no_such_model_xyz'"),
        ("hf:no_such_model_type_xyz", "transformers has no model type 'no_such_model_type_xyz'"),
        ("lwdcli_no_such_module:make", "cannot import 'lwdcli_no_such_module': No module named 'lwdcli_no_such_module'"),
        ("lwdcli_fixtures.models:missing", "'lwdcli_fixtures.models' has no callable 'missing'"),
        ("lwdcli_fixtures.models:broken", "cannot build 'lwdcli_fixtures.models:broken': RuntimeError: factory exploded"),
    ],
)
def test_bad_model_spec_is_one_line_and_exit_1(spec: str, expected: str) -> None:
    result = run("explain", "--model", spec)
    assert result.code == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [expected]


def test_model_that_transformers_cannot_build_is_one_line() -> None:
    # AutoModel.from_config(RagConfig()) raises a ValueError whose message spans several lines.
    result = run("explain", "--model", "hf:rag")
    assert result.code == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines[:3]
    assert lines[0].startswith("cannot build 'hf:rag': ValueError: ")


@pytest.mark.parametrize("with_rules", [False, True], ids=["detected", "rules-file"])
def test_factory_that_returns_no_module_is_one_line_and_exit_1(with_rules: bool) -> None:
    args = ["explain", "--model", "lwdcli_fixtures.models:not_a_module"] + ([str(PARTIAL)] if with_rules else [])
    result = run(*args)
    assert result.code == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert "str" in lines[0]


def test_rules_path_with_brackets_is_printed_as_is(tmp_path: Path) -> None:
    directory = tmp_path / "exp[bold]"
    directory.mkdir()
    rules = directory / "rules.yaml"
    rules.write_text("version: 1\nextends: convnext\nlayer_decay:\n  rate: 0.5\n")
    result = run("explain", "--model", MINI, rules)
    assert result.code == 0
    assert result.stdout.splitlines()[0] == (
        f"{MINI}  rules: {rules} <- convnext ({PLUGIN} {PLUGIN_VERSION})  num_layers: 4"
    )


# --------------------------------------------------------------------------------------------
# --plot, usage errors


def test_plot_without_matplotlib_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib → ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    target = tmp_path / "plot.png"
    result = run("explain", "--model", MINI, "--plot", target)
    assert result.code == 1
    assert result.stderr.splitlines() == ["--plot needs matplotlib: pip install 'lwd-rules[plot]'"]
    assert not target.exists()


def test_plot_in_this_environment(tmp_path: Path) -> None:
    target = tmp_path / "plot.png"
    result = run("explain", "--model", MINI, "--plot", target)
    if importlib.util.find_spec("matplotlib") is None:
        assert result.code == 1
        assert result.stderr.splitlines() == ["--plot needs matplotlib: pip install 'lwd-rules[plot]'"]
        assert not target.exists()
    else:
        assert result.code == 0
        assert result.stdout.splitlines()[-1] == f"wrote {target}"
        assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (["explain"], "Missing option '--model'"),
        (["explain", EXAMPLE], "Missing option '--model'"),
        (["explain", "--model", MINI, "--format", "xml"], "Invalid value"),
        (["explain", "--model", MINI, "--bogus"], "No such option"),
        (["explain", "--model", MINI, "--layer-decay", "fast"], "Invalid value"),
    ],
)
def test_usage_errors_exit_2(args: list[object], phrase: str) -> None:
    result = run(*args)
    assert result.code == 2
    assert phrase in result.stderr

"""``lwd-rules --version``, ``--help``, ``plugins``, ``rules`` and ``schema`` (in-process, typer's CliRunner)."""

from __future__ import annotations

import io
import json
import re
from importlib.metadata import version
from pathlib import Path

import pytest
from ruamel.yaml import YAML

import lwd_rules_convnext
from lwd_rules import hookimpl
from lwd_rules.plugins import new_registry, use_registry
from cli_support import ANSI, CONVNEXT_SETS, Run, only_convnext_plugin, run  # noqa: F401 - the autouse fixture applies here

PLUGIN = "lwd-rules-convnext"
PLUGIN_VERSION = version(PLUGIN)
HOOKS = ["lwd_detect", "lwd_layer_variables", "lwd_rule_sets"]







# --------------------------------------------------------------------------------------------
# --version, --help


def test_version() -> None:
    result = run("--version")
    assert result.code == 0
    assert result.stdout == f"lwd-rules {version('lwd-rules')}\n"


@pytest.mark.parametrize("command", ["validate", "explain", "plugins", "rules", "schema"])
def test_help_on_every_command(command: str) -> None:
    result = run(command, "--help")
    assert result.code == 0
    assert f"Usage: lwd-rules {command} [OPTIONS]" in result.stdout
    assert "--help" in result.stdout


def test_help_of_the_app_lists_every_command() -> None:
    result = run("--help")
    assert result.code == 0
    assert "Usage: lwd-rules [OPTIONS] COMMAND [ARGS]..." in result.stdout
    for command in ("validate", "explain", "plugins", "rules", "schema"):
        assert re.search(rf"│ {command} ", result.stdout), command


@pytest.mark.parametrize(
    "args", [["plugins", "--bogus"], ["plugins", "--format", "yaml"], ["rules", "a", "b"], ["schema", "--bogus"], ["--bogus"]]
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    result = run(*args)
    assert result.code == 2
    assert "Usage: lwd-rules" in result.stderr


# --------------------------------------------------------------------------------------------
# plugins


def test_plugins_text() -> None:
    result = run("plugins")
    assert result.code == 0
    assert result.stdout.splitlines() == [
        f"convnext: {PLUGIN} {PLUGIN_VERSION}",
        f"  hooks: {', '.join(HOOKS)}",
        f"  rule sets: {', '.join(CONVNEXT_SETS)}",
    ]


def test_plugins_json() -> None:
    result = run("plugins", "--format", "json")
    assert result.code == 0
    assert json.loads(result.stdout) == {
        "plugins": [
            {"name": "convnext", "distribution": PLUGIN, "version": PLUGIN_VERSION, "hooks": HOOKS, "rule_sets": CONVNEXT_SETS}
        ],
        "failed": [],
    }


def test_plugins_none_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LWD_RULES_PLUGINS", "")
    use_registry(None)
    result = run("plugins")
    assert result.code == 0
    assert result.stdout.splitlines() == ["no plugins installed"]


class _Exploding:
    """A plugin whose lwd_rule_sets raises."""

    @hookimpl
    def lwd_rule_sets(self):
        raise RuntimeError("boom")


def test_plugins_reports_a_failing_plugin_and_exits_1() -> None:
    registry = new_registry([("convnext", lwd_rules_convnext), ("exploding", _Exploding())], strict=False)
    use_registry(registry)
    result = run("plugins")
    assert result.code == 1
    lines = result.stdout.splitlines()
    assert len(lines) == 7
    assert lines[0].startswith("convnext: ")  # registered by hand: no distribution
    assert lines[1:3] == [f"  hooks: {', '.join(HOOKS)}", f"  rule sets: {', '.join(CONVNEXT_SETS)}"]
    assert lines[3].startswith("exploding: ")
    assert lines[4:6] == ["  hooks: lwd_rule_sets", "  rule sets: -"]
    assert lines[-1] == "FAILED plugin 'exploding' (unknown distribution) failed in lwd_rule_sets: RuntimeError: boom"
    as_json = run("plugins", "--format", "json")
    assert as_json.code == 1
    assert json.loads(as_json.stdout)["failed"] == [
        {"plugin": "exploding", "distribution": None, "version": None, "reason": "RuntimeError: boom", "hook": "lwd_rule_sets"}
    ]


# --------------------------------------------------------------------------------------------
# rules


def test_rules_lists_registered_rule_sets_with_provenance() -> None:
    result = run("rules")
    assert result.code == 0
    assert result.stdout.splitlines() == [
        f"{name}  ({PLUGIN} {PLUGIN_VERSION})  {lwd_rules_convnext.RULES / (name + '.yaml')}" for name in CONVNEXT_SETS
    ]


def _load_yaml(text: str):
    return YAML(typ="safe", pure=True).load(io.StringIO(text))


def test_rules_prints_a_rule_set_resolved_after_extends() -> None:
    result = run("rules", "convnext-timm")
    assert result.code == 0
    lines = result.stdout.splitlines()
    assert lines[0] == f"# convnext-timm: convnext-timm ({PLUGIN} {PLUGIN_VERSION}) <- convnext ({PLUGIN} {PLUGIN_VERSION})"
    data = _load_yaml(result.stdout)
    assert "extends" not in data
    assert data["name"] == "convnext-timm"  # child
    assert data["layers"]["variables"] == ["depths"]  # parent
    assert data["layers"]["num_layers"] == "sum(depths)"  # parent
    assert data["layers"]["default"] == "num_layers + 1"  # parent
    assert data["layer_decay"] == {"rate": 0.9}  # parent
    assert data["weight_decay"]["value"] == 0.05  # parent
    assert data["weight_decay"]["use_model_no_weight_decay"] is True  # parent
    assert data["layers"]["rules"] == [  # child's list replaces the parent's
        {"match": r"^stem\.", "layer": 1},
        {"match": r"^stages\.(?P<stage>\d+)\.downsample\.", "layer": "sum(depths[:stage]) + 1"},
        {"match": r"^stages\.(?P<stage>\d+)\.blocks\.(?P<block>\d+)\.", "layer": "sum(depths[:stage]) + block + 1"},
    ]
    assert data["weight_decay"]["exclude"] == [  # child
        "ndim<=1",
        "*.bias",
        {"pattern": "*.gamma", "allow_unused": True},
        {"pattern": "*.grn.weight", "allow_unused": True},
        {"pattern": "*.grn.bias", "allow_unused": True},
    ]


def test_rules_prints_a_rule_file_resolved_after_extends(tmp_path: Path) -> None:
    (tmp_path / "parent.yaml").write_text("version: 1\nlayers:\n  num_layers: 3\n  default: 4\nlayer_decay:\n  rate: 0.5\n")
    child = tmp_path / "child.yaml"
    child.write_text("version: 1\nextends: parent.yaml\nlayer_decay:\n  min_scale: 0.1\n")
    result = run("rules", child)
    assert result.code == 0
    assert _load_yaml(result.stdout) == {
        "version": 1,
        "layers": {"num_layers": 3, "default": 4},
        "layer_decay": {"rate": 0.5, "min_scale": 0.1},
    }


def test_rules_unknown_name_exits_1_with_a_hint() -> None:
    result = run("rules", "convnext-tim")
    assert result.code == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].endswith("no rule set named 'convnext-tim' (did you mean 'convnext-timm'?)")


# --------------------------------------------------------------------------------------------
# schema


def test_schema_is_json_schema_of_a_rule_file() -> None:
    result = run("schema")
    assert result.code == 0
    schema = json.loads(result.stdout)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert {"version", "extends", "layers", "layer_decay", "weight_decay", "overrides", "optimizer", "checks", "names"} <= set(
        schema["properties"]
    )
    rate = schema["$defs"]["LayerDecay"]["properties"]["rate"]
    assert (rate["exclusiveMinimum"], rate["maximum"]) == (0, 1)


def test_schema_output_writes_the_same_schema_to_a_file(tmp_path: Path) -> None:
    target = tmp_path / "rules.schema.json"
    result = run("schema", "--output", target)
    assert result.code == 0
    assert result.stdout == f"wrote {target}\n"
    assert json.loads(target.read_text()) == json.loads(run("schema").stdout)


def test_schema_output_into_a_missing_directory_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    target = tmp_path / "no" / "such" / "dir" / "schema.json"
    result = run("schema", "--output", target)
    assert result.code in (1, 2)  # a problem (1) or a usage error (2), but no exception
    assert str(target) in result.stdout + result.stderr

"""``lwd-rules validate``: one ``file:line: field.path: message`` line per problem, exit codes, ``--format json``.

Every case runs in-process through typer's CliRunner. An exception escaping the command (what a
user would see as a traceback) fails the test in ``run``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lwd_rules import hookimpl
from lwd_rules.plugins import new_registry, use_registry
from cli_support import ANSI, CONVNEXT_SETS, Run, only_convnext_plugin, run  # noqa: F401 - the autouse fixture applies here

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "finetune-convnext.yaml"







def write(directory: Path, name: str, content: str | bytes) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def parse(line: str) -> tuple[str, int, str, str]:
    """``file:line: field.path: message`` → (file, line, field path, message)."""
    head, field, message = line.split(": ", 2)
    file, _, number = head.rpartition(":")
    assert number.isdigit(), f"no line number in {line!r}"
    return file, int(number), field, message


# --------------------------------------------------------------------------------------------
# One case per kind of mistake: (file name, content, line, field path, key phrases of the message)

NEST_BRACKETS = "(" * 40 + "1" + ")" * 40
NEST_OPERATORS = "-" * 150 + "1"

CASES = {
    "yaml-syntax": ("rules.yaml", "version: 1\nlayer_decay:\n  rate: 0.5\n bad: x\n", 4, "<root>", ["YAML syntax error"]),
    "toml-syntax": ("rules.toml", "version = 1\n[layer_decay]\nrate = \n", 3, "<root>", ["TOML syntax error"]),
    "json-syntax": ("rules.json", '{\n  "version": 1,\n  "layer_decay": {"rate": 0.5,}\n}\n', 3, "<root>", ["JSON syntax error"]),
    "empty": ("rules.yaml", "", 1, "<root>", ["file is empty"]),
    "only-a-comment": ("rules.yaml", "# nothing here\n", 1, "<root>", ["file is empty"]),
    "top-level-list": ("rules.yaml", "- match: x\n  layer: 1\n", 1, "<root>", ["must be a mapping", "got a list"]),
    "top-level-list-json": ("rules.json", '[\n  {"version": 1}\n]\n', 1, "<root>", ["must be a mapping", "got a list"]),
    "unknown-key-close": (
        "rules.yaml", "version: 1\nlayer_decay:\n  rat: 0.5\n", 3, "layer_decay.rat",
        ["unknown key 'rat'", "(did you mean 'rate'?)"],
    ),
    "unknown-top-key-close": (
        "rules.yaml", "version: 1\nlayer_decy:\n  rate: 0.5\n", 2, "layer_decy",
        ["unknown key 'layer_decy'", "(did you mean 'layer_decay'?)"],
    ),
    "unknown-key-in-rule": (
        "rules.yaml", "version: 1\nlayers:\n  rules:\n    - match: x\n      layer: 1\n      alow_unused: true\n", 6,
        "layers.rules[0].alow_unused", ["unknown key 'alow_unused'", "(did you mean 'allow_unused'?)"],
    ),
    "unknown-key-far": (
        "rules.yaml", "version: 1\nzzz: 3\n", 2, "zzz",
        ["unknown key 'zzz'", "allowed: chains, checks, description, extends, layer_decay, layers"],
    ),
    "wrong-type": ("rules.yaml", "version: 1\nlayer_decay:\n  rate: fast\n", 3, "layer_decay.rate", ["valid number", "'fast'"]),
    "wrong-type-list": ("rules.yaml", "version: 1\nlayers:\n  rules: 3\n", 3, "layers.rules", ["valid list"]),
    "rate-zero": ("rules.yaml", "version: 1\nlayer_decay:\n  rate: 0\n", 3, "layer_decay.rate", ["greater than 0"]),
    "rate-negative": ("rules.yaml", "version: 1\nlayer_decay:\n  rate: -0.5\n", 3, "layer_decay.rate", ["greater than 0", "-0.5"]),
    "rate-above-one": ("rules.yaml", "version: 1\nlayer_decay:\n  rate: 1.5\n", 3, "layer_decay.rate", ["less than or equal to 1", "1.5"]),
    "rate-above-one-toml": ("rules.toml", "version = 1\n\n[layer_decay]\nrate = 1.5\n", 4, "layer_decay.rate", ["less than or equal to 1"]),
    "rate-above-one-json": (
        "rules.json", '{\n  "version": 1,\n  "layer_decay": {\n    "rate": 1.5\n  }\n}\n', 4, "layer_decay.rate",
        ["less than or equal to 1"],
    ),
    "negative-weight-decay": (
        "rules.yaml", "version: 1\nweight_decay:\n  value: -0.1\n", 3, "weight_decay.value", ["greater than or equal to 0"],
    ),
    "invalid-regex": (
        "rules.yaml", "version: 1\nlayers:\n  rules:\n    - match: '^blocks\\.('\n      layer: 1\n", 4,
        "layers.rules[0].match", ["invalid regex", "missing )"],
    ),
    "invalid-regex-toml": (
        "rules.toml", 'version = 1\n\n[[layers.rules]]\nmatch = "^a"\nlayer = 1\n\n[[layers.rules]]\nmatch = "("\nlayer = 2\n', 8,
        "layers.rules[1].match", ["invalid regex"],
    ),
    "named-group-not-defined": (
        "rules.yaml", "version: 1\nlayers:\n  rules:\n    - match: '^blocks\\.(?P<b>\\d+)\\.'\n      layer: block + 1\n", 5,
        "layers.rules[0].layer", ["unknown variable 'block'"],
    ),
    "formula-syntax": (
        "rules.yaml", "version: 1\nlayers:\n  rules:\n    - match: '^stem\\.'\n      layer: '1 +'\n", 5,
        "layers.rules[0].layer", ["syntax error"],
    ),
    "unknown-variable": (
        "rules.yaml", "version: 1\nlayers:\n  num_layers: 4\n  default: num_layer + 1\n", 4, "layers.default",
        ["unknown variable 'num_layer'", "(did you mean 'num_layers'?)"],
    ),
    "unknown-function": (
        "rules.yaml", "version: 1\nlayers:\n  num_layers: 4\n  default: abs(num_layers)\n", 4, "layers.default",
        ["unknown function 'abs'"],
    ),
    "division-by-zero": (
        "rules.yaml", "version: 1\nlayers:\n  rules:\n    - match: '^stem\\.'\n      layer: 1 // 0\n", 5,
        "layers.rules[0].layer", ["division by zero"],
    ),
    "absurd-exponent": ("rules.yaml", "version: 1\nlayers:\n  num_layers: 2 ** 1000\n", 3, "layers.num_layers", ["exponent 1000 is too large"]),
    "absurd-bracket-nesting": (
        "rules.yaml", f"version: 1\nlayers:\n  num_layers: '{NEST_BRACKETS}'\n", 3, "layers.num_layers", ["nested too deeply"],
    ),
    "absurd-operator-nesting": (
        "rules.yaml", f"version: 1\nlayers:\n  num_layers: '{NEST_OPERATORS}'\n", 3, "layers.num_layers", ["too complex"],
    ),
    "extends-missing-name": (
        "rules.yaml", "version: 1\nextends: convnext-tim\n", 2, "extends",
        ["no rule set named 'convnext-tim'", "(did you mean 'convnext-timm'?)"],
    ),
    "extends-missing-name-far": (
        "rules.yaml", "version: 1\nextends: zzzzqqq\n", 2, "extends",
        ["no rule set named 'zzzzqqq'", "registered: " + ", ".join(CONVNEXT_SETS)],
    ),
    "extends-missing-file": ("rules.yaml", "version: 1\n\nextends: missing-parent.yaml\n", 3, "extends", ["no such rule file", "missing-parent.yaml"]),
    "not-utf8": ("rules.yaml", b"version: 1\n# caf\xe9\n", 2, "<root>", ["not UTF-8", "0xe9"]),
    "unknown-suffix": ("rules.txt", "version: 1\n", 1, "<root>", ["unknown rule file type '.txt'"]),
    "duplicate-key": ("rules.yaml", "version: 1\nlayer_decay:\n  rate: 0.5\n  rate: 0.6\n", 4, "<root>", ["duplicate key"]),
    "too-large": ("rules.yaml", "version: 1\n" + "#" * 1_048_576 + "\n", 1, "<root>", ["1048588 bytes", "limited to 1048576"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_mistake_gives_one_located_line_and_exit_1(tmp_path: Path, case: str) -> None:
    name, content, line, field, phrases = CASES[case]
    path = write(tmp_path, name, content)
    result = run("validate", path)
    assert result.code == 1, result.stdout
    assert len(result.lines) == 1, result.stdout
    file, number, got_field, message = parse(result.lines[0])
    assert (file, number, got_field) == (str(path), line, field)
    for phrase in phrases:
        assert phrase in message

    as_json = run("validate", "--format", "json", path)
    assert as_json.code == 1
    assert json.loads(as_json.stdout) == [
        {"file": str(path), "line": line, "path": "" if field == "<root>" else field, "message": message}
    ]


def test_directory_given_as_file(tmp_path: Path) -> None:
    result = run("validate", tmp_path)
    assert result.code == 1
    assert len(result.lines) == 1
    file, line, field, message = parse(result.lines[0])
    assert (file, line, field) == (str(tmp_path), 1, "<root>")
    assert "is a directory" in message


def test_nonexistent_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    result = run("validate", missing)
    assert result.code == 1
    assert len(result.lines) == 1
    file, line, field, message = parse(result.lines[0])
    assert (file, line, field) == (str(missing), 1, "<root>")
    assert "no such file" in message


def test_error_in_extends_parent_points_into_the_parent(tmp_path: Path) -> None:
    parent = write(
        tmp_path,
        "base/parent.yaml",
        "version: 1\n"  # 1
        "layers:\n"  # 2
        "  num_layers: 3\n"  # 3
        "  rules:\n"  # 4
        "    - match: '^stem\\.'\n"  # 5
        "      layer: 0\n"  # 6
        "layer_decay:\n"  # 7
        "  rate: 1.5\n",  # 8
    )
    child = write(tmp_path, "child.yaml", "version: 1\nextends: base/parent.yaml\nweight_decay:\n  value: 0.05\n")
    result = run("validate", child)
    assert result.code == 1
    assert len(result.lines) == 1, result.stdout
    file, line, field, message = parse(result.lines[0])
    assert (file, line, field) == (str(parent), 8, "layer_decay.rate")
    assert "less than or equal to 1" in message


def test_formula_error_in_extends_parent_points_into_the_parent(tmp_path: Path) -> None:
    parent = write(
        tmp_path,
        "parent.yaml",
        "version: 1\n"  # 1
        "layers:\n"  # 2
        "  num_layers: 3\n"  # 3
        "  rules:\n"  # 4
        "    - match: '^blocks\\.(?P<b>\\d+)\\.'\n"  # 5
        "      layer: blk + 1\n"  # 6
        "  default: num_layers + 1\n",  # 7
    )
    child = write(tmp_path, "child.yaml", "version: 1\nextends: parent.yaml\nlayer_decay:\n  rate: 0.5\n")
    result = run("validate", child)
    assert result.code == 1
    assert len(result.lines) == 1, result.stdout
    file, line, field, message = parse(result.lines[0])
    assert (file, line, field) == (str(parent), 6, "layers.rules[0].layer")
    assert "unknown variable 'blk'" in message


def test_problems_in_parent_and_child_are_all_reported(tmp_path: Path) -> None:
    parent = write(tmp_path, "parent.yaml", "version: 1\nlayer_decay:\n  rate: 0\n")
    child = write(tmp_path, "child.yaml", "version: 1\nextends: parent.yaml\nweight_decay:\n  value: -1\n")
    result = run("validate", child)
    assert result.code == 1
    assert [parse(line)[:3] for line in result.lines] == [
        (str(child), 4, "weight_decay.value"),
        (str(parent), 3, "layer_decay.rate"),
    ]


def test_extends_cycle(tmp_path: Path) -> None:
    a = write(tmp_path, "a.yaml", "version: 1\nextends: b.yaml\n")
    b = write(tmp_path, "b.yaml", "version: 1\n\nextends: a.yaml\n")
    result = run("validate", a)
    assert result.code == 1
    assert len(result.lines) == 1, result.stdout
    file, line, field, message = parse(result.lines[0])
    assert (file, line, field) == (str(b), 3, "extends")
    assert message.startswith("extends cycle: "), message
    assert [Path(part).name for part in message.removeprefix("extends cycle: ").split(" -> ")] == ["a.yaml", "b.yaml", "a.yaml"]


def test_extends_cycle_through_a_parent_directory_is_reported_as_a_cycle(tmp_path: Path) -> None:
    # a.yaml -> sub/b.yaml -> ../a.yaml (the same file as a.yaml, spelled differently).
    a = write(tmp_path, "a.yaml", "version: 1\nextends: sub/b.yaml\n")
    write(tmp_path, "sub/b.yaml", "version: 1\nextends: ../a.yaml\n")
    result = run("validate", a)
    assert result.code == 1
    assert len(result.lines) == 1, result.stdout
    file, line, field, message = parse(result.lines[0])
    assert field == "extends"
    assert "extends cycle" in message, message


def test_file_named_like_the_rule_set_it_extends_is_not_a_cycle(tmp_path: Path) -> None:
    # A user's copy of the plugin's "convnext" rule set that extends the original.
    mine = write(tmp_path, "convnext.yaml", "version: 1\nname: convnext\nextends: convnext\nlayer_decay:\n  rate: 0.7\n")
    result = run("validate", mine)
    assert result.lines == [f"{mine}: ok"]
    assert result.code == 0


def test_several_problems_in_one_file_are_all_reported_in_line_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "rules.yaml",
        "version: 1\n"  # 1
        "layers:\n"  # 2
        "  num_layers: 4\n"  # 3
        "  rules:\n"  # 4
        "    - match: '('\n"  # 5
        "      layer: 1\n"  # 6
        "    - match: '^stem\\.'\n"  # 7
        "      layer: foo\n"  # 8
        "layer_decay:\n"  # 9
        "  rate: 2\n"  # 10
        "weight_decay:\n"  # 11
        "  valu: 0.1\n",  # 12
    )
    result = run("validate", path)
    assert result.code == 1
    assert [parse(line)[:3] for line in result.lines] == [
        (str(path), 5, "layers.rules[0].match"),
        (str(path), 8, "layers.rules[1].layer"),
        (str(path), 10, "layer_decay.rate"),
        (str(path), 12, "weight_decay.valu"),
    ]


def test_valid_files_print_one_ok_line_each(tmp_path: Path) -> None:
    toml = write(tmp_path, "rules.toml", "version = 1\n\n[layer_decay]\nrate = 0.5\n")
    as_json = write(tmp_path, "rules.json", '{"version": 1, "extends": "convnext-timm", "weight_decay": {"value": 0.1}}\n')
    yml = write(tmp_path, "rules.yml", "version: 1\nextends: rules.toml\nlayers:\n  num_layers: 2\n  default: num_layers + 1\n")
    result = run("validate", EXAMPLE, toml, as_json, yml)
    assert result.code == 0
    assert result.lines == [f"{EXAMPLE}: ok", f"{toml}: ok", f"{as_json}: ok", f"{yml}: ok"]
    assert result.stderr == ""


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_utf8_file_with_byte_order_mark_is_valid(tmp_path: Path, suffix: str) -> None:
    text = '{"version": 1}\n' if suffix == ".json" else "version = 1\n"
    path = write(tmp_path, "rules" + suffix, b"\xef\xbb\xbf" + text.encode())
    result = run("validate", path)
    assert result.lines == [f"{path}: ok"]
    assert result.code == 0


def test_good_and_bad_files_together(tmp_path: Path) -> None:
    good = write(tmp_path, "good.yaml", "version: 1\nlayer_decay:\n  rate: 0.5\n")
    bad = write(tmp_path, "bad.yaml", "version: 1\nlayer_decay:\n  rate: 5\n")
    result = run("validate", good, bad)
    assert result.code == 1
    assert result.lines[0] == f"{good}: ok"
    assert len(result.lines) == 2
    assert parse(result.lines[1])[:3] == (str(bad), 3, "layer_decay.rate")


def test_json_format_lists_every_problem_of_every_file(tmp_path: Path) -> None:
    good = write(tmp_path, "good.yaml", "version: 1\n")
    bad = write(tmp_path, "bad.yaml", "version: 1\nlayer_decay:\n  rat: 0.5\nweight_decay:\n  value: -1\n")
    empty = write(tmp_path, "empty.toml", "")
    result = run("validate", "--format", "json", good, bad, empty)
    assert result.code == 1
    assert json.loads(result.stdout) == [
        {"file": str(bad), "line": 3, "path": "layer_decay.rat", "message": "unknown key 'rat' (did you mean 'rate'?)"},
        {"file": str(bad), "line": 5, "path": "weight_decay.value", "message": "Input should be greater than or equal to 0 (got -1)"},
        {"file": str(empty), "line": 1, "path": "", "message": "file is empty"},
    ]


def test_json_format_of_valid_files_is_an_empty_list(tmp_path: Path) -> None:
    result = run("validate", "--format", "json", EXAMPLE)
    assert result.code == 0
    assert json.loads(result.stdout) == []


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (["validate"], "Missing argument"),
        (["validate", "--bogus", "x.yaml"], "No such option"),
        (["validate", "--format", "xml", "x.yaml"], "Invalid value"),
        (["frobnicate"], "No such command"),
    ],
)
def test_usage_errors_exit_2(args: list[str], phrase: str) -> None:
    result = run(*args)
    assert result.code == 2
    assert phrase in result.stderr


def test_file_name_too_long_is_one_located_line(tmp_path: Path) -> None:
    path = tmp_path / ("a" * 300 + ".yaml")  # stat() fails with ENAMETOOLONG, not "does not exist"
    result = run("validate", path)
    assert result.code == 1
    assert len(result.lines) == 1, result.stdout
    file, line, field, _ = parse(result.lines[0])
    assert (file, line, field) == (str(path), 1, "<root>")


class _ExplodingRuleSets:
    """A plugin whose lwd_rule_sets raises (fatal with LWD_RULES_STRICT_PLUGINS=1)."""

    @hookimpl
    def lwd_rule_sets(self):
        raise RuntimeError("boom")


def test_failing_plugin_under_strict_mode_is_reported_at_the_extends_line(tmp_path: Path) -> None:
    import lwd_rules_convnext

    use_registry(new_registry([("convnext", lwd_rules_convnext), ("exploding", _ExplodingRuleSets())], strict=True))
    path = write(tmp_path, "rules.yaml", "version: 1\nextends: convnext\n")
    result = run("validate", path)
    assert result.code == 1
    assert len(result.lines) == 1, result.stdout
    file, line, field, message = parse(result.lines[0])  # the format is always file:line:
    assert (file, line, field) == (str(path), 2, "extends")
    assert "plugin 'exploding'" in message and "RuntimeError: boom" in message

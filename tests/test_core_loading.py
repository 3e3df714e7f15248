"""Loading rule files: located errors (file, line, field path), extends chains, formats, shortcuts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch.nn as nn

from lwd_rules import RuleError, RuleSet, hookimpl, load_rules, resolve
from lwd_rules.plugins import new_registry


def write(path: Path, *lines: str) -> Path:
    """Write ``lines`` (line 1 is the first argument) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def load_error(source) -> RuleError:
    with pytest.raises(RuleError) as info:
        load_rules(source, registry=new_registry())
    return info.value


def where(error: RuleError) -> list[tuple[str, int | None, str]]:
    return [(p.location.file, p.location.line, p.path) for p in error.problems]


def single(error: RuleError):
    assert len(error.problems) == 1, str(error)
    return error.problems[0]


class Tiny(nn.Module):
    """stem (layer 0), blocks.0..2 (layers 1..3), head (layer 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(2, 2)
        self.blocks = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])
        self.head = nn.Linear(2, 2)


TINY_YAML = [
    "name: tiny",  # 1
    "layers:",  # 2
    "  num_layers: 3",  # 3
    "  rules:",  # 4
    "    - match: '^stem\\.'",  # 5
    "      layer: 0",  # 6
    "    - match: '^blocks\\.(?P<b>\\d+)\\.'",  # 7
    "      layer: b + 1",  # 8
    "  default: num_layers + 1",  # 9
    "layer_decay:",  # 10
    "  rate: 0.5",  # 11
    "weight_decay:",  # 12
    "  value: 0.05",  # 13
    "  exclude: ['ndim<=1']",  # 14
    "optimizer:",  # 15
    "  lr: 0.001",  # 16
]


# --------------------------------------------------------------------------- syntax errors


def test_yaml_syntax_error_is_located(tmp_path: Path) -> None:
    path = write(
        tmp_path / "bad.yaml",
        "layers:",  # 1
        "  rules:",  # 2
        "    - match: a",  # 3
        "     layer: 1",  # 4  (bad indentation)
    )
    problem = single(load_error(path))
    assert (problem.location.file, problem.location.line, problem.path) == (str(path), 4, "")
    assert problem.message.startswith("YAML syntax error")


def test_yaml_duplicate_key_is_a_located_syntax_error(tmp_path: Path) -> None:
    path = write(tmp_path / "dup.yaml", "layer_decay:", "  rate: 0.5", "  rate: 0.6")
    problem = single(load_error(path))
    assert (problem.location.file, problem.location.line, problem.path) == (str(path), 3, "")
    assert "duplicate key" in problem.message


def test_toml_syntax_error_is_located(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.toml", "[layer_decay]", "rate = 0.5", "curve = ")
    problem = single(load_error(path))
    assert (problem.location.file, problem.location.line, problem.path) == (str(path), 3, "")
    assert problem.message.startswith("TOML syntax error")


def test_json_syntax_error_is_located(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.json", "{", '  "layer_decay": {', '    "rate" 0.5', "  }", "}")
    error = load_error(path)
    problem = single(error)
    assert (problem.location.file, problem.location.line, problem.path) == (str(path), 3, "")
    assert problem.message.startswith("JSON syntax error")
    assert str(error).startswith(f"{path}:3: <root>: JSON syntax error")


# --------------------------------------------------------------------------- schema errors


def test_unknown_keys_in_yaml_suggest_the_right_key(tmp_path: Path) -> None:
    path = write(
        tmp_path / "typo.yaml",
        "layer_decay:",  # 1
        "  rate: 0.5",  # 2
        "  curv: linear",  # 3
        "layres:",  # 4
        "  default: 0",  # 5
        "layers:",  # 6
        "  rules:",  # 7
        "    - match: a",  # 8
        "      layer: 0",  # 9
        "    - macth: b",  # 10
        "      layer: 1",  # 11
    )
    error = load_error(path)
    got = {(p.location.line, p.path): p.message for p in error.problems}
    assert got[(3, "layer_decay.curv")] == "unknown key 'curv' (did you mean 'curve'?)"
    assert got[(4, "layres")] == "unknown key 'layres' (did you mean 'layers'?)"
    assert got[(10, "layers.rules[1].macth")] == "unknown key 'macth' (did you mean 'match'?)"
    assert all(p.location.file == str(path) for p in error.problems)
    assert f"{path}:3: layer_decay.curv: unknown key 'curv' (did you mean 'curve'?)" in str(error).splitlines()


def test_unknown_key_without_close_match_lists_allowed_keys(tmp_path: Path) -> None:
    path = write(tmp_path / "odd.yaml", "checks:", "  zzz: error")
    problem = single(load_error(path))
    assert (problem.location.line, problem.path) == (2, "checks.zzz")
    assert problem.message == "unknown key 'zzz'; allowed: defaulted, override_conflicts, unused_patterns"


def test_unknown_keys_in_toml_are_located(tmp_path: Path) -> None:
    path = write(
        tmp_path / "typo.toml",
        "[layer_decay]",  # 1
        "rate = 0.5",  # 2
        "curv = 'linear'",  # 3
        "",  # 4
        "[[layers.rules]]",  # 5
        "match = 'a'",  # 6
        "layer = 0",  # 7
        "",  # 8
        "[[layers.rules]]",  # 9
        "match = 'b'",  # 10
        "layr = 1",  # 11
    )
    error = load_error(path)
    got = {(p.location.line, p.path): p.message for p in error.problems}
    assert got[(3, "layer_decay.curv")] == "unknown key 'curv' (did you mean 'curve'?)"
    assert got[(11, "layers.rules[1].layr")] == "unknown key 'layr' (did you mean 'layer'?)"
    assert got[(9, "layers.rules[1].layer")] == "Field required"
    assert len(error.problems) == 3


def test_unknown_keys_in_json_are_located(tmp_path: Path) -> None:
    path = write(
        tmp_path / "typo.json",
        "{",  # 1
        '  "layer_decay": {',  # 2
        '    "rate": 0.5,',  # 3
        '    "curv": "linear"',  # 4
        "  },",  # 5
        '  "weight_decay": {"valu": 0.1}',  # 6
        "}",  # 7
    )
    error = load_error(path)
    assert sorted(where(error), key=lambda w: w[1]) == [
        (str(path), 4, "layer_decay.curv"),
        (str(path), 6, "weight_decay.valu"),
    ]
    assert {p.message for p in error.problems} == {
        "unknown key 'curv' (did you mean 'curve'?)",
        "unknown key 'valu' (did you mean 'value'?)",
    }


def test_wrong_types_are_located(tmp_path: Path) -> None:
    path = write(
        tmp_path / "types.yaml",
        "layer_decay:",  # 1
        "  rate: fast",  # 2
        "  min_scale: 2",  # 3
        "weight_decay:",  # 4
        "  value: -1",  # 5
        "checks:",  # 6
        "  unused_patterns: loud",  # 7
        "overrides:",  # 8
        "  - match: x",  # 9
        "    freeze: maybe",  # 10
    )
    error = load_error(path)
    assert sorted(where(error), key=lambda w: w[1]) == [
        (str(path), 2, "layer_decay.rate"),
        (str(path), 3, "layer_decay.min_scale"),
        (str(path), 5, "weight_decay.value"),
        (str(path), 7, "checks.unused_patterns"),
        (str(path), 10, "overrides[0].freeze"),
    ]
    messages = {p.path: p.message for p in error.problems}
    assert "valid number" in messages["layer_decay.rate"] and "'fast'" in messages["layer_decay.rate"]
    assert "less than or equal to 1" in messages["layer_decay.min_scale"]
    assert "greater than or equal to 0" in messages["weight_decay.value"]


def test_wrong_type_inside_a_rule_list(tmp_path: Path) -> None:
    path = write(
        tmp_path / "types.yaml",
        "layers:",  # 1
        "  rules:",  # 2
        "    - match: a",  # 3
        "      layer: 0",  # 4
        "    - match: b",  # 5
        "      layer: [1, 2]",  # 6
        "  default: 0",  # 7
    )
    error = load_error(path)
    assert error.problems
    assert set(where(error)) == {(str(path), 6, "layers.rules[1].layer")}


def test_top_level_wrong_type_of_section(tmp_path: Path) -> None:
    path = write(tmp_path / "types.yaml", "name: x", "overrides: 3")
    problem = single(load_error(path))
    assert (problem.location.file, problem.location.line, problem.path) == (str(path), 2, "overrides")


def test_invalid_regexes_are_located(tmp_path: Path) -> None:
    path = write(
        tmp_path / "re.yaml",
        "layers:",  # 1
        "  rules:",  # 2
        "    - match: a",  # 3
        "      layer: 0",  # 4
        "    - match: '(unclosed'",  # 5
        "      layer: 1",  # 6
        "  count:",  # 7
        "    n: '[bad'",  # 8
        "overrides:",  # 9
        "  - match: '[z'",  # 10
        "    lr_mult: 2",  # 11
        "weight_decay:",  # 12
        "  exclude:",  # 13
        "    - 'ndim<=1'",  # 14
        "    - 're:*bad'",  # 15
    )
    error = load_error(path)
    assert sorted(where(error), key=lambda w: w[1]) == [
        (str(path), 5, "layers.rules[1].match"),
        (str(path), 8, "layers.count.n"),
        (str(path), 10, "overrides[0].match"),
        (str(path), 15, "weight_decay.exclude[1]"),
    ]
    assert all(p.message.startswith("invalid regex") for p in error.problems)


def test_bad_formulas_are_located(tmp_path: Path) -> None:
    path = write(
        tmp_path / "formula.yaml",
        "layers:",  # 1
        "  num_layers: 3",  # 2
        "  rules:",  # 3
        "    - match: a",  # 4
        "      layer: '1 +'",  # 5
        "    - match: '(?P<s>\\d+)'",  # 6
        "      layer: s + blocks",  # 7
        "  default: num_layer + 1",  # 8
    )
    error = load_error(path)
    got = {(p.location.line, p.path): p.message for p in error.problems}
    assert set(got) == {(5, "layers.rules[0].layer"), (7, "layers.rules[1].layer"), (8, "layers.default")}
    assert got[(5, "layers.rules[0].layer")].startswith("syntax error")
    assert got[(7, "layers.rules[1].layer")] == "unknown variable 'blocks'"
    assert got[(8, "layers.default")] == "unknown variable 'num_layer' (did you mean 'num_layers'?)"


def test_named_group_may_be_used_but_not_outside_its_rule(tmp_path: Path) -> None:
    path = write(
        tmp_path / "scope.yaml",
        "layers:",  # 1
        "  rules:",  # 2
        "    - match: '^b\\.(?P<i>\\d+)'",  # 3
        "      layer: i",  # 4
        "  default: i",  # 5
    )
    problem = single(load_error(path))
    assert (problem.location.line, problem.path, problem.message) == (5, "layers.default", "unknown variable 'i'")


# --------------------------------------------------------------------------- file-level errors


@pytest.mark.parametrize("text", ["", "\n\n   \n", "# only a comment\n"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    problem = single(load_error(path))
    assert (problem.location.file, problem.location.line, problem.path) == (str(path), 1, "")
    assert problem.message == "file is empty"


@pytest.mark.parametrize(("name", "text"), [("list.yaml", "- a\n- b\n"), ("list.json", "[1, 2]\n")])
def test_top_level_list(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    error = load_error(path)
    problem = single(error)
    assert (problem.location.file, problem.location.line, problem.path) == (str(path), 1, "")
    assert problem.message == "a rule file must be a mapping of keys, got a list"
    assert str(error) == f"{path}:1: <root>: a rule file must be a mapping of keys, got a list"


def test_non_utf8_file_points_at_the_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"layer_decay:\n  rate: 0.5\n# caf\xe9\n")
    problem = single(load_error(path))
    assert (problem.location.file, problem.location.line, problem.path) == (str(path), 3, "")
    assert problem.message == "file is not UTF-8 (byte 0xe9)"


def test_oversize_file_is_rejected_but_exactly_one_mib_is_read(tmp_path: Path) -> None:
    body = b"layers:\n  default: 0\n"
    at_limit = tmp_path / "limit.yaml"
    at_limit.write_bytes(body + b"#" * (1_048_576 - len(body) - 1) + b"\n")
    assert at_limit.stat().st_size == 1_048_576
    assert load_rules(at_limit, registry=new_registry()).config.layers.default == 0

    big = tmp_path / "big.yaml"
    big.write_bytes(body + b"#" * (1_048_576 - len(body)) + b"\n")
    assert big.stat().st_size == 1_048_577
    problem = single(load_error(big))
    assert (problem.location.file, problem.location.line, problem.path) == (str(big), 1, "")
    assert "1048577 bytes" in problem.message
    assert str(load_error(big)).startswith(f"{big}:1: <root>: ")


def test_directory_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.mkdir()
    problem = single(load_error(path))
    assert (problem.location.file, problem.location.line, problem.path) == (str(path), 1, "")
    assert problem.message == "is a directory, not a rule file"


@pytest.mark.parametrize("as_str", [True, False])
def test_nonexistent_file(tmp_path: Path, as_str: bool) -> None:
    path = tmp_path / "missing.yaml"
    problem = single(load_error(str(path) if as_str else path))
    assert (problem.location.file, problem.location.line, problem.path) == (str(path), 1, "")
    assert problem.message == "no such file"


def test_nonexistent_file_through_resolve(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    with pytest.raises(RuleError) as info:
        resolve(Tiny(), str(path), registry=new_registry())
    assert where(info.value) == [(str(path), 1, "")]


def test_unknown_file_suffix(tmp_path: Path) -> None:
    path = write(tmp_path / "rules.txt", "layers:", "  default: 0")
    problem = single(load_error(path))
    assert (problem.location.file, problem.location.line, problem.path) == (str(path), 1, "")
    assert problem.message.startswith("unknown rule file type '.txt'")


def test_yaml_merge_keys_load(tmp_path: Path) -> None:
    path = write(
        tmp_path / "anchors.yaml",
        "layers:",  # 1
        "  default: 0",  # 2
        "overrides:",  # 3
        "  - &common",  # 4
        "    match: '^stem'",  # 5
        "    lr_mult: 2.0",  # 6
        "  - <<: *common",  # 7
        "    match: '^head'",  # 8
    )
    rules = load_rules(path, registry=new_registry())
    assert [(o.match, o.lr_mult) for o in rules.config.overrides] == [("^stem", 2.0), ("^head", 2.0)]


def test_toml_inline_array_of_tables_errors_point_at_the_element_line(tmp_path: Path) -> None:
    path = write(
        tmp_path / "inline.toml",
        "[layers]",  # 1
        "default = 0",  # 2
        "rules = [",  # 3
        '  { match = "a", layer = 0 },',  # 4
        '  { match = "b", layr = 1 },',  # 5
        "]",  # 6
    )
    error = load_error(path)
    got = {(p.location.line, p.path) for p in error.problems}
    assert (5, "layers.rules[1].layr") in got, str(error)


# --------------------------------------------------------------------------- extends


def test_extends_missing_file_is_reported_at_the_extends_line(tmp_path: Path) -> None:
    path = write(tmp_path / "child.yaml", "layer_decay:", "  rate: 0.5", "extends: nowhere.yaml")
    problem = single(load_error(path))
    assert (problem.location.file, problem.location.line, problem.path) == (str(path), 3, "extends")
    assert problem.message == f"no such rule file: {tmp_path / 'nowhere.yaml'}"


def test_extends_unknown_registered_name_is_reported_at_the_extends_line(tmp_path: Path) -> None:
    path = write(tmp_path / "child.yaml", "extends: no-such-set", "layer_decay:", "  rate: 0.5")
    problem = single(load_error(path))
    assert (problem.location.file, problem.location.line, problem.path) == (str(path), 1, "extends")
    assert "no rule set named 'no-such-set'" in problem.message


def test_extends_cycle_is_reported(tmp_path: Path) -> None:
    a = write(tmp_path / "a.yaml", "extends: b.yaml", "layers:", "  default: 0")
    b = write(tmp_path / "b.yaml", "layers:", "  default: 1", "extends: a.yaml")
    problem = single(load_error(a))
    assert (problem.location.file, problem.location.line, problem.path) == (str(b), 3, "extends")
    assert problem.message == f"extends cycle: {a} -> {b} -> {a}"


def test_extends_self_cycle_is_reported(tmp_path: Path) -> None:
    a = write(tmp_path / "self.yaml", "layers:", "  default: 0", "extends: self.yaml")
    problem = single(load_error(a))
    assert (problem.location.file, problem.location.line, problem.path) == (str(a), 3, "extends")
    assert problem.message == f"extends cycle: {a} -> {a}"


def test_extends_cycle_through_parent_directory_paths_is_reported_as_a_cycle(tmp_path: Path) -> None:
    c = write(tmp_path / "x" / "c.yaml", "extends: ../x/e.yaml", "layers:", "  default: 0")
    write(tmp_path / "x" / "e.yaml", "extends: c.yaml")
    problem = single(load_error(c))
    assert problem.path == "extends"
    assert "cycle" in problem.message, problem.message


def test_files_sharing_a_name_field_are_not_a_cycle(tmp_path: Path) -> None:
    write(tmp_path / "base.yaml", "name: my-rules", "layers:", "  default: 0", "layer_decay:", "  rate: 0.5")
    child = write(tmp_path / "child.yaml", "name: my-rules", "extends: base.yaml", "layer_decay:", "  rate: 0.8")
    rules = load_rules(child, registry=new_registry())
    assert rules.config.layer_decay.rate == 0.8
    assert rules.config.layers.default == 0


def test_extends_chain_with_relative_paths(tmp_path: Path) -> None:
    base = write(tmp_path / "base" / "base.yaml", *TINY_YAML)
    write(
        tmp_path / "base" / "mid.yaml",
        "extends: base.yaml",  # relative to mid.yaml's directory
        "layer_decay:",
        "  rate: 0.8",
    )
    child = write(
        tmp_path / "project" / "configs" / "child.yaml",
        "extends: ../../base/mid.yaml",
        "weight_decay:",
        "  value: 0.1",
    )
    rules = load_rules(child, registry=new_registry())
    assert [Path(p.file).resolve() for p in rules.provenance] == [
        base.resolve(),
        (tmp_path / "base" / "mid.yaml").resolve(),
        child.resolve(),
    ]
    assert rules.config.layer_decay.rate == 0.8  # from mid
    assert rules.config.weight_decay.value == 0.1  # from child
    assert rules.config.weight_decay.exclude == ["ndim<=1"]  # sibling key kept from base
    assert rules.config.optimizer.lr == 0.001  # from base

    plan = resolve(Tiny(), child, registry=new_registry())
    rows = {r.name: r for r in plan.params}
    assert plan.num_layers == 3
    assert rows["stem.weight"].layer_id == 0 and rows["stem.weight"].lr_scale == pytest.approx(0.8**4, rel=1e-12)
    assert rows["blocks.1.weight"].layer_id == 2 and rows["blocks.1.weight"].lr_scale == pytest.approx(0.8**2, rel=1e-12)
    assert rows["head.weight"].lr_scale == 1.0
    assert rows["head.weight"].weight_decay == 0.1
    assert rows["head.bias"].weight_decay == 0.0
    # inherited rules still point at the base file's lines
    def rule_at(name: str) -> tuple[Path, int]:
        file, line = rows[name].rule.rsplit(":", 1)
        return Path(file).resolve(), int(line)

    assert rule_at("stem.weight") == (base.resolve(), 5)
    assert rule_at("blocks.2.bias") == (base.resolve(), 7)
    assert rule_at("head.weight") == (base.resolve(), 9)


def test_error_in_an_extended_file_points_at_that_file(tmp_path: Path) -> None:
    base = write(tmp_path / "base.yaml", "layers:", "  rules:", "    - match: '(oops'", "      layer: 0")
    child = write(tmp_path / "child.yaml", "extends: base.yaml", "layer_decay:", "  rate: 0.5")
    problem = single(load_error(child))
    assert (problem.location.file, problem.location.line, problem.path) == (str(base), 3, "layers.rules[0].match")


def test_error_in_child_overriding_base_value_points_at_child(tmp_path: Path) -> None:
    write(tmp_path / "base.yaml", "layer_decay:", "  rate: 0.5", "layers:", "  default: 0")
    child = write(tmp_path / "child.yaml", "extends: base.yaml", "layer_decay:", "  rate: 7")
    problem = single(load_error(child))
    assert (problem.location.file, problem.location.line, problem.path) == (str(child), 3, "layer_decay.rate")


class RuleSetPlugin:
    def __init__(self, base: Path) -> None:
        self.base = base

    @hookimpl
    def lwd_rule_sets(self):
        return {"tiny-file": str(self.base), "tiny-dict": {"layers": {"default": 0}, "layer_decay": {"rate": 0.25}}}


def test_extends_a_registered_rule_set(tmp_path: Path) -> None:
    base = write(tmp_path / "pkg" / "tiny.yaml", *TINY_YAML)
    registry = new_registry([("tiny-plugin", RuleSetPlugin(base))])
    child = write(tmp_path / "child.yaml", "extends: tiny-file", "layer_decay:", "  rate: 0.9")
    plan = resolve(Tiny(), child, registry=registry)
    rows = {r.name: r for r in plan.params}
    assert rows["blocks.0.weight"].layer_id == 1
    assert rows["blocks.0.weight"].lr_scale == pytest.approx(0.9**3, rel=1e-12)
    assert plan.rules.provenance[0].name == "tiny-file"

    plan = resolve(Tiny(), {"extends": "tiny-dict"}, registry=registry)
    assert {r.layer_id for r in plan.params} == {0}
    assert plan.num_layers == 0
    assert all(r.lr_scale == 0.25 for r in plan.params)


# --------------------------------------------------------------------------- formats and sources

TINY_TOML = [
    'name = "tiny"',
    "",
    "[layers]",
    "num_layers = 3",
    'default = "num_layers + 1"',
    "",
    "[[layers.rules]]",
    "match = '^stem\\.'",
    "layer = 0",
    "",
    "[[layers.rules]]",
    "match = '^blocks\\.(?P<b>\\d+)\\.'",
    'layer = "b + 1"',
    "",
    "[layer_decay]",
    "rate = 0.5",
    "",
    "[weight_decay]",
    "value = 0.05",
    'exclude = ["ndim<=1"]',
    "",
    "[optimizer]",
    "lr = 0.001",
]

TINY_DICT = {
    "name": "tiny",
    "layers": {
        "num_layers": 3,
        "rules": [{"match": r"^stem\.", "layer": 0}, {"match": r"^blocks\.(?P<b>\d+)\.", "layer": "b + 1"}],
        "default": "num_layers + 1",
    },
    "layer_decay": {"rate": 0.5},
    "weight_decay": {"value": 0.05, "exclude": ["ndim<=1"]},
    "optimizer": {"lr": 0.001},
}


def test_yaml_toml_json_and_dict_give_identical_rules_and_plans(tmp_path: Path) -> None:
    yaml_path = write(tmp_path / "r.yaml", *TINY_YAML)
    yml_path = write(tmp_path / "r.yml", *TINY_YAML)
    toml_path = write(tmp_path / "r.toml", *TINY_TOML)
    json_path = tmp_path / "r.json"
    json_path.write_text(json.dumps(TINY_DICT, indent=2))
    registry = new_registry()
    loaded = [load_rules(s, registry=registry) for s in (yaml_path, yml_path, toml_path, json_path, TINY_DICT)]
    assert all(isinstance(r, RuleSet) for r in loaded)
    for other in loaded[1:]:
        assert other.config == loaded[0].config
        assert other.data == loaded[0].data
        assert [(r.pattern.pattern, r.layer.source) for r in other.rules] == [
            (r.pattern.pattern, r.layer.source) for r in loaded[0].rules
        ]
    model = Tiny()
    plans = [resolve(model, r, registry=new_registry()) for r in loaded]
    assert len({p.fingerprint() for p in plans}) == 1
    expected = [(r.name, r.layer_id, r.lr_scale, r.weight_decay, r.group) for r in plans[0].params]
    for plan in plans[1:]:
        assert [(r.name, r.layer_id, r.lr_scale, r.weight_decay, r.group) for r in plan.params] == expected
    # the rows remember where their rule was written
    assert plans[0].params[0].rule == f"{yaml_path}:5"
    assert plans[2].params[0].rule == f"{toml_path}:7"
    assert plans[4].params[0].rule == "<dict>:layers.rules[0]"


def test_ruleset_source_is_used_as_is() -> None:
    rules = load_rules(TINY_DICT, registry=new_registry())
    assert load_rules(rules) is rules
    plan = resolve(Tiny(), rules, registry=new_registry())
    assert plan.rules is rules


def test_dict_source_errors_name_the_dict() -> None:
    error = load_error({"layer_decay": {"rate": 0.5, "curv": "linear"}})
    problem = single(error)
    assert (problem.location.file, problem.location.line, problem.path) == ("<dict>", None, "layer_decay.curv")
    assert str(error) == "<dict>: layer_decay.curv: unknown key 'curv' (did you mean 'curve'?)"


def test_keyword_shortcuts_override_file_values(tmp_path: Path) -> None:
    path = write(tmp_path / "r.yaml", *TINY_YAML)
    model = Tiny()
    plain = resolve(model, path, registry=new_registry())
    assert plain.lr == 0.001
    assert {r.name: r.lr_scale for r in plain.params}["stem.weight"] == 0.5**4

    plan = resolve(model, path, layer_decay=0.8, weight_decay=0.1, lr=0.2, registry=new_registry())
    rows = {r.name: r for r in plan.params}
    assert plan.lr == 0.2
    assert rows["stem.weight"].lr_scale == pytest.approx(0.8**4, rel=1e-12)
    assert rows["blocks.2.weight"].lr_scale == pytest.approx(0.8, rel=1e-12)
    assert rows["head.weight"].lr_scale == 1.0
    assert rows["stem.weight"].weight_decay == 0.1
    assert rows["stem.bias"].weight_decay == 0.0  # the file's exclude list still applies
    assert plan.rules.config.weight_decay.exclude == ["ndim<=1"]


def test_keyword_shortcuts_apply_to_dict_and_ruleset_sources() -> None:
    rules = load_rules(TINY_DICT, registry=new_registry())
    for source in (TINY_DICT, rules):
        plan = resolve(Tiny(), source, layer_decay=0.25, registry=new_registry())
        rows = {r.name: r for r in plan.params}
        assert rows["blocks.0.bias"].lr_scale == 0.25**3
        assert rows["blocks.0.weight"].weight_decay == 0.05
    assert rules.config.layer_decay.rate == 0.5  # the RuleSet itself is unchanged

"""resolve() and create_optimizer(): canonical names, grouping, overrides, checks, curves, optimizers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from lwd_rules import LwdRulesWarning, RuleError, create_optimizer, resolve
from lwd_rules.plugins import new_registry


class Net(nn.Module):
    """stem (layer 0), blocks.0..3 (layers 1..4), norm + head (layer 5 = N + 1)."""

    def __init__(self, depth: int = 4) -> None:
        super().__init__()
        self.stem = nn.Linear(3, 4)
        self.pos = nn.Parameter(torch.zeros(1, 2, 4))
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)) for _ in range(depth)])
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = x + block(x)
        return self.head(self.norm(x))


def rules(**sections) -> dict:
    """Rules for Net: stem/pos → 0, blocks.i → i + 1, the rest → N + 1, rate 0.5, wd 0.1 except ndim<=1."""
    base = {
        "layers": {
            "num_layers": 4,
            "rules": [
                {"match": r"^(stem|pos)\b", "layer": 0},
                {"match": r"^blocks\.(?P<i>\d+)\.", "layer": "i + 1"},
            ],
            "default": "num_layers + 1",
        },
        "layer_decay": {"rate": 0.5},
        "weight_decay": {"value": 0.1, "exclude": ["ndim<=1"]},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return base


def plan_of(model: nn.Module, source=None, **kwargs):
    return resolve(model, rules() if source is None else source, registry=new_registry(), **kwargs)


def rows(plan) -> dict:
    return {r.name: r for r in plan.params}


def summary(plan):
    """Everything a wrapper must not change: per-row (id, scale, decay, group) and the groups."""
    per_row = [(r.layer_id, r.lr_scale, r.weight_decay, r.group) for r in plan.params]
    groups = [(g["group_name"], g["lr_scale"], g["weight_decay"], [id(p) for p in g["params"]]) for g in plan.param_groups]
    return per_row, groups


class Wrapper(nn.Module):
    """A DDP-like container: the model sits at ``.module``."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.module = inner


def rule_error(model, source, **kwargs) -> RuleError:
    with pytest.raises(RuleError) as info:
        resolve(model, source, registry=new_registry(), **kwargs)
    return info.value


# --------------------------------------------------------------------------- the basic plan


def test_basic_plan_ids_scales_and_decay() -> None:
    plan = plan_of(Net())
    r = rows(plan)
    assert plan.num_layers == 4
    expected = {
        "stem.weight": (0, 0.5**5, 0.1),
        "stem.bias": (0, 0.5**5, 0.0),
        "pos": (0, 0.5**5, 0.1),  # 3-D: decays
        "blocks.0.0.weight": (1, 0.5**4, 0.1),
        "blocks.0.1.weight": (1, 0.5**4, 0.0),
        "blocks.2.0.bias": (3, 0.5**2, 0.0),
        "blocks.3.0.weight": (4, 0.5, 0.1),
        "norm.weight": (5, 1.0, 0.0),
        "head.weight": (5, 1.0, 0.1),
        "head.bias": (5, 1.0, 0.0),
    }
    assert {name: (r[name].layer_id, r[name].lr_scale, r[name].weight_decay) for name in expected} == expected
    assert r["head.weight"].rule == "<dict>:layers.default"
    assert r["blocks.1.0.weight"].rule == "<dict>:layers.rules[1]"
    assert (r["pos"].numel, r["pos"].ndim) == (8, 3)
    assert [name for name, _ in Net().named_parameters()] == [row.name for row in plan.params]


def test_groups_share_settings_in_first_seen_order() -> None:
    model = Net(depth=2)
    plan = plan_of(model, rules(layers={"num_layers": 2}))
    names = [g["group_name"] for g in plan.param_groups]
    # first-seen order along named_parameters: pos (own parameters come first), stem.weight, stem.bias, blocks...
    assert names == [
        "layer_0_decay",
        "layer_0_no_decay",
        "layer_1_decay",
        "layer_1_no_decay",
        "layer_2_decay",
        "layer_2_no_decay",
        "layer_3_no_decay",
        "layer_3_decay",
    ]
    by_name = {g["group_name"]: g for g in plan.param_groups}
    assert [id(p) for p in by_name["layer_0_decay"]["params"]] == [id(model.pos), id(model.stem.weight)]
    assert [id(p) for p in by_name["layer_3_no_decay"]["params"]] == [id(model.norm.weight), id(model.norm.bias), id(model.head.bias)]
    assert by_name["layer_3_no_decay"]["layer_ids"] == [3]
    assert by_name["layer_0_decay"]["lr_scale"] == 0.5**3
    assert by_name["layer_0_decay"]["weight_decay"] == 0.1
    for row in plan.params:
        assert by_name[row.group]["lr_scale"] == row.lr_scale
        assert by_name[row.group]["weight_decay"] == row.weight_decay


def test_identical_settings_across_layers_share_one_group() -> None:
    plan = plan_of(Net(depth=2), rules(layers={"num_layers": 2}, layer_decay={"rate": 1.0}))
    assert [g["group_name"] for g in plan.param_groups] == ["layers_0-3_decay", "layers_0-3_no_decay"]
    assert [g["layer_ids"] for g in plan.param_groups] == [[0, 1, 2, 3], [0, 1, 2, 3]]
    assert sum(len(g["params"]) for g in plan.param_groups) == len(list(Net(depth=2).parameters()))


# --------------------------------------------------------------------------- canonical names


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda m: Wrapper(m), id="module"),
        pytest.param(lambda m: Wrapper(Wrapper(m)), id="module.module"),
        pytest.param(lambda m: torch.compile(m), id="compile"),
        pytest.param(lambda m: Wrapper(torch.compile(m)), id="module._orig_mod"),
        pytest.param(lambda m: torch.compile(Wrapper(m)), id="_orig_mod.module"),
    ],
)
def test_wrapped_models_get_the_same_plan(wrap) -> None:
    model = Net()
    bare = plan_of(model)
    wrapped = plan_of(wrap(model))
    assert summary(wrapped) == summary(bare)
    assert wrapped.num_layers == bare.num_layers


def test_wrapper_components_are_removed_wherever_they_occur() -> None:
    class FSDPLike(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self._fsdp_wrapped_module = inner

    class CheckpointLike(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self._checkpoint_wrapped_module = inner

    model = Net()
    wrapped_blocks = Net()
    wrapped_blocks.load_state_dict(model.state_dict())
    wrapped_blocks.blocks = nn.ModuleList([CheckpointLike(b) for b in model.blocks])
    wrapped_blocks.stem = model.stem
    wrapped_blocks.pos = model.pos
    wrapped_blocks.norm = model.norm
    wrapped_blocks.head = model.head
    outer = FSDPLike(wrapped_blocks)
    assert "_fsdp_wrapped_module.blocks.1._checkpoint_wrapped_module.0.weight" in dict(outer.named_parameters())
    assert summary(plan_of(outer)) == summary(plan_of(model))


def test_custom_strip_components() -> None:
    class Holder(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.backbone = inner

    model = Net()
    plan = plan_of(Holder(model), rules(names={"strip_components": ["backbone"]}))
    assert summary(plan) == summary(plan_of(model))
    assert [r.name for r in plan.params][:2] == ["backbone.pos", "backbone.stem.weight"]


def test_names_colliding_after_canonicalization_are_an_error() -> None:
    class Both(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(2, 2)
            self.module = nn.Module()
            self.module.head = nn.Linear(2, 2)

    error = rule_error(Both(), {"layers": {"default": 0}})
    assert [p.path for p in error.problems] == ["names.strip_components", "names.strip_components"]
    assert "'head.weight' and 'module.head.weight' both become 'head.weight'" in error.problems[0].message


# --------------------------------------------------------------------------- frozen and tied parameters


def test_frozen_parameters_are_in_no_group_and_shift_no_id() -> None:
    model = Net()
    for p in model.blocks[1].parameters():
        p.requires_grad_(False)
    model.stem.bias.requires_grad_(False)
    plan = plan_of(model)
    frozen = {"stem.bias", "blocks.1.0.weight", "blocks.1.0.bias", "blocks.1.1.weight", "blocks.1.1.bias"}
    assert {s.name for s in plan.skipped} == frozen
    assert all(s.reason == "requires_grad is False" for s in plan.skipped)
    assert frozen.isdisjoint(rows(plan))
    in_groups = {id(p) for g in plan.param_groups for p in g["params"]}
    assert in_groups == {id(p) for p in model.parameters() if p.requires_grad}
    r = rows(plan)
    assert (r["blocks.2.0.weight"].layer_id, r["blocks.2.0.weight"].lr_scale) == (3, 0.5**2)
    assert (r["blocks.0.0.weight"].layer_id, r["blocks.0.0.weight"].lr_scale) == (1, 0.5**4)
    assert (r["head.weight"].layer_id, r["head.weight"].lr_scale) == (5, 1.0)


def test_frozen_head_does_not_change_other_scales_when_num_layers_is_inferred() -> None:
    source = rules()
    del source["layers"]["num_layers"]
    source["layers"]["default"] = 5
    model = Net()
    before = rows(plan_of(model, source))
    assert before["stem.weight"].lr_scale == 0.5**5  # N inferred as 4 from the head's id 5
    for p in list(model.norm.parameters()) + list(model.head.parameters()):
        p.requires_grad_(False)
    after = rows(plan_of(model, source))
    for name, row in after.items():
        assert (row.layer_id, row.lr_scale) == (before[name].layer_id, before[name].lr_scale), name


def test_tied_weights_appear_once() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(5, 4)
            self.block = nn.Linear(4, 4)
            self.head = nn.Linear(4, 5, bias=False)
            self.head.weight = self.embed.weight

    model = Tied()
    plan = plan_of(model, {"layers": {"rules": [{"match": "^embed", "layer": 0}, {"match": "^block", "layer": 1}], "default": 2, "num_layers": 1}})
    assert [r.name for r in plan.params] == ["embed.weight", "block.weight", "block.bias"]
    all_params = [p for g in plan.param_groups for p in g["params"]]
    assert len(all_params) == len({id(p) for p in all_params}) == 3
    assert sum(1 for p in all_params if p is model.head.weight) == 1


# --------------------------------------------------------------------------- overrides


def test_override_lr_mult_weight_decay_and_freeze() -> None:
    source = rules(
        overrides=[
            {"match": r"^pos$", "weight_decay": 0.0, "lr_mult": 10.0},
            {"match": r"^head\.bias$", "weight_decay": 0.3},
            {"match": r"^blocks\.0\.", "freeze": True},
        ]
    )
    model = Net()
    plan = plan_of(model, source)
    r = rows(plan)
    assert (r["pos"].lr_scale, r["pos"].weight_decay) == (0.5**5 * 10.0, 0.0)
    assert (r["stem.weight"].lr_scale, r["stem.weight"].weight_decay) == (0.5**5, 0.1)
    assert (r["head.bias"].lr_scale, r["head.bias"].weight_decay) == (1.0, 0.3)
    frozen = {"blocks.0.0.weight", "blocks.0.0.bias", "blocks.0.1.weight", "blocks.0.1.bias"}
    assert frozen.isdisjoint(r)
    assert {s.name for s in plan.skipped} == frozen
    assert all(s.reason == "frozen by an override" for s in plan.skipped)
    in_groups = {id(p) for g in plan.param_groups for p in g["params"]}
    assert all(id(p) not in in_groups for p in model.blocks[0].parameters())
    group = next(g for g in plan.param_groups if any(p is model.pos for p in g["params"]))
    assert [id(p) for p in group["params"]] == [id(model.pos)]
    assert group["lr_scale"] == 0.5**5 * 10.0 and group["weight_decay"] == 0.0


def test_overrides_setting_the_same_value_do_not_conflict() -> None:
    source = rules(overrides=[{"match": r"^head\.", "lr_mult": 2.0}, {"match": r"\.weight$", "lr_mult": 2.0, "allow_unused": True}])
    r = rows(plan_of(Net(), source))
    assert r["head.weight"].lr_scale == 2.0
    assert r["head.bias"].lr_scale == 2.0
    assert r["stem.weight"].lr_scale == 0.5**5 * 2.0
    assert r["stem.bias"].lr_scale == 0.5**5


def test_conflicting_overrides_are_an_error(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(
        "\n".join(
            [
                "layers:",  # 1
                "  default: 0",  # 2
                "overrides:",  # 3
                "  - match: '^head\\.'",  # 4
                "    lr_mult: 2.0",  # 5
                "  - match: 'weight$'",  # 6
                "    lr_mult: 3.0",  # 7
                "    weight_decay: 0.0",  # 8
            ]
        )
        + "\n"
    )
    error = rule_error(Net(), path)
    problem = error.problems[0]
    assert len(error.problems) == 1
    assert (problem.location.file, problem.location.line, problem.path) == (str(path), 6, "overrides[1].lr_mult")
    assert "conflicts with overrides[0]" in problem.message
    assert "head.weight" in problem.message and "head.bias" not in problem.message


def test_override_conflicts_ignore_lets_the_later_override_win() -> None:
    source = rules(
        overrides=[
            {"match": r"^head\.", "lr_mult": 2.0, "weight_decay": 0.5},
            {"match": r"weight$", "lr_mult": 3.0},
        ],
        checks={"override_conflicts": "ignore"},
    )
    plan = plan_of(Net(), source)
    r = rows(plan)
    assert (r["head.weight"].lr_scale, r["head.weight"].weight_decay) == (3.0, 0.5)  # lr_mult from the later one
    assert (r["head.bias"].lr_scale, r["head.bias"].weight_decay) == (2.0, 0.5)
    assert plan.warnings == []


def test_override_conflicts_warn() -> None:
    source = rules(
        overrides=[{"match": r"^head\.", "weight_decay": 0.5}, {"match": r"bias$", "weight_decay": 0.0}],
        checks={"override_conflicts": "warn"},
    )
    with pytest.warns(LwdRulesWarning, match=r"overrides\[1\]\.weight_decay: conflicts with overrides\[0\]"):
        plan = plan_of(Net(), source)
    assert rows(plan)["head.bias"].weight_decay == 0.0
    assert rows(plan)["head.weight"].weight_decay == 0.5
    assert len(plan.warnings) == 1


# --------------------------------------------------------------------------- unused patterns


def unused_source(**extra) -> dict:
    source = rules(
        overrides=[{"match": r"^nothing_here", "lr_mult": 2.0}],
        weight_decay={"value": 0.1, "exclude": ["ndim<=1", "*.nope"]},
        **extra,
    )
    source["layers"]["rules"].append({"match": r"^decoder\.", "layer": 1})
    return source


def test_unused_patterns_are_errors_by_default() -> None:
    error = rule_error(Net(), unused_source())
    assert sorted((p.location.file, p.path) for p in error.problems) == [
        ("<dict>", "layers.rules[2].match"),
        ("<dict>", "overrides[0].match"),
        ("<dict>", "weight_decay.exclude[1]"),
    ]
    messages = {p.path: p.message for p in error.problems}
    assert "'^decoder\\\\.' matches no parameter" in messages["layers.rules[2].match"]
    assert "'^nothing_here' matches no parameter" in messages["overrides[0].match"]
    assert "'*.nope' matches no parameter" in messages["weight_decay.exclude[1]"]


def test_unused_pattern_error_is_located_in_a_file(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(
        "\n".join(
            [
                "layers:",  # 1
                "  default: 0",  # 2
                "  rules:",  # 3
                "    - match: '^stem'",  # 4
                "      layer: 0",  # 5
                "    - match: '^decoder'",  # 6
                "      layer: 1",  # 7
            ]
        )
        + "\n"
    )
    error = rule_error(Net(), path)
    assert [(p.location.file, p.location.line, p.path) for p in error.problems] == [(str(path), 6, "layers.rules[1].match")]
    assert str(error).startswith(f"{path}:6: layers.rules[1].match: ")
    assert "'^decoder' matches no parameter" in str(error)


def test_allow_unused_per_entry() -> None:
    source = rules(
        overrides=[{"match": r"^nothing_here", "lr_mult": 2.0, "allow_unused": True}],
        weight_decay={"value": 0.1, "exclude": ["ndim<=1", {"pattern": "*.nope", "allow_unused": True}]},
    )
    source["layers"]["rules"].append({"match": r"^decoder\.", "layer": 1, "allow_unused": True})
    plan = plan_of(Net(), source)
    assert plan.warnings == []
    assert rows(plan)["stem.weight"].lr_scale == 0.5**5


def test_unused_patterns_ignore() -> None:
    plan = plan_of(Net(), unused_source(checks={"unused_patterns": "ignore"}))
    assert plan.warnings == []
    assert len(plan.params) == len(list(Net().parameters()))


def test_unused_patterns_warn() -> None:
    with pytest.warns(LwdRulesWarning) as record:
        plan = plan_of(Net(), unused_source(checks={"unused_patterns": "warn"}))
    messages = sorted(str(w.message) for w in record if issubclass(w.category, LwdRulesWarning))
    assert len(messages) == 3
    assert any("layers.rules[2].match" in m for m in messages)
    assert any("overrides[0].match" in m for m in messages)
    assert any("weight_decay.exclude[1]" in m for m in messages)
    assert sorted(plan.warnings) == messages


def test_shadowed_rule_that_matches_names_is_not_unused() -> None:
    source = rules()
    source["layers"]["rules"].append({"match": r"^blocks\.0\.", "layer": 3})  # matches, but never first
    r = rows(plan_of(Net(), source))
    assert r["blocks.0.0.weight"].layer_id == 1


# --------------------------------------------------------------------------- unmatched parameters and ranges


def test_unmatched_parameters_are_an_error_listing_them() -> None:
    source = rules()
    del source["layers"]["default"]
    error = rule_error(Net(), source)
    assert len(error.problems) == 1
    problem = error.problems[0]
    assert problem.path == "layers.default"
    assert problem.location.file == "<dict>"
    assert problem.message == (
        "4 parameter(s) match no rule and layers.default is not set: norm.weight, norm.bias, head.weight, head.bias"
    )


def test_unmatched_frozen_parameters_are_not_an_error() -> None:
    source = rules()
    del source["layers"]["default"]
    model = Net()
    for p in list(model.norm.parameters()) + list(model.head.parameters()):
        p.requires_grad_(False)
    plan = plan_of(model, source)
    assert len(plan.params) == len([p for p in model.parameters() if p.requires_grad])


def test_layer_id_out_of_range_is_an_error() -> None:
    source = rules()
    source["layers"]["rules"][1]["layer"] = "i + 3"  # blocks.2 → 5 (ok), blocks.3 → 6 > N + 1
    error = rule_error(Net(), source)
    assert [p.path for p in error.problems] == ["layers.rules[1].layer"]
    assert "blocks.3.0.weight -> 6" in error.problems[0].message
    assert "blocks.2.0.weight" not in error.problems[0].message


# --------------------------------------------------------------------------- curves


@pytest.mark.parametrize("rate", [0.3, 0.75, 1.0])
def test_exponential_curve(rate: float) -> None:
    plan = plan_of(Net(), rules(layer_decay={"rate": rate}))
    for row in plan.params:
        assert math.isclose(row.lr_scale, rate ** (4 + 1 - row.layer_id), rel_tol=1e-12), row.name
    assert plan.scales[5] == 1.0


@pytest.mark.parametrize("rate", [0.4, 0.9])
def test_linear_curve(rate: float) -> None:
    plan = plan_of(Net(), rules(layer_decay={"rate": rate, "curve": "linear"}))
    n = 4
    expected = [1 - (1 - rate) * (n + 1 - i) / (n + 1) for i in range(n + 2)]
    for row in plan.params:
        assert math.isclose(row.lr_scale, expected[row.layer_id], rel_tol=1e-12), row.name
    r = rows(plan)
    assert math.isclose(r["stem.weight"].lr_scale, rate, rel_tol=1e-12)
    assert r["head.weight"].lr_scale == 1.0


def test_values_curve() -> None:
    values = [0.01, 0.02, 0.05, 0.1, 0.5, 0.9]
    plan = plan_of(Net(), rules(layer_decay={"curve": "values", "values": values}))
    for row in plan.params:
        assert row.lr_scale == values[row.layer_id], row.name
    assert rows(plan)["head.weight"].lr_scale == 0.9


def test_values_curve_needs_n_plus_two_values(tmp_path: Path) -> None:
    path = tmp_path / "v.yaml"
    path.write_text(
        "\n".join(
            [
                "layers:",  # 1
                "  num_layers: 4",  # 2
                "  default: 0",  # 3
                "layer_decay:",  # 4
                "  curve: values",  # 5
                "  values: [0.1, 0.2, 1.0]",  # 6
            ]
        )
        + "\n"
    )
    error = rule_error(Net(), path)
    assert [(p.location.line, p.path) for p in error.problems] == [(6, "layer_decay.values")]
    assert "6" in error.problems[0].message


def test_min_scale_clamps() -> None:
    plan = plan_of(Net(), rules(layer_decay={"rate": 0.5, "min_scale": 0.1}))
    r = rows(plan)
    assert r["stem.weight"].lr_scale == 0.1  # 0.5**5 = 0.03125 → 0.1
    assert r["blocks.0.0.weight"].lr_scale == 0.1  # 0.0625 → 0.1
    assert r["blocks.1.0.weight"].lr_scale == 0.125  # above the minimum: unchanged
    assert r["head.weight"].lr_scale == 1.0
    assert plan.skipped == []
    clamped = [g for g in plan.param_groups if g["lr_scale"] == 0.1]
    assert [g["group_name"] for g in clamped] == ["layers_0-1_decay", "layers_0-1_no_decay"]


def test_below_min_freeze_leaves_parameters_out() -> None:
    model = Net()
    plan = plan_of(model, rules(layer_decay={"rate": 0.5, "min_scale": 0.1, "below_min": "freeze"}))
    left_out = {"stem.weight", "stem.bias", "pos", "blocks.0.0.weight", "blocks.0.0.bias", "blocks.0.1.weight", "blocks.0.1.bias"}
    assert {s.name for s in plan.skipped} == left_out
    assert left_out.isdisjoint(rows(plan))
    assert min(r.lr_scale for r in plan.params) == 0.125
    in_groups = {id(p) for g in plan.param_groups for p in g["params"]}
    assert id(model.stem.weight) not in in_groups and id(model.blocks[1][0].weight) in in_groups


# --------------------------------------------------------------------------- weight decay


def test_exclude_forms() -> None:
    source = rules(
        weight_decay={
            "value": 0.2,
            "exclude": ["*.1.weight", "re:^stem\\.", "head.bias", "ndim==3"],
        }
    )
    r = rows(plan_of(Net(), source))
    assert r["blocks.0.1.weight"].weight_decay == 0.0  # glob on the whole name
    assert r["blocks.0.0.weight"].weight_decay == 0.2
    assert r["blocks.0.1.bias"].weight_decay == 0.2  # no ndim rule here: biases decay
    assert r["stem.weight"].weight_decay == 0.0 and r["stem.bias"].weight_decay == 0.0  # re: searched
    assert r["head.bias"].weight_decay == 0.0  # exact name
    assert r["head.weight"].weight_decay == 0.2
    assert r["pos"].weight_decay == 0.0  # ndim==3
    assert r["norm.weight"].weight_decay == 0.2


def test_glob_matches_the_whole_name_and_plain_names_are_exact() -> None:
    source = rules(weight_decay={"value": 0.2, "exclude": [{"pattern": "weight", "allow_unused": True}, "blocks.*.0.bias", "*norm.bias"]})
    r = rows(plan_of(Net(), source))
    assert r["blocks.2.0.bias"].weight_decay == 0.0
    assert r["norm.bias"].weight_decay == 0.0
    assert r["head.bias"].weight_decay == 0.2
    assert r["blocks.2.1.bias"].weight_decay == 0.2
    assert r["head.weight"].weight_decay == 0.2  # 'weight' is not a suffix match

    error = rule_error(Net(), rules(weight_decay={"value": 0.2, "exclude": ["weight"]}))
    assert [p.path for p in error.problems] == ["weight_decay.exclude[0]"]  # 'weight' is an exact name: unused


def test_use_model_no_weight_decay() -> None:
    class WithSkip(Net):
        def no_weight_decay(self):
            return {"pos", "head.weight"}

    model = WithSkip()
    r = rows(plan_of(model, rules(weight_decay={"use_model_no_weight_decay": True})))
    assert r["pos"].weight_decay == 0.0
    assert r["head.weight"].weight_decay == 0.0
    assert r["stem.weight"].weight_decay == 0.1
    # through a wrapper the inner model's names still apply
    r = rows(plan_of(Wrapper(model), rules(weight_decay={"use_model_no_weight_decay": True})))
    assert r["module.pos"].weight_decay == 0.0
    assert r["module.head.weight"].weight_decay == 0.0
    assert r["module.stem.weight"].weight_decay == 0.1
    # through torch.compile too
    r = rows(plan_of(torch.compile(model), rules(weight_decay={"use_model_no_weight_decay": True})))
    assert r["_orig_mod.pos"].weight_decay == 0.0
    assert r["_orig_mod.head.weight"].weight_decay == 0.0
    assert r["_orig_mod.head.bias"].weight_decay == 0.0  # ndim<=1
    assert r["_orig_mod.stem.weight"].weight_decay == 0.1
    # off by default
    assert rows(plan_of(model))["pos"].weight_decay == 0.1


# --------------------------------------------------------------------------- layers.count


def test_layers_count_one_group() -> None:
    source = rules(layers={"num_layers": "n", "count": {"n": r"^blocks\.(\d+)\."}})
    for depth in (2, 3, 6):
        plan = plan_of(Net(depth=depth), source)
        assert plan.variables["n"] == depth
        assert plan.num_layers == depth
        assert rows(plan)["head.weight"].layer_id == depth + 1
        assert rows(plan)["stem.weight"].lr_scale == 0.5 ** (depth + 1)


def test_layers_count_ignores_matches_where_the_group_did_not_take_part() -> None:
    source = rules(layers={"num_layers": "n", "count": {"n": r"^(?:blocks\.(\d+)\.|head\.)"}})
    plan = plan_of(Net(depth=3), source)
    assert plan.variables["n"] == 3
    assert plan.num_layers == 3


def test_layers_count_two_groups() -> None:
    class Staged(nn.Module):
        def __init__(self, depths: list[int]) -> None:
            super().__init__()
            self.stages = nn.ModuleList([nn.ModuleList([nn.Linear(2, 2) for _ in range(d)]) for d in depths])
            self.head = nn.Linear(2, 2)

    source = {
        "layers": {
            "count": {"depths": r"^stages\.(\d+)\.(\d+)\."},
            "num_layers": "sum(depths)",
            "rules": [{"match": r"^stages\.(?P<s>\d+)\.(?P<b>\d+)\.", "layer": "sum(depths[:s]) + b + 1"}],
            "default": "num_layers + 1",
        },
        "layer_decay": {"rate": 0.5},
    }
    model = Staged([2, 1, 3])
    model.stages[2][2].weight.requires_grad_(False)  # frozen parameters still count
    plan = plan_of(model, source)
    assert plan.variables["depths"] == [2, 1, 3]
    assert plan.num_layers == 6
    r = rows(plan)
    assert r["stages.0.0.weight"].layer_id == 1
    assert r["stages.1.0.weight"].layer_id == 3
    assert r["stages.2.2.bias"].layer_id == 6
    assert r["head.weight"].layer_id == 7


# --------------------------------------------------------------------------- determinism


def test_plans_are_deterministic_across_builds() -> None:
    source = rules(overrides=[{"match": r"^pos$", "lr_mult": 3.0}])
    torch.manual_seed(0)
    first = plan_of(Net(), source)
    torch.manual_seed(1)
    second = plan_of(Net(), source)
    assert first.fingerprint() == second.fingerprint()
    assert [g["group_name"] for g in first.param_groups] == [g["group_name"] for g in second.param_groups]
    assert [r.name for r in first.params] == [r.name for r in second.params]
    assert plan_of(Net(), rules(layer_decay={"rate": 0.6})).fingerprint() != first.fingerprint()


# --------------------------------------------------------------------------- optimizers


def expected_groups(plan, lr: float) -> list[tuple[float, float, int]]:
    return [(lr * g["lr_scale"], g["weight_decay"], len(g["params"])) for g in plan.param_groups]


@pytest.mark.parametrize(
    ("name", "cls_name", "kwargs"),
    [
        ("adamw", "AdamW", {}),
        ("sgd", "SGD", {"momentum": 0.9}),
        ("lamb", "Lamb", {}),
        ("lion", "Lion", {}),
    ],
)
def test_create_optimizer_builds_real_optimizers(name: str, cls_name: str, kwargs: dict) -> None:
    torch.manual_seed(0)
    model = Net(depth=2)
    source = rules(layers={"num_layers": 2})
    opt = create_optimizer(model, source, lr=0.01, optimizer=name, registry=new_registry(), **kwargs)
    assert type(opt).__name__ == cls_name
    plan = plan_of(model, source)
    want = expected_groups(plan, 0.01)
    assert len(opt.param_groups) == len(want) == 8
    for group, (lr, wd, count) in zip(opt.param_groups, want):
        assert math.isclose(group["lr"], lr, rel_tol=1e-12)
        assert (group["weight_decay"], len(group["params"])) == (wd, count)
    head = next(g for g in opt.param_groups if any(p is model.head.weight for p in g["params"]))
    assert head["lr"] == pytest.approx(0.01) and head["weight_decay"] == 0.1
    stem = next(g for g in opt.param_groups if any(p is model.stem.weight for p in g["params"]))
    assert stem["lr"] == pytest.approx(0.01 * 0.5**3) and stem["weight_decay"] == 0.1
    stem_bias = next(g for g in opt.param_groups if any(p is model.stem.bias for p in g["params"]))
    assert stem_bias["lr"] == pytest.approx(0.01 * 0.5**3) and stem_bias["weight_decay"] == 0.0

    before = model.head.weight.detach().clone()
    loss = model(torch.randn(5, 3)).pow(2).mean()
    loss.backward()
    opt.step()
    assert not torch.equal(before, model.head.weight.detach())


def test_create_optimizer_sgd_by_name_alone() -> None:
    model = Net(depth=2)
    opt = create_optimizer(model, rules(layers={"num_layers": 2}), lr=0.1, optimizer="sgd", registry=new_registry())
    assert type(opt).__name__ == "SGD"
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)


def test_create_optimizer_from_the_rules_optimizer_section() -> None:
    model = Net(depth=2)
    source = rules(layers={"num_layers": 2}, optimizer={"name": "adamw", "lr": 0.002, "betas": [0.8, 0.95], "eps": 1e-7})
    opt = create_optimizer(model, source, registry=new_registry())
    assert type(opt).__name__ == "AdamW"
    assert opt.defaults["lr"] == 0.002
    assert tuple(opt.defaults["betas"]) == (0.8, 0.95)
    assert opt.defaults["eps"] == 1e-7
    assert max(g["lr"] for g in opt.param_groups) == pytest.approx(0.002)
    # keyword arguments win over the file
    opt = create_optimizer(model, source, lr=0.5, optimizer="lamb", registry=new_registry(), betas=(0.9, 0.99))
    assert type(opt).__name__ == "Lamb"
    assert tuple(opt.defaults["betas"]) == (0.9, 0.99)
    assert max(g["lr"] for g in opt.param_groups) == pytest.approx(0.5)


def test_create_optimizer_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError) as info:
        create_optimizer(Net(), rules(), lr=0.1, optimizer="adamz", registry=new_registry())
    message = str(info.value)
    assert "'adamz'" in message
    for valid in ("adamw", "sgd", "lamb", "lion"):
        assert valid in message


def test_create_optimizer_unknown_keyword_is_a_clear_error() -> None:
    with pytest.raises(ValueError) as info:
        create_optimizer(Net(), rules(), lr=0.1, optimizer="adamw", registry=new_registry(), momentun=0.9)
    message = str(info.value)
    assert "'momentun'" in message and "adamw" in message
    assert "betas" in message  # lists what it does accept


def test_create_optimizer_without_lr_is_an_error() -> None:
    with pytest.raises(RuleError) as info:
        create_optimizer(Net(), rules(), registry=new_registry())
    assert [p.path for p in info.value.problems] == ["optimizer.lr"]


@pytest.mark.parametrize("convention", ["torch", "timm"])
def test_optimizer_groups_conventions(convention: str) -> None:
    plan = plan_of(Net(depth=2), rules(layers={"num_layers": 2}))
    groups = plan.optimizer_groups(0.4, convention)
    assert len(groups) == len(plan.param_groups)
    for got, group in zip(groups, plan.param_groups):
        assert got["lr"] == pytest.approx(0.4 * group["lr_scale"], rel=1e-12)
        assert got["weight_decay"] == group["weight_decay"]
        assert got["group_name"] == group["group_name"]
        assert [id(p) for p in got["params"]] == [id(p) for p in group["params"]]
        if convention == "torch":
            assert got["lwd_lr_scale"] == group["lr_scale"] and "lr_scale" not in got
        else:
            assert got["lr_scale"] == group["lr_scale"] and got["initial_lr"] == 0.4


def test_user_file_with_its_own_name_still_reaches_the_plugin(tmp_path: Path) -> None:
    """Plugin hooks are asked about the nearest registered rule set, not the user's own name."""
    import timm

    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\nextends: convnext-timm\nlayer_decay: {rate: 0.5}\n", encoding="utf-8")
    with torch.device("meta"):
        model = timm.create_model("convnext_atto", pretrained=False)
    plan = resolve(model, path)
    assert plan.variables["depths"] == [2, 2, 6, 2]
    assert plan.rules.name == "mine"
    stem = next(row for row in plan.params if row.name == "stem.0.weight")
    assert (stem.layer_id, stem.lr_scale) == (1, 0.5**12)


def test_wrapped_model_has_the_bare_models_fingerprint() -> None:
    class Wrapper(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.module = inner

    rules = {"layers": {"rules": [{"match": r"^a\.", "layer": 0}], "default": 1}, "layer_decay": {"rate": 0.5}}
    with torch.device("meta"):
        bare = nn.Module()
        bare.a = nn.Linear(2, 2)
        bare.b = nn.Linear(2, 2)
    registry = new_registry()
    assert resolve(Wrapper(bare), rules, registry=registry).fingerprint() == resolve(bare, rules, registry=registry).fingerprint()
    assert resolve(torch.compile(bare), rules, registry=registry).fingerprint() == resolve(bare, rules, registry=registry).fingerprint()


def test_module_type_exclusion_matches_the_owning_class_and_its_bases() -> None:
    class RMSNorm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(4))

    class MyLayerNorm(nn.LayerNorm):
        pass

    with torch.device("meta"):
        model = nn.Module()
        model.proj = nn.Linear(4, 4)  # weight 2-D: decays; bias 1-D but not excluded here
        model.rms = RMSNorm()
        model.ln = MyLayerNorm(4)  # a LayerNorm by inheritance
        model.scale = nn.Linear(4, 4)
    rules = {
        "layers": {"default": 0},
        "weight_decay": {"value": 0.1, "exclude": ["module:^(LayerNorm|RMSNorm)$"]},
    }
    plan = resolve(model, rules, registry=new_registry())
    decays = {row.name: row.weight_decay for row in plan.params}
    assert decays == {
        "proj.weight": 0.1,
        "proj.bias": 0.1,
        "rms.weight": 0.0,
        "ln.weight": 0.0,
        "ln.bias": 0.0,
        "scale.weight": 0.1,
        "scale.bias": 0.1,
    }

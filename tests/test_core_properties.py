"""Property tests: random module trees and random rule sets always give a complete, consistent plan."""

from __future__ import annotations

import fnmatch
import re
from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lwd_rules import resolve
from lwd_rules.plugins import new_registry

NAMES = ["stem", "enc", "dec", "blocks", "attn", "mlp", "norm", "head", "proj", "layer"]
NUM_LAYERS = 4
EXCLUDES = ["ndim<=1", "*.bias", "re:norm", "head.weight", "ndim==3", "*.0.*"]
PROPERTY_SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Gain(nn.Module):
    """A leaf holding one bare parameter of 1 to 3 dimensions."""

    def __init__(self, ndim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(*([2] * ndim)))


def draw_leaf(data: st.DataObject) -> nn.Module:
    kind = data.draw(st.sampled_from(["linear", "linear_nobias", "layernorm", "gain"]), label="leaf")
    if kind == "linear":
        return nn.Linear(2, 2)
    if kind == "linear_nobias":
        return nn.Linear(2, 2, bias=False)
    if kind == "layernorm":
        return nn.LayerNorm(2)
    return Gain(data.draw(st.integers(1, 3), label="ndim"))


def draw_tree(data: st.DataObject, depth: int = 0) -> nn.Module:
    if depth >= 3 or (depth > 0 and data.draw(st.booleans(), label="is leaf")):
        return draw_leaf(data)
    if data.draw(st.booleans(), label="is list"):
        size = data.draw(st.integers(1, 3), label="list size")
        return nn.ModuleList([draw_tree(data, depth + 1) for _ in range(size)])
    module = nn.Module()
    children = data.draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=3, unique=True), label="children")
    for name in children:
        setattr(module, name, draw_tree(data, depth + 1))
    if data.draw(st.booleans(), label="own parameter"):
        module.scale = nn.Parameter(torch.ones(2))
    return module


def draw_model(data: st.DataObject) -> nn.Module:
    model = draw_tree(data)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if len(linears) >= 2 and data.draw(st.integers(0, 3), label="tie") == 0:
        i, j = data.draw(st.lists(st.integers(0, len(linears) - 1), min_size=2, max_size=2, unique=True), label="tied")
        linears[j].weight = linears[i].weight
    for param in model.parameters():
        param.requires_grad_(data.draw(st.integers(0, 4), label="frozen?") != 0)
    return model


@dataclass(frozen=True)
class Rule:
    regex: str
    formula: str | int

    def layer(self, name: str) -> int | None:
        match = re.search(self.regex, name)
        if match is None:
            return None
        if isinstance(self.formula, int):
            return self.formula
        return min(int(match.group("i")), NUM_LAYERS + 1)  # the only non-constant formula: "min(i, 5)"


def draw_rules(data: st.DataObject, model: nn.Module) -> tuple[dict, list[Rule], list[tuple[str, float | None, float | None]]]:
    """Rules whose regexes mostly use name components that occur in ``model`` (plus one that never does)."""
    present = sorted({part for name, _ in model.named_parameters() for part in name.split(".") if not part.isdigit()})
    tokens = st.sampled_from(present + ["absent"])
    before_index = sorted(
        {parts[k] for parts in (n.split(".") for n, _ in model.named_parameters()) for k in range(len(parts) - 1) if parts[k + 1].isdigit()}
    )
    indexed_tokens = st.sampled_from(before_index + ["absent"])
    rules = []
    for _ in range(data.draw(st.integers(0, 4), label="number of rules")):
        if data.draw(st.booleans(), label="with index"):
            token = data.draw(indexed_tokens, label="token")
            rules.append(Rule(rf"\b{token}\.(?P<i>\d+)\.", f"min(i, {NUM_LAYERS + 1})"))
        else:
            token = data.draw(tokens, label="token")
            rules.append(Rule(rf"\b{token}\b", data.draw(st.integers(0, NUM_LAYERS + 1), label="layer")))
    default = data.draw(st.sampled_from([0, 1, NUM_LAYERS, "num_layers + 1"]), label="default")
    overrides = []
    for _ in range(data.draw(st.integers(0, 2), label="number of overrides")):
        token = data.draw(tokens, label="override token")
        lr_mult = data.draw(st.sampled_from([None, 0.5, 2.0]), label="lr_mult")
        wd = data.draw(st.sampled_from([None, 0.0, 0.3]), label="override wd")
        overrides.append((rf"\b{token}\b", lr_mult, wd))
    source = {
        "layers": {
            "num_layers": NUM_LAYERS,
            "rules": [{"match": r.regex, "layer": r.formula} for r in rules],
            "default": default,
        },
        "layer_decay": {
            "rate": data.draw(st.sampled_from([0.1, 0.5, 0.75, 1.0]), label="rate"),
            "min_scale": data.draw(st.sampled_from([0.0, 0.2]), label="min_scale"),
        },
        "weight_decay": {
            "value": data.draw(st.sampled_from([0.0, 0.05]), label="wd"),
            "exclude": data.draw(st.lists(st.sampled_from(EXCLUDES), max_size=3, unique=True), label="exclude"),
        },
        "overrides": [
            {"match": m, **({"lr_mult": lm} if lm is not None else {}), **({"weight_decay": w} if w is not None else {})}
            for m, lm, w in overrides
        ],
        "checks": {"unused_patterns": "ignore", "override_conflicts": "ignore"},
    }
    return source, rules, overrides


def excluded(entry: str, name: str, ndim: int) -> bool:
    if entry == "ndim<=1":
        return ndim <= 1
    if entry == "ndim==3":
        return ndim == 3
    if entry.startswith("re:"):
        return re.search(entry[3:], name) is not None
    if "*" in entry:
        return fnmatch.fnmatchcase(name, entry)
    return name == entry


def expected_row(name: str, param: torch.Tensor, source: dict, rules: list[Rule], overrides) -> tuple[int, float, float]:
    layer_id = next((lid for lid in (r.layer(name) for r in rules) if lid is not None), None)
    if layer_id is None:
        default = source["layers"]["default"]
        layer_id = NUM_LAYERS + 1 if default == "num_layers + 1" else default
    decay = source["layer_decay"]
    scale = max(decay["rate"] ** (NUM_LAYERS + 1 - layer_id), decay["min_scale"])
    wd_conf = source["weight_decay"]
    wd = 0.0 if any(excluded(e, name, param.ndim) for e in wd_conf["exclude"]) else wd_conf["value"]
    mult = 1.0
    for regex, lr_mult, override_wd in overrides:  # later wins per field
        if re.search(regex, name):
            mult = lr_mult if lr_mult is not None else mult
            wd = override_wd if override_wd is not None else wd
    return layer_id, scale * mult, wd


def plan_for(model: nn.Module, source: dict):
    return resolve(model, source, registry=new_registry())


class Wrapper(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.module = inner


@PROPERTY_SETTINGS
@given(st.data())
def test_every_trainable_parameter_is_in_exactly_one_group(data: st.DataObject) -> None:
    model = draw_model(data)
    source, _, _ = draw_rules(data, model)
    plan = plan_for(model, source)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    frozen = {id(p) for p in model.parameters() if not p.requires_grad}
    counts = Counter(id(p) for g in plan.param_groups for p in g["params"])
    assert set(counts) == trainable
    assert all(c == 1 for c in counts.values())
    assert frozen.isdisjoint(counts)
    assert sum(len(g["params"]) for g in plan.param_groups) == len(trainable)
    assert len(plan.params) == len(trainable)
    assert {s.name for s in plan.skipped} == {n for n, p in model.named_parameters() if not p.requires_grad}
    assert all(g["params"] for g in plan.param_groups)
    names = [g["group_name"] for g in plan.param_groups]
    assert len(names) == len(set(names))


@PROPERTY_SETTINGS
@given(st.data())
def test_rows_agree_with_groups_and_with_the_rules(data: st.DataObject) -> None:
    model = draw_model(data)
    source, rules, overrides = draw_rules(data, model)
    plan = plan_for(model, source)
    groups = {g["group_name"]: g for g in plan.param_groups}
    params = dict(model.named_parameters())
    trainable_names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert [r.name for r in plan.params] == trainable_names
    for row in plan.params:
        group = groups[row.group]
        assert row.lr_scale == group["lr_scale"]
        assert row.weight_decay == group["weight_decay"]
        assert any(p is params[row.name] for p in group["params"])
        assert row.layer_id in group["layer_ids"]
        layer_id, scale, wd = expected_row(row.name, params[row.name], source, rules, overrides)
        assert row.layer_id == layer_id, row.name
        assert abs(row.lr_scale - scale) <= 1e-12 * scale, row.name
        assert row.weight_decay == wd, row.name
    # groups are exactly the distinct (scale, decay) pairs, in first-seen order
    seen = list(dict.fromkeys((r.lr_scale, r.weight_decay) for r in plan.params))
    assert [(g["lr_scale"], g["weight_decay"]) for g in plan.param_groups] == seen


@PROPERTY_SETTINGS
@given(st.data())
def test_plans_are_identical_on_repeated_runs_and_under_a_wrapper(data: st.DataObject) -> None:
    model = draw_model(data)
    source, _, _ = draw_rules(data, model)
    first = plan_for(model, source)
    second = plan_for(model, source)
    assert first.fingerprint() == second.fingerprint()
    assert [g["group_name"] for g in first.param_groups] == [g["group_name"] for g in second.param_groups]
    assert [[id(p) for p in g["params"]] for g in first.param_groups] == [
        [id(p) for p in g["params"]] for g in second.param_groups
    ]
    wrapped = plan_for(Wrapper(model), source)
    assert [(r.layer_id, r.lr_scale, r.weight_decay, r.group) for r in wrapped.params] == [
        (r.layer_id, r.lr_scale, r.weight_decay, r.group) for r in first.params
    ]
    assert [(g["group_name"], [id(p) for p in g["params"]]) for g in wrapped.param_groups] == [
        (g["group_name"], [id(p) for p in g["params"]]) for g in first.param_groups
    ]

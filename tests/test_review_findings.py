"""Review findings: each test fails on the current code."""

from __future__ import annotations

import pytest
from torch import nn

import lwd_rules
import lwd_rules.plugins
from lwd_rules import RuleError, create_optimizer, hookimpl, resolve


class Inner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(2, 2)
        self.head = nn.Linear(2, 2)


class PeftLike(nn.Module):
    """PEFT's layout: base_model (LoraModel) -> model (the user's model); 'base_model.model' is stripped."""

    def __init__(self) -> None:
        super().__init__()
        self.base_model = nn.Module()
        self.base_model.model = Inner()


def test_peft_prefix_does_not_leak_parent_state_into_subtree():
    rules = {"layers": {"num_layers": 0, "default": 0, "rules": [{"match": r"^head\.", "layer": 1}]}}
    plan = resolve(PeftLike(), rules, registry=lwd_rules.plugins.new_registry())
    assert {row.name: row.layer_id for row in plan.params} == {
        "base_model.model.stem.weight": 0,
        "base_model.model.stem.bias": 0,
        "base_model.model.head.weight": 1,
        "base_model.model.head.bias": 1,
    }


class Tower(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(2))


class TwoTowers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.vision = Tower()
        self.text = Tower()


def test_chains_route_hidden_matrices_to_muon():
    chain = lambda name: {  # noqa: E731
        "match": rf"^{name}\.",
        "layers": {"num_layers": 2, "rules": [{"match": rf"^{name}\.blocks\.(?P<i>\d+)\.", "layer": "i + 1"}]},
    }
    rules = {
        "chains": {"vision": chain("vision"), "text": chain("text")},
        "layer_decay": {"rate": 0.5},
        "optimizer": {"name": "muon", "fallback": "adamw", "lr": 0.01},
    }
    model = TwoTowers()
    optimizer = create_optimizer(model, rules, registry=lwd_rules.plugins.new_registry())
    names = {id(p): n for n, p in model.named_parameters()}
    matrices = sorted(names[id(p)] for g in optimizer.param_groups if not g.get("use_fallback", False) for p in g["params"])
    # ids 1..2 of num_layers 2 in each chain, 2-D: all four Linear weights are hidden matrices.
    assert matrices == sorted(f"{t}.blocks.{i}.weight" for t in ("vision", "text") for i in range(2))


class OutOfRangeIds:
    @hookimpl
    def lwd_layer_ids(self, model, rule_set):
        return {"head.weight": 7, "head.bias": 7}


def test_plugin_layer_id_out_of_range_is_a_rule_error():
    rules = {
        "layers": {"num_layers": 1, "ids_from_plugins": True, "default": 0, "rules": [{"match": r"^stem\.", "layer": 1}]},
    }
    registry = lwd_rules.plugins.new_registry([("bad-ids", OutOfRangeIds())])
    with pytest.raises(RuleError):
        resolve(Inner(), rules, registry=registry)

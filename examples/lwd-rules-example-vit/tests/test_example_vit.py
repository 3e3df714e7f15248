"""Tests of the example plugin with lwd_rules.testing: no installation of the plugin needed."""

from __future__ import annotations

import timm
import torch

import lwd_rules_example_vit
from lwd_rules import load_rules, resolve
from lwd_rules.testing import assert_layer_ids, make_registry, registry_for


def tiny_vit() -> torch.nn.Module:
    with torch.device("meta"):  # names and shapes only: fast, no memory
        return timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2)


def test_rule_files_load():
    registry = make_registry(lwd_rules_example_vit)
    assert sorted(registry.rule_sets()) == ["example-vit", "example-vit-fast"]
    with registry_for(lwd_rules_example_vit):
        assert load_rules("example-vit-fast").name == "example-vit-fast"


def test_layer_ids():
    expected = {
        "cls_token": 0, "pos_embed": 0, "patch_embed.proj.weight": 0, "patch_embed.proj.bias": 0,
        **{f"blocks.{b}.{p}": b + 1 for b in range(2) for p in (
            "norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
            "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias")},
        "norm.weight": 3, "norm.bias": 3, "head.weight": 3, "head.bias": 3,
    }
    registry = make_registry(lwd_rules_example_vit)
    plan = assert_layer_ids(tiny_vit(), "example-vit", expected, registry=registry)
    assert plan.num_layers == 2
    assert plan.variables["depth"] == 2


def test_detected_without_extends():
    with registry_for(lwd_rules_example_vit):
        plan = resolve(tiny_vit(), {"version": 1, "layer_decay": {"rate": 0.5}})
    assert plan.rules.name == "example-vit"
    assert plan.scales == (0.125, 0.25, 0.5, 1.0)


def test_other_models_are_not_detected():
    registry = make_registry(lwd_rules_example_vit)
    assert registry.detect(torch.nn.Linear(2, 2)) is None


def test_wrapped_model_gets_the_same_ids():
    model = tiny_vit()
    registry = make_registry(lwd_rules_example_vit)
    bare = resolve(model, "example-vit", registry=registry)
    wrapped = resolve(torch.compile(model), "example-vit", registry=registry)
    assert [r.layer_id for r in wrapped.params] == [r.layer_id for r in bare.params]

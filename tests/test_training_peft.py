"""PEFT LoRA: adapters take the layer id of the layer they adapt; the frozen base weights are left out."""

from __future__ import annotations

import peft
import pytest
import timm
import torch

from lwd_rules import resolve

RATE = 0.5


def lora_vit() -> torch.nn.Module:
    with torch.device("meta"):
        model = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    return peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["qkv", "fc1"]))


@pytest.mark.parametrize("rules", ["vit", {"layer_decay": {"rate": RATE}}], ids=["vit", "detected"])
def test_lora_adapters_take_the_adapted_layers_id(rules):
    model = lora_vit()
    plan = resolve(model, rules, layer_decay=RATE)
    # ViT-tiny: 12 blocks; block i -> id i + 1, head id 13 under `vit`; timm numbers the same way.
    expected = {
        f"base_model.model.blocks.{i}.{layer}.{part}.default.weight": i + 1
        for i in range(12)
        for layer in ("attn.qkv", "mlp.fc1")
        for part in ("lora_A", "lora_B")
    }
    assert {row.name: row.layer_id for row in plan.params} == expected
    for row in plan.params:
        assert row.lr_scale == pytest.approx(RATE ** (13 - row.layer_id), rel=1e-12)
    frozen = {s.name for s in plan.skipped}
    assert "base_model.model.blocks.0.attn.qkv.base_layer.weight" in frozen
    assert "base_model.model.cls_token" in frozen
    assert len(frozen) + len(plan.params) == sum(1 for _ in model.named_parameters())


def test_lora_plan_matches_the_bare_models_ids_for_the_same_layers():
    model = lora_vit()
    bare = model.get_base_model()
    for param in bare.parameters():
        param.requires_grad = True  # unfreeze to see the bare model's ids for every layer
    ids = {row.name: row.layer_id for row in resolve(bare, "vit").params}
    adapters = [row for row in resolve(model, "vit").params if ".lora_" in row.name]
    assert len(adapters) == 48
    for row in adapters:
        adapted = row.name.removeprefix("base_model.model.").split(".lora_")[0] + ".base_layer.weight"
        assert row.layer_id == ids[adapted]

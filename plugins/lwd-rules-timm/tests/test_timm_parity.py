"""Exact parity with ``timm.optim.param_groups_layer_decay`` on timm architectures across families.

For every parameter, lr scale and weight decay from ``resolve(model, "timm")`` equal those timm
itself computes (relative 1e-12), for several rates and with ``min_scale``. The expectation comes
from timm's own function, run on the same model; nothing of lwd-rules is involved in computing it.
"""

from __future__ import annotations

import math
import warnings

import pytest
import timm
import torch
from timm.optim import param_groups_layer_decay

from lwd_rules import LwdRulesWarning, resolve

ARCHITECTURES = [
    # ConvNeXt / ConvNeXt-V2
    "convnext_atto", "convnextv2_atto", "convnext_tiny",
    # ViT, incl. register-token variants, DeiT, BEiT, EVA
    "vit_tiny_patch16_224", "vit_base_patch16_reg4_gap_256", "vit_small_patch14_reg4_dinov2",
    "deit_tiny_patch16_224", "deit_tiny_distilled_patch16_224", "deit3_small_patch16_224",
    "beit_base_patch16_224", "beitv2_base_patch16_224", "eva02_tiny_patch14_224", "eva02_small_patch14_224",
    # Swin / Swin-V2, MaxViT / CoAtNet, DaViT
    "swin_tiny_patch4_window7_224", "swinv2_tiny_window8_256", "swinv2_cr_tiny_ns_224",
    "maxvit_tiny_tf_224", "coatnet_0_rw_224", "maxxvit_rmlp_nano_rw_256", "davit_tiny",
    # EfficientNet, MobileNet-V3 / V4, ResNet, RegNet
    "efficientnet_b0", "tf_efficientnetv2_b0", "mobilenetv3_small_100", "mobilenetv4_conv_small",
    "mobilenetv4_hybrid_medium", "resnet18", "resnet50d", "regnety_002", "regnetx_002",
    # MetaFormers, Hiera, FastViT, LeViT, MambaOut
    "convformer_s18", "caformer_s18", "poolformer_s12", "hiera_tiny_224", "sam2_hiera_tiny", "fastvit_t8",
    "levit_128s", "mambaout_femto",
    # more families
    "efficientformer_l1", "efficientformerv2_s0", "pvt_v2_b0", "cait_xxs24_224", "xcit_nano_12_p16_224",
    "crossvit_tiny_240", "twins_svt_small", "edgenext_xx_small", "mixer_b16_224", "resmlp_12_224",
    "densenet121", "dla34", "ghostnet_100", "repvgg_a0", "vgg11", "inception_v3", "nfnet_l0", "tiny_vit_5m_224",
    "efficientvit_b0", "focalnet_tiny_srf", "gcvit_xxtiny", "mvitv2_tiny", "nextvit_small", "rdnet_tiny",
    "starnet_s1", "vitamin_small_224",
]  # fmt: skip

WEIGHT_DECAY = 0.05


def timm_assignment(model, rate, min_scale=0.0):
    """Parameter name -> (lr_scale, weight_decay) as timm's own function assigns them."""
    no_weight_decay = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    groups = param_groups_layer_decay(
        model, weight_decay=WEIGHT_DECAY, layer_decay=rate, no_weight_decay_list=no_weight_decay, min_scale=min_scale
    )
    by_tensor = {id(p): (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}
    return {name: by_tensor[id(p)] for name, p in model.named_parameters() if p.requires_grad}


def assert_parity(model, rate, min_scale=0.0):
    expected = timm_assignment(model, rate, min_scale)
    source = {"extends": "timm", "layer_decay": {"rate": rate, "min_scale": min_scale}, "weight_decay": {"value": WEIGHT_DECAY}}
    with warnings.catch_warnings():  # parameters timm's matcher misses are reported; parity is what is checked here
        warnings.simplefilter("ignore", LwdRulesWarning)
        plan = resolve(model, source)
    rows = {row.name: row for row in plan.params}
    assert sorted(rows) == sorted(expected)
    for name, (scale, decay) in expected.items():
        assert math.isclose(rows[name].lr_scale, scale, rel_tol=1e-12), (name, rows[name].lr_scale, scale)
        assert rows[name].weight_decay == decay, name
    return plan


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_parity_with_param_groups_layer_decay(name):
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False)
    for rate in (0.65, 0.75, 0.9):
        assert_parity(model, rate)


@pytest.mark.parametrize("name", ["vit_small_patch16_224", "resnet50d", "swin_tiny_patch4_window7_224"])
def test_min_scale_is_honoured_as_timm_does(name):
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False)
    plan = assert_parity(model, 0.6, min_scale=0.05)
    assert min(row.lr_scale for row in plan.params) == 0.05


def test_frozen_parameters_shift_nothing_as_in_timm():
    with torch.device("meta"):
        model = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    for param in [*model.patch_embed.parameters(), *model.blocks[0].parameters()]:
        param.requires_grad = False
    plan = assert_parity(model, 0.75)
    assert not any(row.name.startswith(("patch_embed.", "blocks.0.")) for row in plan.params)
    assert {row.layer_id for row in plan.params if row.name.startswith("blocks.1.")} == {2}


def test_model_without_group_matcher_uses_timms_fallback_grouping():
    """timm groups such models in chunks of 12 tensors, head last (auto_group_layers); so do we."""

    class NoMatcher(timm.models.resnet.ResNet):
        @property
        def group_matcher(self):
            raise AttributeError("group_matcher")  # hasattr() is now False, as for a model without one

    with torch.device("meta"):
        model = timm.create_model("resnet18", pretrained=False)
    model.__class__ = NoMatcher
    assert not hasattr(model, "group_matcher")
    plan = assert_parity(model, 0.8)
    assert plan.num_layers + 1 == -(-len([n for n, _ in model.named_parameters() if not n.startswith("fc.")]) // 12)


@pytest.mark.parametrize("name", ["swin_tiny_patch4_window7_224", "swin_small_patch4_window7_224", "swin_base_patch4_window7_224"])
def test_swin_rule_set_gives_timms_numbers_without_calling_timm(name):
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False)
    for rate in (0.7, 0.9):
        expected = timm_assignment(model, rate)
        plan = resolve(model, "swin", layer_decay=rate, weight_decay=WEIGHT_DECAY)
        rows = {row.name: row for row in plan.params}
        assert sorted(rows) == sorted(expected)
        for param_name, (scale, decay) in expected.items():
            assert math.isclose(rows[param_name].lr_scale, scale, rel_tol=1e-12), param_name
            assert rows[param_name].weight_decay == decay, param_name

"""Exact parity with ConvNeXt-V2's optim_factory on the official, timm, Hugging Face and torchvision layouts.

Every parameter's layer id, lr scale (relative 1e-12) and weight decay is compared with
``reference.py``, a re-typing of the original functions that knows nothing of lwd-rules.
"""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torchvision.models
import transformers
from official_convnext import SIZES, ConvNeXt
from reference import official_from_hf, official_from_timm, official_from_torchvision, reference_assignment

from lwd_rules import resolve

RATES = [0.5, 0.8, 0.9]
WEIGHT_DECAY = 0.05


def check(model, rule_set, depths, rate, decay_type, translate=lambda n: n):
    """Resolve ``model`` with ``rule_set`` and compare every parameter with the reference."""
    plan = resolve(model, rule_set, layer_decay=rate, weight_decay=WEIGHT_DECAY)
    named = [(name, tuple(p.shape)) for name, p in model.named_parameters() if p.requires_grad]
    official = [(translate(name), shape) for name, shape in named]
    expected = reference_assignment(official, depths, rate, decay_type, WEIGHT_DECAY)
    rows = {row.name: row for row in plan.params}
    assert [row.name for row in plan.params] == [name for name, _ in named]
    for (name, _), (official_name, _) in zip(named, official):
        layer_id, scale, wd = expected[official_name]
        row = rows[name]
        assert row.layer_id == layer_id, name
        assert math.isclose(row.lr_scale, scale, rel_tol=1e-12), name
        assert row.weight_decay == wd, name
    groups = {g["group_name"]: g for g in plan.param_groups}
    for row in plan.params:
        group = groups[row.group]
        assert group["lr_scale"] == row.lr_scale and group["weight_decay"] == row.weight_decay
    return plan


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
@pytest.mark.parametrize("decay_type", ["single", "group"])
def test_official_layout(size, v2, decay_type):
    with torch.device("meta"):
        model = ConvNeXt(size, v2=v2)
    rule_set = "convnext" if decay_type == "single" else "convnext-group"
    for rate in RATES:
        check(model, rule_set, SIZES[size][0], rate, decay_type)


def test_depths_counted_without_attribute():
    with torch.device("meta"):
        model = ConvNeXt("nano", v2=True, with_depths=False)
    plan = check(model, "convnext", [2, 2, 8, 2], 0.8, "single")
    assert plan.variables["depths"] == [2, 2, 8, 2]
    assert plan.num_layers == 14


def test_official_detected_without_extends():
    with torch.device("meta"):
        model = ConvNeXt("tiny", v2=False)
    plan = check(model, {"layer_decay": {"rate": 0.7}}, [3, 3, 9, 3], 0.7, "single")
    assert plan.rules.name == "convnext"


TIMM = {
    "convnext_atto": [2, 2, 6, 2],
    "convnext_femto": [2, 2, 6, 2],
    "convnext_pico": [2, 2, 6, 2],
    "convnext_nano": [2, 2, 8, 2],
    "convnext_tiny": [3, 3, 9, 3],
    "convnext_small": [3, 3, 27, 3],
    "convnext_base": [3, 3, 27, 3],
    "convnext_large": [3, 3, 27, 3],
    "convnextv2_atto": [2, 2, 6, 2],
    "convnextv2_femto": [2, 2, 6, 2],
    "convnextv2_pico": [2, 2, 6, 2],
    "convnextv2_nano": [2, 2, 8, 2],
    "convnextv2_tiny": [3, 3, 9, 3],
    "convnextv2_base": [3, 3, 27, 3],
    "convnextv2_large": [3, 3, 27, 3],
    "convnextv2_huge": [3, 3, 27, 3],
}


@pytest.mark.parametrize("name", list(TIMM))
@pytest.mark.parametrize("decay_type", ["single", "group"])
def test_timm_layout(name, decay_type):
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False)
    rule_set = {"single": None, "group": "convnext-timm-group"}[decay_type]
    for rate in RATES:
        source = {"layer_decay": {"rate": rate}} if rule_set is None else rule_set
        plan = check(model, source, TIMM[name], rate, decay_type, official_from_timm)
        assert plan.rules.name == ("convnext-timm" if rule_set is None else rule_set)


HF_SIZES = {"atto": SIZES["atto"], "tiny": SIZES["tiny"], "base": SIZES["base"]}


def _hf_models(v2):
    config_cls = transformers.ConvNextV2Config if v2 else transformers.ConvNextConfig
    classes = (
        [transformers.ConvNextV2Model, transformers.ConvNextV2ForImageClassification]
        if v2
        else [transformers.ConvNextModel, transformers.ConvNextForImageClassification]
    )
    for size, (depths, dims) in HF_SIZES.items():
        config = config_cls(depths=depths, hidden_sizes=dims, num_labels=10)
        for cls in classes:
            with torch.device("meta"):
                yield f"{cls.__name__}-{size}", cls(config), depths


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
@pytest.mark.parametrize("decay_type", ["single", "group"])
def test_hf_layout(v2, decay_type):
    for label, model, depths in _hf_models(v2):
        for rate in RATES:
            source = {"layer_decay": {"rate": rate}} if decay_type == "single" else "convnext-hf-group"
            plan = check(model, source, depths, rate, decay_type, official_from_hf)
            assert plan.rules.name == ("convnext-hf" if decay_type == "single" else "convnext-hf-group"), label


TORCHVISION = {
    "convnext_tiny": [3, 3, 9, 3],
    "convnext_small": [3, 3, 27, 3],
    "convnext_base": [3, 3, 27, 3],
    "convnext_large": [3, 3, 27, 3],
}


@pytest.mark.parametrize("name", list(TORCHVISION))
@pytest.mark.parametrize("decay_type", ["single", "group"])
def test_torchvision_layout(name, decay_type):
    with torch.device("meta"):
        model = getattr(torchvision.models, name)(weights=None)
    for rate in RATES:
        source = {"layer_decay": {"rate": rate}} if decay_type == "single" else "convnext-torchvision-group"
        check(model, source, TORCHVISION[name], rate, decay_type, official_from_torchvision)


def test_layer_scale_and_grn_skip_decay_on_every_layout():
    """The 3-D/4-D GRN and layer-scale tensors get weight decay 0 although they are not 1-D."""
    hf_config = transformers.ConvNextV2Config(depths=[2, 2, 6, 2], hidden_sizes=[40, 80, 160, 320])
    with torch.device("meta"):
        cases = [  # model, rule set, name suffixes, the ndim those tensors have on that layout
            (ConvNeXt("atto", v2=True), "convnext", (".grn.gamma", ".grn.beta"), {4}),
            (ConvNeXt("atto", v2=False), "convnext", (".gamma",), {1}),
            (timm.create_model("convnextv2_atto"), "convnext-timm", (".grn.weight", ".grn.bias"), {1}),
            (timm.create_model("convnext_atto"), "convnext-timm", (".gamma",), {1}),
            (transformers.ConvNextV2Model(hf_config), "convnext-hf", (".grn.weight", ".grn.bias"), {4}),
            (torchvision.models.convnext_tiny(weights=None), "convnext-torchvision", (".layer_scale",), {3}),
        ]
    for model, rule_set, suffixes, ndims in cases:
        plan = resolve(model, rule_set, weight_decay=0.05)
        special = [row for row in plan.params if row.name.endswith(suffixes)]
        assert len(special) == sum(1 for n, _ in model.named_parameters() if n.endswith(suffixes)) > 0, rule_set
        assert {row.ndim for row in special} == ndims, rule_set
        assert {row.weight_decay for row in special} == {0.0}, rule_set


def test_frozen_parameters_skipped_without_shifting_ids():
    with torch.device("meta"):
        model = ConvNeXt("atto", v2=True)
    for param in model.downsample_layers[0].parameters():
        param.requires_grad = False
    plan = check(model, "convnext", [2, 2, 6, 2], 0.8, "single")
    assert not any(row.name.startswith("downsample_layers.0.") for row in plan.params)
    assert {s.name for s in plan.skipped} == {n for n, _ in model.downsample_layers[0].named_parameters(prefix="downsample_layers.0")}

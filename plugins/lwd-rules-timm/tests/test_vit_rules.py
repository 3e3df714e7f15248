"""The ``vit`` and ``beit`` rule sets against re-typings of the reference code, on timm and official layouts.

Layer ids come from ``get_num_layer_for_vit`` as BEiT's ``optim_factory.py`` defines it (its token
list extended with ``reg_token`` and ``dist_token``, which timm's ViT naming adds), with
``num_max_layer = N + 2`` and ``scale(i) = rate ** (N + 1 - i)``. Weight decay: ``vit`` as MAE's
``lr_decay.param_groups_lrd`` (0 for 1-D parameters and ``model.no_weight_decay()``), ``beit`` as
BEiT's ``get_parameter_groups`` (also 0 for every name ending in ``.bias``). Nothing here reads the
plugin's rule files.
"""

from __future__ import annotations

import math
from functools import cache

import official_beit
import pytest
import timm
import torch

from lwd_rules import resolve

RATES = [0.5, 0.65, 0.75, 0.9, 1.0]
WEIGHT_DECAY = 0.05

TIMM_MODELS = [
    "vit_tiny_patch16_224",
    "vit_small_patch16_224",
    "vit_base_patch16_reg4_gap_256",
    "deit_tiny_distilled_patch16_224",
    "deit3_small_patch16_224",
    "beit_base_patch16_224",
    "beitv2_base_patch16_224",
]

OFFICIAL = {
    # modeling_finetune with use_shared_rel_pos_bias: one top-level rel_pos_bias, fc_norm head.
    "shared_rel_pos_bias": dict(depth=4, use_shared_rel_pos_bias=True, use_mean_pooling=True),
    # per-block relative position bias, absolute pos_embed, final norm instead of fc_norm.
    "per_block_rel_pos_bias": dict(depth=3, use_rel_pos_bias=True, use_abs_pos_emb=True, use_mean_pooling=False),
    # the pretraining layout: mask_token, shared bias, no layer scale (gamma), no q/v biases.
    "mask_token": dict(depth=5, with_mask_token=True, use_abs_pos_emb=True, use_shared_rel_pos_bias=True, init_values=0.0, qkv_bias=False),
}


# ---- independent re-typing of the reference code -------------------------------------------------


def get_num_layer_for_vit(var_name: str, num_max_layer: int) -> int:
    """BEiT optim_factory.get_num_layer_for_vit, tokens extended with reg_token and dist_token."""
    if var_name in ("cls_token", "mask_token", "pos_embed", "reg_token", "dist_token"):
        return 0
    elif var_name.startswith("patch_embed"):
        return 0
    elif var_name.startswith("rel_pos_bias"):
        return num_max_layer - 1
    elif var_name.startswith("blocks"):
        layer_id = int(var_name.split(".")[1])
        return layer_id + 1
    else:
        return num_max_layer - 1


def beit_weight_decay(name: str, param: torch.Tensor, skip_list: set[str], weight_decay: float) -> float:
    """BEiT optim_factory.get_parameter_groups: no decay for 1-D, ``.bias`` and skip-listed names."""
    if len(param.shape) == 1 or name.endswith(".bias") or name in skip_list:
        return 0.0
    return weight_decay


def mae_weight_decay(name: str, param: torch.Tensor, no_weight_decay_list: set[str], weight_decay: float) -> float:
    """MAE lr_decay.param_groups_lrd / DeiT: no decay for 1-D parameters and no_weight_decay names."""
    if param.ndim <= 1 or name in no_weight_decay_list:
        return 0.0
    return weight_decay


def reference(model: torch.nn.Module, rule_set: str, rate: float, weight_decay: float) -> dict[str, tuple[int, float, float]]:
    """(layer id, lr scale, weight decay) per trainable parameter, as the reference code computes them."""
    num_layers = len(model.blocks)  # model.get_num_layers()
    num_max_layer = num_layers + 2
    scales = [rate ** (num_layers + 1 - i) for i in range(num_layers + 2)]
    skip = set(model.no_weight_decay())
    decay_of = beit_weight_decay if rule_set == "beit" else mae_weight_decay
    out = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer_id = get_num_layer_for_vit(name, num_max_layer)
        out[name] = (layer_id, scales[layer_id], decay_of(name, param, skip, weight_decay))
    return out


# ---- helpers ----------------------------------------------------------------------------------------


@cache
def timm_model(name: str) -> torch.nn.Module:
    with torch.device("meta"):
        return timm.create_model(name, pretrained=False)


@cache
def official_model(variant: str) -> torch.nn.Module:
    with torch.device("meta"):
        return official_beit.VisionTransformer(**OFFICIAL[variant])


def check(model: torch.nn.Module, rule_set: str, rate: float):
    plan = resolve(model, rule_set, layer_decay=rate, weight_decay=WEIGHT_DECAY)
    expected = reference(model, rule_set, rate, WEIGHT_DECAY)
    assert plan.rules.name == rule_set
    assert plan.num_layers == len(model.blocks)
    assert [row.name for row in plan.params] == list(expected)
    for row in plan.params:
        layer_id, scale, wd = expected[row.name]
        assert row.layer_id == layer_id, (row.name, rate)
        assert math.isclose(row.lr_scale, scale, rel_tol=1e-12), (row.name, rate, row.lr_scale, scale)
        assert row.weight_decay == wd, (row.name, rate)
    groups = {g["group_name"]: g for g in plan.param_groups}
    by_name = dict(model.named_parameters())
    for row in plan.params:
        group = groups[row.group]
        assert group["lr_scale"] == row.lr_scale and group["weight_decay"] == row.weight_decay, row.name
        assert any(p is by_name[row.name] for p in group["params"]), row.name
    assert sum(len(g["params"]) for g in plan.param_groups) == len(expected)
    return plan


# ---- the reference re-typing itself, on a literal table -------------------------------------------


def test_reference_on_literal_table():
    """Guards the re-typing: ids, scales and decays written out by hand for depth 2, rate 0.5."""
    with torch.device("meta"):
        model = official_beit.VisionTransformer(depth=2, use_shared_rel_pos_bias=True, use_mean_pooling=True)
    beit = reference(model, "beit", 0.5, 0.05)
    vit = reference(model, "vit", 0.5, 0.05)
    literal = {  # name: (id, scale, beit wd, vit wd)
        "cls_token": (0, 0.125, 0.0, 0.0),
        "patch_embed.proj.weight": (0, 0.125, 0.05, 0.05),
        "patch_embed.proj.bias": (0, 0.125, 0.0, 0.0),
        "rel_pos_bias.relative_position_bias_table": (3, 1.0, 0.05, 0.05),
        "blocks.0.gamma_1": (1, 0.25, 0.0, 0.0),
        "blocks.0.attn.qkv.weight": (1, 0.25, 0.05, 0.05),
        "blocks.0.attn.q_bias": (1, 0.25, 0.0, 0.0),
        "blocks.0.attn.v_bias": (1, 0.25, 0.0, 0.0),
        "blocks.1.mlp.fc2.weight": (2, 0.5, 0.05, 0.05),
        "blocks.1.mlp.fc2.bias": (2, 0.5, 0.0, 0.0),
        "fc_norm.weight": (3, 1.0, 0.0, 0.0),
        "head.weight": (3, 1.0, 0.05, 0.05),
        "head.bias": (3, 1.0, 0.0, 0.0),
    }
    for name, (layer_id, scale, beit_wd, vit_wd) in literal.items():
        assert beit[name] == (layer_id, scale, beit_wd), name
        assert vit[name] == (layer_id, scale, vit_wd), name
    assert len(beit) == len(vit) == 4 + 2 * 15 + 2 + 2  # stem + rel bias, 15 per block, fc_norm, head


def test_literal_plan_official_beit():
    """The same literal table, straight against resolve (no reference function in between)."""
    with torch.device("meta"):
        model = official_beit.VisionTransformer(depth=2, use_shared_rel_pos_bias=True, use_mean_pooling=True, with_mask_token=True)
    plan = resolve(model, "beit", layer_decay=0.5, weight_decay=0.05)
    rows = {row.name: (row.layer_id, row.lr_scale, row.weight_decay) for row in plan.params}
    assert rows["cls_token"] == (0, 0.125, 0.0)
    assert rows["mask_token"] == (0, 0.125, 0.05)  # 3-D, not in no_weight_decay(): BEiT decays it
    assert rows["patch_embed.proj.weight"] == (0, 0.125, 0.05)
    assert rows["blocks.0.attn.q_bias"] == (1, 0.25, 0.0)
    assert rows["blocks.1.attn.proj.weight"] == (2, 0.5, 0.05)
    assert rows["blocks.1.attn.proj.bias"] == (2, 0.5, 0.0)
    assert rows["rel_pos_bias.relative_position_bias_table"] == (3, 1.0, 0.05)
    assert rows["fc_norm.bias"] == (3, 1.0, 0.0)
    assert rows["head.weight"] == (3, 1.0, 0.05)
    assert plan.num_layers == 2


# ---- parity ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule_set", ["vit", "beit"])
@pytest.mark.parametrize("name", TIMM_MODELS)
def test_timm_models(name, rule_set):
    model = timm_model(name)
    for rate in RATES:
        check(model, rule_set, rate)


@pytest.mark.parametrize("rule_set", ["vit", "beit"])
@pytest.mark.parametrize("variant", list(OFFICIAL))
def test_official_beit(variant, rule_set):
    model = official_model(variant)
    for rate in RATES:
        check(model, rule_set, rate)


def test_layouts_have_what_they_claim():
    """The models above really exercise every token and bias layout of the spec."""
    names = {m: {n for n, _ in timm_model(m).named_parameters()} for m in TIMM_MODELS}
    assert "reg_token" in names["vit_base_patch16_reg4_gap_256"]
    assert "dist_token" in names["deit_tiny_distilled_patch16_224"]
    assert "head_dist.weight" in names["deit_tiny_distilled_patch16_224"]
    assert "blocks.0.attn.relative_position_bias_table" in names["beit_base_patch16_224"]
    shared = {n for n, _ in official_model("shared_rel_pos_bias").named_parameters()}
    per_block = {n for n, _ in official_model("per_block_rel_pos_bias").named_parameters()}
    masked = {n for n, _ in official_model("mask_token").named_parameters()}
    assert "rel_pos_bias.relative_position_bias_table" in shared and "pos_embed" not in shared
    assert {"blocks.0.gamma_1", "blocks.0.gamma_2", "blocks.0.attn.q_bias", "fc_norm.weight"} <= shared
    assert {"blocks.2.attn.relative_position_bias_table", "pos_embed", "norm.weight"} <= per_block
    assert {"mask_token", "pos_embed", "rel_pos_bias.relative_position_bias_table"} <= masked


def test_num_layers_counted_from_the_model():
    """N comes from the blocks present, not from a depth attribute: ids follow for depth 1 and 7."""
    for depth in (1, 7):
        with torch.device("meta"):
            model = official_beit.VisionTransformer(depth=depth, use_shared_rel_pos_bias=True)
        assert not hasattr(model, "depth")
        plan = check(model, "beit", 0.7)
        rows = {row.name: row for row in plan.params}
        assert rows["head.weight"].layer_id == depth + 1
        assert rows["rel_pos_bias.relative_position_bias_table"].layer_id == depth + 1
        assert rows[f"blocks.{depth - 1}.mlp.fc1.weight"].layer_id == depth
        assert rows["head.weight"].lr_scale == 1.0
        assert math.isclose(rows["cls_token"].lr_scale, 0.7 ** (depth + 1), rel_tol=1e-12)


# ---- frozen patch_embed --------------------------------------------------------------------------


FROZEN_CASES = [("timm", "vit"), ("timm", "beit"), ("timm", "timm"), ("official", "vit"), ("official", "beit")]


@pytest.mark.parametrize(("build", "rule_set"), FROZEN_CASES)
def test_frozen_patch_embed_keeps_other_ids(build, rule_set):
    def make():
        with torch.device("meta"):
            if build == "timm":
                return timm.create_model("vit_tiny_patch16_224", pretrained=False)
            return official_beit.VisionTransformer(**OFFICIAL["shared_rel_pos_bias"])

    full = resolve(make(), rule_set, layer_decay=0.8, weight_decay=WEIGHT_DECAY)
    model = make()
    model.patch_embed.requires_grad_(False)
    plan = resolve(model, rule_set, layer_decay=0.8, weight_decay=WEIGHT_DECAY)
    frozen = {"patch_embed.proj.weight", "patch_embed.proj.bias"}
    assert {s.name: s.reason for s in plan.skipped} == {n: "requires_grad is False" for n in frozen}
    expected = [(r.name, r.layer_id, r.lr_scale, r.weight_decay) for r in full.params if r.name not in frozen]
    assert [(r.name, r.layer_id, r.lr_scale, r.weight_decay) for r in plan.params] == expected
    assert plan.num_layers == full.num_layers
    rows = {r.name: r for r in plan.params}
    depth = len(model.blocks)
    head_id = depth + 1  # timm: norm joins the last block, the head gets the next id; vit/beit: N + 1
    assert rows["blocks.0.norm1.weight"].layer_id == 1
    assert rows["head.weight"].layer_id == head_id and rows["head.weight"].lr_scale == 1.0
    assert math.isclose(rows["cls_token"].lr_scale, 0.8 ** head_id, rel_tol=1e-12)
    if rule_set != "timm":
        ref = reference(model, rule_set, 0.8, WEIGHT_DECAY)
        assert list(ref) == [r.name for r in plan.params]
        for r in plan.params:
            layer_id, scale, wd = ref[r.name]
            assert (r.layer_id, r.weight_decay) == (layer_id, wd), r.name
            assert math.isclose(r.lr_scale, scale, rel_tol=1e-12), r.name


# ---- where the two weight-decay rules differ ---------------------------------------------------------


class Head2dBias(torch.nn.Module):
    """A classifier whose ``bias`` is 2-D: BEiT skips it by name, MAE decays it (ndim 2)."""

    def __init__(self, dim: int, classes: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(classes, dim))
        self.bias = torch.nn.Parameter(torch.zeros(classes, 1))


@pytest.mark.parametrize("rule_set", ["vit", "beit"])
def test_bias_suffix_and_scalar_parameters(rule_set):
    with torch.device("meta"):
        model = official_beit.VisionTransformer(depth=3, use_rel_pos_bias=True, use_abs_pos_emb=True)
        model.head = Head2dBias(16, 10)
        if rule_set == "vit":  # a 0-D parameter: ndim <= 1, no decay (MAE's p.ndim == 1, as the spec widens it)
            model.logit_scale = torch.nn.Parameter(torch.zeros(()))
    plan = check(model, rule_set, 0.75)
    rows = {row.name: row for row in plan.params}
    assert rows["head.bias"].layer_id == 4
    assert rows["head.bias"].weight_decay == (0.0 if rule_set == "beit" else WEIGHT_DECAY)
    assert rows["head.weight"].weight_decay == WEIGHT_DECAY
    if rule_set == "vit":
        assert (rows["logit_scale"].layer_id, rows["logit_scale"].weight_decay) == (4, 0.0)

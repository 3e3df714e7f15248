"""lwd-rules against the ConvNeXt-V2 reference layer-wise lr decay (optim_factory.py / main_finetune.py).

The model tree copies the official ConvNeXt-V2 layout (built on the meta device, so it costs nothing),
the rules are written here as dicts, and every parameter is checked against a hand-written copy of the
reference functions ``get_num_layer_for_convnext_single`` / ``get_num_layer_for_convnext`` and the
reference ``get_parameter_groups``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from lwd_rules import hookimpl, resolve
from lwd_rules.plugins import new_registry

WEIGHT_DECAY = 0.05


# --------------------------------------------------------------------------- the official module layout


class LayerNorm(nn.Module):
    """ConvNeXt-V2's LayerNorm (channels_last / channels_first): a 1-D weight and bias."""

    def __init__(self, normalized_shape: int, eps: float = 1e-6, data_format: str = "channels_last") -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(normalized_shape))
        self.bias = nn.Parameter(torch.zeros(normalized_shape))
        self.eps = eps
        self.data_format = data_format


class GRN(nn.Module):
    """Global Response Normalization: gamma and beta are 4-D, shape (1, 1, 1, dim)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.grn = GRN(4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.drop_path = nn.Identity()


class ConvNeXtV2(nn.Module):
    def __init__(self, depths: list[int], dims: list[int], in_chans: int = 3, num_classes: int = 1000) -> None:
        super().__init__()
        self.depths = depths
        self.downsample_layers = nn.ModuleList()
        stem = nn.Sequential(
            nn.Conv2d(in_chans, dims[0], kernel_size=4, stride=4),
            LayerNorm(dims[0], eps=1e-6, data_format="channels_first"),
        )
        self.downsample_layers.append(stem)
        for i in range(3):
            self.downsample_layers.append(
                nn.Sequential(
                    LayerNorm(dims[i], eps=1e-6, data_format="channels_first"),
                    nn.Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2),
                )
            )
        self.stages = nn.ModuleList()
        for i in range(4):
            self.stages.append(nn.Sequential(*[Block(dims[i]) for _ in range(depths[i])]))
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes)


DIMS = {
    (2, 2, 6, 2): [40, 80, 160, 320],  # atto
    (3, 3, 9, 3): [96, 192, 384, 768],  # tiny
    (3, 3, 27, 3): [128, 256, 512, 1024],  # base
}


def build(depths: list[int]) -> ConvNeXtV2:
    with torch.device("meta"):
        return ConvNeXtV2(list(depths), DIMS[tuple(depths)])


# --------------------------------------------------------------------------- the reference, copied by hand


def get_num_layer_for_convnext_single(var_name: str, depths: list[int]) -> int:
    """Each layer is assigned distinctive layer ids."""
    if var_name.startswith("downsample_layers"):
        stage_id = int(var_name.split(".")[1])
        layer_id = sum(depths[:stage_id]) + 1
        return layer_id

    elif var_name.startswith("stages"):
        stage_id = int(var_name.split(".")[1])
        block_id = int(var_name.split(".")[2])
        layer_id = sum(depths[:stage_id]) + block_id + 1
        return layer_id

    else:
        return sum(depths) + 1


def get_num_layer_for_convnext(var_name: str) -> int:
    """Divide [3, 3, 27, 3] layers into 12 groups; each group is three consecutive blocks."""
    num_max_layer = 12
    if var_name.startswith("downsample_layers"):
        stage_id = int(var_name.split(".")[1])
        if stage_id == 0:
            layer_id = 0
        elif stage_id == 1 or stage_id == 2:
            layer_id = stage_id + 1
        elif stage_id == 3:
            layer_id = 12
        return layer_id

    elif var_name.startswith("stages"):
        stage_id = int(var_name.split(".")[1])
        block_id = int(var_name.split(".")[2])
        if stage_id == 0 or stage_id == 1:
            layer_id = stage_id + 1
        elif stage_id == 2:
            layer_id = 3 + block_id // 3
        elif stage_id == 3:
            layer_id = 12
        return layer_id
    else:
        return num_max_layer + 1


def reference_weight_decay(name: str, param: torch.Tensor, weight_decay: float) -> float:
    if len(param.shape) == 1 or name.endswith(".bias") or name.endswith(".gamma") or name.endswith(".beta"):
        return 0.0
    return weight_decay


def reference_parameter_groups(model: nn.Module, weight_decay: float, get_num_layer, get_layer_scale) -> list[dict]:
    """The reference ``get_parameter_groups``: one group per (layer id, decay/no_decay), first-seen order."""
    parameter_group_vars: dict[str, dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if len(param.shape) == 1 or name.endswith(".bias") or name.endswith(".gamma") or name.endswith(".beta"):
            group_name = "no_decay"
            this_weight_decay = 0.0
        else:
            group_name = "decay"
            this_weight_decay = weight_decay
        layer_id = get_num_layer(name)
        group_name = "layer_%d_%s" % (layer_id, group_name)
        if group_name not in parameter_group_vars:
            scale = get_layer_scale(layer_id)
            parameter_group_vars[group_name] = {"weight_decay": this_weight_decay, "params": [], "lr_scale": scale, "name": group_name}
        parameter_group_vars[group_name]["params"].append(param)
    return list(parameter_group_vars.values())


# --------------------------------------------------------------------------- the rules under test

EXCLUDE = ["ndim<=1", "*.bias", "*.gamma", "*.beta"]


def single_rules(rate: float, depths_from: str = "count") -> dict:
    layers: dict = {
        "num_layers": "sum(depths)",
        "rules": [
            {"match": r"^downsample_layers\.(?P<stage>\d+)\.", "layer": "sum(depths[:stage]) + 1"},
            {"match": r"^stages\.(?P<stage>\d+)\.(?P<block>\d+)\.", "layer": "sum(depths[:stage]) + block + 1"},
        ],
        "default": "sum(depths) + 1",
    }
    if depths_from == "count":
        layers["count"] = {"depths": r"^stages\.(\d+)\.(\d+)\."}
    else:
        layers["variables"] = ["depths"]
    return {
        "name": "convnextv2-single-test",
        "layers": layers,
        "layer_decay": {"rate": rate},
        "weight_decay": {"value": WEIGHT_DECAY, "exclude": list(EXCLUDE)},
    }


def group_rules(rate: float) -> dict:
    return {
        "layers": {
            "num_layers": 12,
            "rules": [
                {"match": r"^downsample_layers\.(?P<stage>\d+)\.", "layer": "[0, 2, 3, 12][stage]"},
                {"match": r"^stages\.(?P<stage>[01])\.", "layer": "[1, 2][stage]"},
                {"match": r"^stages\.2\.(?P<block>\d+)\.", "layer": "3 + block // 3"},
                {"match": r"^stages\.3\.", "layer": 12},
            ],
            "default": 13,
        },
        "layer_decay": {"rate": rate},
        "weight_decay": {"value": WEIGHT_DECAY, "exclude": list(EXCLUDE)},
    }


class DepthsPlugin:
    """Provides ``depths`` for the test rule set, the way lwd-rules-convnext would."""

    @hookimpl
    def lwd_layer_variables(self, model, rule_set):
        if rule_set == "convnextv2-single-test":
            return {"depths": list(model.depths)}
        return None


def assert_matches_reference(model: nn.Module, plan, num_layers: int, rate: float, get_num_layer) -> None:
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert plan.num_layers == num_layers
    assert [row.name for row in plan.params] == [n for n, _ in trainable]
    for row, (name, param) in zip(plan.params, trainable):
        expected_id = get_num_layer(name)
        expected_scale = rate ** (num_layers + 1 - expected_id)
        assert row.layer_id == expected_id, name
        assert math.isclose(row.lr_scale, expected_scale, rel_tol=1e-12), name
        assert row.weight_decay == reference_weight_decay(name, param, WEIGHT_DECAY), name

    values = [rate ** (num_layers + 1 - i) for i in range(num_layers + 2)]
    reference = reference_parameter_groups(model, WEIGHT_DECAY, get_num_layer, lambda layer_id: values[layer_id])
    assert [g["group_name"] for g in plan.param_groups] == [g["name"] for g in reference]
    for got, want in zip(plan.param_groups, reference):
        assert [id(p) for p in got["params"]] == [id(p) for p in want["params"]], want["name"]
        assert got["weight_decay"] == want["weight_decay"], want["name"]
        assert math.isclose(got["lr_scale"], want["lr_scale"], rel_tol=1e-12), want["name"]


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("depths", [[2, 2, 6, 2], [3, 3, 9, 3]])
@pytest.mark.parametrize("rate", [0.5, 0.8, 0.9])
def test_single_type_matches_reference(depths: list[int], rate: float) -> None:
    model = build(depths)
    plan = resolve(model, single_rules(rate), registry=new_registry())
    assert plan.variables["depths"] == depths
    assert_matches_reference(model, plan, sum(depths), rate, lambda n: get_num_layer_for_convnext_single(n, depths))


def test_single_type_hand_picked_ids_for_2_2_6_2() -> None:
    model = build([2, 2, 6, 2])
    plan = resolve(model, single_rules(0.5), registry=new_registry())
    by_name = {row.name: row for row in plan.params}
    expected = {
        "downsample_layers.0.0.weight": 1,
        "downsample_layers.0.1.bias": 1,
        "stages.0.0.dwconv.weight": 1,
        "stages.0.1.grn.gamma": 2,
        "downsample_layers.1.0.weight": 3,
        "stages.1.0.pwconv1.weight": 3,
        "stages.1.1.pwconv2.bias": 4,
        "downsample_layers.2.1.weight": 5,
        "stages.2.5.grn.beta": 10,
        "downsample_layers.3.0.bias": 11,
        "stages.3.1.norm.weight": 12,
        "norm.weight": 13,
        "head.weight": 13,
        "head.bias": 13,
    }
    assert {name: by_name[name].layer_id for name in expected} == expected
    # N = 12: scale = 0.5 ** (13 - id)
    assert by_name["downsample_layers.0.0.weight"].lr_scale == 0.5**12
    assert by_name["stages.2.5.grn.beta"].lr_scale == 0.5**3
    assert by_name["head.weight"].lr_scale == 1.0
    # weight decay: 4-D gamma/beta and 1-D params excluded, 2-D/4-D weights decay
    assert by_name["stages.0.1.grn.gamma"].weight_decay == 0.0
    assert by_name["stages.2.5.grn.beta"].weight_decay == 0.0
    assert by_name["stages.0.0.dwconv.weight"].weight_decay == WEIGHT_DECAY
    assert by_name["stages.1.0.pwconv1.weight"].weight_decay == WEIGHT_DECAY
    assert by_name["norm.weight"].weight_decay == 0.0
    assert by_name["head.weight"].weight_decay == WEIGHT_DECAY


def test_single_type_with_depths_from_a_plugin() -> None:
    depths = [3, 3, 9, 3]
    model = build(depths)
    registry = new_registry([("depths-plugin", DepthsPlugin())])
    plan = resolve(model, single_rules(0.8, depths_from="plugin"), registry=registry)
    assert plan.variables["depths"] == depths
    assert_matches_reference(model, plan, sum(depths), 0.8, lambda n: get_num_layer_for_convnext_single(n, depths))


@pytest.mark.parametrize("depths", [[2, 2, 6, 2], [3, 3, 9, 3], [3, 3, 27, 3]])
@pytest.mark.parametrize("rate", [0.5, 0.8, 0.9])
def test_group_type_matches_reference(depths: list[int], rate: float) -> None:
    model = build(depths)
    plan = resolve(model, group_rules(rate), registry=new_registry())
    assert_matches_reference(model, plan, 12, rate, get_num_layer_for_convnext)


def test_group_type_hand_picked_ids_for_3_3_27_3() -> None:
    model = build([3, 3, 27, 3])
    plan = resolve(model, group_rules(0.9), registry=new_registry())
    by_name = {row.name: row.layer_id for row in plan.params}
    expected = {
        "downsample_layers.0.0.weight": 0,
        "stages.0.2.dwconv.weight": 1,
        "downsample_layers.1.1.weight": 2,
        "stages.1.0.norm.bias": 2,
        "downsample_layers.2.0.weight": 3,
        "stages.2.0.pwconv1.weight": 3,
        "stages.2.2.pwconv1.weight": 3,
        "stages.2.3.pwconv1.weight": 4,
        "stages.2.26.pwconv2.weight": 11,
        "downsample_layers.3.1.bias": 12,
        "stages.3.2.grn.gamma": 12,
        "norm.bias": 13,
        "head.weight": 13,
    }
    assert {name: by_name[name] for name in expected} == expected
    row = next(r for r in plan.params if r.name == "downsample_layers.0.0.weight")
    assert math.isclose(row.lr_scale, 0.9**13, rel_tol=1e-12)


def test_single_type_with_frozen_stem_matches_reference_without_shifting_ids() -> None:
    depths = [2, 2, 6, 2]
    model = build(depths)
    for param in model.downsample_layers[0].parameters():
        param.requires_grad_(False)
    for param in model.stages[0][0].parameters():
        param.requires_grad_(False)
    plan = resolve(model, single_rules(0.8), registry=new_registry())
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and {s.name for s in plan.skipped} == frozen
    assert all(row.name not in frozen for row in plan.params)
    assert_matches_reference(model, plan, sum(depths), 0.8, lambda n: get_num_layer_for_convnext_single(n, depths))


class DDPLike(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.module = inner


@pytest.mark.parametrize("wrap", ["ddp", "compile", "ddp_of_compile"])
def test_wrapped_reference_model_gets_the_same_plan(wrap: str) -> None:
    depths = [2, 2, 6, 2]
    model = build(depths)
    wrapped = {
        "ddp": lambda: DDPLike(model),
        "compile": lambda: torch.compile(model),
        "ddp_of_compile": lambda: DDPLike(torch.compile(model)),
    }[wrap]()
    bare = resolve(model, single_rules(0.8), registry=new_registry())
    other = resolve(wrapped, single_rules(0.8), registry=new_registry())

    def summary(plan):
        rows = [(r.layer_id, r.lr_scale, r.weight_decay, r.group) for r in plan.params]
        groups = [(g["group_name"], g["lr_scale"], g["weight_decay"], [id(p) for p in g["params"]]) for g in plan.param_groups]
        return rows, groups

    assert summary(other) == summary(bare)
    assert other.num_layers == bare.num_layers == 12

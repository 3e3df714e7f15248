"""ConvNeXt-V2's optim_factory.py layer-id and weight-decay logic, re-typed from the original.

This is the independent expectation the plugin is tested against: it knows nothing of lwd-rules.
Other layouts are translated to official names first, per the correspondence in the plugin's docs
(stem = downsample 0, stage S's downsample = downsample S, blocks = stages.S.B, rest = head).
"""

from __future__ import annotations

import re


def get_num_layer_for_convnext_single(var_name, depths):
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


def get_num_layer_for_convnext(var_name):
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


def reference_assignment(named_shapes, depths, layer_decay, layer_decay_type, weight_decay, skip_list=()):
    """name -> (layer_id, lr_scale, weight_decay), as main_finetune.py + get_parameter_groups compute them."""
    num_layers = 12 if layer_decay_type == "group" else sum(depths)
    values = list(layer_decay ** (num_layers + 1 - i) for i in range(num_layers + 2))
    out = {}
    for name, shape in named_shapes:
        if len(shape) == 1 or name.endswith(".bias") or name in skip_list or name.endswith(".gamma") or name.endswith(".beta"):
            this_weight_decay = 0.0
        else:
            this_weight_decay = weight_decay
        if layer_decay_type == "single":
            layer_id = get_num_layer_for_convnext_single(name, depths)
        else:
            layer_id = get_num_layer_for_convnext(name)
        out[name] = (layer_id, values[layer_id], this_weight_decay)
    return out


# Translations of each layout's names to the official ones (the suffix after the block is kept,
# with the layout's GRN / layer-scale names mapped to the reference's .gamma/.beta).
def _suffix(rest):
    rest = re.sub(r"(^|\.)grn\.weight$", r"\1grn.gamma", rest)
    rest = re.sub(r"(^|\.)grn\.bias$", r"\1grn.beta", rest)
    rest = re.sub(r"(^|\.)(layer_scale_parameter|layer_scale)$", r"\1gamma", rest)
    return rest


def official_from_timm(name):
    if m := re.match(r"stem\.(.*)", name):
        return f"downsample_layers.0.{m[1]}"
    if m := re.match(r"stages\.(\d+)\.downsample\.(.*)", name):
        return f"downsample_layers.{m[1]}.{m[2]}"
    if m := re.match(r"stages\.(\d+)\.blocks\.(\d+)\.(.*)", name):
        return f"stages.{m[1]}.{m[2]}.{_suffix(m[3])}"
    return f"head.{name}"


def official_from_hf(name):
    name = re.sub(r"^convnext(v2)?\.", "", name)
    if m := re.match(r"embeddings\.(.*)", name):
        return f"downsample_layers.0.{m[1]}"
    if m := re.match(r"encoder\.stages\.(\d+)\.downsampling_layer\.(.*)", name):
        return f"downsample_layers.{m[1]}.{m[2]}"
    if m := re.match(r"encoder\.stages\.(\d+)\.layers\.(\d+)\.(.*)", name):
        return f"stages.{m[1]}.{m[2]}.{_suffix(m[3])}"
    return f"head.{name}"


def official_from_torchvision(name):
    if m := re.match(r"features\.0\.(.*)", name):
        return f"downsample_layers.0.{m[1]}"
    if m := re.match(r"features\.([246])\.(.*)", name):
        return f"downsample_layers.{int(m[1]) // 2}.{m[2]}"
    if m := re.match(r"features\.([1357])\.(\d+)\.(.*)", name):
        return f"stages.{(int(m[1]) - 1) // 2}.{m[2]}.{_suffix(m[3])}"
    return f"head.{name}"

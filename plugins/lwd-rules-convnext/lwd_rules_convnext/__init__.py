"""lwd-rules plugin for ConvNeXt and ConvNeXt-V2 on four layouts: official, timm, Hugging Face, torchvision.

The rule files in ``rules/`` hold every layer id; this module only registers them, counts
``depths`` from the module tree (so a model without a ``depths`` attribute works) and recognizes
each layout for ``lwd_detect``. Heavy libraries are never imported: models are recognized by
their class's module path and structure.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lwd_rules import canonical_name, hookimpl

RULES = Path(__file__).parent / "rules"

# Per layout: the regex on canonical module names whose groups are (stage, block).
BLOCKS = {
    "convnext": re.compile(r"^stages\.(\d+)\.(\d+)$"),
    "convnext-timm": re.compile(r"^stages\.(\d+)\.blocks\.(\d+)$"),
    "convnext-hf": re.compile(r"^(?:convnext(?:v2)?\.)?encoder\.stages\.(\d+)\.layers\.(\d+)$"),
    "convnext-torchvision": re.compile(r"^features\.([1357])\.(\d+)$"),
}


def _layout(rule_set: str) -> str | None:
    base = rule_set.removesuffix("-group")
    return base if base in BLOCKS else None


@hookimpl
def lwd_rule_sets() -> dict[str, Path]:
    """Every rule file shipped in ``rules/``, by its file name."""
    return {path.stem: path for path in sorted(RULES.glob("*.yaml"))}


def _stage_lists(model: Any, layout: str) -> list[Any]:
    """Each stage's block container, read from the layout's attributes (raises if the layout differs)."""
    if layout == "convnext":
        return list(model.stages)
    if layout == "convnext-timm":
        return [stage.blocks for stage in model.stages]
    if layout == "convnext-hf":
        base = getattr(model, "convnext", None) or getattr(model, "convnextv2", None) or model
        return [stage.layers for stage in base.encoder.stages]
    return [model.features[index] for index in (1, 3, 5, 7)]


@hookimpl
def lwd_layer_variables(model: Any, rule_set: str) -> dict[str, Any] | None:
    """``depths``: the number of blocks in each stage, counted from the module tree."""
    layout = _layout(rule_set)
    if layout is None:
        return None
    try:
        return {"depths": [len(blocks) for blocks in _stage_lists(model, layout)]}
    except (AttributeError, TypeError, IndexError):
        pass  # not the usual attributes (a wrapped or modified model): count the module names instead
    pattern = BLOCKS[layout]
    blocks: dict[int, int] = {}
    for name, _ in model.named_modules():
        found = pattern.match(canonical_name(name))
        if found:
            stage, block = int(found.group(1)), int(found.group(2))
            if layout == "convnext-torchvision":
                stage = (stage - 1) // 2
            blocks[stage] = max(blocks.get(stage, 0), block + 1)
    if not blocks:
        return None
    return {"depths": [blocks.get(stage, 0) for stage in range(max(blocks) + 1)]}


@hookimpl(tryfirst=True)
def lwd_detect(model: Any) -> str | None:
    """Recognize a ConvNeXt(-V2) by its class's module and structure; None for anything else.

    The whole MRO is checked: FSDP2's ``fully_shard`` swaps in a subclass of the model's class.
    """
    for cls in type(model).__mro__:
        found = _detect_class(cls, model)
        if found:
            return found
    return None


def _detect_class(cls: type, model: Any) -> str | None:
    module, name = cls.__module__, cls.__name__
    if module.startswith("timm.models.convnext"):
        return "convnext-timm"
    if module.startswith("torchvision.models.convnext"):
        return "convnext-torchvision"
    if module.startswith("transformers.models.convnext") and name.startswith(("ConvNext", "ConvNextV2")):
        return "convnext-hf"
    if name.lower().startswith("convnext") and hasattr(model, "downsample_layers") and hasattr(model, "stages"):
        return "convnext"
    return None

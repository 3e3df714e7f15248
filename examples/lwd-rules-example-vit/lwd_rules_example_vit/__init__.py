"""Example lwd-rules plugin: BEiT-style layer ids for timm's VisionTransformer.

Importing this module is cheap: it imports neither torch nor timm. Models are recognized by their
class's module path, so the plugin works whether or not timm is installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lwd_rules import hookimpl

RULES = Path(__file__).parent / "rules"
RULE_SETS = {"example-vit", "example-vit-fast"}


@hookimpl
def lwd_rule_sets() -> dict[str, Any]:
    """A rule file shipped as package data, and a dict rule set extending it."""
    return {
        "example-vit": RULES / "example-vit.yaml",
        "example-vit-fast": {"version": 1, "name": "example-vit-fast", "extends": "example-vit", "layer_decay": {"rate": 0.5}},
    }


@hookimpl
def lwd_layer_variables(model: Any, rule_set: str) -> dict[str, Any] | None:
    """``depth``: the number of transformer blocks (``model`` is the bare model, never a DDP wrapper)."""
    if rule_set not in RULE_SETS or not hasattr(model, "blocks"):
        return None  # not one of ours: say nothing
    return {"depth": len(model.blocks)}


@hookimpl
def lwd_detect(model: Any) -> str | None:
    """Recognize timm's VisionTransformer by its class, without importing timm."""
    cls = type(model)
    if cls.__module__ == "timm.models.vision_transformer" and cls.__name__ == "VisionTransformer":
        return "example-vit"
    return None

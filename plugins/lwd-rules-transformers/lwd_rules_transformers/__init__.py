"""lwd-rules plugin for Hugging Face transformers: encoders, decoders and vision transformers.

The rule files in ``rules/`` hold every layer id and the weight-decay recipe; this module only
registers them, reads the number of layers from the model's config (checked against the layer
modules the model has), gives a tied input embedding id 0 whatever name it is first seen under,
and picks the family's rule set from ``config.model_type``. Neither transformers nor torch is
imported: models are recognized by their classes' module paths and their config.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lwd_rules import canonical_name, hookimpl

RULES = Path(__file__).parent / "rules"

# config.model_type -> rule set. ConvNeXt is not here: the ConvNeXt plugin's convnext-hf serves it.
MODEL_TYPES = {
    "bert": "hf-bert",
    "roberta": "hf-bert",
    "xlm-roberta": "hf-bert",
    "electra": "hf-bert",
    "deberta-v2": "hf-deberta",  # DeBERTa-v2 and -v3
    "distilbert": "hf-distilbert",
    "albert": "hf-albert",
    "modernbert": "hf-modernbert",
    "gpt2": "hf-gpt2",
    "llama": "hf-llama",
    "mistral": "hf-llama",
    "qwen2": "hf-llama",
    "qwen3": "hf-llama",
    "gemma": "hf-llama",
    "gemma2": "hf-llama",
    "phi": "hf-llama",
    "phi3": "hf-llama",
    "vit": "hf-vit",
    "dinov2": "hf-vit",
    "swin": "hf-swin",
    # multi-tower models: one decay chain per tower (see the rule files)
    "clip": "hf-clip",
    "clip_vision_model": "hf-clip",
    "clip_text_model": "hf-clip",
    "siglip": "hf-siglip",
    "siglip_vision_model": "hf-siglip",
    "siglip_text_model": "hf-siglip",
    "t5": "hf-t5",
}

# An optional first component: the task model's base-model attribute (bert., model., vit., ...).
_PREFIX = r"^(?:\w+\.)?"


@dataclass(frozen=True)
class Layout:
    """Where a family's layers are (a regex on canonical module names) and what they are counted as.

    ``kind`` says which variables the rule set uses: ``layers`` gives ``hf_num_layers`` (one group:
    the layer index), ``depths`` gives Swin's blocks per stage and ``groups`` ALBERT's
    ``albert_groups`` and ``albert_inner_layers`` (two groups: stage and block, group and layer).
    """

    modules: re.Pattern[str]
    what: str  # the modules, as messages name them
    kind: str


def _layout(pattern: str, what: str, kind: str = "layers") -> Layout:
    return Layout(re.compile(_PREFIX + pattern + "$"), what, kind)


LAYOUTS = {
    "hf-bert": _layout(r"encoder\.layer\.(\d+)", "encoder.layer.{i}"),
    "hf-deberta": _layout(r"encoder\.layer\.(\d+)", "encoder.layer.{i}"),
    "hf-distilbert": _layout(r"transformer\.layer\.(\d+)", "transformer.layer.{i}"),
    "hf-modernbert": _layout(r"layers\.(\d+)", "layers.{i}"),
    "hf-gpt2": _layout(r"h\.(\d+)", "h.{i}"),
    "hf-llama": _layout(r"layers\.(\d+)", "layers.{i}"),
    "hf-vit": _layout(r"(?:encoder\.layer|layers)\.(\d+)", "encoder.layer.{i} or layers.{i}"),
    "hf-albert": _layout(
        r"encoder\.albert_layer_groups\.(\d+)\.albert_layers\.(\d+)", "encoder.albert_layer_groups.{g}.albert_layers.{j}", "groups"
    ),
    "hf-swin": _layout(r"encoder\.layers\.(\d+)\.blocks\.(\d+)", "encoder.layers.{S}.blocks.{B}", "depths"),
}
# Config attributes holding the number of layers; the first one present wins (GPT-2 and DistilBERT
# also map num_hidden_layers to their n_layer / n_layers).
NUM_LAYERS_KEYS = ("num_hidden_layers", "n_layer", "n_layers", "num_layers")
RULE_SETS = frozenset(LAYOUTS)


class LayerCountWarning(UserWarning):
    """The model's config and its layer modules disagree on the number of layers; the modules win."""


@hookimpl
def lwd_rule_sets() -> dict[str, Path]:
    """Every rule file shipped in ``rules/``, by its file name: ``hf-base`` and one per family."""
    return {path.stem: path for path in sorted(RULES.glob("*.yaml"))}


@hookimpl
def lwd_detect(model: Any) -> str | None:
    """The family rule set of a transformers model (or a subclass of one), by ``config.model_type``."""
    if not any(cls.__module__.startswith("transformers.") for cls in type(model).__mro__):
        return None
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return MODEL_TYPES.get(model_type) if isinstance(model_type, str) else None


@hookimpl
def lwd_layer_variables(model: Any, rule_set: str) -> dict[str, Any] | None:
    """The family's layer counts: ``hf_num_layers``; ALBERT's ``albert_groups`` and
    ``albert_inner_layers``; Swin's ``depths``.

    Read from ``model.config`` (``num_hidden_layers``, ``n_layer``, ...). The layer modules are
    counted too: a model without a config uses the count, and where the two differ (a pruned model
    whose config was not updated) the count wins, with a ``LayerCountWarning``. A model with no
    layer module of the family's layout is an error: its rules would place nothing.
    """
    layout = LAYOUTS.get(rule_set)
    if layout is None:
        return None
    counted = _count(model, layout)
    configured = _from_config(getattr(model, "config", None), layout.kind)
    if counted is None:
        if configured is not None and not any(configured.values()):
            return configured  # a config asking for no layers, and a model without any
        raise ValueError(
            f"rule set {rule_set!r} expects {layout.what} modules and {type(model).__name__} has none; "
            f"choose the rule set of the model's family (see `lwd-rules rules`)"
        )
    if configured is not None and configured != counted:
        warnings.warn(
            f"{type(model).__name__}: config says {_show(configured)} but the model has {_show(counted)} "
            f"({layout.what} modules); using the modules",
            LayerCountWarning,
            stacklevel=2,
        )
    return counted


def _show(values: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in values.items())


def _count(model: Any, layout: Layout) -> dict[str, Any] | None:
    """The family's variables counted from the model's canonical module names; None if none match."""
    match = layout.modules.match
    found = [m.groups() for m in (match(canonical_name(name)) for name, _ in model.named_modules()) if m]
    if not found:
        return None
    if layout.kind == "layers":
        return {"hf_num_layers": max(int(i) for (i,) in found) + 1}
    per: dict[int, int] = {}
    for outer, inner in found:
        per[int(outer)] = max(per.get(int(outer), 0), int(inner) + 1)
    sizes = [per.get(index, 0) for index in range(max(per) + 1)]
    if layout.kind == "depths":
        return {"depths": sizes}
    return {"albert_groups": len(sizes), "albert_inner_layers": max(sizes)}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _from_config(config: Any, kind: str) -> dict[str, Any] | None:
    """The same variables read from the config; None when it lacks them."""
    if config is None:
        return None
    if kind == "depths":
        depths = getattr(config, "depths", None)
        if isinstance(depths, (list, tuple)) and depths and all(map(_is_int, depths)):
            return {"depths": list(depths)}
        return None
    if kind == "groups":
        groups, inner = getattr(config, "num_hidden_groups", None), getattr(config, "inner_group_num", None)
        return {"albert_groups": groups, "albert_inner_layers": inner} if _is_int(groups) and _is_int(inner) else None
    for key in NUM_LAYERS_KEYS:
        value = getattr(config, key, None)
        if _is_int(value):
            return {"hf_num_layers": value}
    return None


@hookimpl
def lwd_layer_ids(model: Any, rule_set: str) -> dict[str, int] | None:
    """Id 0 for every name of a tied input embedding, so it is the embedding's whatever name comes first.

    The core optimizes a shared tensor once, under its first name in module order. That is the
    embedding's name in most task models, which a rule already maps to 0, but XLM-RoBERTa's
    ``...ForMaskedLM`` / ``...ForCausalLM`` list ``lm_head`` first, whose name no rule matches.
    Untied models get an empty answer.
    """
    if rule_set not in RULE_SETS:
        return None
    getter = getattr(model, "get_input_embeddings", None)
    try:
        embedding = getter() if callable(getter) else None
    except (NotImplementedError, AttributeError):
        return {}
    weight = getattr(embedding, "weight", None)
    if weight is None:
        return {}
    names = [name for name, param in model.named_parameters(remove_duplicate=False) if param is weight]
    return {name: 0 for name in names} if len(names) > 1 else {}

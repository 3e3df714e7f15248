"""lwd-rules plugin for timm: layer ids from each model's own ``group_matcher``, as timm numbers them.

Rule sets: ``timm`` (any timm model, parity with ``timm.optim.param_groups_layer_decay``), ``vit``
and ``beit`` (the reference ViT / BEiT / MAE / DeiT layouts). timm is imported inside the hooks
only, so ``lwd-rules validate`` and friends stay fast.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lwd_rules import canonical_name, hookimpl

RULES = Path(__file__).parent / "rules"
TIMM_RULE_SET = "timm"


@hookimpl
def lwd_rule_sets() -> dict[str, Path]:
    """``timm``, ``vit`` and ``beit``, shipped as rule files."""
    return {path.stem: path for path in sorted(RULES.glob("*.yaml"))}


def _is_timm_rule_set(rule_set: str) -> bool:
    return rule_set == TIMM_RULE_SET


def timm_layer_map(model: Any) -> tuple[dict[str, int], set[str]]:
    """Every parameter's id as timm numbers it, by canonical name, and the names its matcher left unmatched."""
    from timm.models._manipulate import group_with_matcher  # not re-exported by timm.models
    from timm.optim._param_groups import auto_group_layers

    names = [canonical_name(name) for name, _ in model.named_parameters()]
    if not hasattr(model, "group_matcher"):
        layer_map = auto_group_layers(model)
        return {canonical_name(k): v for k, v in layer_map.items()}, set()
    matcher = model.group_matcher(coarse=False)
    layer_map = group_with_matcher(((name, None) for name in names), matcher, reverse=True)
    return layer_map, _unmatched(names, matcher)


def _unmatched(names: Iterable[str], matcher: Any) -> set[str]:
    """Names no regex of a dict/list matcher matches: timm files them under the last id without a word."""
    if callable(matcher):
        return set()
    patterns = []
    for spec in matcher.values() if isinstance(matcher, dict) else matcher:
        if spec is None:
            continue
        if isinstance(spec, (tuple, list)):
            patterns += [re.compile(sub[0]) for sub in spec]
        else:
            patterns.append(re.compile(spec))
    return {name for name in names if not any(p.match(name) for p in patterns)}


@hookimpl
def lwd_layer_ids(model: Any, rule_set: str) -> dict[str, int] | None:
    """timm's ids for what its matcher places, and for the classifier it leaves to the last id on purpose.

    Any other parameter the matcher leaves unmatched falls to the rule set's default (timm's last
    id, so the numbers still match timm) and is reported by ``checks.defaulted``.
    """
    if not _is_timm_rule_set(rule_set):
        return None
    layer_map, unmatched = timm_layer_map(model)
    head = _classifier_prefixes(model)
    return {name: layer_id for name, layer_id in layer_map.items() if name not in unmatched or name.startswith(head)}


def _classifier_prefixes(model: Any) -> tuple[str, ...]:
    """The head module holding ``pretrained_cfg``'s classifier (``head.fc`` → ``head.``).

    timm's matchers leave the head to the last id on purpose; anything else they miss is reported.
    """
    classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    if not classifier:
        return ()
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    return tuple(f"{name.split('.')[0]}." for name in names)


@hookimpl
def lwd_layer_variables(model: Any, rule_set: str) -> dict[str, Any] | None:
    """``timm_max_layer_id``: L, the highest id timm gives (its unmatched parameters included)."""
    if not _is_timm_rule_set(rule_set):
        return None
    layer_map, _ = timm_layer_map(model)
    return {"timm_max_layer_id": max(layer_map.values(), default=0)}


@hookimpl(trylast=True)
def lwd_detect(model: Any) -> str | None:
    """Any timm model; asked last, so family plugins (ConvNeXt) answer first for their models."""
    if any(cls.__module__.startswith("timm.models.") for cls in type(model).__mro__):  # FSDP2 subclasses the model's class
        return TIMM_RULE_SET
    return None

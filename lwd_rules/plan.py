"""The result of ``resolve()``: ordered optimizer groups and one row per trainable parameter."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from collections.abc import Callable, Iterable
from typing import Any, Literal

from lwd_rules.errors import Problem
from lwd_rules.identify import canonicalizer
from lwd_rules.rules.ruleset import RuleSet

Convention = Literal["torch", "timm"]
SCALE_KEY = {"torch": "lwd_lr_scale", "timm": "lr_scale"}


@dataclass(frozen=True, slots=True)
class ParamRow:
    """One trainable parameter: where it landed and why.

    ``rule`` is the ``file:line`` of the rule that set its layer id; ``source`` names that file's
    rule set and the plugin distribution and version that shipped it.
    """

    name: str
    layer_id: int
    lr_scale: float
    weight_decay: float
    group: str
    rule: str
    source: str
    numel: int
    ndim: int
    chain: str = ""


@dataclass(frozen=True, slots=True)
class Skipped:
    """A parameter left out of the optimizer, and why (frozen, an override's freeze, below min_scale)."""

    name: str
    reason: str


@dataclass
class LayerSummary:
    """The parameters of one layer id: their scales, count, size, weight decays and rules."""

    layer_id: int
    lr_scales: list[float]
    tensors: int
    numel: int
    weight_decays: list[float]
    rules: list[str]


@dataclass
class Plan:
    """Everything ``resolve()`` decided; ``param_groups`` feed ``torch.optim``, ``params`` explain them."""

    rules: RuleSet
    num_layers: int
    scales: tuple[float, ...]
    param_groups: list[dict[str, Any]]
    params: list[ParamRow]
    skipped: list[Skipped]
    variables: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    allowed_unused: Callable[[], list[str]] = field(default=list, repr=False)
    lr: float | None = None
    chains: dict[str, Plan] = field(default_factory=dict)

    def unmatched_patterns(self) -> list[str]:
        """Every rule, exclude entry or override that matched no parameter, the allowed ones included."""
        return self.unused + self.allowed_unused()

    def layers(self, keep: Callable[[ParamRow], bool] | None = None) -> list[LayerSummary]:
        """One summary per layer id, in id order: what ``lwd-rules explain`` prints (rows ``keep`` accepts)."""
        by_id: dict[int, LayerSummary] = {}
        for row in self.params:
            if keep is not None and not keep(row):
                continue
            entry = by_id.get(row.layer_id)
            if entry is None:
                entry = by_id[row.layer_id] = LayerSummary(row.layer_id, [], 0, 0, [], [])
            entry.tensors += 1
            entry.numel += row.numel
            for values, value in ((entry.lr_scales, row.lr_scale), (entry.weight_decays, row.weight_decay), (entry.rules, row.rule)):
                if value not in values:
                    values.append(value)
        return [by_id[i] for i in sorted(by_id)]

    def fingerprint(self) -> str:
        """A stable hash of the rules and of every parameter's assignment (same on every rank).

        Names are canonical, so a DDP- or ``torch.compile``-wrapped model has the bare model's fingerprint.
        """
        assignments = getattr(self.params, "assignments", None)  # the same lists, without building rows
        if assignments is None:
            names, table, settings_index = row_assignments(self.params, canonicalizer(self.rules.strip_components))
        else:
            names, table, settings_index = assignments()
        payload = {
            "rules": self.rules.data,
            "groups": [[g["group_name"], repr(g["lr_scale"]), repr(g["weight_decay"])] for g in self.param_groups],
            "names": names,
            "settings": table,
            "setting_of_each_name": settings_index,
        }
        text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def optimizer_groups(self, lr: float, convention: Convention = "torch") -> list[dict[str, Any]]:
        """Groups ready for an optimizer constructor, each starting at ``lr × lr_scale``.

        ``torch``: the scale is stored as ``lwd_lr_scale``, so torch, Hugging Face and timm
        schedulers all schedule each group from its own (already scaled) initial lr.
        ``timm``: the scale is stored as ``lr_scale`` and ``initial_lr`` is the base lr, for timm
        schedulers and the reference loop ``group["lr"] = schedule[it] * group["lr_scale"]``;
        torch schedulers would then ignore the scale.
        """
        key = SCALE_KEY[convention]
        out = []
        for group in self.param_groups:
            scale = group["lr_scale"]
            entry = {k: v for k, v in group.items() if k != "lr_scale"}
            entry["params"] = list(group["params"])
            entry[key] = scale
            entry["lr"] = lr * scale
            if convention == "timm":
                entry["initial_lr"] = lr
            out.append(entry)
        return out


Setting = tuple[int, str, str, str]


def row_assignments(rows: Iterable[ParamRow], canonical: Callable[[str], str]) -> tuple[list[str], list[Setting], list[int]]:
    """What ``Plan.fingerprint`` hashes, from rows: each one's canonical name; the distinct
    settings ``(layer id, repr(lr scale), repr(weight decay), group)``, sorted; and each row's
    index into them (a short list of settings and one number per row hash faster than a setting per row)."""
    names = []
    settings = []
    for row in rows:
        names.append(canonical(row.name))
        settings.append((row.layer_id, repr(row.lr_scale), repr(row.weight_decay), row.group))
    table = sorted(set(settings))
    index = {setting: i for i, setting in enumerate(table)}
    return names, table, [index[setting] for setting in settings]

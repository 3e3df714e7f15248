"""Parameters with identical settings → one optimizer group, in a deterministic order with readable names."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Settings:
    """What distinguishes one optimizer group from another."""

    lr_scale: float
    weight_decay: float


@dataclass
class _Group:
    settings: Settings
    params: list[Any] = field(default_factory=list)
    layer_ids: set[int] = field(default_factory=set)


class Grouper:
    """Collects parameters into groups keyed by their settings, in first-seen order of the settings."""

    def __init__(self) -> None:
        self._groups: dict[Settings, _Group] = {}
        self._index: dict[Settings, int] = {}

    def add_many(self, params: list[Any], settings: Settings, layer_id: int) -> int:
        """Put all of ``params`` in the group for ``settings``; returns that group's index."""
        index = self.add_group(settings)
        group = self._groups[settings]
        group.params.extend(params)
        group.layer_ids.add(layer_id)
        return index

    def add_group(self, settings: Settings) -> int:
        """The index of the group for ``settings``, created empty if new."""
        if settings not in self._groups:
            self._groups[settings] = _Group(settings)
            self._index[settings] = len(self._index)
        return self._index[settings]

    def param_groups(self) -> list[dict[str, Any]]:
        """The groups for ``torch.optim``: params, lr_scale, weight_decay, group_name, layer_ids."""
        names = _unique_names([_base_name(g) for g in self._groups.values()])
        return [
            {
                "params": group.params,
                "lr_scale": group.settings.lr_scale,
                "weight_decay": group.settings.weight_decay,
                "group_name": name,
                "layer_ids": sorted(group.layer_ids),
            }
            for name, group in zip(names, self._groups.values())
        ]


def _base_name(group: _Group) -> str:
    ids = sorted(group.layer_ids)
    where = f"layer_{ids[0]}" if len(ids) == 1 else f"layers_{ids[0]}-{ids[-1]}"
    return f"{where}_{'decay' if group.settings.weight_decay > 0 else 'no_decay'}"


def _unique_names(names: list[str]) -> list[str]:
    """Suffix repeated names with ``_2``, ``_3``... (groups that differ by an override's lr_mult)."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return out

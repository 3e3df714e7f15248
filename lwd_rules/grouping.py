"""Parameters with identical settings → one optimizer group, in a deterministic order with readable names."""

from __future__ import annotations

from typing import Any, NamedTuple


class Settings(NamedTuple):
    """What distinguishes one optimizer group from another."""

    lr_scale: float
    weight_decay: float


class Grouper:
    """Collects parameters into groups keyed by their settings, in first-seen order of the settings."""

    def __init__(self) -> None:
        self._index: dict[Settings, int] = {}
        self._params: list[list[Any]] = []
        self._layer_ids: list[set[int]] = []

    def add_many(self, params: list[Any], settings: Settings, layer_id: int) -> int:
        """Put all of ``params`` in the group for ``settings``; returns that group's index."""
        index = self._index.get(settings)
        if index is None:
            index = self._index[settings] = len(self._params)
            self._params.append(list(params))
            self._layer_ids.append({layer_id})
        else:
            self._params[index] += params
            self._layer_ids[index].add(layer_id)
        return index

    def param_groups(self) -> list[dict[str, Any]]:
        """The groups for ``torch.optim``: params, lr_scale, weight_decay, group_name, layer_ids."""
        names = _unique_names([_base_name(settings, ids) for settings, ids in zip(self._index, self._layer_ids)])
        return [
            {
                "params": params,
                "lr_scale": settings.lr_scale,
                "weight_decay": settings.weight_decay,
                "group_name": name,
                "layer_ids": sorted(ids),
            }
            for name, settings, params, ids in zip(names, self._index, self._params, self._layer_ids)
        ]


def _base_name(settings: Settings, layer_ids: set[int]) -> str:
    ids = sorted(layer_ids)
    where = f"layer_{ids[0]}" if len(ids) == 1 else f"layers_{ids[0]}-{ids[-1]}"
    return f"{where}_{'decay' if settings.weight_decay > 0 else 'no_decay'}"


def _unique_names(names: list[str]) -> list[str]:
    """Suffix repeated names with ``_2``, ``_3``... (groups that differ by an override's lr_mult)."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return out

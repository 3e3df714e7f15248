"""Parameters with identical settings → one optimizer group, in a deterministic order with readable names."""

from __future__ import annotations

from typing import Any


class Grouper:
    """Collects parameters into groups keyed by (lr scale, weight decay), in first-seen order."""

    def __init__(self) -> None:
        self._index: dict[tuple[float, float], int] = {}
        self._params: list[list[Any]] = []
        self._layer_ids: list[set[int]] = []

    def add_many(self, params: list[Any], lr_scale: float, weight_decay: float, layer_id: int) -> int:
        """Put all of ``params`` in the group for these settings; returns that group's index."""
        settings = (lr_scale, weight_decay)
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
        ids = [sorted(layer_ids) for layer_ids in self._layer_ids]
        names = _unique_names([_base_name(layers, wd) for layers, (_, wd) in zip(ids, self._index)])
        return [
            {"params": params, "lr_scale": lr_scale, "weight_decay": wd, "group_name": name, "layer_ids": layers}
            for name, (lr_scale, wd), params, layers in zip(names, self._index, self._params, ids)
        ]


def _base_name(layer_ids: list[int], weight_decay: float) -> str:
    where = f"layer_{layer_ids[0]}" if len(layer_ids) == 1 else f"layers_{layer_ids[0]}-{layer_ids[-1]}"
    return f"{where}_{'decay' if weight_decay > 0 else 'no_decay'}"


def _unique_names(names: list[str]) -> list[str]:
    """Suffix repeated names with ``_2``, ``_3``... (groups that differ by an override's lr_mult)."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return out

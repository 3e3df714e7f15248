"""Parameters with identical settings → one optimizer group, in a deterministic order with readable names."""

from __future__ import annotations

from collections.abc import Container, Sequence
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
            self._params.append(params[:])
            self._layer_ids.append({layer_id})
        else:
            self._params[index] += params
            self._layer_ids[index].add(layer_id)
        return index

    def add_keys(self, keys: Sequence[tuple[int, int, float, float]], members: Sequence[list[Any]], scales: Sequence[float], left_out: Container[int]) -> list[int]:
        """``add_many`` for each (layer id, rule, weight decay, lr_mult) key and its parameters, in
        order, at ``scales[layer id] × lr_mult``; returns each key's group index (-1: left out)."""
        add_many = self.add_many
        return [
            -1 if index in left_out else add_many(params, scales[layer_id] * mult, wd, layer_id)
            for index, ((layer_id, _, wd, mult), params) in enumerate(zip(keys, members))
        ]

    def param_groups(self) -> list[dict[str, Any]]:
        """The groups for ``torch.optim``: params, lr_scale, weight_decay, group_name, layer_ids.

        Names read ``layer_3_decay`` or ``layers_0-2_no_decay``; a repeated name (groups that
        differ by an override's lr_mult) gets ``_2``, ``_3``...
        """
        groups = []
        repeats: dict[str, int] = {}
        for (lr_scale, weight_decay), params, ids in zip(self._index, self._params, self._layer_ids):
            kind = "decay" if weight_decay > 0 else "no_decay"
            if len(ids) == 1:
                layers = [*ids]
                name = f"layer_{layers[0]}_{kind}"
            else:
                layers = sorted(ids)
                name = f"layers_{layers[0]}-{layers[-1]}_{kind}"
            if name in repeats:
                repeats[name] += 1
                name = f"{name}_{repeats[name]}"
            else:
                repeats[name] = 1
            groups.append({"params": params, "lr_scale": lr_scale, "weight_decay": weight_decay, "group_name": name, "layer_ids": layers})
        return groups

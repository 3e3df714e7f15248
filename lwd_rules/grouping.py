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

    def add_keys(self, keys: Sequence[tuple[int, int, float, float]], members: Sequence[list[Any]], scales: Sequence[float], left_out: Container[int]) -> list[int]:
        """Put the parameters of each (layer id, rule, weight decay, lr_mult) key, in order, in the
        group for (``scales[layer id]`` × lr_mult, weight decay); returns each key's group index
        (-1: left out)."""
        index, groups, layer_ids = self._index, self._params, self._layer_ids
        out = []
        for position, ((layer_id, _, wd, mult), params) in enumerate(zip(keys, members)):
            if position in left_out:
                out.append(-1)
                continue
            settings = (scales[layer_id] * mult, wd)
            group = index.get(settings)
            if group is None:
                group = index[settings] = len(groups)
                groups.append(params[:])
                layer_ids.append({layer_id})
            else:
                groups[group] += params
                layer_ids[group].add(layer_id)
            out.append(group)
        return out

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

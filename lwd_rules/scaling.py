"""Layer id → lr scale: the decay curve, clamped at ``min_scale``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

Curve = Literal["exponential", "linear", "values"]


def layer_scales(num_layers: int, *, rate: float = 1.0, curve: Curve = "exponential", values: Sequence[float] | None = None) -> list[float]:
    """Scales for ids ``0..num_layers+1``; the last id (the head) gets 1.0 on the built-in curves.

    exponential (the ConvNeXt-V2 / BEiT reference): ``rate ** (num_layers + 1 - i)``.
    linear: from ``rate`` at id 0 up to 1.0 at id ``num_layers + 1`` in equal steps.
    values: the explicit list, which must have ``num_layers + 2`` entries.
    """
    top = num_layers + 1
    if curve == "exponential":
        return [rate ** (top - i) for i in range(top + 1)]
    if curve == "linear":
        return [1.0 - (1.0 - rate) * (top - i) / top for i in range(top + 1)]
    if values is None or len(values) != top + 1:
        have = 0 if values is None else len(values)
        raise ValueError(f"curve 'values' needs {top + 1} values (ids 0..{top}), got {have}")
    return [float(v) for v in values]


def clamp(scales: Sequence[float], min_scale: float) -> list[float]:
    """Raise every scale below ``min_scale`` to it (timm's ``min_scale``)."""
    return [max(scale, min_scale) for scale in scales]

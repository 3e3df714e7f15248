"""Model factories for ``lwd-rules explain --model lwdcli_fixtures.models:<factory>``.

``convnext_mini`` is the official ConvNeXt(-V2) layout (``downsample_layers``, ``stages``, ``norm``,
``head``) with depths [1, 1, 1, 1] and 2 channels, so every layer id, tensor and size can be
written down by hand. Its class name starts with "ConvNeXt", so the ConvNeXt plugin detects it.
"""

from __future__ import annotations

import torch
from torch import nn


class Block(nn.Module):
    """A stand-in ConvNeXt block: a layer-scale vector ``gamma`` (1-D) and one 2-D ``pwconv``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.pwconv = nn.Linear(dim, dim)  # weight (2, 2) = 4, bias 2
        self.gamma = nn.Parameter(torch.ones(dim))  # 2


class ConvNeXtMini(nn.Module):
    """downsample_layers.0 = stem (conv 24 + 2, LN 2 + 2); downsample_layers.1-3 = LN 2 + 2, conv 4 + 2;
    stages.S.0 = one Block (gamma 2, pwconv 4 + 2); norm = LN 2 + 2; head = Linear(2, 3) 6 + 3."""

    def __init__(self, dim: int = 2) -> None:
        super().__init__()
        stem = nn.Sequential(nn.Conv2d(3, dim, kernel_size=2, stride=2), nn.LayerNorm(dim))
        downs = [nn.Sequential(nn.LayerNorm(dim), nn.Conv2d(dim, dim, kernel_size=1)) for _ in range(3)]
        self.downsample_layers = nn.ModuleList([stem, *downs])
        self.stages = nn.ModuleList([nn.Sequential(Block(dim)) for _ in range(4)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 3)


def convnext_mini() -> nn.Module:
    """The hand-checkable ConvNeXt: depths [1, 1, 1, 1], 32 tensors, 105 parameters."""
    return ConvNeXtMini()


def not_a_module() -> str:
    """A factory that returns something that is not a torch module."""
    return "not a module"


def broken() -> nn.Module:
    """A factory that raises."""
    raise RuntimeError("factory exploded")

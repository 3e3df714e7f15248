"""The official BEiT / BEiT-v2 module tree (microsoft/unilm beit/modeling_finetune.py), re-typed small.

Only the parameter names, shapes and ``no_weight_decay()`` matter to lwd-rules; ``forward`` is not
needed. Options cover the layouts the original builds:

- ``use_shared_rel_pos_bias``: one top-level ``rel_pos_bias.relative_position_bias_table``;
- ``use_rel_pos_bias``: a ``blocks.i.attn.relative_position_bias_table`` per block;
- ``use_abs_pos_emb``: ``pos_embed``;
- ``use_mean_pooling``: ``fc_norm`` (and ``norm`` an Identity) instead of a final ``norm``;
- ``init_values > 0``: the 1-D layer scales ``blocks.i.gamma_1`` / ``gamma_2``;
- ``with_mask_token``: the pretraining model's ``mask_token`` (modeling_pretrain.py).
"""

from __future__ import annotations

import torch
from torch import nn


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, window_size: tuple[int, int] | None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = None
            self.v_bias = None
        if window_size:
            distances = (2 * window_size[0] - 1) * (2 * window_size[1] - 1) + 3
            self.relative_position_bias_table = nn.Parameter(torch.zeros(distances, num_heads))
            area = window_size[0] * window_size[1] + 1
            self.register_buffer("relative_position_index", torch.zeros(area, area, dtype=torch.long))
        else:
            self.relative_position_bias_table = None
        self.proj = nn.Linear(dim, dim)


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, init_values: float, window_size) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias, window_size)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        if init_values > 0:
            self.gamma_1 = nn.Parameter(init_values * torch.ones(dim))
            self.gamma_2 = nn.Parameter(init_values * torch.ones(dim))
        else:
            self.gamma_1, self.gamma_2 = None, None


class PatchEmbed(nn.Module):
    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_shape = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.patch_shape[0] * self.patch_shape[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)


class RelativePositionBias(nn.Module):
    def __init__(self, window_size: tuple[int, int], num_heads: int) -> None:
        super().__init__()
        distances = (2 * window_size[0] - 1) * (2 * window_size[1] - 1) + 3
        self.relative_position_bias_table = nn.Parameter(torch.zeros(distances, num_heads))
        area = window_size[0] * window_size[1] + 1
        self.register_buffer("relative_position_index", torch.zeros(area, area, dtype=torch.long))


class VisionTransformer(nn.Module):
    """BEiT's fine-tuning ``VisionTransformer`` (plus the pretraining ``mask_token`` on request)."""

    def __init__(
        self,
        img_size: int = 32,
        patch_size: int = 8,
        in_chans: int = 3,
        num_classes: int = 10,
        embed_dim: int = 16,
        depth: int = 4,
        num_heads: int = 2,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        init_values: float = 0.1,
        use_abs_pos_emb: bool = False,
        use_rel_pos_bias: bool = False,
        use_shared_rel_pos_bias: bool = False,
        use_mean_pooling: bool = True,
        with_mask_token: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if with_mask_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim)) if use_abs_pos_emb else None
        self.pos_drop = nn.Dropout(0.0)
        if use_shared_rel_pos_bias:
            self.rel_pos_bias = RelativePositionBias(self.patch_embed.patch_shape, num_heads)
        else:
            self.rel_pos_bias = None
        window = self.patch_embed.patch_shape if use_rel_pos_bias else None
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, qkv_bias, init_values, window) for _ in range(depth))
        self.norm = nn.Identity() if use_mean_pooling else nn.LayerNorm(embed_dim)
        self.fc_norm = nn.LayerNorm(embed_dim) if use_mean_pooling else None
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def get_num_layers(self) -> int:
        return len(self.blocks)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

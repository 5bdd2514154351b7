"""The two ViT towers of OpenVLA-OFT's fused backbone: DINOv2 ViT-L/14 with registers and SigLIP So400m/14.

Only the blocks whose outputs are read are built: the release takes the second-to-last block's output, without the
final norm, so the last block, the final norm and SigLIP's attention-pool head are never computed (their weights are
skipped at load time). Module names mirror the checkpoint's `vision_backbone.{featurizer,fused_featurizer}.*` keys.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
import torch.nn.functional as F

from ctr_vla_ros.model.attention import KeyValueCache, attend
from ctr_vla_ros.model.config import IMAGE_SIZE, PATCH_SIZE, VisionTowerConfig

LAYER_NORM_EPS = 1e-6


class PatchEmbed(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=PATCH_SIZE, stride=PATCH_SIZE)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.proj(pixels).flatten(2).transpose(1, 2)  # (batch, patches in raster order, width)


class Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, hidden: torch.Tensor, cache: KeyValueCache | None, rows: torch.Tensor | None) -> torch.Tensor:
        batch, tokens, width = hidden.shape
        query, key, value = self.qkv(hidden).view(batch, tokens, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attended = attend(query, key, value, cache, rows)
        return self.proj(attended.transpose(1, 2).reshape(batch, tokens, width))


class Mlp(nn.Module):
    def __init__(self, width: int, mlp_width: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, mlp_width)
        self.fc2 = nn.Linear(mlp_width, width)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(hidden)))


class LayerScale(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.scale_factor = nn.Parameter(torch.ones(width))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden * self.scale_factor


class VisionBlock(nn.Module):
    def __init__(self, config: VisionTowerConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.width, eps=LAYER_NORM_EPS)
        self.attn = Attention(config.width, config.heads)
        self.norm2 = nn.LayerNorm(config.width, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(config.width, config.mlp_width)
        use_layer_scale = config.kind == 'dinov2'
        self.ls1 = LayerScale(config.width) if use_layer_scale else nn.Identity()
        self.ls2 = LayerScale(config.width) if use_layer_scale else nn.Identity()

    def forward(self, hidden: torch.Tensor, cache: KeyValueCache | None = None,
                rows: torch.Tensor | None = None) -> torch.Tensor:
        """`hidden` holds the computed rows only; `rows` are their token indices (see `attention.attend`)."""
        hidden = hidden + self.ls1(self.attn(self.norm1(hidden), cache, rows))
        return hidden + self.ls2(self.mlp(self.norm2(hidden)))


class VisionTower(nn.Module):
    def __init__(self, config: VisionTowerConfig) -> None:
        super().__init__()
        self.config = config
        num_patches = (IMAGE_SIZE // PATCH_SIZE) ** 2
        self.patch_embed = PatchEmbed(config.width)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, config.width))
        if config.kind == 'dinov2':
            self.cls_token = nn.Parameter(torch.zeros(1, 1, config.width))
            self.reg_token = nn.Parameter(torch.zeros(1, config.num_registers, config.width))
        self.blocks = nn.ModuleList(VisionBlock(config) for _ in range(config.computed_depth))

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """(batch, 3, 224, 224) -> (batch, prefix + patches, width); the position embedding covers patches only."""
        patches = self.patch_embed(pixels) + self.pos_embed
        if self.config.kind != 'dinov2':
            return patches
        batch = patches.shape[0]
        return torch.cat([self.cls_token.expand(batch, -1, -1), self.reg_token.expand(batch, -1, -1), patches], 1)

    def forward(self, pixels: torch.Tensor, rows: torch.Tensor | None = None,
                caches: Sequence[KeyValueCache] | None = None) -> torch.Tensor:
        """Features of the computed tokens after the second-to-last block.

        rows: token indices to compute (prefix tokens included), None for all. caches: one per block, holding the
        keys and values of every token; rows not computed keep theirs. Returns (batch, len(rows) or all, width).
        """
        hidden = self.embed(pixels)
        if rows is not None:
            hidden = hidden[:, rows]
        for index, block in enumerate(self.blocks):
            hidden = block(hidden, caches[index] if caches is not None else None, rows)
        return hidden


class FusedVisionBackbone(nn.Module):
    """[DINOv2 | SigLIP] per-patch features (prefix tokens dropped)."""

    def __init__(self, towers: Sequence[VisionTowerConfig]) -> None:
        super().__init__()
        dinov2, siglip = towers
        self.featurizer = VisionTower(dinov2)
        self.fused_featurizer = VisionTower(siglip)

    @property
    def towers(self) -> tuple[VisionTower, VisionTower]:
        return self.featurizer, self.fused_featurizer

    def forward(self, pixel_values: torch.Tensor, patch_rows: torch.Tensor | None = None,
                caches: Sequence[Sequence[KeyValueCache]] | None = None) -> torch.Tensor:
        """pixel_values: (batch, 6, 224, 224), channels 0-2 for DINOv2 and 3-5 for SigLIP.
        patch_rows: patch indices (raster order) to compute, None for all. caches: per tower, one per block.
        Returns (batch, computed patches, dinov2 width + siglip width)."""
        features = []
        for index, tower in enumerate(self.towers):
            prefix = tower.config.num_prefix_tokens
            rows = None
            if patch_rows is not None:
                rows = torch.cat([torch.arange(prefix, device=patch_rows.device), patch_rows + prefix])
            pixels = pixel_values[:, 3 * index:3 * index + 3]
            hidden = tower(pixels, rows, caches[index] if caches is not None else None)
            features.append(hidden[:, prefix:])
        return torch.cat(features, dim=-1)

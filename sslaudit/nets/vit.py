"""Vision Transformers whose encoder can also see only a subset of the patches.

The backbone for SplitMask (El-Nouby et al., "Are Large-scale Datasets
Necessary for Self-Supervised Pre-training?", arXiv 2112.10740): a plain ViT
with no CLS token and no mask tokens. ``encode(x, index)`` runs the blocks on
the patch tokens listed in ``index`` only (each with its own positional
embedding), as SplitMask's encoder does with each half of the image;
``forward`` encodes all patches and mean-pools them, the feature served.

>>> vit = TinyViT(in_channels=1, image_size=28)
>>> vit(torch.rand(2, 1, 28, 28)).shape, vit.encode(torch.rand(2, 1, 28, 28), torch.arange(5).expand(2, 5)).shape
(torch.Size([2, 192]), torch.Size([2, 5, 192]))
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sslaudit.nets.layers import init_transformer_weights


def sincos_position_embedding(grid: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sin-cos embedding ``(grid * grid, dim)`` in row-major patch order (MAE's choice).

    Fixed rather than learned: nothing to fit, which suits small data and short schedules.
    """
    if dim % 4:
        raise ValueError("sin-cos position embedding needs dim divisible by 4")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                            indexing="ij")
    parts = [torch.outer(axis.flatten(), omega) for axis in (ys, xs)]
    return torch.cat([f(p) for p in parts for f in (torch.sin, torch.cos)], dim=1).float()


class Block(nn.Module):
    """Pre-norm transformer block: multi-head self-attention, then a GELU MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError("dim must be divisible by heads")
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        # Plain attention: on CPU, SDPA's flash kernel is several times slower for short sequences in bf16.
        attn = (q * self.scale) @ k.transpose(-2, -1)
        x = x + self.proj((attn.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """ViT on ``image_size``-px images cut into ``patch_size`` patches; ``out_dim`` = ``dim``.

    Inputs of another side are resized to ``image_size`` first (bilinear).
    """

    def __init__(self, *, in_channels: int = 1, image_size: int = 28, patch_size: int = 4, dim: int = 192,
                 depth: int = 6, heads: int = 3, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.image_size, self.patch_size, self.grid = image_size, patch_size, image_size // patch_size
        self.num_patches, self.out_dim = self.grid**2, dim
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, patch_size)
        self.register_buffer("pos_embed", sincos_position_embedding(self.grid, dim), persistent=False)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.apply(init_transformer_weights)
        nn.init.xavier_uniform_(self.patch_embed.weight.view(dim, -1))  # as a linear layer (MAE)
        nn.init.zeros_(self.patch_embed.bias)

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Patch embeddings plus positions, ``(B, num_patches, dim)``, patches in row-major order."""
        if images.shape[-2:] != (self.image_size, self.image_size):
            images = F.interpolate(images, size=(self.image_size,) * 2, mode="bilinear", align_corners=False)
        return self.patch_embed(images).flatten(2).transpose(1, 2) + self.pos_embed

    def encode(self, images: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """Encoded tokens ``(B, n, dim)`` of the patches ``index`` ``(B, n)`` (all patches when None).

        Only the selected tokens enter the transformer: no mask tokens, as in SplitMask and MAE.
        """
        x = self.tokens(images)
        if index is not None:
            x = x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The served feature: all patches encoded, mean-pooled, ``(B, out_dim)``."""
        return self.encode(images).mean(1)


class TinyViT(ViT):
    """ViT for 28-32 px images: patch 4 (7x7 = 49 tokens at 28 px), dim 192, depth 4, 3 heads (1.8 M parameters)."""

    def __init__(self, *, in_channels: int = 1, image_size: int = 28) -> None:
        super().__init__(in_channels=in_channels, image_size=image_size, patch_size=4, dim=192, depth=4, heads=3)


class ViTSmall(ViT):
    """ViT-S (dim 384, depth 12, 6 heads): patch 16 from 112 px up (ViT-S/16), else patch 4.

    At 28 px a 16-px patch does not tile the image, and a 2-px patch carries too
    little for a patch tokenizer, so small images get ViT-S/4 (49 tokens at 28 px).
    """

    def __init__(self, *, in_channels: int = 3, image_size: int = 224) -> None:
        patch = 16 if image_size >= 112 else 4
        super().__init__(in_channels=in_channels, image_size=image_size, patch_size=patch, dim=384, depth=12,
                         heads=6)

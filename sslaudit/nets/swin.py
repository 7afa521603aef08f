"""Swin Transformers (Liu et al., ICCV 2021) as used by EsViT (Li et al., ICLR 2022).

Multi-stage: a patch embedding, then stages of blocks with window attention
(alternate blocks shift the windows by half a window, with a mask so tokens
only attend within their own unshifted region) and patch merging (2x2
neighbours -> one token of twice the width) between stages. No absolute
position embedding, only the learned relative position bias, so any input
size works (EsViT's multi-crop feeds small local crops). ``regions`` returns
the final-stage tokens after the last LayerNorm (EsViT's region features);
``forward`` mean-pools them (EsViT's view feature, the one served).

>>> swin = TinySwin(in_channels=1, image_size=28)
>>> swin(torch.rand(2, 1, 28, 28)).shape, swin.regions(torch.rand(2, 1, 28, 28)).shape
(torch.Size([2, 96]), torch.Size([2, 49, 96]))
"""
from __future__ import annotations

from functools import lru_cache
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from sslaudit.nets.layers import init_transformer_weights


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """``(B, H, W, C)`` -> ``(B * nW, ws * ws, C)``, windows in row-major order."""
    b, h, w, c = x.shape
    return x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, c)


def window_reverse(windows: torch.Tensor, ws: int, b: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B * nW, ws * ws, C)`` -> ``(B, H, W, C)``."""
    return windows.view(b, h // ws, w // ws, ws, ws, -1).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, -1)


@lru_cache(maxsize=64)
def shift_mask(h: int, w: int, ws: int, shift: int) -> torch.Tensor:
    """``(nW, ws², ws²)`` bool, True where two tokens of a shifted window must not attend (Swin's mask)."""
    label = torch.zeros(1, h, w, 1)
    cuts = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
    for i, rows in enumerate(cuts):
        for j, cols in enumerate(cuts):
            label[:, rows, cols] = 3 * i + j
    win = window_partition(label, ws).squeeze(-1)
    return win[:, None, :] != win[:, :, None]


@lru_cache(maxsize=64)
def on_device(make: Callable[..., torch.Tensor], device: torch.device, *args: int) -> torch.Tensor:
    """``make(*args)`` copied to ``device`` once and kept: no host-to-device copy (a sync on CUDA) per step."""
    return make(*args).to(device)


@lru_cache(maxsize=64)
def relative_index(ws: int, table_side: int) -> torch.Tensor:
    """``(ws², ws²)`` indices into a ``(table_side², heads)`` relative-bias table (table_side = 2·window − 1)."""
    ys, xs = torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()])
    rel = coords[:, :, None] - coords[:, None, :] + table_side // 2  # centred: works for any ws <= window
    return rel[0] * table_side + rel[1]


class SwinBlock(nn.Module):
    """Pre-norm block: (shifted-)window multi-head attention with relative position bias, then an MLP."""

    def __init__(self, dim: int, heads: int, window: int, shifted: bool, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.heads, self.window, self.shifted = heads, window, shifted
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.bias_table, std=0.02)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def attention(self, x: torch.Tensor, ws: int, mask: torch.Tensor | None) -> torch.Tensor:
        n, t, c = x.shape  # n = B * nW windows of t = ws² tokens
        q, k, v = self.qkv(x).view(n, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q * (c // self.heads) ** -0.5) @ k.transpose(-2, -1)  # (n, heads, t, t)
        bias = self.bias_table[on_device(relative_index, x.device, ws, 2 * self.window - 1)].permute(2, 0, 1)
        if mask is not None:  # the same for every image: (nW, heads, t, t), broadcast over B
            bias = bias.unsqueeze(0).masked_fill(mask.unsqueeze(1), -100.0)
        attn = (attn.view(-1, *bias.shape) + bias.to(attn.dtype)).view(n, self.heads, t, t)
        return self.proj((attn.softmax(-1) @ v).transpose(1, 2).reshape(n, t, c))

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, _, c = x.shape
        # Swin's rule, applied to the actual map: a window no smaller than the map covers it whole and
        # nothing shifts. (EsViT applies it to the 224-px map only and zero-pads small local-crop maps up
        # to a full window; clamping is our choice: cheaper, and no attention to padding.)
        ws = min(self.window, h, w)
        shift = ws // 2 if self.shifted and min(h, w) > self.window else 0
        y = self.norm1(x).view(b, h, w, c)
        pad_h, pad_w = (-h) % ws, (-w) % ws  # zero padding to whole windows, as EsViT's Swin
        y = F.pad(y, (0, 0, 0, pad_w, 0, pad_h))
        hp, wp = h + pad_h, w + pad_w
        mask = None
        if shift:
            y = torch.roll(y, (-shift, -shift), (1, 2))
            mask = on_device(shift_mask, x.device, hp, wp, ws, shift)
        y = window_reverse(self.attention(window_partition(y, ws), ws, mask), ws, b, hp, wp)
        if shift:
            y = torch.roll(y, (shift, shift), (1, 2))
        x = x + y[:, :h, :w].reshape(b, h * w, c)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """Concatenate each 2x2 neighbourhood (odd sides zero-padded, as EsViT), LayerNorm, linear 4C -> 2C."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm, self.reduce = nn.LayerNorm(4 * dim), nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, int, int]:
        b, _, c = x.shape
        y = F.pad(x.view(b, h, w, c), (0, 0, 0, w % 2, 0, h % 2))
        y = torch.cat([y[:, 0::2, 0::2], y[:, 1::2, 0::2], y[:, 0::2, 1::2], y[:, 1::2, 1::2]], -1)
        h, w = y.shape[1:3]
        return self.reduce(self.norm(y.reshape(b, h * w, 4 * c))), h, w


class Swin(nn.Module):
    """Swin backbone; ``out_dim`` = ``embed_dim · 2^(stages − 1)``. No stochastic depth (EsViT: 0.1)."""

    def __init__(self, *, in_channels: int, image_size: int, patch_size: int, embed_dim: int,
                 depths: tuple[int, ...], heads: tuple[int, ...], window: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if len(depths) != len(heads):
            raise ValueError("depths and heads need one entry per stage")
        self.image_size, self.patch_size = image_size, patch_size
        self.patch_embed = nn.Conv2d(in_channels, embed_dim, patch_size, patch_size)
        self.embed_norm = nn.LayerNorm(embed_dim)
        self.stages, self.merges = nn.ModuleList(), nn.ModuleList()
        dim = embed_dim
        for i, (depth, n_heads) in enumerate(zip(depths, heads)):
            if i:
                self.merges.append(PatchMerging(dim))
                dim *= 2
            self.stages.append(nn.ModuleList(SwinBlock(dim, n_heads, window, d % 2 == 1, mlp_ratio)
                                             for d in range(depth)))
        self.norm, self.out_dim = nn.LayerNorm(dim), dim
        self.apply(init_transformer_weights)

    def regions(self, images: torch.Tensor) -> torch.Tensor:
        """Final-stage tokens after the last LayerNorm, ``(B, T, out_dim)`` in row-major order."""
        x = self.patch_embed(images)
        h, w = x.shape[-2:]
        x = self.embed_norm(x.flatten(2).transpose(1, 2))
        for i, blocks in enumerate(self.stages):
            if i:
                x, h, w = self.merges[i - 1](x, h, w)
            for block in blocks:
                x = block(x, h, w)
        return self.norm(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The served feature: mean of the normalised final tokens, ``(B, out_dim)``."""
        return self.regions(images).mean(1)


class TinySwin(Swin):
    """Swin for 28-32 px: patch 2 (14x14 tokens at 28 px), window 7, dims 48 -> 96, depths (2, 2), heads (2, 4).

    Stage 1 has 2x2 windows (shifted in its second block); stage 2 is 7x7, one
    window, so its attention is global. The 7x7 = 49 final tokens are the regions.
    """

    def __init__(self, *, in_channels: int = 1, image_size: int = 28) -> None:
        super().__init__(in_channels=in_channels, image_size=image_size, patch_size=2, embed_dim=48,
                         depths=(2, 2), heads=(2, 4), window=7)


class SwinT(Swin):
    """Swin-T (embed 96, depths (2, 2, 6, 2), heads (3, 6, 12, 24), window 7), EsViT's main backbone.

    Patch 4 from 112 px up (the paper's setting); below that patch 1, so that a
    28 px image gives 28 -> 14 -> 7 -> 4 token grids (the last 4x4 = 16 regions)
    rather than collapsing to a single token. Our choice; the paper only uses 224 px.
    """

    def __init__(self, *, in_channels: int = 3, image_size: int = 224) -> None:
        super().__init__(in_channels=in_channels, image_size=image_size, patch_size=4 if image_size >= 112 else 1,
                         embed_dim=96, depths=(2, 2, 6, 2), heads=(3, 6, 12, 24), window=7)

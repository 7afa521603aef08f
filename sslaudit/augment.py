"""Batched image augmentation with per-sample random parameters.

Everything runs on the tensors' device in a handful of batched ops: a random
resized crop and horizontal flip as one affine ``grid_sample``, then colour
jitter (brightness, contrast; saturation and hue for RGB) and random grayscale.
No per-image PIL work.

>>> views = augment(torch.rand(8, 1, 28, 28), AugmentConfig())
>>> views.shape
torch.Size([8, 1, 28, 28])
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

_LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True, kw_only=True)
class AugmentConfig:
    """SimCLR-style augmentation; ranges follow torchvision's conventions."""

    crop_scale: tuple[float, float] = (0.2, 1.0)  # area fraction of the crop
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect ratio of the crop
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4  # RGB only
    hue: float = 0.1  # RGB only, fraction of a full turn
    grayscale_p: float = 0.2  # RGB only
    out_size: int | None = None  # output side; None keeps the input size

    def __post_init__(self) -> None:
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {self.crop_scale}")
        for name in ("flip_p", "jitter_p", "grayscale_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be a probability in [0, 1]")
        if not 0 <= self.hue <= 0.5:
            raise ValueError("hue must be in [0, 0.5]")


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device) * (hi - lo) + lo


def random_resized_crop(
    images: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator | None = None
) -> torch.Tensor:
    """Per-sample random resized crop and horizontal flip via one affine grid."""
    n, c, h, w = images.shape
    dev = images.device
    area = _uniform(n, *cfg.crop_scale, gen, dev)
    log_ratio = _uniform(n, math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]), gen, dev)
    ratio = log_ratio.exp()
    crop_w = (area * ratio).sqrt().clamp(max=1.0)  # fraction of the width
    crop_h = (area / ratio).sqrt().clamp(max=1.0)
    centre_x = (torch.rand(n, generator=gen, device=dev) * 2 - 1) * (1 - crop_w)
    centre_y = (torch.rand(n, generator=gen, device=dev) * 2 - 1) * (1 - crop_h)
    flip = torch.where(torch.rand(n, generator=gen, device=dev) < cfg.flip_p, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0] = crop_w * flip
    theta[:, 0, 2] = centre_x
    theta[:, 1, 1] = crop_h
    theta[:, 1, 2] = centre_y
    size = cfg.out_size or h
    grid = F.affine_grid(theta, [n, c, size, size if cfg.out_size else w], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _gray(images: torch.Tensor) -> torch.Tensor:
    if images.shape[1] == 1:
        return images
    weights = images.new_tensor(_LUMA).view(1, 3, 1, 1)
    return (images * weights).sum(1, keepdim=True)


def _rotate_hue(images: torch.Tensor, turn: torch.Tensor) -> torch.Tensor:
    """Rotate the chroma of RGB images in YIQ space by ``turn`` (fractions of 2π)."""
    to_yiq = images.new_tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    yiq = torch.einsum("ij,bjhw->bihw", to_yiq, images)
    angle = turn * 2 * math.pi
    cos, sin = angle.cos().view(-1, 1, 1), angle.sin().view(-1, 1, 1)
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], cos * i - sin * q, sin * i + cos * q], 1)
    return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(to_yiq), yiq)


def color_jitter(images: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample brightness and contrast (and saturation, hue for RGB), applied with ``jitter_p``."""
    n, dev = images.shape[0], images.device
    apply = (torch.rand(n, generator=gen, device=dev) < cfg.jitter_p).view(-1, 1, 1, 1)

    def factor(strength: float) -> torch.Tensor:
        f = _uniform(n, max(0.0, 1 - strength), 1 + strength, gen, dev).view(-1, 1, 1, 1)
        return torch.where(apply, f, torch.ones_like(f))

    out = (images * factor(cfg.brightness)).clamp(0, 1)
    mean = _gray(out).mean(dim=(1, 2, 3), keepdim=True)
    out = ((out - mean) * factor(cfg.contrast) + mean).clamp(0, 1)
    if images.shape[1] == 3:
        gray = _gray(out)
        out = ((out - gray) * factor(cfg.saturation) + gray).clamp(0, 1)
        turn = _uniform(n, -cfg.hue, cfg.hue, gen, dev) * apply.view(-1).float()
        out = _rotate_hue(out, turn).clamp(0, 1)
    return out


def random_grayscale(images: torch.Tensor, p: float, gen: torch.Generator | None = None) -> torch.Tensor:
    """Replace each RGB image by its luminance with probability ``p``."""
    if images.shape[1] != 3 or p == 0:
        return images
    pick = (torch.rand(images.shape[0], generator=gen, device=images.device) < p).view(-1, 1, 1, 1)
    return torch.where(pick, _gray(images).expand_as(images), images)


def augment(images: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator | None = None) -> torch.Tensor:
    """One random view of each image: crop+flip, colour jitter, grayscale. Float in, float out."""
    if not images.is_floating_point():
        raise TypeError("augment expects float images in [0, 1]; call ImageData.as_float() first")
    out = random_resized_crop(images, cfg, gen)
    out = color_jitter(out, cfg, gen)
    return random_grayscale(out, cfg.grayscale_p, gen)

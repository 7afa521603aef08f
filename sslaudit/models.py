"""Encoders: an image → feature module that carries its own input normalisation.

Every encoder takes float images ``(B, C, H, W)`` in ``[0, 1]`` and returns
``(B, dim)`` features, so every caller feeds the same thing.

>>> enc = build_encoder("convnet", InputSpec(channels=1, size=28))
>>> enc(torch.rand(2, 1, 28, 28)).shape
torch.Size([2, 256])
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from numbers import Integral, Real
from typing import Callable

import torch
from torch import nn

from sslaudit.nets.convnet import ConvNet
from sslaudit.nets.resnet import CifarResNet18


@dataclass(frozen=True)
class InputSpec:
    """What an encoder expects: channels, square side, per-channel mean and std."""

    channels: int = 1
    size: int = 28
    mean: tuple[float, ...] = field(default=())
    std: tuple[float, ...] = field(default=())

    def __post_init__(self) -> None:
        for name in ("channels", "size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
                raise ValueError(f"InputSpec {name} must be an int >= 1; got {value!r}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") and value is not None:
                raise ValueError(f"InputSpec {name} must be a sequence of one number per channel; got {value!r}")
            value = (0.5,) * self.channels if value is None or len(value) == 0 else tuple(value)
            object.__setattr__(self, name, value)
            if len(value) != self.channels:
                raise ValueError(f"InputSpec {name} needs one value per channel ({self.channels}); got {list(value)}")
            if not all(isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v) for v in value):
                raise ValueError(f"InputSpec {name} must be finite numbers per channel; got {list(value)}")
        if any(v <= 0 for v in self.std):
            raise ValueError(f"InputSpec std must be positive per channel; got {list(self.std)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "InputSpec":
        return cls(d["channels"], d["size"], tuple(d["mean"]), tuple(d["std"]))


class Encoder(nn.Module):
    """Normalise ``[0, 1]`` images with ``spec`` and run ``backbone`` → ``(B, dim)``."""

    def __init__(self, backbone: nn.Module, spec: InputSpec, dim: int, arch: str = "custom") -> None:
        super().__init__()
        self.backbone, self.spec, self.dim, self.arch = backbone, spec, dim, arch
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone((images - self.mean) / self.std)


def _lazy(module: str, name: str, **defaults: object) -> Callable[..., nn.Module]:
    """A backbone factory defined in another module, imported on first use; it gets ``image_size`` too."""

    def build(**kwargs: object) -> nn.Module:
        import importlib

        return getattr(importlib.import_module(module), name)(**{**defaults, **kwargs})

    build.takes_image_size = True  # type: ignore[attr-defined]
    return build


BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "convnet": ConvNet,
    "convnet-small": lambda in_channels=1: ConvNet(in_channels, (16, 16, 32, 32, 64), expand=128),
    "resnet18": CifarResNet18,
    # Transformers live in their own files (one concept per file).
    "swin-tiny": _lazy("sslaudit.nets.swin", "TinySwin"),  # multi-stage Swin for 28-32 px (EsViT tiny)
    "swin-t": _lazy("sslaudit.nets.swin", "SwinT"),  # Swin-T (EsViT standard)
    "vit-tiny": _lazy("sslaudit.nets.vit", "TinyViT"),  # ViT for 28-32 px (SplitMask tiny)
    "vit-s": _lazy("sslaudit.nets.vit", "ViTSmall"),  # ViT-S/16 (SplitMask standard)
}


def build_encoder(arch: str, spec: InputSpec, **kwargs: object) -> Encoder:
    """A freshly initialised encoder of architecture ``arch`` for inputs ``spec``."""
    if arch not in BACKBONES:
        raise KeyError(f"unknown architecture {arch!r}; choose one of: {', '.join(sorted(BACKBONES))}")
    factory = BACKBONES[arch]
    if getattr(factory, "takes_image_size", False):
        kwargs = {"image_size": spec.size, **kwargs}
    backbone = factory(in_channels=spec.channels, **kwargs)
    return Encoder(backbone, spec, backbone.out_dim, arch)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

"""Encoders: an image → feature module that carries its own input normalisation.

Every encoder takes float images ``(B, C, H, W)`` in ``[0, 1]`` and returns
``(B, dim)`` features, so every caller feeds the same thing.

>>> enc = build_encoder("convnet", InputSpec(channels=1, size=28))
>>> enc(torch.rand(2, 1, 28, 28)).shape
torch.Size([2, 256])
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import nn


@dataclass(frozen=True)
class InputSpec:
    """What an encoder expects: channels, square side, per-channel mean and std."""

    channels: int = 1
    size: int = 28
    mean: tuple[float, ...] = field(default=())
    std: tuple[float, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.mean:
            object.__setattr__(self, "mean", (0.5,) * self.channels)
        if not self.std:
            object.__setattr__(self, "std", (0.5,) * self.channels)
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError("InputSpec mean/std need one value per channel")

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


def _conv_bn_relu(c_in: int, c_out: int, stride: int = 1, kernel: int = 3) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


class ConvNet(nn.Sequential):
    """Small VGG-style convnet for 28–32 px images (the ``tiny`` preset's backbone).

    ``widths``/``strides`` give the 3x3 conv stages; ``expand`` > 0 adds a final
    1x1 conv to that many channels (a cheap way to widen the pooled feature).
    """

    def __init__(
        self,
        in_channels: int = 1,
        widths: tuple[int, ...] = (32, 32, 64, 64, 128),
        strides: tuple[int, ...] = (1, 2, 1, 2, 1),
        expand: int = 256,
    ) -> None:
        layers: list[nn.Module] = []
        c = in_channels
        for width, stride in zip(widths, strides, strict=True):
            layers += _conv_bn_relu(c, width, stride)
            c = width
        if expand:
            layers += _conv_bn_relu(c, expand, 1, kernel=1)
            c = expand
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        super().__init__(*layers)
        self.out_dim = c


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_bn_relu(c_in, c_out, stride),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.skip = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.skip = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


class CifarResNet18(nn.Sequential):
    """ResNet-18 with the CIFAR stem (3x3 conv, stride 1, no max-pool); 512-d output."""

    def __init__(self, in_channels: int = 3) -> None:
        layers: list[nn.Module] = _conv_bn_relu(in_channels, 64)
        c = 64
        for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [_BasicBlock(c, width, stride), _BasicBlock(width, width, 1)]
            c = width
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        super().__init__(*layers)
        self.out_dim = 512


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
    "swin-tiny": _lazy("sslaudit.swin", "TinySwin"),  # multi-stage Swin for 28-32 px (EsViT tiny)
    "swin-t": _lazy("sslaudit.swin", "SwinT"),  # Swin-T (EsViT standard)
    "vit-tiny": _lazy("sslaudit.vit", "TinyViT"),  # ViT for 28-32 px (SplitMask tiny)
    "vit-s": _lazy("sslaudit.vit", "ViTSmall"),  # ViT-S/16 (SplitMask standard)
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


def init_transformer_weights(module: nn.Module) -> None:
    """ViT/Swin/MAE initialisation: truncated-normal (0.02) linears with zero bias, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

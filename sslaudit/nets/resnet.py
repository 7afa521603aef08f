"""ResNet-18 with the CIFAR stem (the ``standard`` preset's convolutional backbone).

>>> CifarResNet18().out_dim
512
"""
from __future__ import annotations

import torch
from torch import nn

from sslaudit.nets.layers import conv_bn_relu


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *conv_bn_relu(c_in, c_out, stride),
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
        layers: list[nn.Module] = conv_bn_relu(in_channels, 64)
        c = 64
        for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [_BasicBlock(c, width, stride), _BasicBlock(width, width, 1)]
            c = width
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        super().__init__(*layers)
        self.out_dim = 512

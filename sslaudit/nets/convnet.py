"""Small VGG-style convnet for 28-32 px images (the ``tiny`` preset's backbone).

>>> ConvNet().out_dim
256
"""
from __future__ import annotations

from torch import nn

from sslaudit.nets.layers import conv_bn_relu


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
            layers += conv_bn_relu(c, width, stride)
            c = width
        if expand:
            layers += conv_bn_relu(c, expand, 1, kernel=1)
            c = expand
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        super().__init__(*layers)
        self.out_dim = c

"""Small building blocks shared by the architectures.

>>> len(conv_bn_relu(1, 8))
3
"""
from __future__ import annotations

from torch import nn


def conv_bn_relu(c_in: int, c_out: int, stride: int = 1, kernel: int = 3) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


def init_transformer_weights(module: nn.Module) -> None:
    """ViT/Swin/MAE initialisation: truncated-normal (0.02) linears with zero bias, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)

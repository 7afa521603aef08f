"""Device helpers: channels-last layout for convolutions changes strides, never values or saved weights."""
from __future__ import annotations

import torch
from torch import nn

from sslaudit.device import fast_layout
from sslaudit.features import embed
from sslaudit.models import InputSpec, build_encoder
from sslaudit.score_cache import encoder_digest


def test_convolutions_go_channels_last_and_answer_the_same():
    torch.manual_seed(0)
    encoder = build_encoder("convnet-small", InputSpec()).eval()
    x = torch.rand(6, 1, 28, 28)
    with torch.no_grad():
        before, digest = encoder(x), encoder_digest(encoder)
    assert fast_layout(encoder) is encoder
    conv = next(m for m in encoder.modules() if isinstance(m, nn.Conv2d) and m.in_channels > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    with torch.no_grad():
        torch.testing.assert_close(encoder(x), before, rtol=1e-5, atol=1e-5)
    assert encoder_digest(encoder) == digest  # the content hash (and so cached scores) ignores strides
    torch.testing.assert_close(embed(encoder, x, mixed_precision=False), before, rtol=1e-5, atol=1e-5)


def test_a_model_without_convolutions_is_left_alone():
    mlp = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    weight = mlp[0].weight
    assert fast_layout(mlp) is mlp and mlp[0].weight is weight and weight.is_contiguous()

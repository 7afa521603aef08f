import torch
from torch import nn

from sslaudit.features import embed, inference_copy
from sslaudit.models import InputSpec, build_encoder


def _trained_bn_encoder() -> nn.Module:
    """A convnet whose BatchNorms hold non-trivial running statistics and affine parameters."""
    torch.manual_seed(0)
    encoder = build_encoder("convnet", InputSpec(channels=1, size=28, mean=(0.5,), std=(0.5,)))
    encoder.train()
    with torch.no_grad():
        for _ in range(3):
            encoder(torch.rand(64, 1, 28, 28) * 2)
        for m in encoder.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return encoder.eval()


def test_inference_copy_folds_batchnorm_and_keeps_outputs():
    encoder = _trained_bn_encoder()
    fused = inference_copy(encoder)
    assert fused is not encoder
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in encoder.modules())  # the original is untouched
    x = torch.rand(32, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), encoder(x), rtol=1e-4, atol=1e-5)


def test_embed_equals_the_plain_forward_and_restores_training_mode():
    encoder = _trained_bn_encoder().train()
    images = (torch.rand(300, 1, 28, 28) * 255).to(torch.uint8)
    feats = embed(encoder, images, mixed_precision=False)
    assert encoder.training
    with torch.no_grad():
        expected = encoder.eval()(images.float() / 255)
    torch.testing.assert_close(feats, expected, rtol=1e-4, atol=1e-5)


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if float(x.mean()) > 2:  # data-dependent control flow: torch.fx cannot trace it
            x = x * 0
        return self.bn(self.conv(x)).mean((2, 3))


def test_untraceable_encoders_run_unfused():
    model = _Untraceable()
    assert inference_copy(model) is model and not model.training
    assert embed(model, torch.rand(5, 1, 8, 8)).shape == (5, 4)

"""Barlow Twins: the loss against its formula written out plainly, the projector, and a short run."""
import dataclasses

import pytest
import torch
from torch import nn

from sslaudit import registry
from sslaudit.data import ImageData, load_dataset
from sslaudit.victims.barlow_twins import (
    PRESETS, BarlowTwins, BarlowTwinsConfig, Projector, barlow_twins_loss, solarize,
)


def reference_loss(z1, z2, lambd, eps=1e-5):
    """Σ_i (1 - C_ii)² + λ Σ_{i≠j} C_ij² with C_ij = (1/N) Σ_b â_bi b̂_bj,

    â = (a - mean) / sqrt(biased variance + eps) per dimension, over the batch.
    """
    n, d = z1.shape

    def standardise(z):
        out = torch.empty(n, d, dtype=torch.float64)
        for k in range(d):
            column = [float(z[b, k]) for b in range(n)]
            mean = sum(column) / n
            var = sum((x - mean) ** 2 for x in column) / n
            for b in range(n):
                out[b, k] = (column[b] - mean) / (var + eps) ** 0.5
        return out

    a, b = standardise(z1), standardise(z2)
    total = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(float(a[k, i] * b[k, j]) for k in range(n)) / n
            total += (1 - c) ** 2 if i == j else lambd * c**2
    return total


@pytest.mark.parametrize("lambd", [0.0051, 0.5])
def test_loss_matches_formula(lambd):
    torch.manual_seed(0)
    z1, z2 = torch.randn(7, 5) * 3 + 1, torch.randn(7, 5)
    expected = reference_loss(z1.double(), z2.double(), lambd)
    assert barlow_twins_loss(z1, z2, lambd).item() == pytest.approx(expected, rel=1e-5)


def test_loss_is_invariant_to_per_dimension_scale_and_shift():
    torch.manual_seed(1)
    z1, z2 = torch.randn(32, 8), torch.randn(32, 8)
    scale, shift = torch.rand(8) * 10 + 0.1, torch.randn(8) * 5
    base = barlow_twins_loss(z1, z2).item()
    assert barlow_twins_loss(z1 * scale + shift, z2).item() == pytest.approx(base, rel=1e-4)
    assert barlow_twins_loss(z1, 7 * z2 - 2).item() == pytest.approx(base, rel=1e-4)
    assert barlow_twins_loss(z2, z1).item() == pytest.approx(base, rel=1e-5)  # C of swapped views is Cᵀ


def test_loss_vanishes_for_identical_decorrelated_views():
    torch.manual_seed(2)
    centred = torch.randn(64, 16, dtype=torch.float64)
    q, _ = torch.linalg.qr(centred - centred.mean(0))  # orthonormal, zero-mean columns
    z = (q * 64**0.5).float()  # unit variance: C = I
    assert barlow_twins_loss(z, z).item() < 1e-6
    noisy = torch.randn(64, 16)
    assert barlow_twins_loss(noisy, noisy) < barlow_twins_loss(noisy, torch.randn(64, 16))


def test_loss_stays_float32_under_bf16_autocast():
    torch.manual_seed(3)
    z1, z2 = torch.randn(64, 32), torch.randn(64, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = barlow_twins_loss(z1, z2)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(barlow_twins_loss(z1, z2).item(), rel=1e-5)


def test_projector_is_three_bias_free_layers():
    head = Projector(32, 48)
    assert head(torch.randn(5, 32)).shape == (5, 48)
    linears = [m for m in head if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(32, 48), (48, 48), (48, 48)]
    assert all(m.bias is None for m in linears)
    assert sum(isinstance(m, nn.BatchNorm1d) for m in head) == 2


def test_solarize_inverts_bright_pixels_only():
    x = torch.tensor([0.1, 0.5, 0.9]).view(1, 1, 1, 3)
    assert torch.allclose(solarize(x, 1.0), torch.tensor([0.1, 0.5, 0.1]).view(1, 1, 1, 3))
    assert solarize(x, 0.0) is x


def test_presets_and_registration():
    assert registry.get_victim("barlow_twins") is BarlowTwins
    assert PRESETS["tiny"].arch == "convnet" and PRESETS["standard"].arch == "resnet18"
    assert PRESETS["standard"].proj_dim == 8192
    with pytest.raises(ValueError):
        BarlowTwinsConfig(lambd=0.0)


QUICK = dataclasses.replace(
    PRESETS["tiny"], arch="convnet-small", proj_dim=128,
    train=dataclasses.replace(PRESETS["tiny"].train, epochs=3, batch_size=64, warmup_epochs=0.5),
)


def test_short_run_on_fashion_mnist_lowers_the_loss(needs_fmnist):
    data = load_dataset("fashion-mnist", "train").subset(slice(0, 512))
    loss = BarlowTwins.train(data, QUICK, progress=False, device=torch.device("cpu")).card["history"]["loss"]
    assert len(loss) == 3 and loss[-1] < 0.8 * loss[0]  # measured: 73 -> 35


def test_short_run_on_synthetic_images_yields_a_victim():
    low = torch.rand(128, 1, 7, 7, generator=torch.Generator().manual_seed(0))
    images = torch.nn.functional.interpolate(low, size=28, mode="bilinear").mul(255).to(torch.uint8)
    data = ImageData(images, torch.zeros(128, dtype=torch.long), "synthetic")
    victim = BarlowTwins.train(data, dataclasses.replace(QUICK, train=dataclasses.replace(QUICK.train, epochs=1)),
                               progress=False, device=torch.device("cpu"))
    card = victim.card
    assert card["method"] == "barlow_twins" and card["arch"] == "convnet-small" and card["epochs"] == 1
    assert card["config"]["lambd"] == 0.0051 and card["config"]["proj_dim"] == 128
    with torch.no_grad():
        assert victim.encoder(torch.rand(2, 1, 28, 28)).shape == (2, victim.encoder.dim)

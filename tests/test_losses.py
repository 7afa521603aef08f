"""Each loss against the formula written out plainly, on random inputs."""
import math

import pytest
import torch

from sslaudit.attacks.direct_extraction import info_nce_loss, mse_loss
from sslaudit.victims.simclr import nt_xent_loss


def cos(a, b):
    return float(a @ b / (a.norm() * b.norm()))


def reference_pairwise_nce(views, n, temperature):
    """(1/2N) Σ_a -log(exp(sim(a, p(a))/τ) / Σ_{k≠a} exp(sim(a, k)/τ)) with p(a) = a ± N."""
    total = 0.0
    for a in range(2 * n):
        partner = a + n if a < n else a - n
        numerator = math.exp(cos(views[a], views[partner]) / temperature)
        denominator = sum(math.exp(cos(views[a], views[k]) / temperature) for k in range(2 * n) if k != a)
        total += -math.log(numerator / denominator)
    return total / (2 * n)


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_nt_xent_matches_formula(temperature):
    torch.manual_seed(0)
    z1, z2 = torch.randn(6, 5), torch.randn(6, 5)
    expected = reference_pairwise_nce(torch.cat([z1, z2]).double(), 6, temperature)
    assert nt_xent_loss(z1, z2, temperature).item() == pytest.approx(expected, rel=1e-5)


def test_nt_xent_is_low_for_identical_views():
    z = torch.randn(8, 16)
    assert nt_xent_loss(z, z, 0.1) < nt_xent_loss(z, torch.randn(8, 16), 0.1)


@pytest.mark.parametrize("temperature", [0.07, 0.25])
def test_info_nce_matches_dziedzic_formula(temperature):
    torch.manual_seed(1)
    s, v = torch.randn(5, 7), torch.randn(5, 7)
    expected = reference_pairwise_nce(torch.cat([s, v]).double(), 5, temperature)
    assert info_nce_loss(s, v, temperature).item() == pytest.approx(expected, rel=1e-5)


def test_info_nce_gradient_reaches_only_the_stolen_side():
    s = torch.randn(4, 3, requires_grad=True)
    v = torch.randn(4, 3)
    info_nce_loss(s, v).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_mse_matches_formula():
    torch.manual_seed(2)
    s, v = torch.randn(4, 3), torch.randn(4, 3)
    expected = sum(float((s[i] - v[i]).pow(2).sum()) for i in range(4)) / (4 * 3)
    assert mse_loss(s, v).item() == pytest.approx(expected, rel=1e-6)

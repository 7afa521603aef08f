"""Each loss against the formula written out plainly, on random inputs."""
import math

import pytest
import torch

from sslaudit.attacks.direct_extraction import (DirectExtraction, answer_statistics, info_nce_loss, mse_loss,
                                               soft_nn_loss, wasserstein_loss)
from sslaudit.losses import nt_xent_loss


def cos(a, b):
    return a @ b / (a.norm() * b.norm())


def reference_pairwise_nce(views, n, temperature):
    """(1/2N) Σ_a -log(exp(sim(a, p(a))/τ) / Σ_{k≠a} exp(sim(a, k)/τ)) with p(a) = a ± N.

    Written with loops over rows of ``views`` (2N, d) in torch ops, so autograd gives the formula's gradient.
    """
    total = 0.0
    for a in range(2 * n):
        partner = a + n if a < n else a - n
        numerator = torch.exp(cos(views[a], views[partner]) / temperature)
        denominator = sum(torch.exp(cos(views[a], views[k]) / temperature) for k in range(2 * n) if k != a)
        total = total - torch.log(numerator / denominator)
    return total / (2 * n)


def formula_gradients(formula, *tensors):
    """d formula(*tensors) / d each tensor, by autograd through the plainly written formula, in float64."""
    leaves = [t.detach().double().requires_grad_(True) for t in tensors]
    return torch.autograd.grad(formula(*leaves), leaves)


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_nt_xent_matches_formula(temperature):
    torch.manual_seed(0)
    z1, z2 = torch.randn(6, 5), torch.randn(6, 5)
    expected = float(reference_pairwise_nce(torch.cat([z1, z2]).double(), 6, temperature))
    assert nt_xent_loss(z1, z2, temperature).item() == pytest.approx(expected, rel=1e-5)


def test_nt_xent_is_low_for_identical_views():
    z = torch.randn(8, 16)
    assert nt_xent_loss(z, z, 0.1) < nt_xent_loss(z, torch.randn(8, 16), 0.1)


@pytest.mark.parametrize("temperature", [0.07, 0.25])
def test_info_nce_matches_dziedzic_formula(temperature):
    torch.manual_seed(1)
    s, v = torch.randn(5, 7), torch.randn(5, 7)
    expected = float(reference_pairwise_nce(torch.cat([s, v]).double(), 5, temperature))
    assert info_nce_loss(s, v, temperature).item() == pytest.approx(expected, rel=1e-5)


def test_nt_xent_gradient_is_the_formulas_on_both_views():
    """SimCLR trains both views through NT-Xent: neither side may be detached, and both gradients are the
    formula's (a stop-gradient on either half, or on the denominator, leaves the value alone but not these)."""
    torch.manual_seed(7)
    z1 = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    nt_xent_loss(z1, z2, 0.2).backward()
    want1, want2 = formula_gradients(lambda a, b: reference_pairwise_nce(torch.cat([a, b]), 5, 0.2), z1, z2)
    assert z1.grad is not None and z2.grad is not None
    assert torch.allclose(z1.grad, want1, rtol=1e-4, atol=1e-6)
    assert torch.allclose(z2.grad, want2, rtol=1e-4, atol=1e-6)


def test_info_nce_gradient_on_the_stolen_side_is_the_formulas():
    """The stolen side's gradient is the formula's whether or not the victim side needs one. The loss does
    not detach the victim (it is NT-Xent over both); in an attack the victim's answers are constants from the
    API, and test_cont_steal checks that a steal sends no gradient to the victim's parameters."""
    torch.manual_seed(8)
    s = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    v = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    info_nce_loss(s, v, 0.1).backward()
    want_s, _ = formula_gradients(lambda a, b: reference_pairwise_nce(torch.cat([a, b]), 4, 0.1), s, v)
    assert s.grad is not None and torch.allclose(s.grad, want_s, rtol=1e-4, atol=1e-6)
    s_only = s.detach().clone().requires_grad_(True)
    info_nce_loss(s_only, v.detach(), 0.1).backward()  # the attack's case: answers that need no gradient
    assert torch.allclose(s_only.grad, want_s, rtol=1e-4, atol=1e-6)


def test_mse_matches_formula():
    torch.manual_seed(2)
    s, v = torch.randn(4, 3), torch.randn(4, 3)
    expected = sum(float((s[i] - v[i]).pow(2).sum()) for i in range(4)) / (4 * 3)
    assert mse_loss(s, v).item() == pytest.approx(expected, rel=1e-6)


def test_standardised_mse_weights_each_dimension_by_its_answer_variance():
    torch.manual_seed(3)
    answers = torch.randn(50, 3) * torch.tensor([2.0, 1.0, 0.5]) + 5
    mean, std = answer_statistics(answers)
    assert torch.allclose(std, answers.std(0))  # no dimension is below the floor here
    s, v = torch.randn(4, 3), answers[:4]
    expected = sum(float(((s[i, j] - v[i, j]) / answers[:, j].std()) ** 2) for i in range(4) for j in range(3)) / 12
    got = DirectExtraction(loss="mse", standardize=True).objective(s, v, (mean, std))
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_answer_statistics_floor_dead_units():
    answers = torch.cat([torch.randn(20, 2), torch.zeros(20, 1)], 1)  # a dead (always-zero) unit
    _, std = answer_statistics(answers, floor=0.05)
    assert std[2] == pytest.approx(0.05 * float(answers.std(0).mean()))


@pytest.mark.parametrize("temperature", [1.0, 100.0])
def test_soft_nn_matches_frosst_formula(temperature):
    torch.manual_seed(4)
    s, v = torch.randn(5, 6) * 2, torch.randn(5, 6) * 2
    z, n = torch.cat([s, v]).double(), 5
    total = 0.0
    for a in range(2 * n):
        partner = a + n if a < n else a - n
        dist = [float((z[a] - z[b]).pow(2).sum()) for b in range(2 * n)]
        numerator = math.exp(-dist[partner] / temperature)
        denominator = sum(math.exp(-dist[b] / temperature) for b in range(2 * n) if b != a)
        total += -math.log(1e-9 + numerator / denominator)
    assert soft_nn_loss(s, v, temperature).item() == pytest.approx(total / (2 * n), rel=1e-5)


def test_soft_nn_prefers_the_copy():
    torch.manual_seed(5)
    v = torch.randn(8, 4) * 3
    assert soft_nn_loss(v.clone(), v, 1.0) < soft_nn_loss(torch.randn(8, 4) * 3, v, 1.0)


def test_wasserstein_matches_cumulative_histogram_formula():
    torch.manual_seed(6)
    s, v = torch.rand(4, 5), torch.rand(4, 5)
    total = 0.0
    for i in range(4):
        cs, cv = 0.0, 0.0
        for j in range(5):
            cs += float(s[i, j] / s[i].sum())
            cv += float(v[i, j] / v[i].sum())
            total += abs(cs - cv)
    assert wasserstein_loss(s, v).item() == pytest.approx(total / 4, rel=1e-5)
    assert wasserstein_loss(v, v).item() == pytest.approx(0.0, abs=1e-6)
    assert wasserstein_loss(3 * v, v).item() == pytest.approx(0.0, abs=1e-6)  # scale-free by construction

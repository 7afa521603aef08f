import math

import pytest
import torch

from sslaudit.evaluate import fidelity, gain_recovered, linear_cka, transfer_ratio
from sslaudit.probe import knn_accuracy, linear_probe_accuracy, select_l2


def clusters(n_per_class, classes, dim, spread, seed):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(99)) * 3
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    return centres[labels] + spread * torch.randn(len(labels), dim, generator=gen), labels


def test_linear_probe_separates_separable_features():
    xtr, ytr = clusters(40, 5, 16, 0.5, seed=0)
    xte, yte = clusters(20, 5, 16, 0.5, seed=1)
    assert linear_probe_accuracy(xtr, ytr, xte, yte) == 1.0


def test_linear_probe_is_at_chance_on_noise():
    gen = torch.Generator().manual_seed(0)
    xtr, xte = torch.randn(400, 8, generator=gen), torch.randn(400, 8, generator=gen)
    ytr, yte = torch.randint(0, 4, (400,), generator=gen), torch.randint(0, 4, (400,), generator=gen)
    assert abs(linear_probe_accuracy(xtr, ytr, xte, yte) - 0.25) < 0.08


def test_linear_probe_ignores_feature_scale():
    xtr, ytr = clusters(30, 3, 8, 2.0, seed=0)
    xte, yte = clusters(30, 3, 8, 2.0, seed=1)
    a = linear_probe_accuracy(xtr, ytr, xte, yte, l2=1e-3)
    b = linear_probe_accuracy(xtr * 1000 + 5, ytr, xte * 1000 + 5, yte, l2=1e-3)
    assert a == pytest.approx(b)


def test_l2_selection_regularises_more_when_overfitting_is_easy():
    gen = torch.Generator().manual_seed(0)
    # 40 samples in 400 dims: only dim 0 carries the label, the rest invite overfitting.
    y = torch.arange(40) % 2
    noisy = torch.randn(40, 400, generator=gen)
    noisy[:, 0] += 1.5 * (2 * y - 1)
    l2_noisy, w = select_l2(noisy, y, 2)
    assert w.shape == (401, 2)
    # 4,000 samples, 2 dims: the label is in x0 - x1 (a shared nuisance cancels), which a heavily
    # regularised probe (w ∝ class-mean difference) misses.
    y_big = torch.arange(4000) % 2
    nuisance = 3 * torch.randn(4000, generator=gen)
    clean = torch.stack([0.5 * (2 * y_big - 1) + nuisance, nuisance + 0.05 * torch.randn(4000, generator=gen)], 1)
    l2_clean, _ = select_l2(clean, y_big, 2)
    assert l2_noisy > l2_clean


def test_knn_on_clusters_and_weighting():
    xtr, ytr = clusters(50, 4, 8, 0.3, seed=0)
    xte, yte = clusters(10, 4, 8, 0.3, seed=1)
    assert knn_accuracy(xtr, ytr, xte, yte, k=20) == 1.0
    # k larger than the bank is clipped
    assert knn_accuracy(xtr[:5], ytr[:5], xte, yte, k=200) == knn_accuracy(xtr[:5], ytr[:5], xte, yte, k=5)


def test_knn_prefers_closer_neighbours():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[1.0, 0.05]])
    # two votes for class 1 at cosine ~0.05 lose to one at ~1 with T = 0.1
    assert knn_accuracy(bank, labels, query, torch.tensor([0]), k=3, temperature=0.1) == 1.0


def test_cka_is_one_for_itself_and_invariant_to_rotation_and_scale():
    x = torch.randn(200, 10)
    q, _ = torch.linalg.qr(torch.randn(10, 10))
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, 3 * x @ q + 1) == pytest.approx(1.0)
    assert linear_cka(x, torch.randn(200, 10)) < 0.2


def test_cka_matches_plain_formula():
    x, y = torch.randn(50, 4).double(), torch.randn(50, 6).double()
    xc, yc = x - x.mean(0), y - y.mean(0)
    hsic = lambda a, b: torch.trace(a @ a.T @ b @ b.T)  # noqa: E731
    expected = hsic(xc, yc) / torch.sqrt(hsic(xc, xc) * hsic(yc, yc))
    assert linear_cka(x, y) == pytest.approx(float(expected))


def test_fidelity_cosine_only_when_spaces_match():
    x = torch.randn(20, 8)
    assert fidelity(x, x)["cosine"] == pytest.approx(1.0)
    assert fidelity(x, torch.randn(20, 5))["cosine"] is None


def test_ratios():
    assert transfer_ratio(0.8, 0.9) == pytest.approx(0.8 / 0.9)
    assert gain_recovered(0.85, 0.88, 0.82) == pytest.approx(0.5)
    assert math.isnan(gain_recovered(0.8, 0.8, 0.8))


@pytest.mark.parametrize("l2", [1e-3, 1e-1])
def test_logistic_fit_reaches_the_stationary_point_of_the_penalised_cross_entropy(l2):
    """The hand-written gradient must minimise the objective autograd differentiates independently."""
    from sslaudit.probe import fit_logistic

    torch.manual_seed(0)
    x, y = torch.randn(300, 6), torch.randint(0, 4, (300,))
    w = fit_logistic(x, y, l2, 4).requires_grad_(True)
    x1 = torch.cat([x, torch.ones(300, 1)], 1)
    objective = torch.nn.functional.cross_entropy(x1 @ w, y) + 0.5 * l2 * w[:-1].pow(2).sum()
    objective.backward()
    assert w.grad.abs().max() < 1e-4
    assert objective.item() < torch.nn.functional.cross_entropy(x1 @ torch.zeros(7, 4), y).item() - 0.01

"""The fixed evaluation protocol (DESIGN.md), checked against independent computations.

- the random-init floor is an encoder of the *stolen* architecture built with the run's seed;
- the attacker's pool and the probes' test split share no image;
- the linear probe standardises with the training statistics only;
- the sybil's ridge is chosen by the leave-one-out error a brute-force refit gives.
"""
import dataclasses
import math

import pytest
import torch
from test_attack import QUICK, pool, smooth_images

import sslaudit.probe as probe
from sslaudit.attacks.direct_extraction import DirectExtraction
from sslaudit.attacks.sybil import RIDGE_GRID, fit_affine_map
from sslaudit.audit import steal
from sslaudit.data import ImageData
from sslaudit.evaluate import METRICS, evaluate_encoder
from sslaudit.models import InputSpec, build_encoder
from sslaudit.probe import linear_probe_accuracy
from sslaudit.tasks import DownstreamTask, attack_pool, downstream_task, stratified_index, victim_training_data
from sslaudit.victim import Victim


# --- the random-init floor ------------------------------------------------------------------------------


def synthetic_task(n_train=200, n_test=100):
    """Smooth random images labelled by their brightest quadrant (4 classes): a task random features
    solve in part, and on which different random encoders score differently."""
    low = torch.rand(n_train + n_test, 1, 2, 2, generator=torch.Generator().manual_seed(11))
    labels = low.flatten(1).argmax(1)
    images = torch.nn.functional.interpolate(low, size=28, mode="bilinear", align_corners=False)
    images = (images + 0.3 * smooth_images(len(images), seed=12)).clamp(0, 1).mul(255).round().to(torch.uint8)
    train = ImageData(images[:n_train], labels[:n_train], "synthetic-train")
    test = ImageData(images[n_train:], labels[n_train:], "synthetic-test")
    return DownstreamTask("synthetic", train, test, stratified_index(train.labels, 5, seed=0))


def scores_of(arch, seed, task):
    torch.manual_seed(seed)
    scores = evaluate_encoder(build_encoder(arch, InputSpec()), task)
    return {m: scores[m] for m in METRICS}


@pytest.mark.slow
def test_the_floor_is_a_fresh_encoder_of_the_stolen_arch_built_with_the_runs_seed(monkeypatch, tmp_path):
    monkeypatch.setenv("SSLAUDIT_CACHE", str(tmp_path))  # no scores from earlier runs
    task = synthetic_task()
    torch.manual_seed(1)
    victim = Victim(build_encoder("convnet", InputSpec()), {"method": "random", "arch": "convnet", "scores": {}})
    attack = DirectExtraction(loss="mse", stolen_arch="convnet-small", augment_stolen=False,
                              train=dataclasses.replace(QUICK, epochs=1))  # not the default arch ("convnet")
    report = steal(victim, attack, pool(64), 64, task, seed=3).to_dict()
    assert report["floor"]["arch"] == report["stolen"]["arch"] == "convnet-small"
    expected = scores_of("convnet-small", 3, task)
    assert {m: report["floor"][m] for m in METRICS} == pytest.approx(expected, abs=1e-9)
    # the check can tell: another seed, or the victim's (= the default) architecture, scores differently here
    for arch, seed in [("convnet-small", 0), ("convnet", 3)]:
        assert scores_of(arch, seed, task) != expected, (arch, seed)


# --- the data splits ------------------------------------------------------------------------------------


def image_set(data):
    return {bytes(row) for row in data.images.flatten(1).numpy()}


def test_the_attackers_pool_shares_no_image_with_the_probes_test_split_or_the_victims_training(needs_fmnist):
    attack_images = image_set(attack_pool("fashion-mnist"))
    assert len(attack_images) == 5000
    probe_test = image_set(downstream_task().test)
    assert len(probe_test) == 5000
    assert not attack_images & probe_test
    assert image_set(downstream_task(5000, 500).test) <= probe_test  # the quick tasks test on a part of it
    assert not attack_images & image_set(victim_training_data())  # the victim never saw the pool either


# --- standardisation ------------------------------------------------------------------------------------


def two_classes(n, seed):
    """Class y at x_0 = 2y - 1 (noise 0.3), three noise dimensions: the boundary is x_0 = 0."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = 0.3 * torch.randn(n, 4, generator=gen)
    x[:, 0] += 2 * y - 1
    return x, y


def test_the_probe_standardises_test_features_with_the_training_statistics():
    """Shifting the test features moves them relative to the boundary learned on train, so a probe that
    standardises with train's statistics predicts every shifted point as class 1; one that standardised the
    test split with its own statistics would undo the shift and still score ~100 %."""
    xtr, ytr = two_classes(200, seed=0)
    xte, yte = two_classes(200, seed=1)
    assert linear_probe_accuracy(xtr, ytr, xte, yte, l2=1e-3) > 0.95
    shift = torch.tensor([3.0, 0.0, 0.0, 0.0])  # class 0 lands at x_0 = 2 > 0, past the train boundary
    assert linear_probe_accuracy(xtr, ytr, xte + shift, yte, l2=1e-3) == pytest.approx(0.5)
    assert linear_probe_accuracy(xtr, ytr, xte - shift, yte, l2=1e-3) == pytest.approx(0.5)  # all class 0


@pytest.mark.skipif(not hasattr(probe, "_standardise"), reason="sslaudit.probe._standardise no longer exists")
def test_standardise_uses_the_first_tensors_mean_and_std_for_all():
    gen = torch.Generator().manual_seed(0)
    train = torch.randn(50, 3, generator=gen) * torch.tensor([1.0, 2.0, 5.0]) + 4
    test = torch.randn(30, 3, generator=gen) * 10 - 7  # other statistics entirely
    got_train, got_test = probe._standardise(train, test)
    mean, std = train.mean(0), train.std(0)
    assert torch.allclose(got_train, (train - mean) / std, atol=1e-5)
    assert torch.allclose(got_test, (test - mean) / std, atol=1e-5)


# --- the sybil's leave-one-out ridge --------------------------------------------------------------------


def brute_force_loo(x, y, rel, prior):
    """sqrt(Σ_i ||y_i - (x_i W₋ᵢ + b₋ᵢ)||²) / ||y - ȳ||, each (W₋ᵢ, b₋ᵢ) refitted without row i:

    min over W, b of Σ_{j≠i} ||x_j W + b - y_j||² + λ ||W - P||², b unpenalised, with P = I or 0 and
    λ = rel × trace(XcᵀXc) / d from all rows (the same λ for every refit). For a fixed W the best b is
    ȳ₋ᵢ - x̄₋ᵢ W, which leaves (Xcᵀ Xc + λ I) W = Xcᵀ Yc + λ P on the n - 1 rows centred on their means.
    """
    x, y = x.double(), y.double()
    n, d = x.shape
    lam = rel * float((x - x.mean(0)).pow(2).sum()) / d
    p = torch.eye(d, y.shape[1], dtype=x.dtype) if prior == "identity" else torch.zeros(d, y.shape[1], dtype=x.dtype)
    squared = 0.0
    for i in range(n):
        keep = torch.arange(n) != i
        mx, my = x[keep].mean(0), y[keep].mean(0)
        xc, yc = x[keep] - mx, y[keep] - my
        w = torch.linalg.solve(xc.T @ xc + lam * torch.eye(d, dtype=x.dtype), xc.T @ yc + lam * p)
        squared += float((x[i] @ w + (my - mx @ w) - y[i]).pow(2).sum())
    return math.sqrt(squared) / float((y - y.mean(0)).norm())


def anchors(n, d=8, noise=0.3, seed=0):
    """Another account's anchor answers x and account 1's y = x A + b + noise, A near the identity."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen)
    a = torch.eye(d) + 0.3 * torch.randn(d, d, generator=gen) / math.sqrt(d)
    return x, x @ a + torch.randn(d, generator=gen) + noise * torch.randn(n, d, generator=gen)


@pytest.mark.parametrize("prior", ["identity", "zero"])
def test_closed_form_leave_one_out_is_the_brute_force_refit(prior):
    x, y = anchors(16)  # more anchors than dimensions + 1
    brute = [brute_force_loo(x, y, rel, prior) for rel in RIDGE_GRID]
    for rel, want in zip(RIDGE_GRID, brute):
        assert fit_affine_map(x, y, ridge=rel, prior=prior)[2]["loo_error"] == pytest.approx(want, rel=1e-6), rel
    best = min(range(len(RIDGE_GRID)), key=brute.__getitem__)
    assert 0 < best < len(RIDGE_GRID) - 1  # an interior choice: neither end of the grid wins by default
    _, _, info = fit_affine_map(x, y, prior=prior)
    assert info["ridge"] == RIDGE_GRID[best]
    assert info["loo_error"] == pytest.approx(brute[best], rel=1e-6)


def test_closed_form_leave_one_out_with_fewer_anchors_than_dimensions():
    x, y = anchors(6)  # 6 anchors for an 8-d map: the small-budget regime the sybil docstring describes
    brute = [brute_force_loo(x, y, rel, "identity") for rel in RIDGE_GRID]
    _, _, info = fit_affine_map(x, y)
    assert info["ridge"] == RIDGE_GRID[min(range(len(RIDGE_GRID)), key=brute.__getitem__)]
    assert info["loo_error"] == pytest.approx(min(brute), rel=1e-6)

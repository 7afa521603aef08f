"""The few-label probe's k-fold L2 choice, the batched fits behind it, and the label-draw spread."""
import pytest
import torch
import torch.nn.functional as F

from sslaudit.data import ImageData
from sslaudit.evaluate import evaluate_features, few_label_scores
from sslaudit.probe import L2_GRID, fit_logistic, fit_logistic_grid, select_l2, stratified_folds
from sslaudit.tasks import DownstreamTask, stratified_index


def objective(x, y, w, l2):
    """Mean cross-entropy + (l2/2)||W||² (bias row not penalised), written out plainly."""
    logits = torch.cat([x, torch.ones(len(x), 1)], 1) @ w
    return F.cross_entropy(logits, y).item() + 0.5 * l2 * w[:-1].pow(2).sum().item()


def problem(n=120, d=12, k=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % k
    x = torch.randn(n, d, generator=gen) + 1.5 * F.one_hot(y, d)[:, :d].float()
    return x, y


def test_stratified_folds_are_disjoint_cover_and_balanced():
    y = torch.arange(600) % 10
    folds = stratified_folds(y, 5, seed=3)
    allidx = torch.cat(folds)
    assert len(allidx) == 600 and len(set(allidx.tolist())) == 600
    for f in folds:
        assert torch.bincount(y[f], minlength=10).tolist() == [12] * 10


def test_batched_fit_equals_separate_fits():
    problems = [problem(seed=s) for s in range(3)]
    xs, ys = torch.stack([p[0] for p in problems]), torch.stack([p[1] for p in problems])
    batched = fit_logistic(xs, ys, 1e-2, 4)
    for (x, y), w in zip(problems, batched):
        alone = fit_logistic(x, y, 1e-2, 4)
        assert objective(x, y, w, 1e-2) == pytest.approx(objective(x, y, alone, 1e-2), abs=1e-5)


def test_padding_rows_with_zero_weight_change_nothing():
    x, y = problem()
    padded_x, padded_y = torch.cat([x, 100 * torch.randn(7, x.shape[1])]), torch.cat([y, torch.zeros(7, dtype=torch.long)])
    weight = torch.cat([torch.ones(len(x)), torch.zeros(7)])
    w = fit_logistic(padded_x[None], padded_y[None], 1e-2, 4, weight=weight[None])[0]
    assert objective(x, y, w, 1e-2) == pytest.approx(objective(x, y, fit_logistic(x, y, 1e-2, 4), 1e-2), abs=1e-5)


def test_grid_fit_reaches_each_strengths_optimum():
    x, y = problem()
    grid = [1e-1, 1e-2, 1e-3]
    for w, l2 in zip(fit_logistic_grid(x, y, grid, 4), grid):
        assert objective(x, y, w, l2) == pytest.approx(objective(x, y, fit_logistic(x, y, l2, 4), l2), abs=1e-4)


def test_kfold_choice_matches_a_brute_force_cross_validation():
    x, y = problem(n=100, d=30, seed=1)  # few samples, many features: the choice matters
    chosen, _ = select_l2(x, y, 4, folds=5)
    folds = stratified_folds(y, 5, seed=0)
    correct = {}
    for l2 in L2_GRID:  # every fold, every strength, fitted from scratch one by one
        total = 0
        for f, val in enumerate(folds):
            fit = torch.cat([p for g, p in enumerate(folds) if g != f])
            mean, std = x[fit].mean(0), x[fit].std(0).clamp_min(1e-6)
            w = fit_logistic((x[fit] - mean) / std, y[fit], l2, 4)
            pred = (torch.cat([(x[val] - mean) / std, torch.ones(len(val), 1)], 1) @ w).argmax(1)
            total += int((pred == y[val]).sum())
        correct[l2] = total
    best = max(correct.values())
    assert correct[chosen] == best
    assert chosen == max(l2 for l2, c in correct.items() if c == best)  # ties go to the stronger L2


def tiny_task(n_per_class=40, k=4, d=16):
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(n_per_class * k) % k
    images = torch.zeros(len(labels), 1, 4, 4, dtype=torch.uint8)
    train = ImageData(images, labels, "toy")
    test = ImageData(images[:80], labels[:80], "toy-test")
    return DownstreamTask("toy", train, test, stratified_index(labels, 5, seed=0)), gen


def test_few_label_score_is_the_mean_over_draws_and_reports_their_spread():
    task, gen = tiny_task()
    feats = torch.randn(len(task.train), 16, generator=gen) + 2 * F.one_hot(task.train.labels, 16).float()
    test = feats[:80] + 0.5 * torch.randn(80, 16, generator=gen)
    draws = few_label_scores(feats, test, task)
    out = evaluate_features(feats, test, task)
    assert len(draws) == 5 and len({tuple(d.tolist()) for d in task.few_label_draws(5)}) == 5
    assert task.few_label_draws(5)[0].equal(task.few_label_index)  # draw 0 is the task's fixed subset
    assert out["linear_1pct"] == pytest.approx(sum(draws) / 5)
    assert out["linear_1pct_spread"] == pytest.approx(torch.tensor(draws).std().item())


def test_one_label_per_class_takes_the_strongest_l2_and_two_cap_the_folds():
    x, y = problem(n=8, k=4)  # two images per class: 2-fold CV at most
    assert select_l2(x[:4], y[:4], 4, folds=5) == (max(L2_GRID), None)
    chosen, _ = select_l2(x, y, 4, folds=5)
    assert chosen in L2_GRID

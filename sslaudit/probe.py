"""Frozen-feature probes: multinomial logistic regression and weighted kNN.

The linear probe standardises features with the training statistics and fits
an L2-regularised multinomial logistic regression by full-batch L-BFGS (float32
on standardised features: on the shipped victim float64 gave 89.1 % vs 89.2 %
and took 1.4x longer). The L2 strength is chosen on a held-out fifth of the *training*
labels along a warm-started path from strong to weak regularisation, then the
probe is refitted on all of them from the chosen solution: model selection
never sees test data.
The kNN follows the SSL convention (InstDisc): cosine similarity, k = 200,
votes weighted by exp(s / T) with T = 0.1.

>>> acc = linear_probe_accuracy(train_x, train_y, test_x, test_y)  # doctest: +SKIP
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

L2_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float, num_classes: int, iters: int = 200,
                 init: torch.Tensor | None = None) -> torch.Tensor:
    """Weights ``(D + 1, K)`` of a multinomial logistic regression (bias in the last row).

    Minimises mean cross-entropy + (l2 / 2) ||W||² (bias not penalised) with the gradient written out,
    Xᵀ(softmax(XW) − Y)/n + l2·W: the same objective as autograd's, in half the time.
    """
    x1 = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    x1t = x1.T.contiguous()
    onehot = F.one_hot(y, num_classes).to(x.dtype)
    start = torch.zeros(x1.shape[1], num_classes, dtype=x.dtype) if init is None else init.to(x.dtype)
    w = start.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([w], lr=1, max_iter=iters, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-5, tolerance_change=1e-9)

    @torch.no_grad()
    def closure() -> torch.Tensor:
        logits = x1 @ w
        lse = logits.logsumexp(1)
        loss = (lse - (logits * onehot).sum(1)).mean() + 0.5 * l2 * w[:-1].pow(2).sum()
        grad = x1t @ (logits - lse[:, None]).exp_().sub_(onehot) / len(x1)
        grad[:-1] += l2 * w[:-1]
        w.grad = grad
        return loss

    opt.step(closure)
    return w.detach()


def _predict(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1) @ w).argmax(1)


def _standardise(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    mean, std = train.mean(0), train.std(0).clamp_min(1e-6)
    return [(t - mean) / std for t in (train, *others)]


def select_l2(x: torch.Tensor, y: torch.Tensor, num_classes: int, seed: int = 0) -> tuple[float, torch.Tensor]:
    """The L2 strength from ``L2_GRID`` that does best on a held-out fifth of (x, y), and its weights.

    Fits run from the strongest to the weakest L2, each warm-started from the last.
    Ties go to the stronger regularisation.
    """
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    cut = len(x) // 5
    val, fit_idx = order[:cut], order[cut:]
    xf, xv = _standardise(x[fit_idx], x[val])
    best: tuple[float, float, torch.Tensor] | None = None
    w = None
    for l2 in sorted(L2_GRID, reverse=True):
        w = fit_logistic(xf, y[fit_idx], l2, num_classes, init=w)
        score = (_predict(w, xv) == y[val]).float().mean().item()
        if best is None or score > best[0]:
            best = (score, l2, w)
    assert best is not None
    return best[1], best[2]


def linear_probe_accuracy(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, l2: float | None = None
) -> float:
    """Test accuracy of a standardised logistic-regression probe trained on (train_x, train_y)."""
    train_x, test_x = train_x.float(), test_x.float()
    k = int(max(train_y.max(), test_y.max())) + 1
    init = None
    if l2 is None:
        l2, init = select_l2(train_x, train_y, k)
    xt, xs = _standardise(train_x, test_x)
    w = fit_logistic(xt, train_y, l2, k, init=init)
    return (_predict(w, xs) == test_y).float().mean().item()


def knn_accuracy(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
    k: int = 200, temperature: float = 0.1, chunk: int = 1024,
) -> float:
    """Weighted cosine kNN accuracy (k = 200, T = 0.1 by default)."""
    bank, queries = F.normalize(train_x.float(), dim=1), F.normalize(test_x.float(), dim=1)
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    k = min(k, len(bank))
    correct = 0
    for start in range(0, len(queries), chunk):
        sims, idx = (queries[start : start + chunk] @ bank.T).topk(k, dim=1)
        votes = torch.zeros(len(sims), num_classes).scatter_add_(1, train_y[idx], (sims / temperature).exp())
        correct += (votes.argmax(1) == test_y[start : start + chunk]).sum().item()
    return correct / len(queries)

"""Recovering clean answers from perturbed ones: BESA's recovery stage (Ren et al., arXiv 2506.04556, 2025).

The paper's abstract names a generative recovery model; these are the linear pieces our reconstruction
uses instead (see :mod:`sslaudit.attacks.besa` for why): the Wiener (linear MMSE) filter, its noise
variance estimated from pairs of independent answers and kept only where it lowers the Noise2Noise
loss on held-out pairs, and low-rank completion of the coordinates top-k sparsification zeroed.

>>> mean, w = wiener(torch.randn(200, 4), 0.5)
>>> tuple(w.shape)
(4, 4)
"""
from __future__ import annotations

import torch


def wiener(answers: torch.Tensor, var: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(μ, W): the linear MMSE estimate μ + (a − μ) W of clean answers under independent noise of
    variance ``var`` (a number, or one per dimension), from the answers' covariance: in noise-whitened
    coordinates each principal direction of variance λ is shrunk by max(0, 1 − 1 / λ)."""
    a = answers.double()
    mean = a.mean(0)
    scale = torch.as_tensor(var, dtype=torch.float64).expand(a.shape[1]).clamp_min(1e-300).sqrt()
    lam, vec = torch.linalg.eigh(torch.cov(((a - mean) / scale).T).reshape(a.shape[1], a.shape[1]))
    gain = (1 - 1 / lam.clamp_min(1e-300)).clamp(0, 1)
    return mean.float(), (torch.diag(1 / scale) @ vec @ torch.diag(gain) @ vec.T @ torch.diag(scale)).float()


def pair_denoiser(first: torch.Tensor, second: torch.Tensor, answers: torch.Tensor,
                  seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(μ, W, info): the Wiener filter for ``answers`` with the noise variance of the answer pairs, per
    dimension (Var(a₁ − a₂) = 2σ²), estimated on 80 % of the pairs; the identity (μ = 0, W = I) instead if
    it does not lower the Noise2Noise loss of the other 20 % (whose minimiser is E[clean | a])."""
    first, second = first.float(), second.float()
    order = torch.randperm(len(first), generator=torch.Generator().manual_seed(seed))
    held, fit = order[: max(1, len(order) // 5)], order[max(1, len(order) // 5):]
    var = (first[fit] - second[fit]).pow(2).mean(0) / 2  # per dimension: an affine map scales the noise
    mean, w = wiener(answers, var)

    def n2n(m: torch.Tensor, w: torch.Tensor) -> float:
        a, b = first[held], second[held]
        return float(((m + (a - m) @ w - b).pow(2).mean() + (m + (b - m) @ w - a).pow(2).mean()) / 2)

    identity, filtered = n2n(mean * 0, torch.eye(len(var))), n2n(mean, w)
    info = {"pairs": len(first), "noise_var": float(var.mean()), "held_out_identity": identity,
            "held_out_wiener": filtered, "used": filtered < identity}
    return (mean, w, info) if filtered < identity else (mean * 0, torch.eye(len(var)), info)


def fill_low_rank(a: torch.Tensor, seen: torch.Tensor, rank: int, iters: int = 30) -> torch.Tensor:
    """``a`` with its unseen entries replaced by an iterated rank-``rank`` SVD fit (seen entries kept),
    clipped to the row's smallest seen |value| (top-k zeroed only entries smaller than those it kept)."""
    a = a.double()
    cap = torch.where(seen, a.abs(), torch.inf).min(1, keepdim=True).values
    x = torch.where(seen, a, 0.0)
    for _ in range(iters):
        mean = x.mean(0)
        u, s, vt = torch.linalg.svd(x - mean, full_matrices=False)
        low = mean + (u[:, :rank] * s[:rank]) @ vt[:rank]
        x = torch.where(seen, a, torch.maximum(torch.minimum(low, cap), -cap))
    return x


def complete(answers: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(answers with the zero entries filled by :func:`fill_low_rank`, the rank: max(1, k // 8) for k kept
    entries per row; each row gives k equations for its r coefficients, so r ≪ k)."""
    seen = answers != 0
    rank = max(1, int(seen.sum(1).median()) // 8)
    return fill_low_rank(answers, seen, rank).to(answers.dtype), rank

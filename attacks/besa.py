"""BESA-style stealing: detect the perturbation a defence applies, recover clean answers, then steal.

After Ren et al., "BESA: Boosting Encoder Stealing Attack with Perturbation Recovery" (arXiv 2506.04556,
2025): perturbation detection (infer the defence from the returned vectors) plus perturbation recovery
(the paper restores clean vectors with a generative model) in front of a canonical attack; up to
+24.63 % surrogate accuracy under defences. The notes hold only the abstract (attacks.md §7): the
two-stage shape is the paper's, every detail below is OUR RECONSTRUCTION.

Budget: 1 − ``pair_fraction`` of what the probe leaves is spent first, one query per image; then the
probe (P ≤ ``probe_images`` images, 3P ≤ ``probe_fraction`` of the budget; last, because B4B's noise
grows with use); then the reserve: under noise, a second answer of the first images, otherwise more
images. Every query is counted (total = the budget) and the probe's first answers are training data.

Detection: each probe image is sent as is, again, and nudged (one pixel ±1/255: new bytes, the same
clean feature). Noise is measured robustly (median |Δ| / 0.954) relative to the answers' spread:

- ``pad``: dimensions constant over the probe, some non-zero (constant pads; dead units are 0);
- ``topk``: every answer has the same number k < 0.9 d of non-zero entries (ReLU zeros vary per image);
- ``rounding``: ≥ 90 % of answers sit on a grid (per answer, since a grid may scale with the row: at
  most half as many levels as entries, all multiples of the smallest gap, which is coarser than 4 bf16
  ulps, because bf16-autocast answers sit on bf16's own grid);
- ``fresh-noise``: the repeat differs by more than ``floor`` × the spread;
- ``deterministic-noise``: the repeat agrees, the nudge differs (B4B answers an (account, image) alike).

Recovery, matched to what was found:

- pad → drop the constant dimensions of all answers (:func:`~sslaudit.attacks.pad_drop.constant_dims`);
- noise (when ``denoise`` is on) → the Wiener (linear MMSE) filter, learnt from the attacker's own
  answers: the reserve buys pairs of independent answers of one image (repeats for fresh noise, nudges
  for deterministic noise), Var(a₁ − a₂) / 2 is the noise variance per dimension (a per-account affine
  map scales it), and with the covariance of ALL answers that fixes the filter (each principal
  direction of the noise-whitened answers shrunk by max(0, 1 − 1 / λ)); no clean answer is needed.
  Held-out pairs check it: their Noise2Noise loss (Lehtinen et al., ICML 2018), ||g(a₁) − a₂||² +
  ||g(a₂) − a₁||², is the error to the clean answer plus a constant, and the identity is kept if the
  filter does not lower it. A target is the mean of g over its image's answers. (We also trained a
  small MLP residual on top, Noise2Noise, early-stopped on the held-out pairs: for fresh noise of
  σ ∈ {0.3, 1} × RMS, smooth-image and FMNIST pools, 1,000 and 5,000 queries, it never beat the
  filter on them, so it is not here.) ``denoise="auto"`` turns this off for an MSE inner attack, and
  the reserve then buys more images: an MSE fit on noisy answers is already unbiased (the noise averages
  out over the images), and shrinkage biases it. Measured (random convnet victim, 1,000 queries, 10
  epochs; MSE: mean of 2 seeds, InfoNCE: 1): the filter cut the answers' error 10x, yet for MSE, σ = 3 ×
  RMS fresh noise, CKA to the victim fell from 0.58 (raw) to 0.33 (σ = 1: 0.79 vs 0.78); for InfoNCE,
  which normalises the answers (the direction of a noisy answer is biased), it rose from 0.56 to 0.79
  (σ = 1) and 0.32 to 0.46 (σ = 3);
- rounding → the Wiener filter for noise of variance step² / 12 (a uniform rounding error);
- topk → the zeroed entries are missing, not zero: an iterated rank-r SVD fit of all answers fills them
  (the kept entries stay), clipped to the row's smallest kept magnitude. r = k // 8 (our choice: on a
  random convnet victim, 1,000 answers, d = 128, it was within 25 % of the best rank of {1, …, 64} for
  k = 8 … 64; the error on held-out kept entries is no guide, it always picks r = 1). Measured: top-k
  k = 16 of 128, 1,000 queries, MSE: CKA 0.70 / 0.76 (2 seeds) → 0.85 / 0.85.

Not countered: noise that grows with use (B4B's coverage) when most of the budget is already spent by
the time the probe sees it; the ``average`` (nudge views) and sybil attacks are the answers to that.

The inner attack (default MSE direct extraction) trains on the restored answers. Curves buy each budget
afresh (the split depends on it) on ``{account}@{budget}``. ``extra``: ``detected`` (the detection),
``recovery`` (what was done, with the denoiser's held-out losses), ``probe_queries``.

>>> grid_step(torch.tensor([0.25, 0.5, 1.0, 0.25, 0.75, 1.0, 0.5, 0.25]))
0.25
>>> grid_step(torch.tensor([0.1234, 0.9876, 0.5555, 0.31415])) is None
True
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from typing import Sequence

import torch

from sslaudit.api import RepresentationAPI
from sslaudit.attack import (AttackResult, Purchase, StealingAttack, WholePurchase, ordered_pool, price_per_query,
                             query_all)
from sslaudit.attacks.pad_drop import KeptDims, constant_dims
from sslaudit.attacks.query_averaging import adopt_inner, nudged
from sslaudit.attacks.recovery import complete, pair_denoiser, wiener  # noqa: F401 - re-exported
from sslaudit.data import ImageData
from sslaudit.defenses.common import choice, integer, number
from sslaudit.registry import register_attack

NOISE = ("fresh-noise", "deterministic-noise")
MAD = 0.6745 * math.sqrt(2)  # median |a − b| of two N(0, σ²) draws is MAD × σ


@dataclass(frozen=True)
class Detection:
    """The perturbations found (``kinds``, most structural first) and the measurements behind them."""

    kinds: tuple[str, ...]
    repeat_noise: float  # noise std estimated from repeats, over the answers' spread between images
    nudge_noise: float  # the same from one-pixel nudges
    zero_fraction: float
    grid_step: float | None
    constant_dims: int

    @property
    def primary(self) -> str:
        return self.kinds[0] if self.kinds else "none"


def grid_step(values: torch.Tensor) -> float | None:
    """The step of the grid all ``values`` sit on, or None when they look continuous."""
    v = values.double().flatten()
    levels = v.unique()
    if len(levels) < 2 or len(levels) > len(v) / 2:
        return None
    step = float(levels.diff().min())
    ratio = (v - levels[0]) / step
    on_grid = ((ratio - ratio.round()).abs() < 1e-2).double().mean()
    # Coarser than 4 bf16 ulps at the typical magnitude: answers computed under bf16 autocast sit on
    # bf16's own grid, which is the float format, not a defence.
    return step if on_grid >= 0.99 and step > 2 ** -6 * float(v.abs().median()) else None


def detect(first: torch.Tensor, again: torch.Tensor, nudge: torch.Tensor, floor: float = 0.05,
           rel_threshold: float = 1e-6) -> Detection:
    """Name the perturbation from P probe images' answers: ``first``, a repeat, a one-pixel nudge (P, d)."""
    a0, a1, an = (t.double() for t in (first, again, nudge))
    const = constant_dims(a0, rel_threshold)
    live = a0[:, ~const]
    spread = float(live.var(0).mean().sqrt()) or 1e-300
    both = (a0 != 0) & (an != 0) & ~const  # entries a top-k flip did not zero

    def noise(b: torch.Tensor, mask: torch.Tensor) -> float:
        return float((b - a0)[mask].abs().median()) / MAD / spread if mask.any() else 0.0

    nonzero = (live != 0).sum(1)
    width = live.shape[1]
    kinds = []
    if (const & (a0[0] != 0)).any():
        kinds.append("pad")
    if width and nonzero.max() <= 0.9 * width and nonzero.max() - nonzero.min() <= max(1, 0.02 * width):
        kinds.append("topk")
    steps = [grid_step(row[row != 0]) for row in live if (row != 0).sum() > 1]  # per row: a grid may scale
    on_grid = [q for q in steps if q is not None]  # with the row (a relative rounding)
    step = math.sqrt(sum(q * q for q in on_grid) / len(on_grid)) if on_grid else None
    if on_grid and len(on_grid) >= 0.9 * len(live):
        kinds.append("rounding")
    repeat, nudged_noise = noise(a1, (a0 != 0) & ~const), noise(an, both)
    if repeat > floor:
        kinds.append("fresh-noise")
    elif nudged_noise > floor:
        kinds.append("deterministic-noise")
    return Detection(tuple(kinds), repeat, nudged_noise, float(1 - nonzero.sum() / max(live.numel(), 1)),
                     step, int(const.sum()))


@dataclass
class BesaPurchase(WholePurchase):
    """``answers``: each image's first answer; ``second``: a second answer of the first ``len(second)``
    images (the probe's, then the pairs'); ``sent``: every query, the probe's included."""

    second: torch.Tensor | None = None
    detection: Detection | None = None


@register_attack("besa")
@dataclass(kw_only=True)
class BESA(StealingAttack):
    """Probe, detect the perturbation, spend the rest (with second answers against noise), recover, steal."""

    probe_images: int = 16  # at most this many probe images (3 queries each)
    probe_fraction: float = 0.1  # and at most this share of the budget on the probe
    pair_fraction: float = 0.15  # share of the rest kept for second answers under noise (else: more images)
    floor: float = 0.05  # noise below this × the answers' spread is not worth recovering
    rel_threshold: float = 1e-6  # constant-dimension rule (see pad_drop.constant_dims)
    inner: StealingAttack | None = None  # default DirectExtraction(loss="mse")
    denoise: str = "auto"  # "on", "off", "auto": off for an MSE inner attack (see the module docstring)

    def __post_init__(self) -> None:
        self.probe_images = integer("besa", "probe_images", self.probe_images, "probe_images=16", minimum=4)
        self.denoise = choice("besa", "denoise", self.denoise, ("auto", "on", "off"))
        self.probe_fraction = number("besa", "probe_fraction", self.probe_fraction, "probe_fraction=0.1",
                                     minimum=0, strict=True, maximum=0.5)
        self.pair_fraction = number("besa", "pair_fraction", self.pair_fraction, "pair_fraction=0.15", minimum=0,
                                    maximum=0.9)
        self.floor = number("besa", "floor", self.floor, "floor=0.05", minimum=0, maximum=1)
        self.rel_threshold = number("besa", "rel_threshold", self.rel_threshold, "rel_threshold=1e-6", minimum=0,
                                    maximum=0.5)
        self.inner = adopt_inner(self, self.inner)

    @property
    def denoising(self) -> bool:
        """Whether noise is recovered: ``denoise``, where "auto" is off for an MSE inner attack."""
        return self.denoise == "on" or (self.denoise == "auto" and getattr(self.inner, "loss", None) != "mse")

    def with_epochs(self, epochs: int) -> "BESA":
        inner = self.inner.with_epochs(epochs)
        return replace(self, inner=inner, train=inner.train)

    def probe_size(self, budget: int) -> int:
        """Probe images for ``budget``: min(probe_images, probe_fraction × budget / 3), at least 4."""
        p = min(self.probe_images, int(self.probe_fraction * budget) // 3)
        if p < 4 or 3 * p >= budget:
            raise ValueError(f"a budget of {budget} cannot pay for a 4-image probe (12 queries) within "
                             f"probe_fraction={self.probe_fraction}; raise the budget or probe_fraction")
        return p

    def buy(self, api: RepresentationAPI, pool: ImageData, budget: int, *, seed: int = 0,
            account: str = "attacker") -> BesaPurchase:
        """Most of the budget once each, then the probe (as is, again, nudged) and the detection, then the
        reserve: second answers of the first images under noise, more images otherwise."""
        p = self.probe_size(budget)
        rest = budget - 3 * p
        m = int(self.pair_fraction * rest)  # the reserve
        images, pool_rest = ordered_pool(pool, p + rest, seed)
        early, probe, late = images[: rest - m], images[rest - m : rest - m + p], images[rest - m + p :]
        got = query_all(api, torch.cat([early, probe, probe, nudged(probe, 2, seed)[1::2]]), account)
        single, (first, again, nudge) = got[: len(early)], got[len(early) :].chunk(3)
        found = detect(first, again, nudge, self.floor, self.rel_threshold)  # late: B4B's noise grows with use
        if not (set(found.kinds) & set(NOISE) and self.denoising):
            more = query_all(api, late, account)
            return BesaPurchase(torch.cat([probe, early, late]), torch.cat([first, single, more]), account,
                                price_per_query(api, account), pool_rest=pool_rest,
                                second=again if "fresh-noise" in found.kinds else nudge, detection=found, sent=budget)
        fresh = "fresh-noise" in found.kinds
        second = query_all(api, early[:m] if fresh else nudged(early[:m], 2, seed + 1)[1::2], account)
        return BesaPurchase(torch.cat([probe, early]), torch.cat([first, single]), account,
                            price_per_query(api, account), pool_rest=torch.cat([late, pool_rest]),
                            second=torch.cat([again if fresh else nudge, second]), detection=found, sent=budget)

    def restore(self, purchase: BesaPurchase, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(restored answers, the mask of kept dimensions, what was done), per the detection."""
        assert purchase.detection is not None and purchase.second is not None
        kinds, a, second = purchase.detection.kinds, purchase.answers.float(), purchase.second.float()
        keep = ~constant_dims(a, self.rel_threshold) if "pad" in kinds else torch.ones(a.shape[1], dtype=torch.bool)
        if not keep.any():
            raise ValueError(f"all {len(keep)} answer dimensions are constant; buy more (distinct) images")
        a, second, done = a[:, keep], second[:, keep], {"dropped_dims": int((~keep).sum())}
        if "topk" in kinds:
            a, done["completion_rank"] = complete(a)
        if "rounding" in kinds and purchase.detection.grid_step:
            done["wiener_var"] = purchase.detection.grid_step ** 2 / 12
            mean, w = wiener(a, done["wiener_var"])
            a = mean + (a - mean) @ w
        if set(kinds) & set(NOISE) and self.denoising:
            mean, w, done["denoiser"] = pair_denoiser(a[: len(second)], second, a, seed)
            restored = mean + (a - mean) @ w
            restored[: len(second)] = (restored[: len(second)] + mean + (second - mean) @ w) / 2
            a = restored
        return a, keep, done

    def fit(self, api: RepresentationAPI, purchase: Purchase, *, seed: int = 0,
            progress: bool = False) -> AttackResult:
        """Recover the answers, then train the inner attack on them; spends no queries."""
        if not isinstance(purchase, BesaPurchase):
            raise TypeError("BESA trains on the BesaPurchase its buy returns")
        answers, keep, done = self.restore(purchase, seed)
        served = KeptDims(api, keep) if not keep.all() else api
        result = self.inner.fit(served, replace(purchase, answers=answers), seed=seed, progress=progress)
        assert purchase.detection is not None
        result.extra.update({"detected": {**asdict(purchase.detection), "primary": purchase.detection.primary},
                             "recovery": done, "probe_queries": 3 * self.probe_size(purchase.sent)})
        return result

    def _name(self, budgets: Sequence[int], budget: int, account: str) -> str:
        return account if len(set(budgets)) == 1 else f"{account}@{budget}"

    def account_budgets(self, budgets: Sequence[int], account: str = "attacker") -> dict[str, int]:
        """One account per budget of a curve (each bought afresh), with exactly that budget."""
        return {self._name(budgets, b, account): b for b in budgets}

    def run_curve(self, api: RepresentationAPI, pool: ImageData, budgets: Sequence[int], *, seed: int = 0,
                  account: str = "attacker", progress: bool = False, equal_steps: bool = False) -> list[AttackResult]:
        """One fresh purchase per budget (the probe/pair split depends on it), so ``equal_steps`` does not apply."""
        results = []
        for budget in budgets:
            purchase = self.buy(api, pool, budget, seed=seed, account=self._name(budgets, budget, account))
            began = time.perf_counter()
            result = self.fit(api, purchase, seed=seed, progress=progress)
            result.extra["train_seconds"] = time.perf_counter() - began
            results.append(result)
        return results

"""Dataset inference for SSL encoders (Dziedzic, Duan, Kaleem, Dhawan, Guan, Cattan, Boenisch, Papernot,
"Dataset Inference for Self-Supervised Models", NeurIPS 2022; code cleverhans-lab/
DatasetInferenceForSelfSupervisedModels, ``dataset-inference/gmm.py``).

An encoder trained on the owner's private data, or distilled from one that was, represents those
images "more typically" than unseen images of the same distribution. The test, as in ``gmm.py``:

1. query the suspect on three sets and L2-normalise each representation;
2. fit ``GaussianMixture(K, covariance_type="diag", max_iter=1000)`` on the private *fit* part;
3. log-likelihoods ``ll`` of the private *eval* part (disjoint from the fit part) and of public data;
4. ``Δ = mean(ll_eval) − mean(ll_public)``; Student's equal-variance ``ttest_ind(ll_eval, ll_public)``.

One-sided p-value in the direction Δ > 0. The reference halves the two-sided p, which is right only
when Δ > 0; here ``p = p₂/2`` when t > 0 and ``p = 1 − p₂/2`` otherwise (scipy's ``alternative=
"greater"``), so an encoder that fits public data *better* never looks stolen. Verdict
``stolen-or-victim`` when p < alpha (1 %, the paper's threshold), else ``independent``.

Choices: K = 10 components, the paper's setting for its two small datasets (SVHN, CIFAR10; 50 for
ImageNet; the code's default is 20): FMNIST is, like them, a 10-class set of small (28 px) images with a
train split of CIFAR10's size. No crop transform (the reference's ``RandomResizedCrop(224)`` is its
ImageNet pipeline; at 28 px a random crop adds noise the victim's features were not asked to keep);
features in float32 (bf16 autocast would round them to 3 significant digits). Default data
(:func:`default_splits`): private fit = a fixed 10,000 of FMNIST train, private eval = a disjoint
fixed 5,000 of FMNIST train (the victim trained on all 60,000), public = FMNIST test[5000:], which
neither the victim nor the attacker ever used (the attacker's pool is test[:5000]).

Confound: the test detects "trained on (or distilled from a model trained on) my private data",
not "derived from my encoder". An independent encoder trained on any of FMNIST train would also be
flagged; the benchmark's independent encoders are trained on data disjoint from the private set.
The test has power only where the victim's features generalise measurably worse to unseen data:
on the shipped tiny SimCLR (12 epochs over 60,000 images) it found none (Δ = −0.41, p = 0.61, with
K = 1 and 20 alike: p = 0.86, 0.61; a random-init convnet: Δ = −0.71, p = 0.72).

>>> import torch
>>> gen = torch.Generator().manual_seed(0)
>>> fit, same = torch.randn(600, 8, generator=gen) + 2, torch.randn(300, 8, generator=gen) + 2
>>> shifted = torch.randn(300, 8, generator=gen) + 2 + torch.tensor([1.0, -1.0] * 4)  # another direction
>>> gmm_test(fit, same, shifted, components=2).verdict
'stolen-or-victim'
>>> gmm_test(fit, shifted, same, components=2).p_value > 0.5  # Δ < 0: never "stolen"
True
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from sklearn.mixture import GaussianMixture
from torch import nn

from sslaudit.data import ImageData, load_dataset
from sslaudit.features import embed
from sslaudit.ownership.verdict import ALPHA, Verdict
from sslaudit.tasks import POOL_SIZE

COMPONENTS = 10  # the paper's K for SVHN and CIFAR10
FIT_SIZE, EVAL_SIZE = 10_000, 5_000
SPLIT_SEED = 20221128  # fixed: the same private parts in every run (NeurIPS 2022 opened on this day)
TEST = "dataset-inference"


def _check(components: int, arrays: tuple[np.ndarray, ...]) -> None:
    if isinstance(components, bool) or not isinstance(components, int) or components < 1:
        raise ValueError(f"components must be a whole number >= 1, e.g. 10; got {components!r}")
    fit, evaluate, public = arrays
    if any(a.ndim != 2 for a in arrays) or not fit.shape[1] == evaluate.shape[1] == public.shape[1]:
        raise ValueError("dataset inference needs three (N, dim) representation sets of one dim; got shapes "
                         f"{fit.shape}, {evaluate.shape}, {public.shape}")
    if len(fit) < 2 * components or len(evaluate) < 2 or len(public) < 2:
        raise ValueError(f"dataset inference needs >= {2 * components} fit points (2 per component) and >= 2 "
                         f"eval and public points; got {len(fit)}, {len(evaluate)}, {len(public)}")


def gmm_test(fit: torch.Tensor, evaluate: torch.Tensor, public: torch.Tensor, *, components: int = COMPONENTS,
             seed: int = 0, alpha: float = ALPHA, normalize: bool = True) -> Verdict:
    """The test on representations: GMM fit on ``fit``; Δ and one-sided p of ``evaluate`` vs ``public``."""
    sets = tuple((F.normalize(r.float(), dim=1) if normalize else r.float()).double().cpu().numpy()
                 for r in (fit, evaluate, public))
    _check(components, sets)
    gmm = GaussianMixture(components, covariance_type="diag", max_iter=1000, random_state=seed).fit(sets[0])
    ll_eval, ll_public = gmm.score_samples(sets[1]), gmm.score_samples(sets[2])
    t, _ = stats.ttest_ind(ll_eval, ll_public)
    p = stats.ttest_ind(ll_eval, ll_public, alternative="greater").pvalue  # p2/2 if t > 0, else 1 - p2/2
    delta = float(ll_eval.mean() - ll_public.mean())
    return Verdict.decide(TEST, statistic=delta, p_value=float(p), n=len(ll_eval) + len(ll_public), alpha=alpha,
                          extra={"t": float(t), "components": components, "fit": len(sets[0]),
                                 "eval": len(ll_eval), "public": len(ll_public), "converged": bool(gmm.converged_)})


def dataset_inference(suspect_encoder: nn.Module, private_fit: ImageData | torch.Tensor,
                      private_eval: ImageData | torch.Tensor, public: ImageData | torch.Tensor, *,
                      components: int = COMPONENTS, seed: int = 0, alpha: float = ALPHA) -> Verdict:
    """Query ``suspect_encoder`` on the three image sets (uint8 or [0, 1] float) and run :func:`gmm_test`."""
    reps = [embed(suspect_encoder, d.images if isinstance(d, ImageData) else d, mixed_precision=False)
            for d in (private_fit, private_eval, public)]  # float32: bf16 would round features to 3 digits
    return gmm_test(*reps, components=components, seed=seed, alpha=alpha)


def default_splits(fit_size: int = FIT_SIZE, eval_size: int = EVAL_SIZE) -> tuple[ImageData, ImageData, ImageData]:
    """(private fit, private eval, public): disjoint fixed parts of FMNIST train, and FMNIST test[5000:]."""
    train = load_dataset("fashion-mnist", "train")
    if fit_size < 1 or eval_size < 1 or fit_size + eval_size > len(train):
        raise ValueError(f"fit_size + eval_size must be 2..{len(train)} images; got {fit_size} + {eval_size}")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(SPLIT_SEED))
    fit = train.subset(order[:fit_size], f"fashion-mnist:train[private fit {fit_size}]")
    evaluate = train.subset(order[fit_size:fit_size + eval_size], f"fashion-mnist:train[private eval {eval_size}]")
    public = load_dataset("fashion-mnist", "test").subset(slice(POOL_SIZE, None), "fashion-mnist:test[5000:]")
    return fit, evaluate, public

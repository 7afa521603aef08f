"""Every contrastive loss gives its float32 value under bf16 autocast.

Training steps run under ``torch.autocast(..., dtype=torch.bfloat16)`` (CUDA, bf16-capable CPUs), where a
matmul runs in bf16 whatever the dtype of its inputs. A contrastive logit is a cosine divided by
τ = 0.07-0.5, and bf16's 8-bit mantissa (relative error ~4e-3 on a cosine) turns into logit errors of
several hundredths: enough to reorder near-tied negatives. So every loss computes its logits in float32
itself: called inside an autocast region it must return what it returns in float32, both on float32
features and on the bf16 features a network's last matmul hands it there (compared with the float32 loss of
those same bf16 values, cast to float32). The controls at the end show that the plain formula, computed
under autocast without that care, misses the float32 value by far more than the tolerance.

CPU autocast to bf16 works on any x86 CPU (emulated where the CPU has no native bf16).
"""
import inspect

import pytest
import torch
import torch.nn.functional as F

from sslaudit.attacks.cont_steal import cont_steal_loss
from sslaudit.attacks.direct_extraction import info_nce_loss, soft_nn_loss
from sslaudit.attacks.rda import rda_loss
from sslaudit.attacks.ssl_small import moco_loss
from sslaudit.attacks.stolen_encoder import stolen_encoder_loss
from sslaudit.losses import cross_info_nce_loss, nt_xent_loss
from sslaudit.victims.barlow_twins import barlow_twins_loss
from sslaudit.victims.splitmask import splitmask_loss

TOLERANCE = 1e-5  # relative
B, D, K, WIDTH = 32, 64, 128, 48  # batch, feature dimension, MoCo queue length, width of the last layer
PATCHES, VOCAB = 6, 40  # SplitMask: hidden patches per image, token vocabulary


def bf16_autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16)


@pytest.fixture(scope="module", autouse=True)
def autocast_works():
    try:
        with bf16_autocast():
            out = torch.ones(4, 4) @ torch.ones(4, 4)
    except (RuntimeError, AssertionError) as err:  # pragma: no cover - depends on the torch build
        pytest.skip(f"CPU bf16 autocast unavailable in this torch build: {err}")
    if out.dtype != torch.bfloat16:  # pragma: no cover
        pytest.skip(f"CPU autocast did not run the matmul in bf16 (got {out.dtype})")


def feature_maker(seed):
    """``feature(*shape)``: features as one network's last layer makes them, ``h @ w`` (under autocast, bf16).

    Every call of one shape is another view of the same images (shared content in ``h`` plus per-view
    noise) through the same ``w``, so positives are close, as in training, and logits reach ~cos/τ.
    """
    gen = torch.Generator().manual_seed(seed)
    content, layers = {}, {}

    def feature(*shape):
        lead, dim = shape[:-1], shape[-1]
        if lead not in content:
            content[lead] = torch.randn(*lead, WIDTH, generator=gen)
        if dim not in layers:
            layers[dim] = torch.randn(WIDTH, dim, generator=gen) / WIDTH**0.5
        h = content[lead] + 0.5 * torch.randn(*lead, WIDTH, generator=gen)
        return h @ layers[dim]

    return feature, gen


def tokens(gen):
    return torch.randint(VOCAB, (B, PATCHES), generator=gen)


# name -> (make the loss's arguments from ``feature`` and the generator, the loss of those arguments)
CASES = {
    "nt_xent": (lambda f, g: (f(B, D), f(B, D)), lambda a, b: nt_xent_loss(a, b, 0.1)),
    "cross_info_nce": (lambda f, g: (f(B, D), f(B, D)), lambda a, b: cross_info_nce_loss(a, b, 0.2)),
    "info_nce (direct extraction)": (lambda f, g: (f(B, D), f(B, D)), lambda s, v: info_nce_loss(s, v, 0.1)),
    "soft_nn (direct extraction)": (lambda f, g: (f(B, D), f(B, D)), lambda s, v: soft_nn_loss(s, v, 100.0)),
    "moco (ssl-small)": (lambda f, g: (f(B, D), f(B, D), f(K, D)), lambda q, k, queue: moco_loss(q, k, queue, 0.1)),
    # RDA's prototypes are means of unit answers (norm <= 1)
    "rda": (lambda f, g: (f(B, D), 0.9 * F.normalize(f(B, D), dim=1)), lambda s, p: rda_loss(s, p, 0.07)),
    "cont_steal": (lambda f, g: (f(B, D), f(B, D)), lambda t, s: cont_steal_loss(t, s, 0.07)),
    "stolen_encoder l2": (lambda f, g: (f(B, D), [f(B, D), f(B, D)], f(B, D)),
                          lambda c, views, v: stolen_encoder_loss(c, views, v, lam=20.0, distance="l2")),
    "stolen_encoder cosine": (lambda f, g: (f(B, D), [f(B, D)], f(B, D)),
                              lambda c, views, v: stolen_encoder_loss(c, views, v, lam=1.0, distance="cosine")),
    "barlow_twins": (lambda f, g: (f(B, D), f(B, D)), lambda a, b: barlow_twins_loss(a, b)),
    "splitmask": (lambda f, g: (f(B, PATCHES, VOCAB), tokens(g), f(B, PATCHES, VOCAB), tokens(g), f(B, D), f(B, D)),
                  lambda lab, tb, lba, ta, xa, xb: splitmask_loss(lab, tb, lba, ta, xa, xb, temperature=0.2)),
}


def as_float32(arg):
    if isinstance(arg, list):
        return [as_float32(a) for a in arg]
    return arg.float() if arg.is_floating_point() else arg


def floating(args):
    for arg in args:
        yield from floating(arg) if isinstance(arg, list) else ([arg] if arg.is_floating_point() else [])


@pytest.mark.parametrize("name", CASES)
def test_float32_features_give_the_float32_loss_under_autocast(name):
    make, loss = CASES[name]
    feature, gen = feature_maker(0)
    args = make(feature, gen)  # outside autocast: float32
    expected = loss(*args)
    with bf16_autocast():
        got = loss(*args)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected.item(), rel=TOLERANCE)


@pytest.mark.parametrize("name", CASES)
def test_bf16_features_give_the_float32_loss_of_the_same_values_under_autocast(name):
    make, loss = CASES[name]
    feature, gen = feature_maker(1)
    with bf16_autocast():
        args = make(feature, gen)  # the last layer's matmul runs in bf16 here
        got = loss(*args)
    assert all(a.dtype == torch.bfloat16 for a in floating(args))
    expected = loss(*[as_float32(a) for a in args])  # outside autocast, on the same (bf16-valued) features
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected.item(), rel=TOLERANCE)


def plain_nt_xent(z1, z2, temperature):
    """NT-Xent written plainly, no precision care: ẑ = normalize([z1; z2]), logits ẑẑᵀ/τ, partner a ± N."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = (z @ z.T / temperature).float()
    logits.fill_diagonal_(float("-inf"))
    n = len(z1)
    return F.cross_entropy(logits, torch.cat([torch.arange(n, 2 * n), torch.arange(n)]))


def test_control_plain_bf16_logits_miss_the_float32_value_by_far_more_than_the_tolerance():
    feature, _ = feature_maker(2)
    z1, z2 = feature(B, D), feature(B, D)
    expected = plain_nt_xent(z1, z2, 0.1).item()
    assert nt_xent_loss(z1, z2, 0.1).item() == pytest.approx(expected, rel=TOLERANCE)  # the same formula
    with bf16_autocast():
        naive = plain_nt_xent(z1, z2, 0.1).item()
    assert abs(naive - expected) > 100 * TOLERANCE * abs(expected), (naive, expected)


# The losses whose logits are matmuls: without their float32 guard (the function under the
# ``float32_logits`` decorator) each misses its float32 value under autocast, so the tests above catch a
# loss that loses its guard. (StolenEncoder's and Barlow Twins' work is elementwise or guarded inline,
# SoftNN's in float64, SplitMask's through cross_info_nce.)
MATMUL_LOSSES = {"nt_xent": nt_xent_loss, "cross_info_nce": cross_info_nce_loss, "moco (ssl-small)": moco_loss,
                 "rda": rda_loss, "cont_steal": cont_steal_loss}


@pytest.mark.parametrize("name", MATMUL_LOSSES)
def test_control_each_matmul_loss_without_its_guard_misses_by_far_more_than_the_tolerance(name, monkeypatch):
    function = MATMUL_LOSSES[name]
    bare = inspect.unwrap(function)
    if bare is function:
        pytest.skip(f"{function.__name__} guards its precision without the float32_logits decorator")
    make, loss = CASES[name]
    feature, gen = feature_maker(3)
    args = make(feature, gen)
    expected = loss(*args).item()
    module = inspect.getmodule(loss)  # the module where the case's lambda looks the loss up: this file
    monkeypatch.setitem(module.__dict__, function.__name__, bare)
    with bf16_autocast():
        unguarded = loss(*args).item()
    assert abs(unguarded - expected) > 10 * TOLERANCE * abs(expected), (unguarded, expected)

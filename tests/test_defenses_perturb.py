"""Output-perturbation defences: rounding, top-k, truncation and Gaussian noise, against plain reference formulas."""
from __future__ import annotations

import math

import pytest
import torch

from sslaudit.api import SimulatedAPI
from sslaudit.defenses.gaussian_noise import GaussianNoise
from sslaudit.defenses.rounding import Rounding
from sslaudit.defenses.topk import TopK
from sslaudit.defenses.truncate import Truncate
from sslaudit.registry import OptionError, build
from sslaudit.secret import DeploymentSecret

CPU = torch.device("cpu")
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
STATELESS = [Rounding(decimals=1), Rounding(step=0.5, relative=False), Rounding(step=0.25), TopK(k=5),
             TopK(fraction=0.3), Truncate(dims=10), Truncate(fraction=0.25)]
NO_IMAGES = torch.zeros(1, 1, 28, 28)


def features(n: int = 7, d: int = 32, seed: int = 0, spread: float = 3.0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) * spread + 0.5


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def rms(row: list[float]) -> float:
    return math.sqrt(sum(v * v for v in row) / len(row))


# ---------------------------------------------------------------- rounding


@pytest.mark.parametrize("decimals", [0, 1, 2])
def test_rounding_to_decimals_matches_python_round(decimals):
    x = features()
    out = Rounding(decimals=decimals)("eve", NO_IMAGES, x)
    want = torch.tensor([[round(v, decimals) for v in row] for row in x.tolist()])
    assert torch.allclose(out, want, atol=1e-5, rtol=0)


def test_rounding_to_an_absolute_step_matches_python_round():
    x = features()
    out = Rounding(step=0.5, relative=False)("eve", NO_IMAGES, x)
    want = torch.tensor([[0.5 * round(v / 0.5) for v in row] for row in x.tolist()])
    assert torch.allclose(out, want, atol=1e-5, rtol=0)
    assert not torch.allclose(out, x, atol=0.05)  # it did perturb


def test_relative_rounding_uses_each_rows_own_rms_grid():
    x = features()
    x[3] *= 100  # one loud row: a batch-scaled grid would wipe out the others
    out = Rounding(step=0.25)("eve", NO_IMAGES, x)
    for row, got in zip(x.tolist(), out.tolist()):
        grid = 0.25 * rms(row)
        want = [grid * round(v / grid) for v in row]
        assert max(abs(a - b) for a, b in zip(got, want)) < 1e-4 * max(1.0, grid)
        assert max(abs(a - b) for a, b in zip(got, row)) <= grid / 2 + 1e-4 * grid
    assert torch.allclose(Rounding(step=0.25)("eve", NO_IMAGES, 2 * x), 2 * out, rtol=1e-5)  # scale-invariant


def test_rounding_keeps_a_zero_row_zero():
    x = features()
    x[2] = 0
    out = Rounding(step=0.1)("eve", NO_IMAGES, x)
    assert torch.isfinite(out).all() and torch.equal(out[2], torch.zeros(32))


# ---------------------------------------------------------------- top-k


@pytest.mark.parametrize("defence, k", [(TopK(k=5), 5), (TopK(fraction=0.3), round(0.3 * 32)), (TopK(k=32), 32)])
def test_topk_matches_a_sorted_loop_over_rows(defence, k):
    x = features()
    out = defence("eve", NO_IMAGES, x)
    for row, got in zip(x.tolist(), out.tolist()):
        keep = set(sorted(range(len(row)), key=lambda i: -abs(row[i]))[:k])
        assert got == pytest.approx([v if i in keep else 0.0 for i, v in enumerate(row)], abs=0)
    assert (out != 0).sum(dim=1).tolist() == [k] * len(x)


def test_topk_and_truncate_refuse_more_dims_than_the_encoder_has(encoder):
    with pytest.raises(ValueError, match=f"topk k=1000 exceeds the feature size {encoder.dim}; pass k<="):
        SimulatedAPI(encoder, defenses=[TopK(k=1000)], device=CPU)
    with pytest.raises(ValueError, match=f"truncate dims=1000 exceeds the feature size {encoder.dim}"):
        SimulatedAPI(encoder, defenses=[Truncate(dims=1000)], device=CPU)


# ---------------------------------------------------------------- truncation


def test_truncate_serves_the_first_dims_as_a_copy(encoder):
    x = features()
    assert torch.equal(Truncate(dims=10)("eve", NO_IMAGES, x), x[:, :10])
    assert Truncate(fraction=0.25).out_dim(32) == 8 and Truncate().out_dim(128) == 64
    one = Truncate(dims=3)("eve", NO_IMAGES, x[:1])  # a B=1 slice would be a contiguous view of all 32
    assert one.untyped_storage().nbytes() == 3 * 4
    api = SimulatedAPI(encoder, defenses=[Truncate(fraction=0.25)], device=CPU)
    assert api.dim == encoder.dim // 4
    answer = api.query(images(5), "eve")
    assert answer.shape == (5, api.dim) and torch.allclose(answer, api.clean_features(images(5))[:, :api.dim])


# ---------------------------------------------------------------- shared properties


@pytest.mark.parametrize("defence", STATELESS, ids=repr)
def test_a_row_gets_the_same_answer_alone_or_in_a_batch(defence):
    x = features()
    batch = defence("eve", NO_IMAGES, x)
    for i in range(len(x)):
        assert torch.equal(defence("eve", NO_IMAGES, x[i:i + 1]), batch[i:i + 1])
    assert torch.equal(defence("bob", NO_IMAGES, x), batch)  # stateless: the account does not matter
    assert defence.bind(DeploymentSecret()) is defence


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("defence", STATELESS, ids=repr)
def test_dtype_and_device_are_kept(defence, dtype, device):
    x = features().to(device, dtype)
    out = defence("eve", NO_IMAGES, x)
    dim = defence.out_dim(32) if hasattr(defence, "out_dim") else 32
    assert out.shape == (7, dim) and out.dtype == dtype and out.device == x.device


@pytest.mark.parametrize("spec", ["round:decimals=1", "round:step=0.5,relative=false", "round", "topk:k=16",
                                  "topk:fraction=0.1", "truncate:dims=16", "truncate:fraction=0.25",
                                  "noise:sigma=0.2,relative=false"])
def test_every_defence_serves_real_batches_through_the_api(encoder, spec):
    defence = build("defense", spec)
    api = SimulatedAPI(encoder, defenses=[defence], device=CPU, secret=DeploymentSecret.fixed("tests"))
    answer = api.query(images(7), "eve")
    assert answer.shape == (7, api.dim) and answer.dtype == torch.float32
    assert api.dim == (defence.out_dim(encoder.dim) if hasattr(defence, "out_dim") else encoder.dim)
    clean = api.clean_features(images(7))
    if spec.startswith("truncate"):
        assert torch.equal(answer, clean[:, :api.dim])
    else:
        assert not torch.equal(answer, clean)


@pytest.mark.parametrize("make, message", [
    (lambda: Rounding(step=0.5, decimals=1), "round takes step= or decimals=, not both"),
    (lambda: Rounding(step=0), r"round step must be a finite number > 0 \(e.g. step=0.1\); got 0"),
    (lambda: Rounding(step=float("nan")), "round step must be a finite number > 0"),
    (lambda: Rounding(decimals=-1), r"round decimals must be an int >= 0 \(e.g. decimals=1\); got -1"),
    (lambda: Rounding(decimals=1.5), "round decimals must be an int >= 0"),
    (lambda: Rounding(decimals=1, relative=True), "round decimals= rounds absolute values; drop relative=true"),
    (lambda: Rounding(relative="yes"), "round relative must be true or false; got 'yes'"),
    (lambda: TopK(k=4, fraction=0.5), "topk takes k= or fraction=, not both"),
    (lambda: TopK(k=0), "topk k must be an int >= 1"),
    (lambda: TopK(fraction=1.5), "topk fraction must be a finite number > 0 and <= 1"),
    (lambda: TopK(fraction=0), "topk fraction must be a finite number > 0 and <= 1"),
    (lambda: Truncate(dims=4, fraction=0.5), "truncate takes dims= or fraction=, not both"),
    (lambda: Truncate(dims=True), "truncate dims must be an int >= 1"),
    (lambda: Truncate(fraction=-0.1), "truncate fraction must be a finite number > 0 and <= 1"),
])
def test_bad_settings_are_one_line_value_errors(make, message):
    with pytest.raises(ValueError, match=message) as err:
        make()
    assert "\n" not in str(err.value)


def test_the_registry_builds_and_validates_them():
    assert build("defense", "round:decimals=1") == Rounding(decimals=1)
    assert build("defense", "round:step=0.5,relative=true") == Rounding(step=0.5, relative=True)
    assert build("defense", "round") == Rounding(step=0.1, relative=True)
    assert build("defense", "topk:fraction=0.1") == TopK(fraction=0.1)
    assert build("defense", "truncate:dims=8") == Truncate(dims=8)
    with pytest.raises(OptionError, match="round takes step= or decimals=, not both"):
        build("defense", "round:decimals=1,step=0.5")


# ---------------------------------------------------------------- Gaussian noise (absolute and relative)


def reference_scale(x: torch.Tensor) -> float:
    """mean row norm / sqrt(d), written out."""
    rows = x.tolist()
    return sum(math.sqrt(sum(v * v for v in row)) for row in rows) / len(rows) / math.sqrt(len(rows[0]))


@pytest.mark.parametrize("relative", [False, True])
def test_noise_std_matches_sigma_times_the_scale(relative):
    x = features(64, 64, spread=5.0)
    noise = GaussianNoise(sigma=0.3, relative=relative, secret=DeploymentSecret.fixed("tests"))
    delta = noise("eve", NO_IMAGES, x) - x
    want = 0.3 * (reference_scale(x) if relative else 1.0)
    assert reference_scale(x) > 4  # so the two modes really differ
    assert delta.std().item() == pytest.approx(want, rel=0.05)  # 4,096 draws: the std's own error is ~1 %
    assert abs(delta.mean().item()) < 4 * want / 64
    assert abs(delta.std(dim=0) - want).max() < 0.5 * want  # every coordinate is noised, not a few


def test_noise_mean_is_mu():
    x = features(64, 64)
    delta = GaussianNoise(sigma=0.1, mu=2.0, relative=False, secret=DeploymentSecret.fixed("tests"))(
        "eve", NO_IMAGES, x) - x
    assert delta.mean().item() == pytest.approx(2.0, abs=0.01)


@pytest.mark.parametrize("relative", [False, True])
def test_noise_through_the_api_is_independent_per_account_and_per_call(encoder, relative):
    api = SimulatedAPI(encoder, defenses=[GaussianNoise(sigma=0.5, relative=relative)], device=CPU,
                       secret=DeploymentSecret.fixed("tests"))
    x = images(32)
    clean = api.clean_features(x)
    want = 0.5 * (reference_scale(clean) if relative else 1.0)
    eve1, eve2, bob = (api.query(x, account) - clean for account in ("eve", "eve", "bob"))
    for delta in (eve1, eve2, bob):
        assert delta.shape == (32, encoder.dim) and delta.std().item() == pytest.approx(want, rel=0.05)
    for a, b in ((eve1, bob), (eve1, eve2)):
        corr = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item()
        assert abs(corr) < 0.05  # 4,096 pairs: independent streams give |corr| ~ 0.016

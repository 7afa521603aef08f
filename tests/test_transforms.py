"""B4B per-account transforms: fixed per account, secret-keyed, the documented formulas, and the served size."""
from __future__ import annotations

import copy
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from sslaudit.api import SimulatedAPI
from sslaudit.defenses.transforms import KINDS, AccountTransform, draw_map
from sslaudit.registry import OptionError, build
from sslaudit.secret import DeploymentSecret

CPU = torch.device("cpu")
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
D = 16
SECRET = DeploymentSecret.fixed("tests")


def features(n: int = 7, d: int = D, seed: int = 0) -> torch.Tensor:
    """Non-negative features of order 1, like B4B's post-ReLU ones (so binary bits do vary)."""
    return torch.rand(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).float()


def transform(kind: str, secret: DeploymentSecret = SECRET, **kw) -> AccountTransform:
    return AccountTransform(kind=kind, **kw).bind(secret)


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind, served", [("affine", D), ("pad_shuffle", 2 * D), ("affine_pad_shuffle", 2 * D),
                                          ("binary", 2 * D), ("full_affine", D)])
def test_out_dim_is_the_shape_served(kind, served):
    t = transform(kind)
    assert t.out_dim(D) == served and t.apply("eve", features()).shape == (7, served)
    if kind in ("pad_shuffle", "affine_pad_shuffle"):
        padded = transform(kind, pad_dim=3)
        assert padded.out_dim(D) == D + 3 == padded.apply("eve", features()).shape[1]


@pytest.mark.parametrize("kind", KINDS)
def test_one_account_gets_one_fixed_map_per_row(kind):
    t, x = transform(kind), features()
    batch = t.apply("eve", x)
    assert torch.equal(t.apply("eve", x), batch) and t.map_for("eve", D) is t.map_for("eve", D)
    for i in range(len(x)):  # a row's answer does not depend on the rest of its batch
        assert torch.allclose(t.apply("eve", x[i:i + 1]), batch[i:i + 1], atol=1e-6, rtol=0)
    assert torch.equal(transform(kind).apply("eve", x), batch)  # a pure function of (secret, kind, account, d)


@pytest.mark.parametrize("kind", KINDS)
def test_accounts_and_secrets_get_different_maps(kind):
    x = features()
    eve = transform(kind).apply("eve", x)
    assert not torch.equal(transform(kind).apply("bob", x), eve)
    assert not torch.equal(transform(kind, DeploymentSecret.fixed("other")).apply("eve", x), eve)


def test_an_unbound_transform_draws_its_own_secret(monkeypatch):
    monkeypatch.delenv("SSLAUDIT_SECRET", raising=False)
    a, b, x = AccountTransform(kind="affine"), AccountTransform(kind="affine"), features()
    assert torch.equal(a.apply("eve", x), a.apply("eve", x)) and not torch.equal(a.apply("eve", x), b.apply("eve", x))


@pytest.mark.parametrize("kind", KINDS)
def test_eight_threads_at_once_see_one_map(kind):
    t, x, start = transform(kind), features(), threading.Barrier(8)

    def call(_: int) -> tuple[object, torch.Tensor]:
        start.wait()
        return t.map_for("eve", D), t.apply("eve", x)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, range(8)))
    assert all(m is results[0][0] for m, _ in results)
    assert all(torch.equal(out, results[0][1]) for _, out in results)
    assert t._maps.accounts() == ["eve"]


def test_the_map_is_drawn_from_the_secret_under_the_documented_purpose():
    want = draw_map("affine", D, 0, 1.0, SECRET.generator("transform-affine", "eve"))
    got = transform("affine").map_for("eve", D)
    assert torch.equal(got.s, want.s) and torch.equal(got.t, want.t)


def test_diagonal_affine_is_x_s_plus_t_and_invertible():
    t, x = transform("affine"), features(64)
    m, y = t.map_for("eve", D), t.apply("eve", x)
    assert m.s.shape == m.t.shape == (D,) and m.s.abs().max() <= 1 and m.t.abs().max() <= 1
    assert torch.allclose(y, torch.stack([torch.stack([x[i, j] * m.s[j] + m.t[j] for j in range(D)])
                                          for i in range(len(x))]), atol=1e-6)
    assert torch.allclose((y - m.t) / m.s, x, atol=1e-4)
    # a linear probe does not care: least squares from [y, 1] recovers x exactly
    design = torch.cat([y, torch.ones(len(y), 1)], dim=1).double()
    coef = torch.linalg.lstsq(design, x.double()).solution
    assert torch.allclose(design @ coef, x.double(), atol=1e-6)


def test_scale_widens_the_affine_draws():
    m = transform("affine", scale=3.0).map_for("eve", 256)
    assert 1 < m.s.abs().max() <= 3 and 1 < m.t.abs().max() <= 3


def test_full_affine_is_x_a_plus_b():
    t, x = transform("full_affine"), features(32)
    m = t.map_for("eve", D)
    assert m.matrix.shape == (D, D) and m.matrix.abs().max() <= 1 and m.offset.abs().max() <= 1
    want = x.double() @ m.matrix.double() + m.offset.double()
    assert torch.allclose(t.apply("eve", x).double(), want, atol=1e-5)


@pytest.mark.parametrize("kind", ["pad_shuffle", "affine_pad_shuffle"])
def test_pad_values_are_constant_per_account_and_the_shuffle_is_a_permutation(kind):
    t, x = transform(kind, pad_dim=5), features(20)
    m = t.map_for("eve", D)
    answers = torch.cat([t.apply("eve", x), t.apply("eve", features(20, seed=1))])
    constant = (answers.std(dim=0) == 0).nonzero().flatten().tolist()
    assert len(constant) == 5  # the documented weakness: the pads are the zero-variance columns
    assert sorted(answers[0, constant].tolist()) == sorted(m.pad.tolist())
    assert sorted(m.perm.tolist()) == list(range(D + 5))
    unshuffled = torch.empty_like(answers)
    for j, source in enumerate(m.perm.tolist()):  # out[:, j] = cat(x, pad)[:, perm[j]]
        unshuffled[:, source] = answers[:, j]
    inner = torch.cat([x, features(20, seed=1)])
    inner = inner * m.s + m.t if kind == "affine_pad_shuffle" else inner
    assert torch.equal(unshuffled[:, :D], inner) and torch.equal(unshuffled[:, D:], m.pad.expand(40, -1))
    assert not torch.equal(transform(kind, pad_dim=5).map_for("bob", D).pad, m.pad)


def test_pad_values_are_standard_normal():
    pad = transform("pad_shuffle", pad_dim=4000).map_for("eve", 4).pad
    assert abs(pad.mean().item()) < 0.1 and pad.std().item() == pytest.approx(1.0, abs=0.05)


def test_binary_gives_2d_bits_from_hyperplanes_as_b4b_draws_them():
    t, x = transform("binary"), features(64)
    m, bits = t.map_for("eve", D), t.apply("eve", x)
    assert m.matrix.shape == (D, 2 * D) and torch.equal(m.matrix[-1], torch.ones(2 * D))  # (-tan(2 pi u), 1)
    assert set(bits.unique().tolist()) <= {0.0, 1.0} and bits.shape == (64, 2 * D)
    want = torch.tensor([[float(sum(xi * wi for xi, wi in zip(row, m.matrix[:, j].tolist())) > m.offset[j].item())
                          for j in range(2 * D)] for row in x.tolist()])
    assert (bits != want).float().mean() < 0.01  # float32 in the defence (as B4B), float64 here
    assert (bits.std(dim=0) > 0).float().mean() > 0.5  # on [0, 1] features most bits vary


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", KINDS)
def test_dtype_and_device_are_kept(kind, dtype, device):
    x = features().to(device, dtype)
    out = transform(kind).apply("eve", x)
    assert out.dtype == dtype and out.device == x.device and out.shape == (7, transform(kind).out_dim(D))
    assert torch.allclose(out.cpu().float(), transform(kind).apply("eve", features()), atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_through_the_api_the_served_dim_is_out_dim(encoder, kind):
    api = SimulatedAPI(encoder, defenses=[AccountTransform(kind=kind)], device=CPU, secret=SECRET)
    assert api.dim == AccountTransform(kind=kind).out_dim(encoder.dim)
    x = images(5)
    eve = api.query(x, "eve")
    assert eve.shape == (5, api.dim) and eve.dtype == torch.float32
    assert torch.equal(api.query(x, "eve"), eve)
    if kind != "binary":  # the untrained encoder's features are ~1e-3: every bit is constant (documented)
        assert not torch.equal(api.query(x, "bob"), eve)


def test_the_registry_builds_every_kind():
    assert build("defense", "transform:kind=binary") == AccountTransform(kind="binary")
    assert build("defense", "transform:kind=pad_shuffle,pad_dim=8").pad_dim == 8
    assert build("defense", "transform:kind=affine,scale=2").scale == 2.0
    assert build("defense", "transform").kind == "affine_pad_shuffle"
    for kind in KINDS:
        assert build("defense", f"transform:kind={kind}").out_dim(D) == AccountTransform(kind=kind).out_dim(D)
    with pytest.raises(OptionError, match="transform kind must be one of affine, pad_shuffle"):
        build("defense", "transform:kind=rotate")


@pytest.mark.parametrize("kwargs, message", [
    ({"kind": "rotate"}, "transform kind must be one of affine, pad_shuffle, affine_pad_shuffle, binary"),
    ({"kind": "affine", "pad_dim": 4}, "transform pad_dim applies to kind=pad_shuffle or affine_pad_shuffle only"),
    ({"kind": "pad_shuffle", "pad_dim": -1}, r"transform pad_dim must be an int >= 0 \(e.g. pad_dim=512\)"),
    ({"kind": "affine", "scale": 0}, "transform scale must be a finite number > 0"),
    ({"kind": "binary", "scale": 2.0}, "transform scale applies to kind=affine, affine_pad_shuffle, full_affine"),
    ({"kind": "affine", "secret": "00" * 32}, "transform secret must be a DeploymentSecret"),
])
def test_bad_settings_are_one_line_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        AccountTransform(**kwargs)
    assert "\n" not in str(err.value)


def test_bad_features_are_refused_with_what_to_pass():
    with pytest.raises(ValueError, match=r"transform takes \(B, d\) features; got shape \(16,\)"):
        transform("affine").apply("eve", torch.ones(16))


def test_a_copy_drops_the_cache_but_keeps_the_maps():
    t = transform("affine_pad_shuffle")
    x = features()
    before = t.apply("eve", x)
    twin = copy.deepcopy(t)
    assert twin._maps.accounts() == [] and torch.equal(twin.apply("eve", x), before)
    bound = AccountTransform(kind="affine")
    assert bound.bind(SECRET)._maps is not bound.bind(SECRET)._maps  # each deployment starts empty

"""B4B: the penalty formula, online per-account bucket coverage, deterministic per-image noise, the API."""
from __future__ import annotations

import math
import threading

import pytest
import torch

from sslaudit.api import SimulatedAPI
from sslaudit.defenses.b4b import B4B, SIGMA_MAX, penalty
from sslaudit.defenses.coverage import BucketCoverage
from sslaudit.defenses.transforms import AccountTransform
from sslaudit.registry import OptionError, build
from sslaudit.secret import DeploymentSecret

SECRET = DeploymentSecret.fixed("test-b4b")
D = 32
LOUD = {"lam": 1e-3, "alpha": 1.0, "beta": 0.5}  # σ ≈ 0.2 × scale already at a handful of queries' coverage


def plain_sigma(c: float, lam: float, alpha: float, beta: float) -> float:
    return max(lam * (math.exp(math.log(alpha / lam) * c / beta) - 1), 0)


def calibrated(**settings) -> B4B:
    b4b = B4B(**settings).bind(SECRET)
    b4b.calibrate(torch.randn(2000, D, generator=torch.Generator().manual_seed(1)))
    return b4b


def images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def feats(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("lam,alpha,beta", [(1e-7, 1.0, 80.0), (1e-6, 0.8, 80.0), (1e-7, 1.0, 20.0), (0.01, 2.0, 5.0)])
def test_penalty_is_the_formula(lam, alpha, beta):
    for c in [0, 0.5, 5, 10, 20, 33.3, 50, 80, 100]:
        want = plain_sigma(c, lam, alpha, beta)
        if want < SIGMA_MAX:
            assert penalty(c, lam=lam, alpha=alpha, beta=beta) == pytest.approx(want, rel=1e-12, abs=1e-300)
    assert penalty(0, lam=lam, alpha=alpha, beta=beta) == 0
    assert penalty(beta, lam=lam, alpha=alpha, beta=beta) == pytest.approx(alpha - lam, rel=1e-9)


def test_penalty_matches_the_notes_table_and_is_capped():
    assert penalty(50, lam=1e-7, alpha=1, beta=80) == pytest.approx(2.4e-3, rel=0.05)
    assert penalty(70, lam=1e-6, alpha=0.8, beta=80) == pytest.approx(0.146, rel=0.02)
    assert penalty(100, lam=1e-7, alpha=1, beta=1) == SIGMA_MAX  # exp(1611) would overflow


def test_coverage_is_the_bucket_count_written_plainly():
    cov = BucketCoverage(hyperplanes=6, projections=3).bind(SECRET)
    calib = feats(500, 2) + 3.0
    cov.calibrate(calib)
    x = feats(300, 3) + 3.0
    got = cov.add("a", x[:100])
    got = cov.add("a", x[100:])
    planes = cov._planes.view(D, 3, 6)  # the deployment's matrices, as drawn
    centre = calib.mean(dim=0)
    shares = [len({tuple(((v - centre) @ planes[:, j, :] > 0).tolist()) for v in x}) / 64 for j in range(3)]
    assert got == pytest.approx(100 * sum(shares) / 3)
    raw = BucketCoverage(hyperplanes=6, projections=3, centred=False).bind(SECRET)
    raw_got = raw.add("a", x)
    raw_shares = [len({tuple((v @ planes[:, j, :] > 0).tolist()) for v in x}) / 64 for j in range(3)]
    assert raw_got == pytest.approx(100 * sum(raw_shares) / 3)  # same secret: same matrices


def test_coverage_grows_with_diverse_queries_and_stays_low_for_a_narrow_cluster():
    cov = BucketCoverage().bind(SECRET)
    cov.calibrate(feats(2000, 1))
    seen = [cov.add("thief", feats(1000, 10 + i)) for i in range(4)]
    assert seen == sorted(seen) and seen[0] > 15 and seen[-1] > 40  # 4,000 Gaussians over 4,096 buckets
    point = feats(1, 20)
    narrow = cov.add("one-task", point + 0.01 * feats(4000, 21))
    assert narrow < 0.2  # a few buckets per projection out of 4,096
    assert cov.coverage("nobody") == 0.0 and "nobody" not in cov._tables.accounts()


def test_a_repeated_image_gets_the_same_answer_in_a_batch_and_later():
    b4b = calibrated(**LOUD, transform="affine")
    x, f = images(6, 1), feats(6, 1)
    x[4], f[4] = x[1], f[1]  # a duplicate inside the batch
    first = b4b("thief", x, f)
    assert torch.equal(first[1], first[4])
    sigma_then = b4b.sigma("thief")
    for i in range(5):  # coverage grows a lot
        b4b("thief", images(500, 100 + i), feats(500, 100 + i))
    assert b4b.sigma("thief") > 10 * sigma_then > 0
    again = b4b("thief", x[[1, 0, 2]], f[[1, 0, 2]])
    assert torch.equal(again, first[[1, 0, 2]])
    clean = AccountTransform(kind="affine", secret=SECRET).apply("thief", f)
    assert (first - clean).abs().max() > 1e-3  # noise was really added


def test_noise_is_sigma_times_the_per_image_generator_draw():
    b4b = calibrated(transform="none", relative=True, lam=1e-4, alpha=1.0, beta=2.0)
    x, f = images(64, 2), feats(64, 2)
    out = b4b("alice", x, f)
    calib = torch.randn(2000, D, generator=torch.Generator().manual_seed(1))
    scale = calib.norm(dim=1).mean().item() / math.sqrt(D)
    sigma = plain_sigma(b4b.coverage("alice"), 1e-4, 1.0, 2.0) * scale
    assert b4b.sigma("alice") == pytest.approx(sigma, rel=1e-6) and sigma > 0.01
    for i in (0, 63):
        z = torch.randn(D, generator=SECRET.generator("b4b", "alice", x[i]))
        assert torch.allclose(out[i] - f[i], sigma * z, atol=1e-5)
    assert out.dtype == torch.float32


def test_accounts_never_share_coverage_or_noise():
    b4b = calibrated(**LOUD, transform="none")
    for i in range(4):
        b4b("thief", images(500, 200 + i), feats(500, 200 + i))
    assert b4b.coverage("thief") > 30 and b4b.coverage("honest") == 0.0
    x, f = images(3, 3), feats(3, 3)
    fresh = calibrated(**LOUD, transform="none")
    assert torch.equal(b4b("honest", x, f), fresh("honest", x, f))  # as if the thief never existed
    assert not torch.equal(b4b("thief", x, f), fresh("honest", x, f))


def test_concurrent_accounts_end_with_the_sequential_tables():
    accounts = ["thief", "honest", "sybil-1", "sybil-2"]
    jobs = [(accounts[i % 4], images(200, 300 + i), feats(200, 300 + i) * (1 + i % 4)) for i in range(24)]
    sequential = calibrated(transform="none")
    for job in jobs:
        sequential(*job)
    concurrent = calibrated(transform="none")
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for job in jobs[k::8]:
                concurrent(*job)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for name in accounts:
        assert torch.equal(concurrent._coverage.table(name), sequential._coverage.table(name))
        assert concurrent.coverage(name) == sequential.coverage(name) > 0
    assert len({round(sequential.coverage(name), 6) for name in accounts}) > 1  # the accounts differ


def test_a_different_secret_gives_different_noise():
    x, f = images(5, 4), feats(5, 4)
    a, b = calibrated(**LOUD, transform="none"), calibrated(**LOUD, transform="none")
    other = B4B(**LOUD, transform="none").bind(DeploymentSecret.fixed("other"))
    other.calibrate(torch.randn(2000, D, generator=torch.Generator().manual_seed(1)))
    out_a, out_b, out_o = a("alice", x, f), b("alice", x, f), other("alice", x, f)
    assert torch.equal(out_a, out_b)
    assert (out_a - out_o).abs().max() > 1e-3


def test_batch_of_one_and_of_seven_agree_at_the_same_coverage():
    x, f = images(7, 5), feats(7, 5)
    runs = []
    for batches in ([slice(0, 7)], [slice(i, i + 1) for i in range(7)]):
        b4b = calibrated(**LOUD, transform="affine_pad_shuffle")
        b4b("bob", images(7, 999), f)  # other images with the same features: every bucket already hit
        before = b4b.coverage("bob")
        runs.append(torch.cat([b4b("bob", x[s], f[s]) for s in batches]))
        assert b4b.coverage("bob") == before > 0
    assert torch.equal(runs[0], runs[1])
    clean = AccountTransform(kind="affine_pad_shuffle", secret=SECRET).apply("bob", f)
    assert runs[0].shape == (7, 2 * D) and (runs[0] - clean).abs().max() > 1e-4


@pytest.mark.parametrize("settings,words", [
    ({"lam": 0}, "lam must be a finite number > 0"), ({"alpha": 1e-8}, "alpha must exceed lam"),
    ({"beta": -1}, "beta must be"), ({"beta": float("nan")}, "beta must be"),
    ({"transform": "rotate"}, "transform must be one of none, affine"), ({"relative": "yes"}, "true or false"),
    ({"hyperplanes": 0}, "hyperplanes must be an int >= 1"), ({"hyperplanes": 30}, "hyperplanes must be <= 24"),
    ({"projections": 2.5}, "projections must be an int"), ({"centred": 1}, "centred must be true or false"),
    ({"secret": "abc"}, "secret must be a DeploymentSecret")])
def test_settings_are_validated_in_one_line(settings, words):
    with pytest.raises(ValueError, match=words) as err:
        B4B(**settings)
    assert "\n" not in str(err.value)


def test_registry_and_uncalibrated_use():
    b4b = build("defense", "b4b:beta=40,transform=none,hyperplanes=8")
    assert (b4b.beta, b4b.transform, b4b.hyperplanes, b4b.lam, b4b.alpha) == (40.0, "none", 8, 1e-7, 1.0)
    assert B4B().transform == "affine" and B4B().out_dim(D) == D
    assert B4B(transform="binary").out_dim(D) == 2 * D
    with pytest.raises(OptionError, match="transform"):
        build("defense", "b4b:transform=rotate")
    with pytest.raises(RuntimeError, match="calibration"):
        B4B().bind(SECRET)("alice", images(2, 0), feats(2, 0))


def test_inside_the_simulated_api(encoder):
    calib = torch.rand(200, 1, 28, 28, generator=torch.Generator().manual_seed(6))
    with pytest.raises(ValueError, match="calibration"):
        SimulatedAPI(encoder, defenses=[B4B()], device=torch.device("cpu"))
    defence = B4B(transform="affine_pad_shuffle", **LOUD)
    api = SimulatedAPI(encoder, defenses=[defence], calibration=calib, secret=SECRET, device=torch.device("cpu"))
    served = api.defenses[0]
    assert served is not defence and api.dim == served.out_dim(encoder.dim) == 2 * encoder.dim
    x = torch.rand(9, 1, 28, 28, generator=torch.Generator().manual_seed(7))
    out = api.query(x, account="alice")
    assert out.shape == (9, api.dim) and out.dtype == torch.float32
    assert served.coverage("alice") > 0 and served.coverage("bob") == 0 and defence.coverage("alice") == 0
    assert torch.equal(api.query(x, account="alice"), out)
    assert not torch.equal(api.query(x, account="bob"), out)

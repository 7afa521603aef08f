"""Stateful query detectors: the k-NN statistic (Chen, Carlini & Wagner) and PRADA's growing set and
Shapiro-Wilk W against plain reference loops; what a flagged account gets (observe, refuse, poison);
accounts never sharing state, also under threads; one-line setting errors."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from scipy.stats import shapiro

from sslaudit.api import QueryRefused, SimulatedAPI
from sslaudit.defenses.knn_detector import KNNDetector
from sslaudit.defenses.prada import PRADA
from sslaudit.registry import OptionError, build
from sslaudit.secret import DeploymentSecret

SECRET = DeploymentSecret.fixed("test-detectors")


def gaussian(n: int, d: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def blank(n: int) -> torch.Tensor:
    return torch.zeros(n, 1, 4, 4)


def send(det, account: str, feats: torch.Tensor, sizes: list[int]) -> None:
    start = 0
    for size in sizes:
        det(account, blank(size), feats[start:start + size])
        start += size
    assert start == len(feats)


def same(a, b) -> bool:
    """Two records equal, NaN scores included."""
    return (a.queries, a.flagged, a.first_alarm, a.min_score, a.refused) == (
        b.queries, b.flagged, b.first_alarm, b.min_score, b.refused) and np.array_equal(
        np.array(a.scores), np.array(b.scores), equal_nan=True) and len(a.scores) == len(b.scores)


def bimodal(n: int, seed: int) -> torch.Tensor:
    """60 % of the queries re-probe the first one: PRADA's d_min is then ~0 or ~1.2 (far from normal)."""
    probes = gaussian(n, seed=seed)
    near = torch.rand(n, generator=torch.Generator().manual_seed(seed + 1)) < 0.6
    near[0] = False
    probes[near] = probes[0] + 1e-3 * gaussian(int(near.sum()), seed=seed + 2)
    return probes


def knn_reference(feats: torch.Tensor, k: int, memory: int) -> np.ndarray:
    """For each query: the mean of the k smallest L2 distances to the (at most memory) earlier ones."""
    x = feats.double().numpy()
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    out = np.full(len(x), np.nan)
    for i in range(len(x)):
        earlier = x[max(0, i - memory):i]
        if len(earlier) >= k:
            out[i] = np.sort(np.linalg.norm(earlier - x[i], axis=1))[:k].mean()
    return out


def prada_reference(feats: torch.Tensor) -> np.ndarray:
    """PRADA written plainly: one growing set, T = max(T, mean - std) of [0, joined distances...], W of D
    when the queries processed before this one are a multiple of 10."""
    x = feats.double().numpy()
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    grown, joined, dmins, threshold = [x[0]], [0.0], [], 0.0
    out = np.full(len(x), np.nan)
    for i in range(1, len(x)):
        d = min(np.linalg.norm(g - x[i]) for g in grown)
        dmins.append(d)
        if d > threshold:
            grown.append(x[i])
            joined.append(d)
            threshold = max(threshold, np.mean(joined) - np.std(joined))
        if i % 10 == 0 and len(dmins) >= 10:
            arr = np.array(dmins)
            kept = arr[np.abs(arr - arr.mean()) < 3 * arr.std()]
            if len(kept) > 100:
                out[i] = shapiro(kept).statistic
    return out


def test_knn_statistic_matches_a_plain_loop_and_batching_does_not_matter() -> None:
    feats = gaussian(1300, 16)
    for k, memory in ((5, 700), (50, 10_000)):
        whole, single = (KNNDetector(k=k, memory=memory, threshold=1e-9, trace=True) for _ in range(2))
        send(whole, "a", feats, [1, 1199, 100])  # one call of 1,199: more than a chunk of rows, past memory
        send(single, "a", feats[:400], [1] * 400)
        expect = knn_reference(feats, k, memory)
        got = np.array(whole.report("a").scores)
        assert np.array_equal(np.isnan(got), np.isnan(expect)) and np.isnan(got[:k]).all()
        np.testing.assert_allclose(got[k:], expect[k:], atol=1e-5)
        np.testing.assert_allclose(np.array(single.report("a").scores)[k:], expect[k:400], atol=1e-5)
        assert whole.report("a").min_score == pytest.approx(np.nanmin(expect), abs=1e-5)


def test_knn_calibration_is_the_percentile_of_the_benign_knn_mean() -> None:
    feats = gaussian(300, 8, seed=1)
    det = KNNDetector(k=7, percentile=10.0)
    det.calibrate(feats)
    x = feats.double().numpy() / np.linalg.norm(feats.double().numpy(), axis=1, keepdims=True)
    dist = np.linalg.norm(x[:, None] - x[None], axis=2) + np.diag(np.full(len(x), np.inf))
    assert det.limit == pytest.approx(np.percentile(np.sort(dist, axis=1)[:, :7].mean(1), 10.0), abs=1e-5)
    assert KNNDetector(threshold=0.3).limit == 0.3


def test_knn_flags_near_duplicates_and_pairs_not_iid_gaussian() -> None:
    cal = gaussian(2000, seed=2)
    det, pairs_det = KNNDetector(), KNNDetector(k=1)
    det.calibrate(cal)
    pairs_det.calibrate(gaussian(5000, seed=3))
    base = gaussian(20, seed=4).repeat_interleave(60, 0)
    probes = (base + 0.05 * gaussian(len(base), seed=5))[torch.randperm(len(base))]  # 20 points, 60 probes each
    send(det, "prober", probes, [200] * 6)
    assert det.report("prober").flagged and det.report("prober").first_alarm < 200
    views = gaussian(400, seed=6)
    pairs = torch.stack([views, views + 0.01 * gaussian(400, seed=7)], 1).flatten(0, 1)  # two views, in turn
    send(pairs_det, "pairs", pairs, [100] * 8)
    assert pairs_det.report("pairs").first_alarm == 2
    for i, d in enumerate((det, pairs_det)):
        send(d, "iid", gaussian(800, seed=10 + i), [100] * 8)
        record = d.report("iid")
        assert record.queries == 800 and not record.flagged and record.first_alarm is None
        assert record.min_score > d.limit


def test_prada_matches_a_plain_loop_and_batching_does_not_matter() -> None:
    feats = gaussian(400, 16, seed=8)
    feats[200:300] = feats[3] + 0.01 * gaussian(100, 16, seed=9)  # some near-repeats, so T and G matter
    whole, single = PRADA(delta=0.5, trace=True), PRADA(delta=0.5, trace=True)
    send(whole, "a", feats, [1, 250, 149])
    send(single, "a", feats, [1] * 400)
    expect = prada_reference(feats)
    for det in (whole, single):
        got = np.array(det.report("a").scores)
        assert np.array_equal(np.isnan(got), np.isnan(expect))
        assert list(np.flatnonzero(~np.isnan(got)) + 1) == list(range(111, 401, 10))  # every 10th, > 100 in D
        np.testing.assert_allclose(got[~np.isnan(got)], expect[~np.isnan(expect)], atol=1e-6)


def test_prada_flags_a_bimodal_stream_not_iid_gaussian() -> None:
    det = PRADA(secret=SECRET)
    det.calibrate(gaussian(2000, seed=11))
    assert 0.85 < det.limit < 0.99
    for i in range(3):
        send(det, f"iid{i}", gaussian(500, seed=20 + i), [100] * 5)
        assert not det.report(f"iid{i}").flagged and det.report(f"iid{i}").min_score > det.limit
    send(det, "prober", bimodal(500, seed=12), [100] * 5)
    record = det.report("prober")
    assert record.flagged and record.first_alarm == 111 and record.min_score < 0.8


def test_refuse_raises_after_the_flag_and_the_api_refunds(encoder) -> None:
    det = KNNDetector(k=3, threshold=0.01, action="refuse")
    api = SimulatedAPI(encoder, defenses=[det], device=torch.device("cpu"), calibration=torch.rand(8, 1, 28, 28))
    image = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    for _ in range(3):  # fewer than k earlier queries: not scored
        api.query(image, account="thief")
    with pytest.raises(QueryRefused, match="flagged by knn-detector at query 4") as err:
        api.query(image, account="thief")  # an exact repeat: distance 0
    assert "\n" not in str(err.value)
    with pytest.raises(QueryRefused):
        api.query(torch.rand(5, 1, 28, 28), account="thief")  # anything later
    assert api.ledger("thief").images == 3 and api.ledger("thief").calls == 3
    assert api.query(torch.rand(6, 1, 28, 28), account="honest").shape == (6, encoder.dim)
    served = api.defenses[0]
    assert served.report("thief").refused == 6 and served.report("thief").answered == 3
    assert not served.report("honest").flagged and served.accounts() == ["thief", "honest"]


def test_poison_changes_answers_only_from_the_alarm_on(encoder) -> None:
    calibration = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    det = KNNDetector(k=3, threshold=0.01, action="poison")
    api = SimulatedAPI(encoder, defenses=[det], device=torch.device("cpu"), calibration=calibration, secret=SECRET)
    clean = SimulatedAPI(encoder, device=torch.device("cpu"))
    a, b = torch.rand(2, 1, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    batch = torch.cat([a, a, a, a, b, b])  # the 4th is the first scored: an exact repeat
    out, want = api.query(batch, account="thief"), clean.query(batch)
    assert out.dtype == torch.float32 and torch.equal(out[:3], want[:3])
    assert not torch.isclose(out[3:], want[3:]).all(dim=1).any()
    assert api.defenses[0].report("thief").first_alarm == 4
    later = api.query(torch.rand(500, 1, 28, 28), account="thief")  # every later answer is noise,
    moments = clean.clean_features(calibration)  # moment-matched to the clean features
    assert torch.allclose(later.mean(0), moments.mean(0), atol=4 * moments.std(0).max().item() / 500 ** 0.5)
    assert torch.equal(api.query(batch[:3], account="honest"), want[:3])
    again = KNNDetector(k=3, threshold=0.01, action="poison").bind(SECRET)
    again.calibrate(moments)
    features = clean.query(batch)
    assert torch.equal(again("thief", batch, features), out)  # the noise comes from the deployment secret


def test_observe_never_changes_answers_and_records() -> None:
    det = KNNDetector(k=2, threshold=0.05)
    feats = gaussian(1, 8).repeat(5, 1)
    assert torch.equal(det("t", blank(5), feats), feats)
    assert det.report("t").flagged and det.report("t").first_alarm == 3 and det.report("t").min_score < 1e-3
    assert det.report("nobody") == det.report("nobody") and det.report("nobody").queries == 0


def test_accounts_never_share_state_also_under_threads() -> None:
    honest = gaussian(600, seed=30)
    det = KNNDetector(k=5, threshold=0.5, trace=True)
    send(det, "honest", honest, [100] * 6)
    send(det, "thief", honest, [100] * 6)  # the same images again, from another account: nothing repeated
    assert not det.report("thief").flagged and same(det.report("thief"), det.report("honest"))
    streams = {f"honest{i}": gaussian(300, seed=40 + i) for i in range(4)}
    streams |= {f"thief{i}": bimodal(300, seed=50 + 3 * i) for i in range(2)}
    for make in (lambda: KNNDetector(k=5, threshold=0.5, trace=True), lambda: PRADA(delta=0.9, trace=True)):
        alone = {name: make() for name in streams}
        for name, feats in streams.items():
            send(alone[name], name, feats, [30] * 10)
        shared = make()
        with ThreadPoolExecutor(len(streams)) as pool:  # accounts in parallel, each one's calls in order
            list(pool.map(lambda item: send(shared, item[0], item[1], [30] * 10), streams.items()))
        for name in streams:
            assert same(shared.report(name), alone[name].report(name))
            assert shared.report(name).flagged == name.startswith("thief")


def test_knn_keeps_device_and_dtype_and_an_empty_batch() -> None:
    det = KNNDetector(k=2, threshold=0.05, action="poison")
    out = det("t", blank(4), gaussian(1, 8).repeat(4, 1))
    assert out.dtype == torch.float32 and out.shape == (4, 8) and not torch.isnan(out).any()
    assert det("t", blank(0), torch.empty(0, 8)).shape == (0, 8)


@pytest.mark.parametrize("spec, message", [
    ("knn-detector:k=0", "knn-detector k must be an int >= 1 (e.g. k=50); got 0"),
    ("knn-detector:k=60,memory=50", "knn-detector memory must be >= k"),
    ("knn-detector:percentile=101", "knn-detector percentile must be a finite number >= 0 and <= 100"),
    ("knn-detector:threshold=-1", "knn-detector threshold must be a finite number > 0"),
    ("knn-detector:action=block", "knn-detector action must be one of observe, refuse, poison; got 'block'"),
    ("prada:delta=1.5", "prada delta must be a finite number > 0 and <= 1 (e.g. delta=0.95); got 1.5"),
    ("prada:space=logits", "prada space must be one of features, pixels; got 'logits'"),
    ("prada:space=pixels", "prada space=pixels needs an explicit delta"),
])
def test_bad_settings_are_one_line_errors(spec: str, message: str) -> None:
    with pytest.raises(OptionError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        build("defense", spec)
    assert "\n" not in str(err.value)


def test_bad_values_given_in_python_are_one_line_errors_too() -> None:
    with pytest.raises(ValueError, match="prada trace must be true or false; got 3"):
        PRADA(action="poison", trace=3)
    with pytest.raises(ValueError, match="knn-detector secret must be a DeploymentSecret"):
        KNNDetector(secret="hunter2")


def test_uncalibrated_and_undersized_calibration_say_what_to_pass() -> None:
    with pytest.raises(ValueError, match="pass threshold="):
        KNNDetector()("a", blank(1), gaussian(1))
    with pytest.raises(ValueError, match="pass delta="):
        PRADA()("a", blank(1), gaussian(1))
    with pytest.raises(ValueError, match="more than k=50 clean feature vectors; got 50"):
        KNNDetector().calibrate(gaussian(50))
    with pytest.raises(ValueError, match="more than 110 clean feature vectors"):
        PRADA().calibrate(gaussian(100))


def test_prada_pixel_space_measures_the_images() -> None:
    images = bimodal(300, seed=70).view(300, 2, 4, 4)
    features = gaussian(300, seed=71)  # i.i.d.: only the images carry the pattern
    pixels, feats = PRADA(delta=0.9, space="pixels"), PRADA(delta=0.9)
    pixels("a", images, features)
    feats("a", images, features)
    assert pixels.report("a").flagged and not feats.report("a").flagged

"""Ownership verification: dataset inference, the rotation watermark, `sslaudit verify`, `steal --save-stolen`."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy import stats
from sklearn.mixture import GaussianMixture
from torch import nn

from sslaudit.cli import main
from sslaudit.models import InputSpec, build_encoder
from sslaudit.ownership.dataset_inference import dataset_inference, gmm_test
from sslaudit.ownership.verdict import Verdict
from sslaudit.ownership.watermark import (WatermarkConfig, WatermarkHead, load_watermark, random_layers, rotate,
                                          save_watermark, train_watermarked, watermark_path)
from sslaudit.ownership.watermark_verify import (binomial_test, verify_watermark,
                                                 verify_watermark_null_heads, watermark_verdicts)
from sslaudit.secret import DeploymentSecret
from sslaudit.train import TrainConfig
from sslaudit.victim import Victim, config_key
from sslaudit.victims.simclr import PRESETS, SimCLRConfig


def gaussian(n: int, seed: int, shift: float = 0.0, dim: int = 8) -> torch.Tensor:
    """A cluster around (2, ..., 2); ``shift`` turns its direction (+shift on even dims, -shift on odd ones),
    which L2 normalisation keeps, without changing its norm (which would change its spread on the sphere)."""
    x = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)) * 0.5 + 2
    x[:, ::2] += shift
    x[:, 1::2] -= shift
    return x


# ---- dataset inference -------------------------------------------------------------------------------------

def reference_di(fit: torch.Tensor, evaluate: torch.Tensor, public: torch.Tensor, k: int) -> tuple[float, float]:
    """Δ and the one-sided p of gmm.py written out: normalise, GMM, pooled-variance t, Student-t tail."""
    norm = [(x / x.norm(dim=1, keepdim=True)).double().numpy() for x in (fit, evaluate, public)]
    gmm = GaussianMixture(k, covariance_type="diag", max_iter=1000, random_state=0).fit(norm[0])
    a, b = gmm.score_samples(norm[1]), gmm.score_samples(norm[2])
    pooled = ((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2)
    t = (a.mean() - b.mean()) / math.sqrt(pooled * (1 / len(a) + 1 / len(b)))
    return float(a.mean() - b.mean()), float(stats.t.sf(t, len(a) + len(b) - 2))


def test_di_flags_eval_points_from_the_fitted_distribution():
    fit, evaluate, public = gaussian(600, 0), gaussian(300, 1), gaussian(300, 2, shift=0.4)
    verdict = gmm_test(fit, evaluate, public, components=2)
    delta, p = reference_di(fit, evaluate, public, 2)
    assert verdict.verdict == "stolen-or-victim" and verdict.p_value < 0.01 and verdict.statistic > 0
    assert verdict.statistic == pytest.approx(delta, rel=1e-9) and verdict.p_value == pytest.approx(p, rel=1e-6)
    assert verdict.n == 600 and verdict.extra["components"] == 2


def test_di_with_delta_below_zero_is_never_stolen():
    fit, evaluate, public = gaussian(600, 0), gaussian(300, 2, shift=0.4), gaussian(300, 1)
    verdict = gmm_test(fit, evaluate, public, components=2)
    delta, p = reference_di(fit, evaluate, public, 2)
    unit = [(x / x.norm(dim=1, keepdim=True)).double().numpy() for x in (fit, evaluate, public)]
    gmm = GaussianMixture(2, covariance_type="diag", max_iter=1000, random_state=0).fit(unit[0])
    two_sided = stats.ttest_ind(gmm.score_samples(unit[1]), gmm.score_samples(unit[2])).pvalue
    assert verdict.statistic < 0 and verdict.p_value >= 0.5 and verdict.verdict == "independent"
    assert verdict.p_value == pytest.approx(p, rel=1e-6) == pytest.approx(1 - two_sided / 2, rel=1e-6)


def test_di_false_positive_rate_on_one_distribution():
    ps = [gmm_test(gaussian(300, 3 * s), gaussian(150, 3 * s + 1), gaussian(150, 3 * s + 2), components=2).p_value
          for s in range(20)]
    assert sum(p < 0.05 for p in ps) <= 3, ps  # expected 1 of 20
    assert 0.3 < float(np.mean(ps)) < 0.7, ps  # uniform under the null: mean 0.5


def test_di_queries_the_suspect_encoder():
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(16, 6))
    torch.manual_seed(0)
    images = [torch.rand(n, 1, 4, 4) + s for n, s in ((400, 0.0), (200, 0.0), (200, 0.3))]
    with torch.no_grad():
        reps = [encoder(x) for x in images]
    expected = gmm_test(*reps, components=3)
    got = dataset_inference(encoder, *images, components=3)
    assert got.p_value == pytest.approx(expected.p_value, rel=1e-6)
    assert got.statistic == pytest.approx(expected.statistic, rel=1e-6)


@pytest.mark.parametrize("components", [0, 2.5, True])
def test_di_bad_components_is_one_line(components):
    with pytest.raises(ValueError, match="components must be a whole number >= 1"):
        gmm_test(gaussian(100, 0), gaussian(50, 1), gaussian(50, 2), components=components)


def test_verdict_alpha_is_checked():
    with pytest.raises(ValueError, match=r"alpha must be a number in \(0, 1\)"):
        Verdict.decide("t", statistic=0, p_value=0.5, n=1, alpha=1.5)
    assert Verdict.decide("t", statistic=0, p_value=0.04, n=1, alpha=0.05).rejected
    assert not Verdict.decide("t", statistic=0, p_value=float("nan"), n=1).rejected


# ---- the watermark -----------------------------------------------------------------------------------------

def reference_binomial_p(correct: int, n: int) -> float:
    """P(X >= correct) for X ~ Binomial(n, 1/2): the sum of the pmf."""
    return sum(math.comb(n, k) for k in range(correct, n + 1)) / 2 ** n


def test_binomial_test_matches_the_pmf_sum():
    gen = torch.Generator().manual_seed(0)
    right = torch.rand(400, generator=gen) < 0.9
    coin = torch.rand(400, generator=gen) < 0.5
    strong, chance = binomial_test(int(right.sum()), 400), binomial_test(int(coin.sum()), 400)
    assert strong.p_value < 0.01 and strong.verdict == "stolen-or-victim"
    assert chance.p_value > 0.05 and chance.verdict == "independent"
    for verdict, correct in ((strong, int(right.sum())), (chance, int(coin.sum()))):
        assert verdict.p_value == pytest.approx(reference_binomial_p(correct, 400), rel=1e-9)
        assert verdict.statistic == correct / 400 and verdict.n == 400


def test_rotate_matches_numpy():
    images = torch.rand(8, 1, 5, 5)
    k = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    expected = np.stack([np.rot90(images[i, 0].numpy(), int(k[i])) for i in range(8)])[:, None]
    assert np.allclose(rotate(images, k).numpy(), expected)


class Corners(nn.Module):
    """Features = the four corner pixels: a perfect reader of quarter turns of a one-corner image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x[:, 0, 0, 0], x[:, 0, 0, -1], x[:, 0, -1, 0], x[:, 0, -1, -1]], 1) * 10


class Blind(nn.Module):
    """Features that no quarter turn changes (the image's total, four times)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum((1, 2, 3))[:, None].repeat(1, 4)


def corner_head() -> WatermarkHead:
    """A 4 -> 2 head that reads the rotation class from the corner a top-left mark was turned to."""
    mark = np.zeros((5, 5))
    mark[0, 0] = 1
    head = WatermarkHead((4, 2))
    with torch.no_grad():
        head[0].weight.zero_(), head[0].bias.zero_()
        for k in range(4):
            turned = np.rot90(mark, k)
            corner = [turned[0, 0], turned[0, -1], turned[-1, 0], turned[-1, -1]].index(1)
            head[0].weight[k // 2, corner] = 1.0
    return head


def test_verify_watermark_reads_the_heads_accuracy():
    images = torch.zeros(300, 1, 5, 5)
    images[:, 0, 0, 0] = 1
    right = verify_watermark(Corners(), corner_head(), images)
    assert right.statistic == 1.0 and right.verdict == "stolen-or-victim"
    blind = verify_watermark(Blind(), corner_head(), images)
    assert blind.verdict == "independent" and blind.statistic == 0.5  # one class for all; the classes are balanced
    assert blind.p_value == pytest.approx(reference_binomial_p(150, 300))
    both = watermark_verdicts(Corners(), corner_head(), images, heads=9)
    assert both[0] == right and both[1] == verify_watermark_null_heads(Corners(), corner_head(), images, heads=9)


def test_null_heads_p_value_is_the_margin_rank_among_fresh_heads():
    images = torch.rand(200, 1, 5, 5, generator=torch.Generator().manual_seed(0)) * 10
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(25, 12))
    secret = WatermarkHead.random(12, (8,), generator=torch.Generator().manual_seed(99))
    verdict = verify_watermark_null_heads(encoder, secret, images, heads=19, seed=3)
    with torch.no_grad():
        k = (torch.arange(200) % 4)[torch.randperm(200, generator=torch.Generator().manual_seed(3))]
        feats, y = encoder(rotate(images, k)), k // 2

        def margin(h: nn.Module) -> float:  # mean of logit(true class) - logit(other class)
            logits = h(feats)
            return float(torch.where(y == 1, logits[:, 1] - logits[:, 0], logits[:, 0] - logits[:, 1]).mean())

        # The null heads, one nn.Module each, from the same draws as the batched forward (seed + 1).
        layers = random_layers(secret.dims, 19, torch.Generator().manual_seed(4))
        null = []
        for j in range(19):
            head = WatermarkHead(secret.dims)
            for layer, (weight, bias) in zip([m for m in head if isinstance(m, nn.Linear)], layers):
                layer.weight.copy_(weight[j]), layer.bias.copy_(bias[j])
            null.append(margin(head))
    assert verdict.statistic == pytest.approx(margin(secret), abs=1e-5)
    assert min(abs(a - margin(secret)) for a in null) > 1e-4  # no near-ties: the rank below is unambiguous
    assert verdict.p_value == pytest.approx((1 + sum(a >= margin(secret) for a in null)) / 20)
    assert 0.05 < verdict.p_value < 1  # a rank inside the null: the count is tested, not only its ends
    assert verdict.extra["null_max"] == pytest.approx(max(null), abs=1e-5)


def test_random_heads_follow_pytorch_linear_init():
    weight, bias = random_layers((300, 2), 50, torch.Generator().manual_seed(0))[0]
    bound = 1 / math.sqrt(300)
    for t in (weight, bias):
        assert float(t.abs().max()) <= bound and float(t.abs().max()) > 0.99 * bound
    assert float(weight.var()) == pytest.approx(bound ** 2 / 3, rel=0.02)  # U(-b, b) has variance b²/3


def test_the_default_simclr_cache_key_is_unchanged():
    assert config_key(PRESETS["tiny"]) == "ab8109c2896a"  # the shipped victim's key: the watermark adds no field
    assert config_key(SimCLRConfig()) == "ab8109c2896a"


def test_watermark_settings_are_checked():
    with pytest.raises(ValueError, match="watermark weight must be a finite number > 0"):
        WatermarkConfig(weight=0)
    with pytest.raises(ValueError, match="watermark hidden must be positive whole widths"):
        WatermarkConfig(hidden=(256, 0))


@pytest.fixture(scope="module")
def watermarked():
    from sslaudit.data import load_dataset

    try:
        data = load_dataset("fashion-mnist", "train").subset(slice(0, 512))
        held_out = load_dataset("fashion-mnist", "test").subset(slice(5000, 5600))
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST not installed")
    config = SimCLRConfig(arch="convnet-small", train=TrainConfig(epochs=6, batch_size=64, lr=0.3, warmup_epochs=0))
    victim, head = train_watermarked(data, config, DeploymentSecret.fixed("test-watermark"),
                                     WatermarkConfig(weight=20.0), progress=False)
    return victim, head, held_out, config


def test_watermark_training_embeds_the_watermark(watermarked):
    victim, head, held_out, config = watermarked
    torch.manual_seed(0)
    random_encoder = build_encoder("convnet-small", InputSpec())
    trained, untrained = verify_watermark(victim.encoder, head, held_out), verify_watermark(random_encoder, head,
                                                                                            held_out)
    assert trained.statistic > untrained.statistic + 0.05 and trained.p_value < 0.01, (trained, untrained)
    assert verify_watermark_null_heads(victim.encoder, head, held_out).p_value <= 0.01
    assert verify_watermark_null_heads(random_encoder, head, held_out).p_value > 0.05
    assert victim.card["method"] == "simclr+watermark" and victim.card["config_key"] != config_key(config)
    assert "seed" not in json.dumps(victim.card["watermark"])  # the secret never reaches the card


def test_watermark_head_round_trips_beside_the_victim(watermarked, tmp_path):
    victim, head, held_out, _ = watermarked
    weights = victim.save(tmp_path / "wm")
    saved = save_watermark(head, weights)
    assert saved == tmp_path / "wm.watermark.safetensors" == watermark_path(tmp_path / "wm")
    loaded = load_watermark(saved)
    features = torch.randn(7, head.dims[0])
    assert loaded.dims == head.dims and torch.equal(loaded(features), head(features))
    assert Victim.load(tmp_path / "wm").card["method"] == "simclr+watermark"


# ---- the CLI -----------------------------------------------------------------------------------------------

def one_line_error(result: object, *hints: str) -> None:
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.output, result.output
    for hint in hints:
        assert hint in lines[0], lines[0]


@pytest.fixture
def saved_victim(tmp_path):
    torch.manual_seed(7)
    encoder = build_encoder("convnet-small", InputSpec())
    card = {"method": "random", "arch": "convnet-small", "input": InputSpec().to_dict(), "scores": {}}
    return Victim(encoder, card).save(tmp_path / "victim")


def test_verify_refuses_a_missing_or_bad_suspect_before_any_work(tmp_path, monkeypatch):
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("work started before the suspect was checked")

    monkeypatch.setattr("sslaudit.zoo.resolve_victim", refuse)
    one_line_error(CliRunner().invoke(main, ["verify", "--suspect", str(tmp_path / "nothing")]),
                   "'--suspect'", "no victim at")
    (tmp_path / "bad.json").write_text("{")
    (tmp_path / "bad.safetensors").write_bytes(b"not weights")
    one_line_error(CliRunner().invoke(main, ["verify", "--suspect", str(tmp_path / "bad")]),
                   "'--suspect'", "not a readable JSON card")
    one_line_error(CliRunner().invoke(main, ["verify", "--suspect", str(tmp_path / "bad"), "--alpha", "1"]),
                   "'--alpha'")
    rgb = InputSpec(channels=3, size=32)
    Victim(build_encoder("convnet-small", rgb), {"method": "m", "arch": "convnet-small", "input": rgb.to_dict()}
           ).save(tmp_path / "rgb")
    one_line_error(CliRunner().invoke(main, ["verify", "--suspect", str(tmp_path / "rgb")]),
                   "'--suspect'", "takes 3x32x32 images")
    gray = Victim(build_encoder("convnet-small", InputSpec()), {"method": "m", "arch": "convnet-small",
                                                                "input": InputSpec().to_dict()}).save(tmp_path / "ok")
    one_line_error(CliRunner().invoke(main, ["verify", "--suspect", str(tmp_path / "ok"), "--watermark", str(gray)]),
                   "'--watermark'", "not a watermark head")
    one_line_error(CliRunner().invoke(main, ["verify", "--suspect", str(tmp_path / "ok"), "--watermark",
                                             str(tmp_path / "none.safetensors")]), "'--watermark'", "no watermark head")


def test_save_stolen_to_an_unwritable_path_is_refused_first(tmp_path, monkeypatch):
    monkeypatch.setattr("sslaudit.zoo.resolve_victim", lambda *a, **k: (_ for _ in ()).throw(AssertionError()))
    (tmp_path / "file").write_text("")
    result = CliRunner().invoke(main, ["steal", "--save-stolen", str(tmp_path / "file" / "stolen")])
    one_line_error(result, "'--save-stolen'", "is a file, not a folder")


@pytest.mark.slow
def test_steal_save_stolen_then_verify(needs_fmnist, saved_victim, tmp_path):
    from sslaudit.evaluate import evaluate_encoder
    from sslaudit.tasks import downstream_task

    stolen, report = tmp_path / "out" / "stolen", tmp_path / "r.json"
    result = CliRunner().invoke(main, ["steal", "--victim", str(saved_victim), "--attack", "mse", "--queries",
                                       "200,300", "--epochs", "1", "--eval-train", "1000", "--eval-test", "100",
                                       "--no-progress", "--stolen-arch", "convnet-small", "--json", str(report),
                                       "--save-stolen", str(stolen)])
    assert result.exit_code == 0, result.output
    loaded = Victim.load(stolen)
    card, rows = loaded.card, json.loads(report.read_text())["curve"]
    assert card["method"] == "stolen:mse" and card["queries"] == 300 and card["victim"] == "random-convnet-small-custom"
    assert card["arch"] == "convnet-small" and card["dim"] == loaded.encoder.dim
    scores = evaluate_encoder(loaded.encoder, downstream_task(1000, 100))  # the largest budget's encoder was saved
    assert scores["linear_full"] == pytest.approx(rows[-1]["stolen"]["linear_full"], abs=1e-6)
    assert scores["knn"] == pytest.approx(rows[-1]["stolen"]["knn"], abs=1e-6)
    assert not list(stolen.parent.glob(".*"))  # no temporary files left behind

    head = WatermarkHead.random(loaded.encoder.dim, generator=torch.Generator().manual_seed(0))
    save_watermark(head, saved_victim)
    out = tmp_path / "v.json"
    result = CliRunner().invoke(main, ["verify", "--victim", str(saved_victim), "--suspect", str(stolen),
                                       "--json", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "  p=" in line]
    assert [line.split()[0] for line in lines] == ["dataset-inference", "watermark-binomial", "watermark-null-heads"]
    tests = json.loads(out.read_text())["tests"]
    for line, test in zip(lines, tests):
        assert test["verdict"] in line and 0 <= test["p_value"] <= 1
    assert tests[0]["n"] == 10000 and tests[1]["n"] == 5000

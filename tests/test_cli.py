"""End to end through the CLI on small subsets (click's CliRunner)."""
import json

import pytest
import torch
from click.testing import CliRunner

from sslaudit.cli import main, parse_component
from sslaudit.evaluate import evaluate_encoder
from sslaudit.models import InputSpec, build_encoder
from sslaudit.tasks import downstream_task
from sslaudit.victim import Victim


@pytest.fixture(scope="module")
def victim_file(tmp_path_factory):
    torch.manual_seed(7)
    encoder = build_encoder("convnet-small", InputSpec())
    card = {"method": "random", "arch": "convnet-small", "input": InputSpec().to_dict(), "scores": {}}
    return Victim(encoder, card).save(tmp_path_factory.mktemp("victim") / "random")


EVAL_TRAIN, EVAL_TEST = 1000, 500  # the CLI's smallest --eval-train: one few label per class
QUICK = ["--queries", "300", "--epochs", "2", "--eval-train", str(EVAL_TRAIN), "--eval-test", str(EVAL_TEST),
         "--no-progress", "--stolen-arch", "convnet-small"]


@pytest.mark.slow
def test_steal_writes_a_complete_json(needs_fmnist, victim_file, tmp_path, monkeypatch):
    monkeypatch.setenv("SSLAUDIT_CACHE", str(tmp_path / "cache"))  # the run measures, no scores from earlier runs
    out = tmp_path / "r.json"
    result = CliRunner().invoke(main, ["steal", "--victim", str(victim_file), "--attack", "infonce",
                                       "--defense", "noise:sigma=0.05", "--json", str(out), *QUICK])
    assert result.exit_code == 0, result.output
    assert "victim (random, convnet-small)" in result.output and "random init" in result.output
    report = json.loads(out.read_text())
    assert report["queries"]["sent"] == 300 and report["queries"]["cost"] == pytest.approx(0.3)
    assert report["queries"]["pool"] == "fashion-mnist:test[:5000]"
    for row in ("victim", "stolen", "floor"):
        for metric in ("linear_1pct", "linear_full", "knn"):
            assert 0.0 <= report[row][metric] <= 1.0
    # The victim's and the floor's scores, computed here from the encoders with the fixed protocol: the
    # floor is a random-init encoder of the *stolen* architecture (--stolen-arch) built with the run's seed.
    task = downstream_task(EVAL_TRAIN, EVAL_TEST)
    victim = evaluate_encoder(Victim.load(victim_file).encoder, task)
    torch.manual_seed(0)
    floor = evaluate_encoder(build_encoder("convnet-small", InputSpec()), task)
    assert report["floor"]["arch"] == "convnet-small"
    stolen = report["stolen"]
    for metric in ("linear_1pct", "linear_full", "knn"):
        assert report["victim"][metric] == pytest.approx(victim[metric], abs=1e-9)
        assert report["floor"][metric] == pytest.approx(floor[metric], abs=1e-9)
        if victim[metric] == floor[metric]:  # nothing learned beyond random features: no gain to recover
            assert stolen["gain_recovered"][metric] is None  # undefined (JSON has no NaN)
        else:
            gain = (stolen[metric] - floor[metric]) / (victim[metric] - floor[metric])
            assert stolen["gain_recovered"][metric] == pytest.approx(gain)
        assert stolen["transfer_ratio"][metric] == pytest.approx(stolen[metric] / victim[metric])
    assert stolen["fidelity"]["cosine"] is not None and 0 <= stolen["fidelity"]["cka"] <= 1
    assert report["defenses"][0]["name"] == "GaussianNoise" and report["defenses"][0]["sigma"] == 0.05
    # A defence turns the honest user's path on: an account that pays for every task image it sends.
    honest = report["honest"]
    assert honest["queries"] == EVAL_TRAIN + EVAL_TEST and honest["cost"] == pytest.approx((EVAL_TRAIN + EVAL_TEST) / 1000)
    assert "honest user" in result.output and report["queries"]["account_total"] == 300  # not the attacker's
    run = report["run"]
    assert run["seed"] == 0 and "torch" in run["versions"] and run["wall_seconds"] > 0 and "commit" in run


@pytest.mark.slow
def test_digits_pool_pads_with_copies(needs_fmnist, victim_file, tmp_path):
    out = tmp_path / "d.json"
    args = ["steal", "--victim", str(victim_file), "--pool", "digits", "--json", str(out), *QUICK]
    args[args.index("300")] = "2000"
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["queries"]["sent"] == 2000


def test_list_shows_registries():
    result = CliRunner().invoke(main, ["list"])
    assert result.exit_code == 0 and "simclr" in result.output and "infonce" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["steal", "--attack", "telepathy"], "unknown attack"),
        (["steal", "--defense", "noise:sigma"], "key=value"),
        (["steal", "--defense", "noise:volume=3"], "volume"),
        (["steal", "--victim", "nope"], "unknown victim"),
    ],
)
def test_bad_arguments_give_one_line_errors(args, message, victim_file):
    if args[1] != "--victim":
        args = args + ["--victim", str(victim_file)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0 and message in result.output
    assert "Traceback" not in result.output


def test_parse_component_types():
    assert parse_component("noise:sigma=0.2,relative=false,seed=3,mode=x") == (
        "noise", {"sigma": 0.2, "relative": False, "seed": 3, "mode": "x"})


def test_download_without_torchvision_says_how(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", None)
    result = CliRunner().invoke(main, ["data", "download", "fashion-mnist"])
    assert result.exit_code != 0 and "sslaudit[zoo]" in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_budget_list_buys_once_and_reports_each_prefix(needs_fmnist, victim_file, tmp_path):
    out = tmp_path / "curve.json"
    args = ["steal", "--victim", str(victim_file), "--json", str(out), *QUICK]
    args[args.index("300")] = "300,100"
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert result.output.count("stolen (mse") == 2
    curve = json.loads(out.read_text())["curve"]
    assert [r["queries"]["sent"] for r in curve] == [100, 300]
    assert [r["queries"]["cost"] for r in curve] == pytest.approx([0.1, 0.3])
    assert all(r["queries"]["account_total"] == 300 for r in curve)  # one purchase of the largest budget
    assert curve[0]["floor"] == curve[1]["floor"]


@pytest.mark.parametrize("queries", ["0", "10,abc", ","])
def test_bad_budget_lists_are_refused(queries, victim_file):
    result = CliRunner().invoke(main, ["steal", "--victim", str(victim_file), "--queries", queries])
    assert result.exit_code != 0 and "--queries" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("attack", ["softnn", "wasserstein", "stolenencoder", "contsteal", "rda", "simreg",
                                    "sybil", "self-train", "ssl-small"])
@pytest.mark.slow
def test_every_recipe_runs_through_the_cli(needs_fmnist, victim_file, tmp_path, attack):
    out = tmp_path / f"{attack}.json"
    args = ["steal", "--victim", str(victim_file), "--attack", attack, "--json", str(out), *QUICK]
    args[args.index("--epochs") + 1] = "1"
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    expected = 0 if attack == "ssl-small" else 300
    assert report["queries"]["sent"] == expected == report["queries"]["account_total"]
    assert 0.0 <= report["stolen"]["linear_full"] <= 1.0


def test_a_refusing_detector_stops_the_thief_with_one_line(needs_fmnist, victim_file):
    # threshold 100: every scored query is "too close", so the account is flagged after k queries
    result = CliRunner().invoke(main, ["steal", "--victim", str(victim_file), "--attack", "mse",
                                       "--defense", "knn-detector:k=5,threshold=100,action=refuse", *QUICK])
    assert result.exit_code == 1, result.output
    assert "refused the attacker, so nothing was stolen" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) <= 2

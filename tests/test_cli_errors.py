"""Bad input gets one clear line, found before any work starts; nothing the user has is lost."""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from sslaudit import registry
from sslaudit.cli import main
from sslaudit.cli_options import min_eval_train, write_atomically
from sslaudit.models import InputSpec, build_encoder
from sslaudit.train import TrainConfig, fit
from sslaudit.victim import Victim

FACTORY = '''
from torch import nn

def small():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
'''
NATIVE = ["--input-size", "16", "--channels", "3"]


class WorkStarted(AssertionError):
    """Raised by the expensive steps: reaching one means validation came too late."""


def refuse(*args: object, **kwargs: object) -> None:
    raise WorkStarted("work started before validation")


LATER_WORK = ("sslaudit.zoo.train_victim", "sslaudit.tasks.downstream_task", "sslaudit.tasks.attack_pool",
              "sslaudit.audit.steal_curve")


def refuse_work(monkeypatch: pytest.MonkeyPatch, cache: Path, targets: tuple[str, ...]) -> None:
    """Make ``targets`` raise :class:`WorkStarted`; the cache is a temporary folder.

    Every module that copies these names at import is imported first, so no copy of a stand-in outlives the test.
    """
    import sslaudit.audit  # noqa: F401
    import sslaudit.zoo  # noqa: F401

    for kind in registry.KINDS:
        registry.names(kind)
    monkeypatch.setenv("SSLAUDIT_CACHE", str(cache))
    for target in targets:
        monkeypatch.setattr(target, refuse)


@pytest.fixture
def no_work(monkeypatch, tmp_path):
    """Loading victims or data, training and evaluating all fail loudly."""
    refuse_work(monkeypatch, tmp_path / "cache", ("sslaudit.zoo.resolve_victim", *LATER_WORK))


@pytest.fixture
def no_evaluation(monkeypatch, tmp_path):
    """The victim may load (the error is in it), but nothing after it may run."""
    refuse_work(monkeypatch, tmp_path / "cache", LATER_WORK)


@pytest.fixture
def factory(tmp_path, monkeypatch):
    (tmp_path / "byo_errs.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("byo_errs", None)
    return "byo_errs:small"


def run(*args: str) -> object:
    return CliRunner().invoke(main, list(args))


def one_line(result: object, code: int, *hints: str) -> str:
    """The run exited with ``code`` and printed exactly one line, holding every hint, and no traceback."""
    assert not isinstance(result.exception, WorkStarted), "validation came after the work started"
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    for hint in hints:
        assert hint in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("spec, hint", [
    ("noise:sigma=-1", "sigma"),
    ("noise:sigma=abc", "sigma expects a number, got 'abc'"),
    ("noise:sigma=nan", "sigma expects a number, got 'nan'"),
    ("noise:mu=abc", "mu expects a number, got 'abc'"),
    ("noise:volume=3", "has no option 'volume'; accepted keys:"),
    ("noise:sigma", "expected key=value"),
    ("loud", "unknown defense 'loud'; choose one of:"),
])
def test_bad_defences_are_refused_before_the_victim_loads(no_work, spec, hint):
    one_line(run("steal", "--defense", spec), 2, "'--defense'", hint)


@pytest.mark.parametrize("spec, hint", [
    ("mse:standardize=maybe", "standardize expects true or false, got 'maybe'"),
    ("mse:loss=infonce", "fixes loss='mse'"),
    ("telepathy", "unknown attack 'telepathy'"),
])
def test_bad_attacks_are_refused_before_the_victim_loads(no_work, spec, hint):
    one_line(run("steal", "--attack", spec), 2, "'--attack'", hint)


def test_attack_options_reach_the_attack(monkeypatch, tmp_path):
    refuse_work(monkeypatch, tmp_path / "cache", ())
    seen = {}

    def capture(victim, attack, *args, **kwargs):
        seen["attack"] = attack
        raise ValueError("stop here")

    victim = Victim(build_encoder("convnet-small", InputSpec()), {"method": "m", "arch": "convnet-small"})
    monkeypatch.setattr("sslaudit.zoo.resolve_victim", lambda *a, **k: victim)
    monkeypatch.setattr("sslaudit.tasks.downstream_task", lambda *a: None)
    monkeypatch.setattr("sslaudit.tasks.attack_pool", lambda *a, **k: type("Pool", (), {"name": "p"})())
    monkeypatch.setattr("sslaudit.audit.steal_curve", capture)
    run("steal", "--attack", "mse:standardize=true", "--stolen-arch", "convnet-small", "--epochs", "3")
    attack = seen["attack"]
    assert attack.loss == "mse" and attack.standardize and attack.stolen_arch == "convnet-small"
    assert attack.train.epochs == 3


@pytest.mark.parametrize("args, hint", [
    (["--epochs", "-1"], "'--epochs': must be at least 1; got -1"),
    (["--epochs", "0"], "'--epochs': must be at least 1; got 0"),
    (["--price", "-1"], "'--price': must be a finite number >= 0"),
    (["--price", "nan"], "'--price': must be a finite number >= 0"),
    (["--eval-test", "0"], "'--eval-test': must be at least 100; got 0"),
    (["--eval-train", "5"], f"'--eval-train': must be at least {min_eval_train()} (the 1 % few-label split"),
    (["--input-size", "0", "--channels", "3"], "'--input-size': must be at least 1; got 0"),
    (["--input-size", "16", "--channels", "0"], "'--channels': must be at least 1; got 0"),
    (["--stolen-arch", "abacus"], "unknown arch 'abacus'; choose one of:"),
    (["--queries", "0"], "--queries must be positive"),
])
def test_bad_numbers_are_refused_before_any_work(no_work, args, hint):
    one_line(run("steal", *args), 2, hint)


def test_victims_train_refuses_nonpositive_epochs(no_work):
    one_line(run("victims", "train", "simclr", "--epochs", "0"), 2, "'--epochs': must be at least 1")


@pytest.mark.parametrize("where", ["/proc/sslaudit-test/x.json", "under-a-file"])
def test_unwritable_json_is_refused_before_any_work(no_work, tmp_path, where):
    if where == "under-a-file":
        (tmp_path / "plain.txt").write_text("a file, not a folder")
        where = str(tmp_path / "plain.txt" / "r.json")
    line = one_line(run("steal", "--json", where), 2, "'--json'", "cannot write", "choose a writable path")
    assert "plain.txt is a file, not a folder" in line or where.startswith("/proc")


def test_results_are_written_atomically(tmp_path):
    target = tmp_path / "r.json"
    target.write_text("old")
    write_atomically(target, '{"new": 1}')
    assert json.loads(target.read_text()) == {"new": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary file left behind


def test_a_factory_without_weights_is_refused(no_evaluation, factory):
    one_line(run("steal", "--victim", factory, *NATIVE), 1, "has no weights", "--weights", "--random-weights")


def test_random_weights_must_be_asked_for(no_evaluation, factory):
    result = run("steal", "--victim", factory, *NATIVE, "--random-weights")
    assert isinstance(result.exception, WorkStarted)  # the model was served; the run went on to the evaluation


def test_weights_of_the_wrong_shape_name_the_tensor(no_evaluation, factory, tmp_path):
    state = {"0.weight": torch.zeros(8, 1, 3, 3), "0.bias": torch.zeros(8)}
    save_file(state, str(tmp_path / "w.safetensors"))
    one_line(run("steal", "--victim", factory, "--weights", str(tmp_path / "w.safetensors"), *NATIVE), 1,
             "tensor '0.weight' has shape [8, 1, 3, 3] in the file but [8, 3, 3, 3] in the model")


def test_a_saved_victim_of_another_architecture_names_the_tensor(no_evaluation, tmp_path):
    path = Victim(build_encoder("convnet-small", InputSpec()), {"method": "m", "arch": "convnet-small",
                                                                 "input": InputSpec().to_dict()}).save(tmp_path / "v")
    card = json.loads(path.with_suffix(".json").read_text())
    path.with_suffix(".json").write_text(json.dumps({**card, "arch": "convnet"}))
    one_line(run("steal", "--victim", str(path)), 1, "does not fit the convnet of its card: tensor")


@pytest.mark.parametrize("card_input", ["rgb", {"channels": 3}, {"channels": 3, "size": 16, "mean": [0.5]}])
def test_a_card_beside_the_weights_must_describe_the_input(no_evaluation, factory, tmp_path, card_input):
    from byo_errs import small

    save_file(small().state_dict(), str(tmp_path / "w.safetensors"))
    (tmp_path / "w.json").write_text(json.dumps({"input": card_input}))
    one_line(run("steal", "--victim", factory, "--weights", str(tmp_path / "w.safetensors")), 1,
             "w.json: 'input' must be an object with positive integer channels and size")


def test_a_saved_victim_card_must_describe_the_input(no_evaluation, tmp_path):
    path = Victim(build_encoder("convnet-small", InputSpec()), {"method": "m", "arch": "convnet-small",
                                                                 "input": {"channels": 1}}).save(tmp_path / "v")
    one_line(run("steal", "--victim", str(path.with_suffix(".json"))), 1, "'input' must be an object")


def bad_cache_card(cache: Path, stem: str) -> Path:
    (cache / "victims").mkdir(parents=True, exist_ok=True)
    (cache / "victims" / f"{stem}.safetensors").write_bytes(b"not tensors")
    card = cache / "victims" / f"{stem}.json"
    card.write_text('{"method": "barlow_twins", "arch": ')  # cut off mid-write
    return card


def test_victims_list_skips_a_bad_card(no_work, tmp_path):
    card = bad_cache_card(tmp_path / "cache", "broken")
    good = Victim(build_encoder("convnet-small", InputSpec()), {"method": "good", "arch": "convnet-small",
                                                                 "input": InputSpec().to_dict()})
    good.save(tmp_path / "cache" / "victims" / "good")
    result = run("victims", "list")
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and str(card) in warnings[0] and "not a readable JSON card" in warnings[0]
    assert "good convnet-small" in result.output


def would_train(*args: object, **kwargs: object) -> None:
    raise ValueError("would train")


def test_a_bad_cached_card_does_not_block_its_recipe(no_evaluation, tmp_path, monkeypatch):
    from sslaudit.victim import config_key
    from sslaudit.zoo import find_victim, preset_config

    monkeypatch.setattr("sslaudit.zoo.train_victim", would_train)
    monkeypatch.setattr("sslaudit.zoo.SHIPPED", tmp_path / "nothing-shipped")  # only the user's cache holds one
    card = bad_cache_card(tmp_path / "cache", f"barlow_twins-{config_key(preset_config('barlow_twins'))}")
    with pytest.warns(UserWarning, match="skipping a bad cached victim"):
        assert find_victim("barlow_twins") is None
    result = run("steal", "--victim", "barlow_twins")
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert lines[0].startswith("warning: skipping a bad cached victim:") and str(card) in lines[0]
    assert lines[1] == "Error: would train"  # the broken card was passed over: the recipe would be trained


def test_a_truncated_checkpoint_is_set_aside_and_training_starts_fresh(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    data = torch.randn(8, 4)
    ckpt = tmp_path / "run.pt"
    torch.save({"model": model.state_dict(), "epoch": 1, "padding": torch.zeros(1000)}, ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:300])  # killed mid-write by something other than our atomic save
    cfg = TrainConfig(epochs=2, batch_size=4, lr=0.01)
    with pytest.warns(RuntimeWarning, match=r"could not be resumed .*moved it to run\.pt\.corrupt-.* started fresh"):
        history = fit(model, lambda b, g: model(b[0]).pow(2).mean(), (data,), cfg, checkpoint=ckpt, progress=False,
                      device=torch.device("cpu"), mixed_precision=False)
    assert len(history.loss) == 2  # every epoch ran: nothing was resumed from the broken file
    assert len(list(tmp_path.glob("run.pt.corrupt-*"))) == 1
    assert torch.load(ckpt, weights_only=True)["epoch"] == 2  # the new checkpoint is whole and resumable


@dataclass(frozen=True)
class FakeConfig:
    train: TrainConfig


class FakeRecipe:
    """A victim recipe that trains a linear map on eight images in one step, through the real ``fit``."""

    presets = {"tiny": FakeConfig(TrainConfig(epochs=1, batch_size=8, lr=0.01))}

    @staticmethod
    def train(data: torch.Tensor, config: FakeConfig, **fit_kwargs: object) -> Victim:
        encoder = build_encoder("convnet-small", InputSpec())
        history = fit(encoder, lambda b, g: encoder(b[0]).pow(2).mean(), (data,), config.train,
                      device=torch.device("cpu"), mixed_precision=False, **fit_kwargs)
        card = {"method": "fake", "arch": "convnet-small", "input": InputSpec().to_dict(), "scores": {},
                "train_seconds": sum(history.seconds)}
        return Victim(encoder, card)


def test_victims_train_warns_in_one_line_about_a_truncated_checkpoint(tmp_path, monkeypatch):
    from sslaudit.victim import config_key

    refuse_work(monkeypatch, tmp_path, ())
    monkeypatch.setattr("sslaudit.zoo.get_victim", lambda name: FakeRecipe)
    monkeypatch.setattr("sslaudit.zoo.victim_training_data", lambda: torch.rand(8, 1, 28, 28))
    monkeypatch.setattr("sslaudit.zoo.downstream_task", lambda: type("Task", (), {"key": "k"})())
    monkeypatch.setattr("sslaudit.score_cache.cached_scores", lambda encoder, task: {})
    ckpt = tmp_path / "checkpoints" / f"fake-{config_key(FakeRecipe.presets['tiny'])}.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"PK\x03\x04 truncated")
    result = run("victims", "train", "fake", "--out", str(tmp_path / "v"))
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "moved it to" in warnings[0] and ".corrupt-" in warnings[0]
    assert len(list(ckpt.parent.glob("*.corrupt-*"))) == 1 and (tmp_path / "v.safetensors").is_file()

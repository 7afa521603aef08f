import dataclasses

import pytest
import torch
from torch import nn

from sslaudit.train import TrainConfig, fit, lr_at


def regression_problem():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 4, generator=gen)
    return x, x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])


def mse_step(model):
    return lambda batch, gen: (model(batch[0]) - batch[1]).pow(2).mean()


CFG = TrainConfig(epochs=4, batch_size=32, lr=0.05, weight_decay=0.0, warmup_epochs=0.5)


def test_loss_falls():
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    history = fit(model, mse_step(model), regression_problem(), CFG, device=torch.device("cpu"), progress=False)
    assert history.loss[-1] < 0.1 * history.loss[0]
    assert len(history.seconds) == 4 and history.samples_per_second > 0


def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    data = regression_problem()
    torch.manual_seed(0)
    straight = nn.Linear(4, 1)
    fit(straight, mse_step(straight), data, CFG, device=torch.device("cpu"), progress=False)

    torch.manual_seed(0)
    resumed = nn.Linear(4, 1)
    ckpt = tmp_path / "ckpt.pt"
    # "interrupt" after 2 epochs: same schedule length, stop early by raising inside the step
    calls = {"n": 0}
    per_epoch = 256 // 32

    def interrupting(batch, gen):
        calls["n"] += 1
        if calls["n"] > 2 * per_epoch:
            raise KeyboardInterrupt
        return mse_step(resumed)(batch, gen)

    with pytest.raises(KeyboardInterrupt):
        fit(resumed, interrupting, data, CFG, device=torch.device("cpu"), progress=False, checkpoint=ckpt)
    assert ckpt.is_file()
    fresh = nn.Linear(4, 1)
    history = fit(fresh, mse_step(fresh), data, CFG, device=torch.device("cpu"), progress=False, checkpoint=ckpt)
    assert len(history.loss) == 4
    for a, b in zip(straight.parameters(), fresh.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_schedule_warms_up_then_decays():
    cfg = dataclasses.replace(CFG, lr=1.0)
    lrs = [lr_at(s, 100, 10, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] < 0.01


def test_bad_config_and_diverging_loss():
    with pytest.raises(ValueError):
        TrainConfig(epochs=0, batch_size=1, lr=1.0)
    model = nn.Linear(4, 1)
    with pytest.raises(FloatingPointError, match="learning rate"):
        fit(model, lambda b, g: model(b[0]).sum() * float("nan"), regression_problem(), CFG,
            device=torch.device("cpu"), progress=False)


def test_finiteness_is_checked_every_n_steps_not_every_step(monkeypatch):
    import sslaudit.train as train
    checks, real = [], train._check_finite
    monkeypatch.setattr(train, "_check_finite", lambda losses, epoch: checks.append(len(losses)) or real(losses, epoch))
    x = torch.randn(120 * 4, 4)
    model = nn.Linear(4, 1)
    cfg = dataclasses.replace(CFG, epochs=1, batch_size=4)
    fit(model, lambda b, g: model(b[0]).pow(2).mean(), (x,), cfg, device=torch.device("cpu"), progress=False)
    assert checks == [train.FINITE_CHECK_EVERY, train.FINITE_CHECK_EVERY, 120]  # two mid-epoch, one at its end
    calls = []
    step = lambda b, g: calls.append(1) or model(b[0]).pow(2).mean() * (float("inf") if len(calls) == 7 else 1.0)  # noqa: E731
    with pytest.raises(FloatingPointError, match="inf at epoch 0"):
        fit(model, step, (x,), cfg, device=torch.device("cpu"), progress=False)
    assert len(calls) == train.FINITE_CHECK_EVERY  # caught at the first check after it, not at the epoch's end


def test_progress_moves_within_an_epoch(capsys):
    """One epoch of a slow recipe takes minutes on a laptop CPU: the bar counts steps, not epochs."""
    import time
    model = nn.Linear(4, 1)
    cfg = dataclasses.replace(CFG, epochs=1, batch_size=64)  # 4 steps in the one epoch

    def slow_step(batch, gen):
        time.sleep(0.15)  # past tqdm's 0.1 s refresh interval, so every step is drawn
        return (model(batch[0]) - batch[1]).pow(2).mean()

    fit(model, slow_step, regression_problem(), cfg, device=torch.device("cpu"), progress=True)
    drawn = capsys.readouterr().err
    assert "2/4" in drawn and "3/4" in drawn and "step" in drawn

"""The honest user's path: a downstream task solved through the same (defended) API, paid for per image."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import ClassVar

import pytest
import torch

from sslaudit.api import QueryBudgetExceeded, SimulatedAPI
from sslaudit.attack import AttackResult
from sslaudit.audit import steal_curve
from sslaudit.data import ImageData
from sslaudit.defenses.gaussian_noise import GaussianNoise
from sslaudit.evaluate import evaluate_encoder
from sslaudit.honest import HONEST, honest_budget, honest_scores
from sslaudit.models import Encoder, InputSpec, build_encoder
from sslaudit.secret import DeploymentSecret
from sslaudit.tasks import DownstreamTask, stratified_index
from sslaudit.train import History
from sslaudit.victim import Victim

CLASSES = 3


def banded(per_class: int, seed: int, name: str = "tiny") -> ImageData:
    """Noisy images whose class is the position of a bright horizontal band."""
    labels = torch.arange(CLASSES).repeat_interleave(per_class)
    images = 0.3 * torch.rand(len(labels), 1, 28, 28, generator=torch.Generator().manual_seed(seed))
    for c in range(CLASSES):
        images[labels == c, :, 9 * c : 9 * c + 9, :] += 0.6
    return ImageData(images.clamp(0, 1).mul(255).round().to(torch.uint8), labels, name)


def tiny_task(name: str = "tiny", per_class: int = 20, test_per_class: int = 10) -> DownstreamTask:
    """60 train images (5 few labels per class, one per CV fold), 30 test images, 3 classes."""
    train, test = banded(per_class, 0, name), banded(test_per_class, 1, name)
    return DownstreamTask(name, train, test, stratified_index(train.labels, 5, seed=0))


def tiny_encoder(seed: int = 0) -> Encoder:
    """A random convnet-small whose BatchNorm statistics are set on banded images (so answers differ)."""
    torch.manual_seed(seed)
    encoder = build_encoder("convnet-small", InputSpec())
    for module in encoder.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
            module.reset_running_stats()
    with torch.no_grad():
        encoder.train()(banded(20, 5).images.float() / 255)
    return encoder.eval()


def tiny_victim(seed: int = 0) -> Victim:
    encoder = tiny_encoder(seed)
    return Victim(encoder, {"method": "random", "arch": encoder.arch, "input": encoder.spec.to_dict()})


@dataclass(kw_only=True)
class CopyAttack:
    """A stub recipe: buys ``max(budgets)`` pool images, returns a copy of ``_model`` per budget."""

    stolen_arch: str | None = "convnet-small"
    _model: torch.nn.Module | None = field(default=None, repr=False)
    victim_coordinates: ClassVar[bool] = True

    def account_budgets(self, budgets, account="attacker"):
        return {account: max(budgets)}

    def run_curve(self, api, pool, budgets, *, seed=0, account="attacker", progress=False, equal_steps=False):
        api.query(pool.images[: max(budgets)].float() / 255, account=account)
        price = api.ledger(account).cost / max(budgets)
        return [AttackResult(copy.deepcopy(self._model), b, b * price, History(loss=[0.5]), account,
                             {"note": (1, 2)}) for b in budgets]

    def run(self, api, pool, budget, *, seed=0, account="attacker", progress=False):
        return self.run_curve(api, pool, [budget], seed=seed, account=account)[0]

    def with_epochs(self, epochs):
        return self


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SSLAUDIT_CACHE", str(tmp_path / "cache"))


def test_undefended_honest_scores_are_the_direct_scores_and_pay_per_image():
    task, encoder = tiny_task(), tiny_encoder()
    direct = evaluate_encoder(encoder, task)
    api = SimulatedAPI(encoder, price_per_1k=2.0, budget=0, device=torch.device("cpu"))
    api.set_budget(HONEST, honest_budget(task))
    honest = honest_scores(api, task, batch_size=16)
    for metric in ("linear_1pct", "linear_full", "knn", "linear_1pct_spread"):
        assert getattr(honest.scores, metric) == pytest.approx(direct[metric], abs=1e-6)
    assert direct["linear_full"] > 0.9  # the task is solvable, so a defence has something to break
    ledger = api.ledger(HONEST)
    assert ledger.images == honest.queries == len(task.train) + len(task.test) == 90
    assert honest.calls == ledger.calls == 4 + 2  # 60 train, then 30 test images, in batches of 16
    assert honest.cost == pytest.approx(90 * 2.0 / 1000)
    with pytest.raises(QueryBudgetExceeded):  # the budget is exactly one query per image
        honest_scores(api, task)


def test_strong_noise_costs_the_honest_user_accuracy():
    task, encoder = tiny_task(), tiny_encoder()
    direct = evaluate_encoder(encoder, task)
    noise = GaussianNoise(sigma=5.0, secret=DeploymentSecret.fixed("test-honest"))
    api = SimulatedAPI(encoder, defenses=[noise], device=torch.device("cpu"))
    honest = honest_scores(api, task)
    assert honest.scores.linear_full < direct["linear_full"] - 0.2
    assert honest.queries == 90


@pytest.mark.slow
def test_steal_curve_serves_the_honest_account_beside_the_attacker():
    task, victim = tiny_task(), tiny_victim()
    pool = banded(20, 7, "pool")
    attack = CopyAttack(_model=victim.encoder)
    results = steal_curve(victim, attack, pool, [10, 30], task, price_per_1k=1.0, honest=True,
                          defenses=[GaussianNoise(sigma=0.01)], secret=DeploymentSecret.fixed("steal"))
    assert len(results) == 2 and results[0].honest == results[1].honest
    h, v = results[0].honest, results[0].victim.scores
    assert h.account == HONEST and h.queries == 90 and h.cost == pytest.approx(0.09)
    assert h.utility.linear_full == pytest.approx(h.scores.linear_full / v.linear_full)
    q = results[1].queries
    assert q.account_total == 30 and q.charged == pytest.approx(0.03)  # the honest account is not the attacker's
    d = results[0].to_dict()
    assert d["honest"]["queries"] == 90 and set(d["honest"]["utility"]) == {"linear_1pct", "linear_full", "knn"}
    assert d["defenses"][0]["secret"] is None  # the user's (unbound) defence, no key material
    assert "honest" not in steal_curve(victim, attack, pool, [10], task)[0].to_dict()


def test_steal_reports_each_defences_per_account_state():
    from sslaudit.defenses.b4b import B4B
    from sslaudit.defenses.knn_detector import KNNDetector

    victim, task = tiny_victim(), tiny_task()
    pool = banded(20, 7, "pool")
    attack = CopyAttack(_model=tiny_encoder(1))
    result = steal_curve(victim, attack, pool, [30], task, honest=True, secret=DeploymentSecret.fixed("state"),
                         defenses=[KNNDetector(k=5), B4B(transform="none")])[0]
    state = result.stolen.extra["defense_state"]
    assert set(state) == {"0:KNNDetector", "1:B4B"}
    assert state["0:KNNDetector"]["attacker"]["queries"] == 30
    assert state["0:KNNDetector"][HONEST]["queries"] == honest_budget(task)
    assert 0 < state["1:B4B"]["attacker"]["coverage_pct"] <= 100
    assert state["1:B4B"]["attacker"]["coverage_pct"] != state["1:B4B"][HONEST]["coverage_pct"]

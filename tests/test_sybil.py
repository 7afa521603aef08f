import dataclasses
import math
import zlib

import pytest
import torch

from sslaudit import registry
from sslaudit.api import SimulatedAPI
from sslaudit.attacks.direct_extraction import DirectExtraction
from sslaudit.attacks.sybil import SybilAttack, fit_affine_map
from sslaudit.features import embed
from sslaudit.models import InputSpec, build_encoder
from tests.test_attack import QUICK, OnlyTheAPI, calibrated_victim, centred_cosine, pool, smooth_images

CPU = torch.device("cpu")
ONE_EPOCH = dataclasses.replace(QUICK, epochs=1)


class PerAccountAffine:
    """A B4B-style defence: each account gets its own fixed invertible affine map A_k v + b_k."""

    def __init__(self, dim: int, seed: int = 0):
        self.dim, self.seed = dim, seed

    def transform(self, account: str) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed + zlib.crc32(account.encode()))
        a = torch.eye(self.dim) + 0.5 * torch.randn(self.dim, self.dim, generator=gen) / math.sqrt(self.dim)
        return a, torch.randn(self.dim, generator=gen)

    def __call__(self, account, images, features):
        a, b = self.transform(account)
        return features @ a.T + b


class Recorder:
    """A pass-through defence that keeps every image each account sent."""

    def __init__(self):
        self.sent: dict[str, list[torch.Tensor]] = {}

    def __call__(self, account, images, features):
        self.sent.setdefault(account, []).append(images.clone())
        return features

    def images(self, account):
        return torch.cat(self.sent[account]).flatten(1)


def small_attack(**kw):
    inner = DirectExtraction(loss="mse", stolen_arch="convnet-small", augment_stolen=False, train=ONE_EPOCH)
    return SybilAttack(inner=inner, **kw)


def test_queries_add_up_to_the_budget_and_every_account_pays_for_the_anchors(encoder):
    recorder = Recorder()
    api = SimulatedAPI(encoder, defenses=[recorder], budget=301, device=CPU)  # ceil(601 / 2) per account
    result = small_attack().run(api, pool(600), budget=601, account="eve")
    ledgers = {name: api.ledger(name).images for name in ("eve-1", "eve-2")}
    assert sum(ledgers.values()) == 601 == result.queries and set(api.ledgers()) == set(ledgers)
    assert result.extra["anchors"] == 61 and result.extra["chunks"] == [240, 239]
    assert {n: led["images"] for n, led in result.extra["ledgers"].items()} == ledgers
    first, second = recorder.images("eve-1"), recorder.images("eve-2")
    assert torch.equal(first[:61], second[:61])  # the same anchors, paid for by both
    assert torch.cdist(first[61:], second[61:]).min() > 0  # disjoint chunks


def test_budget_that_cannot_cover_the_anchors_is_refused_before_any_query(api):
    with pytest.raises(ValueError, match="cannot pay for 100 anchors"):
        small_attack(anchors=100, accounts=3).run(api, pool(300), budget=250)
    assert api.ledgers() == {}


def test_mapping_recovers_account_one_answers_under_per_account_affine_maps():
    torch.manual_seed(0)
    victim = build_encoder("convnet-small", InputSpec()).eval()
    defense = PerAccountAffine(victim.dim)
    api = SimulatedAPI(victim, defenses=[defense], device=CPU)
    purchase = small_attack(anchors=160).buy(api, pool(640), budget=640, account="eve")
    rows = purchase.owner == 1
    truth = SimulatedAPI(victim, defenses=[defense], device=CPU).query(purchase.images[rows], account="eve-1")
    raw = SimulatedAPI(victim, defenses=[defense], device=CPU).query(purchase.images[rows], account="eve-2")
    spread = (truth - truth.mean(0)).norm()
    centred = (raw - raw.mean(0)) - (truth - truth.mean(0))
    assert centred.norm() / spread > 0.5  # unmapped (even with the means aligned), the accounts disagree
    assert (purchase.answers[rows] - truth).norm() / spread < 0.05
    assert purchase.report["mapping_error"]["eve-2"]["fit_error"] < 0.05


def test_identity_prior_passes_through_what_few_anchors_do_not_span():
    x = torch.randn(20, 64, generator=torch.Generator().manual_seed(0))
    fresh = torch.randn(200, 64, generator=torch.Generator().manual_seed(1))
    w, b, _ = fit_affine_map(x, x)  # no defence, 20 anchors < d + 1
    assert (fresh @ w + b - fresh).norm() / fresh.norm() < 0.05
    w, b, _ = fit_affine_map(x, x, prior="zero")
    assert (fresh @ w + b - fresh).norm() / fresh.norm() > 0.5


def test_affine_map_is_exact_with_enough_anchors():
    gen = torch.Generator().manual_seed(0)
    x, a, b = torch.randn(300, 32, generator=gen), torch.randn(32, 16, generator=gen), torch.randn(16, generator=gen)
    w, c, info = fit_affine_map(x, x @ a + b, prior="zero")
    assert torch.allclose(w, a, atol=1e-3) and torch.allclose(c, b, atol=1e-3) and info["loo_error"] < 1e-3


def test_short_sybil_steal_through_the_interface_improves_fidelity():
    """As test_attack's: a BatchNorm-calibrated victim and the *centred* cosine. With the loss zeroed, the
    stolen encoder's BatchNorm statistics alone reach a raw cosine of 0.95 but a centred one of 0.06."""
    victim = calibrated_victim()
    api = OnlyTheAPI(SimulatedAPI(victim, price_per_1k=1.0, device=CPU))
    inner = DirectExtraction(loss="mse", stolen_arch="convnet-small", augment_stolen=False, train=QUICK)
    result = SybilAttack(inner=inner).run(api, pool(256), budget=300, seed=0)
    assert result.queries == 300 and result.cost == pytest.approx(0.3)
    test_images = smooth_images(128, seed=5)
    target = embed(victim, test_images)
    torch.manual_seed(0)
    before = centred_cosine(embed(build_encoder("convnet-small", api.spec), test_images), target)
    after = centred_cosine(embed(result.encoder, test_images), target)
    assert after > before + 0.25, (before, after)  # 0.09 -> 0.51; 0.06 with the inner loss zeroed


def test_curve_buys_each_budget_afresh(api):
    results = small_attack().run_curve(api, pool(300), [100, 200], account="eve")
    assert [r.queries for r in results] == [100, 200]
    assert sum(led.images for led in api.ledgers().values()) == 300
    assert api.ledger("eve@100-1").images + api.ledger("eve@100-2").images == 100


def test_registered_and_cli_overrides_reach_the_inner_attack():
    attack = registry.get_attack("sybil")()
    assert isinstance(attack, SybilAttack) and attack.inner.loss == "mse" and attack.train is not None
    changed = dataclasses.replace(attack, stolen_arch="convnet-small",
                                  train=dataclasses.replace(attack.train, epochs=3))
    assert changed.inner.stolen_arch == "convnet-small" and changed.inner.train.epochs == 3
    with pytest.raises(ValueError, match="accounts"):
        SybilAttack(accounts=1)

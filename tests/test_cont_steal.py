"""Cont-Steal: the loss against its formula written out, the query ledger (one or M views per image), a short steal."""
import dataclasses
import math

import pytest
import torch
from test_attack import QUICK, OnlyTheAPI, pool, smooth_images

from sslaudit.api import QueryBudgetExceeded, SimulatedAPI
from sslaudit.attack import choose_queries
from sslaudit.attacks.cont_steal import ContSteal, cont_steal_loss
from sslaudit.evaluate import fidelity
from sslaudit.features import embed
from sslaudit.models import InputSpec, build_encoder
from sslaudit.registry import get_attack

ONE_EPOCH = dataclasses.replace(QUICK, epochs=1)


def dot_unit(a, b):
    return float(a @ b / (a.norm() * b.norm()))


def reference_loss(t, s, temperature):
    """-(1/B) Σ_i log[exp(t_i·s_i/τ) / (Σ_{j≠i} exp(t_i·s_j/τ) + Σ_{j≠i} exp(s_i·s_j/τ))], with loops."""
    n, total = len(t), 0.0
    for i in range(n):
        positive = math.exp(dot_unit(t[i], s[i]) / temperature)
        cross = sum(math.exp(dot_unit(t[i], s[j]) / temperature) for j in range(n) if j != i)
        within = sum(math.exp(dot_unit(s[i], s[j]) / temperature) for j in range(n) if j != i)
        total += -math.log(positive / (cross + within))
    return total / n


@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_loss_matches_formula(temperature):
    torch.manual_seed(0)
    t, s = torch.randn(6, 5), torch.randn(6, 5)
    expected = reference_loss(t.double(), s.double(), temperature)
    assert cont_steal_loss(t, s, temperature).item() == pytest.approx(expected, rel=1e-4)


def test_loss_prefers_the_copy_and_trains_only_the_stolen_side():
    torch.manual_seed(1)
    t = torch.randn(8, 16)
    s = torch.randn(8, 16, requires_grad=True)
    loss = cont_steal_loss(t, s)
    loss.backward()
    assert cont_steal_loss(t, 2 * t) < loss and s.grad.abs().sum() > 0


class Recording(OnlyTheAPI):
    """The bare interface, keeping a copy of every image sent."""

    def __init__(self, inner):
        super().__init__(inner)
        self.sent = []

    def query(self, images, account="default"):
        self.sent.append(images.clone())
        return super().query(images, account)


def test_one_clean_query_per_image(api):
    spy = Recording(api)
    result = ContSteal(stolen_arch="convnet-small", train=ONE_EPOCH).run(spy, pool(300), budget=100)
    sent = torch.cat(spy.sent)
    assert result.queries == len(sent) == api.ledger("attacker").images == 100
    assert torch.equal(sent, choose_queries(pool(300), 100))  # the clean pool images, each once


def test_views_per_image_queries_each_view_once(encoder, api):
    spy = Recording(api)
    attack = ContSteal(stolen_arch="convnet-small", views_per_image=3, train=ONE_EPOCH)
    purchase = attack.buy(spy, pool(300), budget=100)
    sent = torch.cat(spy.sent)
    assert purchase.answers.shape == (33, 3, api.dim) and purchase.queries == 99
    assert len(sent) == api.ledger("attacker").images == 99
    assert not torch.equal(sent[:33], purchase.images)  # the victim saw augmented views, not the clean images
    assert torch.allclose(purchase.answers[:, 1], embed(encoder, sent[33:66]), atol=1e-2)
    result = attack.fit(spy, purchase.prefix(60))
    assert result.queries == 60 and api.ledger("attacker").images == 99  # fitting spends nothing


def test_budget_never_exceeded(encoder):
    api = SimulatedAPI(encoder, budget=100, device=torch.device("cpu"))
    ContSteal(stolen_arch="convnet-small", views_per_image=3, train=ONE_EPOCH).run(OnlyTheAPI(api), pool(300), 100)
    assert api.ledger("attacker").images == 99
    with pytest.raises(QueryBudgetExceeded):
        ContSteal(stolen_arch="convnet-small", train=ONE_EPOCH).run(OnlyTheAPI(api), pool(300), 100)
    assert api.ledger("attacker").images == 99


def test_short_steal_through_the_interface_improves_fidelity():
    torch.manual_seed(123)
    victim = build_encoder("convnet-small", InputSpec()).eval()
    api = OnlyTheAPI(SimulatedAPI(victim, device=torch.device("cpu")))
    result = ContSteal(stolen_arch="convnet-small", train=QUICK).run(api, pool(256), budget=256)
    assert result.queries == 256 and api.ledger("attacker").images == 256
    test_images = smooth_images(128, seed=5)
    target = embed(victim, test_images)
    torch.manual_seed(0)
    before = fidelity(embed(build_encoder("convnet-small", api.spec), test_images), target)
    after = fidelity(embed(result.encoder, test_images), target)
    assert after["cosine"] > before["cosine"] + 0.1, (before, after)


def test_registered_and_validated():
    attack = get_attack("contsteal")(temperature=0.5, views_per_image=4)
    assert isinstance(attack, ContSteal) and attack.views_per_image == 4 and attack.train is not None
    with pytest.raises(ValueError, match="temperature"):
        ContSteal(temperature=0)
    with pytest.raises(ValueError, match="views_per_image"):
        ContSteal(views_per_image=0)
    with pytest.raises(ValueError, match="buys no image"):
        ContSteal(views_per_image=5).buy(None, pool(10), budget=4)

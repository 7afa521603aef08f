"""Cont-Steal: the loss against its formula written out, the query ledger (one or M views per image), a short steal."""
import dataclasses

import pytest
import torch
from test_attack import QUICK, OnlyTheAPI, calibrated_victim, centred_cosine, pool, smooth_images

from sslaudit.api import QueryBudgetExceeded, SimulatedAPI
from sslaudit.attack import choose_queries
from sslaudit.attacks.cont_steal import ContSteal, cont_steal_loss
from sslaudit.augment import AugmentConfig
from sslaudit.features import embed
from sslaudit.models import InputSpec, build_encoder
from sslaudit.registry import get_attack

ONE_EPOCH = dataclasses.replace(QUICK, epochs=1)


IDENTITY = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0)


def dot_unit(a, b):
    return a @ b / (a.norm() * b.norm())


def reference_loss(t, s, temperature):
    """-(1/B) Σ_i log[exp(t_i·s_i/τ) / (Σ_{j≠i} exp(t_i·s_j/τ) + Σ_{j≠i} exp(s_i·s_j/τ))], with loops.

    In torch ops on rows of ``t`` and ``s``, so autograd through it gives the formula's gradient.
    """
    n, total = len(t), 0.0
    for i in range(n):
        positive = torch.exp(dot_unit(t[i], s[i]) / temperature)
        cross = sum(torch.exp(dot_unit(t[i], s[j]) / temperature) for j in range(n) if j != i)
        within = sum(torch.exp(dot_unit(s[i], s[j]) / temperature) for j in range(n) if j != i)
        total = total - torch.log(positive / (cross + within))
    return total / n


@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_loss_matches_formula(temperature):
    torch.manual_seed(0)
    t, s = torch.randn(6, 5), torch.randn(6, 5)
    expected = float(reference_loss(t.double(), s.double(), temperature))
    assert cont_steal_loss(t, s, temperature).item() == pytest.approx(expected, rel=1e-4)


def test_loss_prefers_the_copy():
    torch.manual_seed(1)
    t, s = torch.randn(8, 16), torch.randn(8, 16)
    assert cont_steal_loss(t, 2 * t) < cont_steal_loss(t, s)


def test_stolen_gradient_is_the_formulas_with_both_sides_requiring_grad():
    """The surrogate's gradient through all three terms (positive, cross and surrogate-surrogate negatives) is
    the formula's: a stop-gradient on s in the s·sᵀ negatives, or t and s swapped there, keeps the value of
    a symmetric batch but not this. The victim side is not detached by the loss (its answers need no
    gradient: they are constants from the API, see the next test); its gradient is not constrained here."""
    torch.manual_seed(2)
    t = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    s = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    cont_steal_loss(t, s, 0.2).backward()
    t_ref, s_ref = (x.detach().clone().requires_grad_(True) for x in (t, s))
    reference_loss(t_ref, s_ref, 0.2).backward()
    assert s.grad is not None and torch.allclose(s.grad, s_ref.grad, rtol=1e-4, atol=1e-6)


def test_a_steal_sends_no_gradient_to_the_victim():
    """The victim's answers are constants: training on them never reaches (or changes) the victim's weights."""
    torch.manual_seed(3)
    victim = build_encoder("convnet-small", InputSpec()).eval()
    before = {name: p.detach().clone() for name, p in victim.named_parameters()}
    api = OnlyTheAPI(SimulatedAPI(victim, device=torch.device("cpu")))
    attack = ContSteal(stolen_arch="convnet-small", train=ONE_EPOCH)
    purchase = attack.buy(api, pool(128), budget=128)
    assert not purchase.answers.requires_grad and purchase.answers.grad_fn is None
    attack.fit(api, purchase)
    assert all(p.grad is None for p in victim.parameters())
    assert all(torch.equal(p, before[name]) for name, p in victim.named_parameters())


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


@pytest.mark.slow
def test_short_steal_through_the_interface_improves_fidelity():
    """As test_attack's: a BatchNorm-calibrated victim and the *centred* cosine. With the loss zeroed, the
    stolen encoder's BatchNorm statistics alone reach a raw cosine of 0.95 but a centred one of 0.06.
    The surrogate's augmentation is the identity here: a random victim is not invariant to flips, crops or
    jitter, so on it augmentation works against fidelity (0.20 with the default augmentation)."""
    victim = calibrated_victim()
    api = OnlyTheAPI(SimulatedAPI(victim, device=torch.device("cpu")))
    result = ContSteal(stolen_arch="convnet-small", augment=IDENTITY, train=QUICK).run(api, pool(256), budget=256)
    assert result.queries == 256 and api.ledger("attacker").images == 256
    test_images = smooth_images(128, seed=5)
    target = embed(victim, test_images)
    torch.manual_seed(0)
    before = centred_cosine(embed(build_encoder("convnet-small", api.spec), test_images), target)
    after = centred_cosine(embed(result.encoder, test_images), target)
    assert after > before + 0.25, (before, after)  # 0.09 -> 0.43; 0.06 with the loss zeroed


def test_registered_and_validated():
    attack = get_attack("contsteal")(temperature=0.5, views_per_image=4)
    assert isinstance(attack, ContSteal) and attack.views_per_image == 4 and attack.train is not None
    with pytest.raises(ValueError, match="temperature"):
        ContSteal(temperature=0)
    with pytest.raises(ValueError, match="views_per_image"):
        ContSteal(views_per_image=0)
    with pytest.raises(ValueError, match="buys no image"):
        ContSteal(views_per_image=5).buy(None, pool(10), budget=4)

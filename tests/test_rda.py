"""RDA (Wu et al., ECCV 2024): the loss against its formula, the M-view purchase, nesting, budgets, a short steal."""
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from sslaudit.api import QueryBudgetExceeded, SimulatedAPI
from sslaudit.attacks.rda import PROTO_AUGMENT, RDA, prototype_views, rda_loss
from sslaudit.evaluate import fidelity
from sslaudit.features import embed
from sslaudit.models import InputSpec, build_encoder
from sslaudit.registry import get_attack
from sslaudit.train import TrainConfig
from test_attack import OnlyTheAPI, pool, smooth_images

QUICK = TrainConfig(epochs=10, batch_size=64, lr=3e-3, optimizer="adamw", warmup_epochs=1)


def reference_rda(stolen, protos, temperature, alpha, beta, eps):
    """α L_D + β L_A written out with loops, s_i = stolen_i / ||stolen_i||, p_i as given."""
    s = [row / row.norm() for row in stolen.double()]
    p = list(protos.double())
    n, l_d, l_a = len(s), 0.0, 0.0
    for i in range(n):
        positive = math.exp(float(s[i] @ p[i]) / temperature)
        negatives = sum(math.exp(float(s[i] @ p[j]) / temperature) + math.exp(float(s[i] @ s[j]) / temperature)
                        for j in range(n) if j != i)
        l_d += -math.log(positive / negatives)
        cos = float(s[i] @ p[i]) / float(p[i].norm())
        l_a += -math.log((cos + 1) / (float((s[i] - p[i]).pow(2).sum()) + eps))
    return alpha * l_d / n + beta * l_a / n


@pytest.mark.parametrize("temperature,alpha,beta,eps", [(0.07, 1.0, 1.0, 0.0), (0.5, 0.3, 2.0, 1e-6)])
def test_rda_loss_matches_formula(temperature, alpha, beta, eps):
    torch.manual_seed(0)
    stolen = torch.randn(6, 8)
    protos = F.normalize(torch.randn(6, 4, 8), dim=2).mean(1)  # mean of unit vectors: norm < 1, not re-normalised
    assert (protos.norm(dim=1) < 1).all()
    expected = reference_rda(stolen, protos, temperature, alpha, beta, eps)
    got = rda_loss(stolen, protos, temperature, alpha, beta, eps=eps)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_rda_loss_stays_finite_for_a_perfect_copy_of_a_unit_prototype():
    protos = F.normalize(torch.randn(4, 8), dim=1)  # M identical answers: a unit-norm prototype
    stolen = protos.clone().requires_grad_(True)
    loss = rda_loss(stolen, protos)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(stolen.grad).all()
    assert rda_loss(protos, protos) < rda_loss(torch.randn(4, 8), protos)


class RecordingAPI(OnlyTheAPI):
    def __init__(self, inner: SimulatedAPI):
        super().__init__(inner)
        self.sent, self.answers = [], []

    def query(self, images, account="default"):
        out = super().query(images, account)
        self.sent.append(images.clone())
        self.answers.append(out)
        return out


def test_purchase_is_m_views_per_image_with_the_remainder_unspent(encoder):
    api = RecordingAPI(SimulatedAPI(encoder, price_per_1k=1.0, device=torch.device("cpu")))
    purchase = RDA(views=3).buy(api, pool(50), budget=20, seed=1)
    assert len(purchase.images) == 6 and purchase.queries == 18 and api.ledger("attacker").images == 18
    assert purchase.cost == pytest.approx(0.018) and purchase.queries_per_image == 3
    sent, answers = torch.cat(api.sent), torch.cat(api.answers)
    assert torch.equal(sent, torch.cat(list(prototype_views(purchase.images, 3, PROTO_AUGMENT, 1))))
    assert not torch.equal(sent[0], purchase.images[0])  # views are augmented, not the originals
    expected = F.normalize(answers, dim=1).view(6, 3, -1).mean(1)  # image i's views are queries 3i..3i+2
    assert torch.allclose(purchase.answers, expected, atol=1e-6)
    assert purchase.prefix(10).queries == 9 and len(purchase.prefix(10).images) == 3


def test_prefixes_nest(encoder):
    api = SimulatedAPI(encoder, device=torch.device("cpu"))
    p = pool(300)
    small, large = (RDA(views=5).buy(api, p, b, seed=2) for b in (10, 20))
    assert torch.allclose(small.answers, large.answers[:2]) and torch.equal(small.images, large.images[:2])
    assert torch.allclose(large.prefix(10).answers, small.answers)
    other = RDA(views=5).buy(api, p, 10, seed=3)
    assert not torch.allclose(other.answers, small.answers)
    across_chunks = [RDA(views=1).buy(api, p, b, seed=2).answers for b in (150, 230)]  # 100-image view chunks
    assert torch.allclose(across_chunks[0], across_chunks[1][:150])


def test_budget_never_exceeded(encoder):
    api = SimulatedAPI(encoder, budget=100, device=torch.device("cpu"))
    attack = RDA(views=3, stolen_arch="convnet-small", train=dataclasses.replace(QUICK, epochs=1))
    result = attack.run(api, pool(300), budget=100)
    assert result.queries == 99 and api.ledger("attacker").images == 99
    with pytest.raises(QueryBudgetExceeded):
        attack.buy(api, pool(300), budget=6)
    with pytest.raises(ValueError, match="buys no image"):
        attack.buy(api, pool(10), budget=2)


def test_short_steal_through_the_interface_improves_fidelity():
    torch.manual_seed(123)
    victim = build_encoder("convnet-small", InputSpec()).eval()
    api = OnlyTheAPI(SimulatedAPI(victim, price_per_1k=1.0, device=torch.device("cpu")))
    result = RDA(views=2, stolen_arch="convnet-small", train=QUICK).run(api, pool(256), budget=512, seed=0)
    assert result.queries == 512 and api.ledger("attacker").images == 512
    test_images = smooth_images(128, seed=5)
    target = embed(victim, test_images)
    torch.manual_seed(0)
    before = fidelity(embed(build_encoder("convnet-small", api.spec), test_images), target)
    after = fidelity(embed(result.encoder, test_images), target)
    # BN running statistics alone (zero loss) lift the cosine by ~0.13 here, so ask for much more (RDA: ~0.99)
    assert after["cosine"] > before["cosine"] + 0.3, (before, after)


def test_registered_and_validated():
    assert isinstance(get_attack("rda")(views=4), RDA) and get_attack("rda")(views=4).views == 4
    with pytest.raises(ValueError, match="views"):
        RDA(views=0)
    with pytest.raises(ValueError, match="temperature"):
        RDA(temperature=0)

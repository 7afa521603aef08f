"""SimReg: the loss against its formula, the head's layout, ledgers, and short steals that raise CKA."""
import dataclasses

import pytest
import torch
from torch import nn

from sslaudit.api import SimulatedAPI
from sslaudit.attack import Purchase
from sslaudit.attacks.simreg import SimReg, prediction_head, regression_loss
from sslaudit.evaluate import linear_cka
from sslaudit.features import embed
from sslaudit.models import Encoder, InputSpec, build_encoder
from sslaudit.registry import get_attack
from sslaudit.train import TrainConfig

try:
    from tests.test_attack import OnlyTheAPI, pool, smooth_images
except ImportError:  # pytest run without the repository root on sys.path
    from test_attack import OnlyTheAPI, pool, smooth_images

QUICK = TrainConfig(epochs=10, batch_size=32, lr=3e-3, optimizer="adamw", warmup_epochs=1)
CPU = torch.device("cpu")


def whitened_teacher(seed, k):
    """A random convnet answering its top-``k`` principal components, whitened.

    Raw random-convnet features are dominated by one shared direction, so any two random
    convnets already have a high CKA; whitening leaves a target a random student does not match.
    """
    torch.manual_seed(seed)
    net = build_encoder("convnet-small", InputSpec()).eval()
    feats = embed(net, smooth_images(1024, seed=99))
    mean = feats.mean(0)
    _, s, vt = torch.linalg.svd(feats - mean, full_matrices=False)
    w = vt[:k].T / (s[:k] / len(feats) ** 0.5)
    proj = nn.Linear(feats.shape[1], k)
    with torch.no_grad():
        proj.weight.copy_(w.T)
        proj.bias.copy_(-mean @ w)
    return Encoder(nn.Sequential(net.backbone, proj), net.spec, k, "whitened").eval()


class Recording(OnlyTheAPI):
    """OnlyTheAPI that keeps every image it was sent."""

    def __init__(self, inner):
        super().__init__(inner)
        self.sent = []

    def query(self, images, account="default"):
        self.sent.append(images.clone())
        return super().query(images, account=account)


def random_init_cka(teacher, images):
    torch.manual_seed(0)
    return linear_cka(embed(build_encoder("convnet-small", teacher.spec), images), embed(teacher, images))


@pytest.mark.parametrize("normalize", [True, False])
def test_loss_matches_formula(normalize):
    torch.manual_seed(0)
    q, t = torch.randn(5, 7).double(), torch.randn(5, 7).double() * 3
    total = 0.0
    for b in range(5):
        qb, tb = (q[b] / q[b].norm(), t[b] / t[b].norm()) if normalize else (q[b], t[b])
        total += sum(float(qb[j] - tb[j]) ** 2 for j in range(7))
    assert regression_loss(q, t, normalize).item() == pytest.approx(total / 5, rel=1e-5)
    if normalize:  # = 2 - 2 cos
        cos = torch.nn.functional.cosine_similarity(q, t).mean().item()
        assert regression_loss(q, t).item() == pytest.approx(2 - 2 * cos, rel=1e-5)


def test_head_layout_is_d_2d_d_2d():
    head = prediction_head(8, 5)
    kinds = [type(m) for m in head]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    linears = [(m.in_features, m.out_features) for m in head if isinstance(m, nn.Linear)]
    assert linears == [(8, 16), (16, 8), (8, 16), (16, 5)]
    assert [m.num_features for m in head if isinstance(m, nn.BatchNorm1d)] == [16, 16]


def test_returned_encoder_is_the_backbone_without_head():
    api = OnlyTheAPI(SimulatedAPI(whitened_teacher(1, 6), device=CPU))
    attack = get_attack("simreg")(stolen_arch="convnet-small", train=dataclasses.replace(QUICK, epochs=1))
    result = attack.run(api, pool(64), budget=64)
    backbone_dim = build_encoder("convnet-small", api.spec).dim
    assert isinstance(result.encoder, Encoder) and result.encoder.dim == backbone_dim != api.dim
    assert embed(result.encoder, smooth_images(4)).shape == (4, backbone_dim)
    assert not any(isinstance(m, nn.Linear) for m in result.encoder.modules())  # convnet-small has none


def test_multi_teacher_ledgers_match_the_images_sent():
    apis = [Recording(SimulatedAPI(whitened_teacher(s, k), price_per_1k=p, device=CPU))
            for s, k, p in ((1, 6, 1.0), (2, 4, 3.0))]
    result = SimReg(stolen_arch="convnet-small", train=dataclasses.replace(QUICK, epochs=1)).run_multi(
        apis, pool(100), budget=70, accounts=["a", "b"])
    sent = [torch.cat(api.sent) for api in apis]
    assert len(sent[0]) == len(sent[1]) == 70 and torch.equal(sent[0], sent[1])
    assert apis[0].ledger("a").images == apis[1].ledger("b").images == 70
    assert apis[0].ledger("b").images == apis[1].ledger("a").images == 0
    assert result.queries == 140 and result.cost == pytest.approx(0.07 * 1.0 + 0.07 * 3.0)
    assert result.extra["queries_per_api"] == [70, 70] and result.extra["accounts"] == ["a", "b"]


def test_budget_never_exceeded(encoder):
    apis = [SimulatedAPI(encoder, budget=100, device=CPU), SimulatedAPI(whitened_teacher(1, 6), budget=100,
                                                                        device=CPU)]
    attack = SimReg(stolen_arch="convnet-small", train=dataclasses.replace(QUICK, epochs=1))
    attack.run(apis[0], pool(300), budget=100, account="solo")
    attack.run_multi(apis, pool(300), budget=100)
    assert apis[0].ledger("solo").images == 100
    assert [api.ledger("attacker").images for api in apis] == [100, 100]


def test_teachers_must_share_the_input_spec(encoder):
    rgb = build_encoder("convnet-small", InputSpec(channels=3))
    apis = [SimulatedAPI(encoder, device=CPU), SimulatedAPI(rgb, device=CPU)]
    with pytest.raises(ValueError, match="input spec"):
        SimReg().run_multi(apis, pool(50), budget=20)
    assert [api.ledger("attacker").images for api in apis] == [0, 0]  # refused before spending


def test_purchases_must_hold_the_same_images(encoder):
    api = SimulatedAPI(encoder, device=CPU)
    a = Purchase(torch.rand(8, 1, 28, 28), torch.rand(8, api.dim), "x")
    b = dataclasses.replace(a, images=torch.rand(8, 1, 28, 28))
    with pytest.raises(ValueError, match="same images"):
        SimReg().fit_multi([api, api], [a, b])


def test_short_steal_through_the_interface_raises_cka():
    teacher = whitened_teacher(123, 8)
    api = OnlyTheAPI(SimulatedAPI(teacher, price_per_1k=1.0, device=CPU))
    attack = SimReg(stolen_arch="convnet-small", augment_stolen=False, train=QUICK)
    result = attack.run(api, pool(256), budget=256, seed=0)
    assert result.queries == 256 and result.cost == pytest.approx(0.256)
    test_images = smooth_images(256, seed=5)
    before = random_init_cka(teacher, test_images)
    after = linear_cka(embed(result.encoder, test_images), embed(teacher, test_images))
    assert after > before + 0.07, (before, after)


def test_multi_teacher_steal_raises_cka_to_both():
    teachers = [whitened_teacher(123, 8), whitened_teacher(321, 6)]  # dims may differ
    apis = [OnlyTheAPI(SimulatedAPI(t, device=CPU)) for t in teachers]
    attack = SimReg(stolen_arch="convnet-small", augment_stolen=False, train=QUICK)
    result = attack.run_multi(apis, pool(256), budget=256, seed=0)
    test_images = smooth_images(256, seed=5)
    stolen = embed(result.encoder, test_images)
    for teacher in teachers:
        before = random_init_cka(teacher, test_images)
        after = linear_cka(stolen, embed(teacher, test_images))
        assert after > before + 0.07, (before, after)

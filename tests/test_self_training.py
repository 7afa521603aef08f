import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sslaudit import registry
from sslaudit.api import SimulatedAPI
from sslaudit.attacks.direct_extraction import DirectExtraction
from sslaudit.attacks.self_training import SelfTraining
from sslaudit.attacks.sybil import SybilAttack
from sslaudit.augment import AugmentConfig
from sslaudit.evaluate import fidelity
from sslaudit.features import embed
from sslaudit.models import Encoder, InputSpec, build_encoder
from tests.test_attack import QUICK, OnlyTheAPI, pool, smooth_images

CPU = torch.device("cpu")
TINY = dataclasses.replace(QUICK, epochs=1)
FLIPS = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), jitter_p=0.0)  # flips only


def small_attack(base_train=TINY, student_train=TINY, **kw):
    kw.setdefault("base", DirectExtraction(loss="mse", stolen_arch="convnet-small", augment_stolen=False,
                                           train=base_train))
    return SelfTraining(student_train=student_train, **kw)


def test_self_training_sends_no_extra_query(encoder):
    api = OnlyTheAPI(SimulatedAPI(encoder, price_per_1k=1.0, device=CPU))
    result = small_attack().run(api, pool(300), budget=100, account="eve")
    assert api.ledger("eve").images == 100 == result.queries and api.ledger("eve").calls == 1
    assert result.extra["pseudo_labelled"] == 200 and result.cost == pytest.approx(0.1)


def test_pseudo_targets_come_from_the_teacher_on_exactly_the_unsent_images(api, encoder):
    attack = small_attack()
    purchase = attack.buy(api, pool(300), 100)
    torch.manual_seed(7)
    teacher = build_encoder("convnet-small", api.spec).eval()
    images, targets = attack.training_set(teacher, nn.Identity(), purchase)
    assert torch.equal(images[:100], purchase.images) and torch.equal(targets[:100], purchase.answers)
    assert torch.equal(images[100:], purchase.pool_rest) and len(images) == 300
    assert torch.allclose(targets[100:], embed(teacher, purchase.pool_rest))
    victim = embed(encoder, purchase.pool_rest)
    assert (targets[100:] - victim).norm() > 0.1 * victim.norm()  # the teacher's, not the victim's
    assert api.ledger("attacker").images == 100


def test_without_unsent_images_it_is_augmentation_consistency_on_the_queries(encoder):
    api = SimulatedAPI(encoder, device=CPU)
    attack = small_attack()
    purchase = attack.buy(api, pool(80), 100)  # budget beyond the pool: nothing left unsent
    images, targets = attack.training_set(encoder, nn.Identity(), purchase)
    assert len(purchase.pool_rest) == 0 and torch.equal(images, purchase.images)
    result = attack.fit(api, purchase)
    assert result.extra["pseudo_labelled"] == 0 and result.queries == 100 == api.ledger("attacker").images


class FlipInvariant(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return (self.net(x) + self.net(x.flip(3))) / 2


def invariant_victim():
    """A random convnet-small with BatchNorm statistics set on smooth images (features of a useful scale),
    made invariant to horizontal flips: the augmentation the student will see."""
    torch.manual_seed(123)
    enc = build_encoder("convnet-small", InputSpec())
    for module in enc.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # a plain average over the calibration batch
    with torch.no_grad():
        enc.train()(smooth_images(512, seed=9))
    return Encoder(FlipInvariant(enc.backbone.eval()), enc.spec, enc.dim, "flip-invariant").eval()


def centred_cosine(a, b):
    """Mean cosine after removing each side's mean: blind to a shared mean direction, so a collapse shows."""
    return float(F.cosine_similarity(a - a.mean(0), b - b.mean(0), dim=1).mean())


def test_short_self_training_keeps_fidelity_above_random_init():
    victim = invariant_victim()
    api = OnlyTheAPI(SimulatedAPI(victim, device=CPU))
    attack = small_attack(base_train=QUICK, student_train=dataclasses.replace(QUICK, epochs=3, lr=1e-3),
                          strong=FLIPS)
    purchase = attack.buy(api, pool(512), 128)
    teacher = attack.base.fit(api, purchase)
    student = attack.self_train(api, purchase, teacher)
    assert student.extra["pseudo_labelled"] == 384 and len(student.history.loss) == 3
    test_images = smooth_images(256, seed=5)
    target = embed(victim, test_images)
    torch.manual_seed(0)
    feats = {name: embed(enc, test_images) for name, enc in (
        ("random", build_encoder("convnet-small", api.spec)), ("teacher", teacher.encoder),
        ("student", student.encoder))}
    cos = {name: fidelity(f, target)["cosine"] for name, f in feats.items()}
    centred = {name: centred_cosine(f, target) for name, f in feats.items()}
    assert cos["student"] > cos["random"] + 0.1, cos
    assert centred["student"] > max(centred["random"] + 0.15, centred["teacher"] - 0.1), centred


def test_base_can_be_a_sybil_attack(encoder):
    api = SimulatedAPI(encoder, device=CPU)
    base = SybilAttack(inner=small_attack().base)
    result = small_attack(base=base).run(api, pool(300), budget=200, account="eve")
    assert result.queries == 200 == sum(led.images for led in api.ledgers().values())
    assert result.extra["pseudo_labelled"] == 300 - 180 and set(result.extra["ledgers"]) == {"eve-1", "eve-2"}


def test_registered_and_cli_overrides_reach_the_base_attack():
    attack = registry.get_attack("self-train")()
    assert isinstance(attack, SelfTraining) and attack.base.loss == "mse" and attack.student_config.epochs == 20
    changed = dataclasses.replace(attack, stolen_arch="convnet-small",
                                  train=dataclasses.replace(attack.train, epochs=3))
    assert changed.base.stolen_arch == "convnet-small" and changed.base.train.epochs == 3
    assert dataclasses.replace(changed, init="fresh").student_config.epochs == 3
    with pytest.raises(ValueError, match="init"):
        SelfTraining(init="warm")

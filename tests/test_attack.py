import dataclasses
import importlib
import inspect
import pkgutil

import pytest
import torch

import sslaudit.attacks
from sslaudit import registry
from sslaudit.api import Ledger, SimulatedAPI
from sslaudit.attack import Attack, AttackResult, StealingAttack, choose_queries, query_all
from sslaudit.attacks.direct_extraction import DirectExtraction
from sslaudit.data import ImageData
from sslaudit.features import embed
from sslaudit.models import Encoder, InputSpec, build_encoder
from sslaudit.train import TrainConfig
from sslaudit.train import fit as train_loop


def smooth_images(n, seed=0):
    """Low-frequency random images (7x7 noise upsampled): structure a convnet can map."""
    low = torch.rand(n, 1, 7, 7, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(low, size=28, mode="bilinear", align_corners=False)


def calibrated_victim(seed=123):
    """A random convnet-small whose BatchNorm statistics are set on smooth images, so its answers differ
    per image (an uncalibrated one answers almost the same vector for everything)."""
    torch.manual_seed(seed)
    victim = build_encoder("convnet-small", InputSpec())
    for module in victim.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average over the calibration batch
            module.reset_running_stats()
    with torch.no_grad():
        victim.train()(smooth_images(512, seed=9))
    return victim.eval()


def centred_cosine(a, b):
    """Mean cosine after removing each side's mean answer: copying the mean direction scores 0."""
    return float(torch.nn.functional.cosine_similarity(a - a.mean(0), b - b.mean(0)).mean())


def pool(n, seed=0):
    images = smooth_images(n, seed).mul(255).round().to(torch.uint8)
    return ImageData(images, torch.full((n,), -1), "random")


def test_queries_are_nested_prefixes():
    p = pool(50)
    assert torch.equal(choose_queries(p, 10, seed=3), choose_queries(p, 30, seed=3)[:10])
    assert not torch.equal(choose_queries(p, 10, seed=3), choose_queries(p, 10, seed=4))


def test_budget_beyond_pool_is_filled_with_augmented_copies():
    p = pool(20)
    q = choose_queries(p, 55)
    assert q.shape == (55, 1, 28, 28) and q.min() >= 0 and q.max() <= 1
    assert torch.equal(q[:20].mul(255).round().to(torch.uint8).sort(0).values, p.images.sort(0).values)
    assert not torch.equal(q[20:40], q[:20])


def test_query_all_bills_every_image(api):
    query_all(api, torch.rand(2500, 1, 28, 28), account="t", batch_size=1000)
    assert api.ledger("t").images == 2500 and api.ledger("t").calls == 3


class OnlyTheAPI:
    """A representation API that is nothing but the interface: no encoder to reach into."""

    def __init__(self, inner: SimulatedAPI):
        self._query, self._ledger = inner.query, inner.ledger
        self.spec, self.dim = inner.spec, inner.dim

    def query(self, images, account="default"):
        return self._query(images, account=account)

    def ledger(self, account) -> Ledger:
        return self._ledger(account)


QUICK = TrainConfig(epochs=10, batch_size=32, lr=3e-3, optimizer="adamw", warmup_epochs=1)


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["mse", "infonce"])
def test_short_steal_through_the_interface_improves_fidelity(loss):
    victim = calibrated_victim()
    api = OnlyTheAPI(SimulatedAPI(victim, price_per_1k=1.0, device=torch.device("cpu")))
    attack = DirectExtraction(loss=loss, stolen_arch="convnet-small", augment_stolen=False, train=QUICK)
    p = pool(256)
    result = attack.run(api, p, budget=256, seed=0)
    assert result.queries == 256 and result.cost == pytest.approx(0.256)
    test_images = smooth_images(128, seed=5)
    target = embed(victim, test_images)
    torch.manual_seed(0)
    random_init = build_encoder("convnet-small", api.spec)
    before = centred_cosine(embed(random_init, test_images), target)
    after = centred_cosine(embed(result.encoder, test_images), target)
    assert after > before + 0.25, (before, after)  # 0.09 -> 0.51 (MSE), 0.53 (InfoNCE); 0.06 with the loss zeroed


def test_budget_never_exceeded(encoder):
    api = SimulatedAPI(encoder, budget=100, device=torch.device("cpu"))
    attack = DirectExtraction(loss="mse", stolen_arch="convnet-small", train=dataclasses.replace(QUICK, epochs=1))
    attack.run(api, pool(300), budget=100, account="attacker")
    assert api.ledger("attacker").images == 100


def test_config_is_validated():
    with pytest.raises(ValueError, match="loss"):
        DirectExtraction(loss="l3")
    with pytest.raises(ValueError, match="temperature"):
        DirectExtraction(loss="infonce", temperature=0)


@dataclasses.dataclass(kw_only=True)
class MatchAnswers(StealingAttack):
    """A toy recipe that defines nothing but its loss: everything else is the shared scaffold."""

    def batch_loss(self, model, batch, gen):
        x, v = batch
        return (model(x) - v).pow(2).mean()


def test_a_recipe_defining_only_its_loss_trains_through_the_scaffold(encoder):
    api = OnlyTheAPI(SimulatedAPI(encoder, price_per_1k=2.0, device=torch.device("cpu")))
    attack = MatchAnswers(stolen_arch="convnet-small", train=dataclasses.replace(QUICK, epochs=3, batch_size=16))
    purchase = attack.buy(api, pool(64), budget=40, account="eve")
    result = attack.fit(api, purchase, seed=1)
    assert isinstance(result, AttackResult) and isinstance(result.encoder, Encoder) and not result.encoder.training
    assert (result.queries, result.cost, result.account) == (40, purchase.cost, "eve")
    assert purchase.cost == pytest.approx(0.08)
    assert len(result.history.loss) == 3 and result.extra == {}
    torch.manual_seed(1)  # the scaffold seeds the initialisation, then trains it
    untrained = build_encoder("convnet-small", api.spec).state_dict()
    assert any(not torch.equal(t, untrained[k]) for k, t in result.encoder.state_dict().items())
    again = attack.fit(api, purchase, seed=1).encoder.state_dict()
    assert all(torch.equal(t, again[k]) for k, t in result.encoder.state_dict().items())
    assert isinstance(attack, Attack)


def test_no_recipe_repeats_the_scaffold():
    for info in pkgutil.iter_modules(sslaudit.attacks.__path__):
        module = importlib.import_module(f"sslaudit.attacks.{info.name}")
        source = inspect.getsource(module)
        assert "torch.manual_seed(" not in source and "AttackResult(" not in source, info.name
        assert getattr(module, "fit", None) is not train_loop, info.name  # sslaudit.train.fit is the scaffold's
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, StealingAttack):
                assert obj.train_stolen is StealingAttack.train_stolen, obj


def test_every_registered_attack_meets_the_protocol():
    for name in registry.names("attack"):
        attack = registry.build("attack", name)
        assert isinstance(attack, Attack) and isinstance(attack, StealingAttack), name
    assert registry.build("attack", "infonce").loss == "infonce"
    assert registry.build("attack", "wasserstein:standardize=true").standardize


def test_equal_steps_count_the_batches_fit_takes():
    from sslaudit.train import steps_per_epoch

    infonce, mse = DirectExtraction(loss="infonce"), DirectExtraction(loss="mse")  # batch 256 (drop_last) / 32
    for attack in (infonce, mse):
        ref = attack.schedule(5000, 0)
        for rows in (500, 1000, 2000):
            epochs = attack.equal_step_epochs(rows, 5000)
            cfg = attack.schedule(rows, 0)
            assert epochs * steps_per_epoch(cfg, rows) >= ref.epochs * steps_per_epoch(ref, 5000)
            assert (epochs - 1) * steps_per_epoch(cfg, rows) < ref.epochs * steps_per_epoch(ref, 5000)
    # InfoNCE drops the partial batch: 500 rows make one batch of 256 per epoch, 5,000 make 19 (1,900 steps)
    assert infonce.equal_step_epochs(500, 5000) == 1900

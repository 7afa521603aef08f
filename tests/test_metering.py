"""Metering that cannot be beaten: atomic budgets under concurrency, no-op empty batches, no ghost
accounts, validated settings, and answers checked finite (refused and refunded otherwise)."""
import threading

import pytest
import torch

from sslaudit.api import InvalidQuery, Ledger, QueryBudgetExceeded, SimulatedAPI, UnsafeAnswer
from sslaudit.defenses.gaussian_noise import GaussianNoise
from sslaudit.models import InputSpec, build_encoder

CPU = torch.device("cpu")


def images(n, seed=0):
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def race(api, threads, per_call, account="eve"):
    """``threads`` callers, released together, each send one call of ``per_call`` images."""
    barrier, answered, refused, errors = threading.Barrier(threads), [], [], []

    def call(i):
        batch = images(per_call, seed=i)
        barrier.wait()
        try:
            answered.append(len(api.query(batch, account=account)))
        except QueryBudgetExceeded:
            refused.append(i)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    workers = [threading.Thread(target=call, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert not errors, errors
    return answered, refused


@pytest.mark.parametrize("budget, answered_calls", [(100, 1), (250, 2), (800, 8)])
def test_concurrent_callers_never_overrun_the_budget(encoder, budget, answered_calls):
    api = SimulatedAPI(encoder, budget=budget, price_per_1k=3.0, rate_limit=1000.0, device=CPU)
    answered, refused = race(api, threads=8, per_call=100)
    led = api.ledger("eve")
    assert sum(answered) == 100 * answered_calls == led.images <= budget
    assert len(answered) == led.calls == answered_calls and len(refused) == 8 - answered_calls
    assert led.cost == pytest.approx(led.images * 3.0 / 1000)
    assert led.rate_limit_wait_seconds == pytest.approx(led.images / 1000.0)
    assert api.remaining("eve") == budget - led.images >= 0


def test_concurrent_unlimited_callers_are_all_charged(encoder):
    api = SimulatedAPI(encoder, price_per_1k=1.0, rate_limit=50.0, defenses=[GaussianNoise()], device=CPU)
    answered, _ = race(api, threads=8, per_call=30)
    led = api.ledger("eve")
    assert (led.images, led.calls) == (240, 8) == (sum(answered), len(answered))
    assert led.rate_limit_wait_seconds == pytest.approx(240 / 50.0) and led.cost == pytest.approx(0.24)


def test_empty_batch_is_a_free_no_op_even_when_the_budget_is_spent(encoder):
    seen = []
    api = SimulatedAPI(encoder, budget=0, defenses=[lambda a, x, f: seen.append(a) or f], device=CPU)
    out = api.query(torch.empty(0, 1, 28, 28), account="broke")
    assert out.shape == (0, encoder.dim) and out.dtype == torch.float32
    assert api.ledgers() == {} and api.ledger("broke") == Ledger(budget=0) and seen == []
    api.set_budget("paid", 5)
    api.query(images(5), account="paid")
    api.query(torch.empty(0, 1, 28, 28, dtype=torch.float64), account="paid")
    assert (api.ledger("paid").images, api.ledger("paid").calls) == (5, 1)
    with pytest.raises(InvalidQuery, match="shape"):
        api.query(torch.empty(0, 3, 28, 28), account="paid")  # still the right shape


def test_looking_up_accounts_creates_none(encoder):
    api = SimulatedAPI(encoder, budget=40, device=CPU)
    assert api.ledger("ghost") == Ledger(budget=40) and api.remaining("ghost") == 40
    copy = api.ledger("ghost")
    copy.images = 99  # a copy: changing it changes nothing
    assert api.ledgers() == {} and api.remaining("ghost") == 40
    for bad in (123, None, "", b"eve"):
        for lookup in (api.ledger, api.remaining):
            with pytest.raises(InvalidQuery, match="account must be a non-empty string"):
                lookup(bad)
        with pytest.raises(InvalidQuery, match="account must be a non-empty string"):
            api.set_budget(bad, 5)
    assert api.ledgers() == {}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"price_per_1k": float("nan")}, "price_per_1k must be a finite number >= 0"),
        ({"price_per_1k": float("inf")}, "price_per_1k must be a finite number"),
        ({"price_per_1k": -1.0}, "price_per_1k must be a finite number >= 0"),
        ({"price_per_1k": "1"}, "price_per_1k must be a finite number"),
        ({"rate_limit": float("nan")}, "rate_limit must be a finite number > 0"),
        ({"rate_limit": float("inf")}, "rate_limit must be a finite number > 0"),
        ({"rate_limit": 0}, "rate_limit must be a finite number > 0"),
        ({"rate_limit": -3.0}, "rate_limit must be a finite number > 0"),
        ({"max_batch": 0}, "max_batch must be an int >= 1"),
        ({"max_batch": 2.5}, "max_batch must be an int >= 1"),
        ({"max_batch": True}, "max_batch must be an int"),
        ({"budget": 2.5}, "budget must be an int >= 0"),
        ({"budget": -1}, "budget must be an int >= 0"),
        ({"budget": True}, "budget must be an int"),
        ({"budget": "100"}, "budget must be an int"),
        ({"secret": "00" * 32}, "secret must be a DeploymentSecret"),
    ],
)
def test_constructor_settings_are_validated(encoder, kwargs, message):
    with pytest.raises(ValueError, match=message):
        SimulatedAPI(encoder, device=CPU, **kwargs)


@pytest.mark.parametrize("budget", [-5, 2.5, True, "10", float("nan")])
def test_set_budget_is_validated(api, budget):
    with pytest.raises(ValueError, match="budget must be an int >= 0"):
        api.set_budget("a", budget)
    assert api.ledgers() == {}


def test_set_budget_accepts_ints_and_none(api):
    api.set_budget("a", 0)
    api.set_budget("b", None)
    assert api.remaining("a") == 0 and api.remaining("b") is None


def nan_encoder():
    torch.manual_seed(0)
    enc = build_encoder("convnet-small", InputSpec()).eval()
    with torch.no_grad():
        next(enc.parameters()).fill_(float("nan"))
    return enc


def test_an_encoder_with_nan_weights_is_refused_and_refunded():
    api = SimulatedAPI(nan_encoder(), budget=10, device=CPU)
    with pytest.raises(UnsafeAnswer, match="the encoder"):
        api.query(images(4), account="a")
    assert api.ledgers() == {} and api.remaining("a") == 10


def test_a_defence_that_answers_nan_or_inf_is_refused_and_named(encoder):
    def poison(account, imgs, feats):
        return feats * float("nan")

    api = SimulatedAPI(encoder, defenses=[poison], budget=10, device=CPU)
    api.set_budget("a", 8)
    with pytest.raises(UnsafeAnswer, match="defence poison"):
        api.query(images(4), account="a")
    assert api.ledger("a") == Ledger(budget=8)  # refunded, the budget it was given kept
    overflow = SimulatedAPI(encoder, defenses=[GaussianNoise(mu=1e39)], device=CPU)  # inf in float32
    with pytest.raises(UnsafeAnswer, match="defence GaussianNoise"):
        overflow.query(images(2), account="a")
    assert overflow.ledgers() == {}


def test_a_defence_that_raises_is_refunded_after_earlier_charges(encoder):
    calls = []

    def flaky(account, imgs, feats):
        calls.append(len(imgs))
        if len(calls) == 2:
            raise RuntimeError("defence crashed")
        return feats

    api = SimulatedAPI(encoder, defenses=[flaky], budget=10, price_per_1k=1.0, rate_limit=10.0, device=CPU)
    api.query(images(3), account="a")
    with pytest.raises(RuntimeError, match="crashed"):
        api.query(images(4), account="a")
    led = api.ledger("a")
    assert (led.images, led.calls, led.cost, led.rate_limit_wait_seconds) == (3, 1, pytest.approx(0.003), 0.3)
    api.query(images(7), account="a")  # the refunded reservation is spendable again
    assert api.remaining("a") == 0

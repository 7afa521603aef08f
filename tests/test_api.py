import pytest
import torch

from sslaudit.api import InvalidQuery, QueryBudgetExceeded, SimulatedAPI, validate_images
from sslaudit.defenses.gaussian_noise import GaussianNoise
from sslaudit.features import embed
from sslaudit.models import InputSpec
from sslaudit.secret import DeploymentSecret


def images(n, seed=0):
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def test_ledger_counts_images_calls_and_cost_per_account(api):
    for n in (3, 5, 7):
        api.query(images(n), account="alice")
    api.query(images(11), account="bob")
    alice, bob = api.ledger("alice"), api.ledger("bob")
    assert (alice.images, alice.calls) == (15, 3)
    assert (bob.images, bob.calls) == (11, 1)
    assert alice.cost == pytest.approx(15 * 2.0 / 1000)
    assert api.ledger("carol").images == 0 and "carol" not in api.ledgers()  # looking does not open an account


def test_repeats_are_counted_every_time(api):
    x = images(4)
    api.query(x, account="a")
    api.query(x, account="a")
    assert api.ledger("a").images == 8


def test_answers_are_the_encoder_features(api, encoder):
    x = images(6)
    assert torch.allclose(api.query(x), embed(encoder, x, device=torch.device("cpu")), atol=1e-5)


def test_budget_overrun_raises_and_answers_nothing(encoder):
    api = SimulatedAPI(encoder, budget=10, device=torch.device("cpu"))
    api.query(images(8), account="a")
    with pytest.raises(QueryBudgetExceeded, match="2 of 10"):
        api.query(images(3), account="a")
    assert api.ledger("a").images == 8 and api.ledger("a").calls == 1
    api.query(images(2), account="a")
    assert api.remaining("a") == 0
    api.query(images(10), account="b")  # budgets are per account


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.zeros(2, 1, 28, 28, dtype=torch.uint8), "uint8"),
        (torch.rand(2, 3, 28, 28), "shape"),
        (torch.rand(1, 28, 28), "shape"),
        (torch.full((2, 1, 28, 28), float("nan")), "NaN"),
        (torch.rand(2, 1, 28, 28) * 3, "values span"),
        (torch.zeros(2, 1, 28, 28, dtype=torch.int64), "dtype"),
        ([[0.0]], "torch.Tensor"),
    ],
)
def test_bad_inputs_get_clear_errors_and_are_not_billed(api, bad, message):
    with pytest.raises(InvalidQuery, match=message):
        api.query(bad, account="a")
    assert api.ledger("a").images == 0


def test_batch_limit_and_account_name(encoder):
    api = SimulatedAPI(encoder, max_batch=4, device=torch.device("cpu"))
    with pytest.raises(InvalidQuery, match="at most 4"):
        api.query(images(5))
    with pytest.raises(InvalidQuery, match="account"):
        api.query(images(1), account="")


def test_defences_run_in_order_and_see_the_account(encoder):
    seen = []

    def record(account, imgs, feats):
        seen.append((account, len(imgs)))
        return feats * 0 + 1

    def double(account, imgs, feats):
        return feats * 2

    api = SimulatedAPI(encoder, defenses=[record, double], device=torch.device("cpu"))
    out = api.query(images(3), account="eve")
    assert seen == [("eve", 3)] and torch.all(out == 2)


def test_rate_limit_accrues_simulated_wait(encoder):
    api = SimulatedAPI(encoder, rate_limit=100.0, device=torch.device("cpu"))
    api.query(images(50), account="a")
    assert api.ledger("a").rate_limit_wait_seconds == pytest.approx(0.5)


def test_gaussian_noise_is_fresh_and_per_account(encoder):
    noise, secret = GaussianNoise(sigma=0.5), DeploymentSecret.fixed("tests")
    api = SimulatedAPI(encoder, defenses=[noise], device=torch.device("cpu"), secret=secret)
    clean = embed(encoder, images(64), device=torch.device("cpu"))
    a1, a2 = api.query(images(64), account="a"), api.query(images(64), account="a")
    assert not torch.allclose(a1, a2)  # fresh noise on repeats
    relative = (a1 - clean).norm(dim=1).mean() / clean.norm(dim=1).mean()
    assert 0.35 < relative < 0.65  # sigma is relative to the feature norm
    # account b's first answer does not depend on how much account a queried
    fresh = SimulatedAPI(encoder, defenses=[GaussianNoise(sigma=0.5)], device=torch.device("cpu"), secret=secret)
    assert torch.allclose(api.query(images(64), account="b"), fresh.query(images(64), account="b"))


def test_validate_accepts_good_batch():
    x = images(2)
    assert validate_images(x, InputSpec()) is x


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_any_floating_dtype_is_converted_to_float32(api, dtype):
    x = images(4)
    assert validate_images(x.to(dtype), InputSpec()).dtype == torch.float32
    assert torch.allclose(api.query(x.to(dtype), account="a"), api.query(x, account="b"), atol=1e-2)
    assert torch.allclose(api.query(x.double(), account="a"), api.query(x, account="b"), atol=1e-5)
    assert api.ledger("a").images == 8


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"std": (0.0,)}, r"std must be positive per channel; got \[0.0\]"),
        ({"std": (-0.5,)}, "std must be positive"),
        ({"std": (float("inf"),)}, "std must be finite"),
        ({"mean": (float("nan"),)}, "mean must be finite"),
        ({"mean": ("a",)}, "mean must be finite"),
        ({"std": 0.5}, "std must be a sequence"),
        ({"channels": 0}, "channels must be an int >= 1"),
        ({"channels": 1.5}, "channels must be an int"),
        ({"size": 0}, "size must be an int >= 1"),
        ({"channels": 3, "std": (0.5,)}, "std needs one value per channel"),
    ],
)
def test_input_spec_refuses_bad_fields(kwargs, message):
    with pytest.raises(ValueError, match=message):
        InputSpec(**kwargs)


def test_victim_card_with_zero_std_is_refused_when_loaded():
    card = {"channels": 1, "size": 28, "mean": [0.5], "std": [0]}
    with pytest.raises(ValueError, match="std must be positive"):
        InputSpec.from_dict(card)
    assert InputSpec.from_dict({**card, "std": [0.25]}).std == (0.25,)

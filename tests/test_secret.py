"""Defence randomness an attacker cannot reproduce: keyed by a per-deployment secret, never a public seed."""
import doctest
import pickle
import zlib

import pytest
import torch
import torch.nn.functional as F

import sslaudit.defenses.gaussian_noise as gaussian_noise
import sslaudit.secret
from sslaudit.api import SimulatedAPI
from sslaudit.defenses.gaussian_noise import GaussianNoise
from sslaudit.defenses.identity import Identity
from sslaudit.features import embed
from sslaudit.secret import DeploymentSecret

CPU = torch.device("cpu")
COLLIDING = ("ua4upwb64aw", "u5eu8mvrjs1")  # same crc32


def images(n, seed=0):
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def cosine(a, b):
    return F.cosine_similarity(a, b, dim=1).mean().item()


def test_an_attacker_who_knows_the_code_cannot_regenerate_and_subtract_the_noise(encoder, monkeypatch):
    monkeypatch.delenv("SSLAUDIT_SECRET", raising=False)
    x = images(256)
    clean = embed(encoder, x, device=CPU)
    api = SimulatedAPI(encoder, defenses=[GaussianNoise(sigma=2.0)], device=CPU)  # defaults, as deployed
    answer = api.query(x, account="eve")
    noisy = cosine(answer, clean)
    assert noisy < 0.6

    # The attacker knows the code, the account name and every public setting, and is even handed the
    # exact noise scale. They build the same defence with the default constructor and draw "its" noise
    # for their account (zero features, absolute sigma 1: exactly the unit noise stream), then subtract it.
    scale = 2.0 * clean.norm(dim=1).mean() / clean.shape[1] ** 0.5
    attempts = {
        "default constructor": GaussianNoise(sigma=1.0, relative=False),
        "default constructor, bound": GaussianNoise(sigma=1.0, relative=False).bind(DeploymentSecret()),
    }
    for name, theirs in attempts.items():
        unit_noise = theirs("eve", x, torch.zeros_like(answer))
        cleaned = answer - scale * unit_noise
        assert cosine(cleaned, clean) < 0.7, name
    # The old scheme (seed 0 and crc32 of the account name) does not reproduce it either.
    old = torch.randn(answer.shape, generator=torch.Generator().manual_seed(zlib.crc32(b"eve")))
    assert cosine(answer - scale * old, clean) < 0.7
    # Sanity: with the deployment's noise known, subtracting it would recover the clean answer.
    same = SimulatedAPI(encoder, defenses=[GaussianNoise(sigma=2.0)], device=CPU, secret=api._secret)
    truth = same.query(x, account="eve") - clean
    assert cosine(answer - truth, clean) > 0.999


def unit_noise(secret, account, n=64, dim=32):
    return GaussianNoise(sigma=1.0, relative=False, secret=secret)(account, images(1), torch.zeros(n, dim))


def test_crc32_colliding_account_names_get_different_noise():
    a, b = COLLIDING
    assert zlib.crc32(a.encode()) == zlib.crc32(b.encode())
    secret = DeploymentSecret.fixed("tests")
    assert not torch.allclose(unit_noise(secret, a), unit_noise(secret, b))
    assert secret.seed("noise", a) != secret.seed("noise", b)


def test_a_fixed_secret_reproduces_and_fresh_default_secrets_differ(encoder, monkeypatch):
    assert torch.equal(unit_noise(DeploymentSecret.fixed("tests"), "eve"),
                       unit_noise(DeploymentSecret.fixed("tests"), "eve"))
    assert not torch.allclose(unit_noise(DeploymentSecret.fixed("tests"), "eve"),
                              unit_noise(DeploymentSecret.fixed("other"), "eve"))
    assert not torch.allclose(unit_noise(DeploymentSecret(), "eve"), unit_noise(DeploymentSecret(), "eve"))
    assert not torch.allclose(unit_noise(None, "eve"), unit_noise(None, "eve"))  # unbound: own random secret
    monkeypatch.delenv("SSLAUDIT_SECRET", raising=False)
    x = images(16)
    fresh = [SimulatedAPI(encoder, defenses=[GaussianNoise(sigma=0.5)], device=CPU).query(x, "eve") for _ in "ab"]
    assert not torch.allclose(*fresh)
    monkeypatch.setenv("SSLAUDIT_SECRET", "ab" * 32)  # a deployment that asks for reproducibility
    pinned = [SimulatedAPI(encoder, defenses=[GaussianNoise(sigma=0.5)], device=CPU).query(x, "eve") for _ in "ab"]
    assert torch.equal(*pinned)


def test_one_defence_instance_shared_by_two_apis_shares_no_stream(encoder, monkeypatch):
    monkeypatch.delenv("SSLAUDIT_SECRET", raising=False)
    x, noise = images(32), GaussianNoise(sigma=0.5)
    api_a, api_b = (SimulatedAPI(encoder, defenses=[noise], device=CPU) for _ in "ab")
    assert not torch.allclose(api_a.query(x, "eve"), api_b.query(x, "eve"))  # different noise per deployment
    # Querying A does not change what B answers next.
    b1 = SimulatedAPI(encoder, defenses=[noise], device=CPU, secret=DeploymentSecret.fixed("b"))
    b2 = SimulatedAPI(encoder, defenses=[noise], device=CPU, secret=DeploymentSecret.fixed("b"))
    for seed in range(3):
        api_a.query(images(32, seed), "eve")
    b1.query(x, "eve")
    for seed in range(5):
        api_a.query(images(32, seed), "eve")
    assert torch.equal(b1.query(x, "eve"), (b2.query(x, "eve"), b2.query(x, "eve"))[1])
    assert noise.secret is None and noise == GaussianNoise(sigma=0.5)  # the shared instance is untouched


def test_seeds_are_unambiguous_per_purpose_account_and_image():
    s = DeploymentSecret.fixed("tests")
    x, y = images(1, 0)[0], images(1, 1)[0]
    assert s.seed("ab", "c") != s.seed("a", "bc")  # length-prefixed, not concatenated
    assert s.seed("noise", "eve") != s.seed("b4b", "eve")
    assert s.seed("b4b", "eve", x) == s.seed("b4b", "eve", x.clone().double())  # keyed to the image values
    assert len({s.seed("b4b", "eve", x), s.seed("b4b", "eve", y), s.seed("b4b", "eve")}) == 3
    assert 0 <= s.seed("noise", "eve") < 2**64
    g1, g2 = s.generator("noise", "eve"), s.generator("noise", "eve")
    assert torch.equal(torch.randn(5, generator=g1), torch.randn(5, generator=g2))


def test_the_secret_is_never_printed():
    key = "c0ffee" * 8
    secret = DeploymentSecret.from_hex(key)
    assert key not in repr(secret) and key not in str(secret) and "tests" not in repr(DeploymentSecret.fixed("tests"))
    assert "secret=DeploymentSecret(<hidden>" in repr(GaussianNoise(secret=secret))
    assert secret == DeploymentSecret.from_hex(key) != DeploymentSecret()


@pytest.mark.parametrize("bad", ["xyz", "ab", "ab" * 65, 123])
def test_bad_hex_secrets_are_refused(bad, monkeypatch):
    with pytest.raises(ValueError, match="32 to 128 hex digits"):
        DeploymentSecret.from_hex(bad)
    if isinstance(bad, str):
        monkeypatch.setenv("SSLAUDIT_SECRET", bad)
        with pytest.raises(ValueError, match="hex digits"):
            DeploymentSecret.from_env()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sigma": float("nan")}, "sigma must be a finite number >= 0"),
        ({"sigma": float("inf")}, "sigma must be a finite number >= 0"),
        ({"sigma": -0.1}, "sigma must be a finite number >= 0"),
        ({"sigma": "abc"}, "sigma must be a finite number >= 0 .e.g. sigma=0.1.; got 'abc'"),
        ({"mu": "abc"}, "mu must be a finite number"),
        ({"mu": float("nan")}, "mu must be a finite number"),
        ({"relative": "yes"}, "relative must be true or false"),
        ({"secret": "00" * 32}, "secret must be a DeploymentSecret"),
    ],
)
def test_noise_settings_are_validated_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        GaussianNoise(**kwargs)
    assert "\n" not in str(err.value)


def test_a_pinned_noise_defence_pickles_with_its_stream():  # audit cells may run in other processes
    noise = GaussianNoise(secret=DeploymentSecret.fixed("tests"))
    noise("eve", images(1), torch.ones(2, 4))
    twin = pickle.loads(pickle.dumps(noise))
    assert twin.secret == noise.secret and torch.equal(twin("eve", images(1), torch.ones(2, 4)),
                                                       noise("eve", images(1), torch.ones(2, 4)))


def test_identity_binds_to_itself():
    identity = Identity()
    assert identity.bind(DeploymentSecret()) is identity


@pytest.mark.parametrize("module", [sslaudit.secret, gaussian_noise])
def test_docstring_examples_run(module):
    assert doctest.testmod(module, raise_on_error=False).failed == 0

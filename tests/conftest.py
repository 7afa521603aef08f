"""Shared fixtures: a small untrained encoder, its simulated API, and data availability."""
from __future__ import annotations

import pytest
import torch

from sslaudit.api import SimulatedAPI
from sslaudit.data import DataNotFoundError, load_fashion_mnist
from sslaudit.models import InputSpec, build_encoder


@pytest.fixture(autouse=True, scope="session")
def private_cache(tmp_path_factory):
    """Every test writes victims, checkpoints and cached scores under a fresh folder, never ~/.cache."""
    import os

    before = os.environ.get("SSLAUDIT_CACHE")
    os.environ["SSLAUDIT_CACHE"] = str(tmp_path_factory.mktemp("sslaudit-cache"))
    yield
    if before is None:
        os.environ.pop("SSLAUDIT_CACHE", None)
    else:
        os.environ["SSLAUDIT_CACHE"] = before


@pytest.fixture
def encoder():
    torch.manual_seed(0)
    return build_encoder("convnet-small", InputSpec(channels=1, size=28)).eval()


@pytest.fixture
def api(encoder):
    return SimulatedAPI(encoder, price_per_1k=2.0, device=torch.device("cpu"))


@pytest.fixture(scope="session")
def fmnist_available() -> bool:
    try:
        load_fashion_mnist("test")
    except DataNotFoundError:
        return False
    return True


@pytest.fixture
def needs_fmnist(fmnist_available):
    if not fmnist_available:
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")

"""RemoteAPI: attacks run unchanged against a live endpoint; retries, caching and a server killed mid-load."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
import torch
from serving_helpers import KEYS, free_port, running, tiny_victim, write_keys

from sslaudit.api import QueryBudgetExceeded, SimulatedAPI
from sslaudit.attacks.direct_extraction import DirectExtraction
from sslaudit.data import ImageData
from sslaudit.secret import DeploymentSecret
from sslaudit.serving.accounts import load_accounts
from sslaudit.serving.http import create_app
from sslaudit.serving.ledger_db import LedgerDB
from sslaudit.serving.service import InferenceService
from sslaudit.remote import RemoteAPI
from sslaudit.train import TrainConfig

MODEL = "simclr"
REQUESTS = 150  # per client in the kill -9 test: enough that the kill lands mid-load on a fast machine


@pytest.fixture
def service(tmp_path):
    return InferenceService(tiny_victim(), load_accounts(write_keys(tmp_path)), LedgerDB(tmp_path / "ledger.sqlite"),
                            name=MODEL, secret=DeploymentSecret.fixed("remote-test"), max_batch=64,
                            calibration=torch.rand(64, 1, 28, 28))


def pool(n: int) -> ImageData:
    gen = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (n, 1, 28, 28), generator=gen, dtype=torch.uint8)
    return ImageData(images, torch.full((n,), -1), "random")


def test_a_steal_over_http_equals_the_steal_in_process(service, tmp_path):
    attack = DirectExtraction(loss="mse", stolen_arch="convnet-small", augment_stolen=False,
                              train=TrainConfig(epochs=2, batch_size=32, lr=1e-3, optimizer="adamw"))
    local = attack.run(SimulatedAPI(tiny_victim().encoder, price_per_1k=1.0, device=torch.device("cpu")),
                       pool(96), budget=96, seed=0)
    with running(create_app(service)) as address:
        remote_api = RemoteAPI(f"http://{address}/v2/models/{MODEL}", api_key=KEYS["alice"],
                               cache=tmp_path / "answers.sqlite", batch_size=40)
        remote = attack.run(remote_api, pool(96), budget=96, seed=0)
        assert remote_api.ledger("attacker").images == 96 == remote.queries
    assert remote.cost == pytest.approx(local.cost)
    probe = torch.rand(16, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(remote.encoder(probe), local.encoder(probe), rtol=1e-4, atol=1e-5)


def test_answers_already_paid_for_are_not_bought_again(service, tmp_path):
    images = torch.rand(10, 1, 28, 28)
    with running(create_app(service)) as address:
        url = f"http://{address}/v2/models/{MODEL}"
        first = RemoteAPI(url, api_key=KEYS["alice"], cache=tmp_path / "a.sqlite").query(images[:6], "attacker")
        resumed = RemoteAPI(url, api_key=KEYS["alice"], cache=tmp_path / "a.sqlite")  # a new process, same cache
        both = resumed.query(images, "attacker")
        assert resumed.ledger("attacker").images == 10  # 6 + the 4 new ones, not 16
        torch.testing.assert_close(both[:6], first)


def test_budget_and_rate_limit_reach_the_attack_as_the_simulator_errors(service, tmp_path):
    with running(create_app(service)) as address:
        url = f"http://{address}/v2/models/{MODEL}"
        bob = RemoteAPI(url, api_key=KEYS["bob"], cache=False)
        with pytest.raises(QueryBudgetExceeded, match="queries left"):
            bob.query(torch.rand(21, 1, 28, 28), "attacker")
        carol = RemoteAPI(url, api_key=KEYS["carol"], cache=False, max_wait=5)  # 5 images/s, bursts of 8
        began = time.monotonic()
        for _ in range(3):
            carol.query(torch.rand(8, 1, 28, 28), "attacker")
        assert time.monotonic() - began > 2.0  # it waited out the 429s instead of failing
        assert carol.ledger("attacker").images == 24


def _start_server(folder, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "sslaudit.cli", "serve", "--victim", str(folder / "victim.safetensors"),
           "--keys", str(folder / "keys.toml"), "--port", str(port), "--name", MODEL, "--max-batch", "64"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"the server did not start: {proc.stderr.read().decode()[-500:]}")


@pytest.mark.slow
def test_kill_9_mid_load_loses_no_charge_and_charges_nothing_twice(tmp_path):
    tiny_victim().save(tmp_path / "victim")
    write_keys(tmp_path)
    port = free_port()
    server = _start_server(tmp_path, port)
    answered, errors, lock = [0], [], threading.Lock()

    def client(seed: int) -> None:
        api = RemoteAPI(f"http://127.0.0.1:{port}/v2/models/{MODEL}", api_key=KEYS["alice"], cache=False,
                        retries=12, max_wait=2)
        gen = torch.Generator().manual_seed(seed)
        try:
            for _ in range(REQUESTS):
                out = api.query(torch.rand(2, 1, 28, 28, generator=gen), "attacker")
                with lock:
                    answered[0] += len(out)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 120
    while answered[0] < 100 and time.monotonic() < deadline:  # kill once the load is well under way
        time.sleep(0.01)
    os.kill(server.pid, signal.SIGKILL)
    server.wait()
    before_restart = answered[0]
    server = _start_server(tmp_path, port)
    try:
        for t in threads:
            t.join(timeout=120)
        assert not errors, errors
        assert 0 < before_restart < 8 * REQUESTS * 2, before_restart  # the kill landed mid-load
        charged = RemoteAPI(f"http://127.0.0.1:{port}/v2/models/{MODEL}", api_key=KEYS["alice"],
                            cache=False).ledger("attacker").images
        assert charged == answered[0] == 8 * REQUESTS * 2
    finally:
        server.terminate()
        server.wait(timeout=10)

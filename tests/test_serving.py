"""`sslaudit serve`: the Open Inference Protocol v2 over real HTTP on loopback, with the real tritonclient."""
from __future__ import annotations

import json
import threading

import httpx
import numpy as np
import pytest
import torch
import tritonclient.http as triton
from serving_helpers import KEYS, running, tiny_victim, write_keys

from sslaudit.secret import DeploymentSecret
from sslaudit.serving.accounts import load_accounts
from sslaudit.serving.http import create_app
from sslaudit.serving.ledger_db import LedgerDB
from sslaudit.serving.service import InferenceService

MODEL = "simclr"


@pytest.fixture
def service(tmp_path):
    keys = write_keys(tmp_path)
    calibration = torch.rand(64, 1, 28, 28)
    return InferenceService(tiny_victim(), load_accounts(keys), LedgerDB(tmp_path / "ledger.sqlite"), name=MODEL,
                            secret=DeploymentSecret.fixed("serve-test"), max_batch=64, calibration=calibration)


@pytest.fixture
def server(service):
    with running(create_app(service)) as address:
        yield address


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


def infer_json(images: torch.Tensor, request_id: str | None = None) -> dict:
    body = {"inputs": [{"name": "images", "shape": list(images.shape), "datatype": "FP32",
                        "data": images.flatten().tolist()}]}
    return {**body, "id": request_id} if request_id else body


def test_health_and_metadata_follow_the_protocol(server):
    client = triton.InferenceServerClient(server)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    meta = client.get_model_metadata(MODEL)
    assert meta["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert meta["outputs"][0]["shape"] == [-1, tiny_victim().encoder.dim]
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    assert httpx.get(f"http://{server}/v2/health/live").json() == {"live": True}


@pytest.mark.parametrize("binary", [False, True])
def test_tritonclient_round_trip_equals_the_encoder(server, binary):
    images = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    client = triton.InferenceServerClient(server)
    inp = triton.InferInput("images", list(images.shape), "FP32")
    inp.set_data_from_numpy(images.numpy(), binary_data=binary)
    out = triton.InferRequestedOutput("features", binary_data=binary)
    result = client.infer(MODEL, [inp], outputs=[out], headers=auth("alice"))
    with torch.no_grad():
        expected = tiny_victim().encoder(images)
    torch.testing.assert_close(torch.from_numpy(result.as_numpy("features").copy()), expected, rtol=1e-5, atol=1e-5)
    usage = httpx.get(f"http://{server}/v2/models/{MODEL}/usage", headers=auth("alice")).json()
    assert (usage["images"], usage["calls"]) == (5, 1)


def _bad_requests():
    good = infer_json(torch.rand(2, 1, 28, 28))
    wrong_shape = infer_json(torch.rand(2, 1, 27, 27))
    wrong_dtype = json.loads(json.dumps(good))
    wrong_dtype["inputs"][0]["datatype"] = "BYTES"
    nan = json.loads(json.dumps(good))
    nan["inputs"][0]["data"][3] = float("nan")
    too_many = infer_json(torch.rand(65, 1, 28, 28))
    out_of_range = json.loads(json.dumps(good))
    out_of_range["inputs"][0]["data"][0] = 7.0
    return [
        ("wrong shape", dict(json=wrong_shape, headers=auth("alice")), 400, "shape"),
        ("wrong dtype", dict(json=wrong_dtype, headers=auth("alice")), 400, "datatype"),
        ("NaN", dict(content=json.dumps(nan).encode(), headers=auth("alice")), 400, "NaN"),
        ("out of range", dict(json=out_of_range, headers=auth("alice")), 400, "[0, 1]"),
        ("oversize batch", dict(json=too_many, headers=auth("alice")), 413, "at most 64"),
        ("bad JSON", dict(content=b"{inputs: [", headers=auth("alice")), 400, "not JSON"),
        ("huge id", dict(json={**good, "id": "x" * 500}, headers=auth("alice")), 400, "\"id\""),
        ("binary size lies", dict(content=json.dumps({"inputs": [{**good["inputs"][0], "data": None,
                                  "parameters": {"binary_data_size": 99}}]}).encode(),
                                  headers={**auth("alice"), "Inference-Header-Content-Length": "10"}), 400, "body"),
        ("missing key", dict(json=good), 401, "Authorization"),
        ("wrong key", dict(json=good, headers={"Authorization": "Bearer sk-nobody"}), 401, "unknown API key"),
        ("body over the limit", dict(content=b"x" * (3 << 20), headers=auth("alice")), 413, "bytes"),
        ("largest batch as JSON fits", dict(json=infer_json(torch.rand(64, 1, 28, 28)), headers=auth("alice")),
         200, ""),
    ]


@pytest.mark.parametrize("case,kwargs,status,words", _bad_requests(), ids=[c[0] for c in _bad_requests()])
def test_bad_requests_get_their_4xx_and_the_server_keeps_serving(server, case, kwargs, status, words):
    url = f"http://{server}/v2/models/{MODEL}/infer"
    response = httpx.post(url, **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    if status == 200:  # the control: a full-size JSON batch is not refused as too large
        return
    assert words in response.json()["error"]
    ok = httpx.post(url, json=infer_json(torch.rand(2, 1, 28, 28)), headers=auth("alice"))
    assert ok.status_code == 200 and len(ok.json()["outputs"][0]["data"]) == 2 * tiny_victim().encoder.dim
    usage = httpx.get(f"http://{server}/v2/models/{MODEL}/usage", headers=auth("alice")).json()
    assert usage["images"] == 2  # the refused request was not charged


def test_unknown_model_and_route_are_404_json(server):
    for url in (f"http://{server}/v2/models/nope/infer", f"http://{server}/v3"):
        response = httpx.post(url, json={}, headers=auth("alice"))
        assert response.status_code in (404, 405) and "error" in response.json()
    response = httpx.get(f"http://{server}/v2/models/nope")
    assert response.status_code == 404 and "simclr" in response.json()["error"]


def test_budget_is_enforced_and_reported(server):
    url = f"http://{server}/v2/models/{MODEL}/infer"
    assert httpx.post(url, json=infer_json(torch.rand(15, 1, 28, 28)), headers=auth("bob")).status_code == 200
    refused = httpx.post(url, json=infer_json(torch.rand(6, 1, 28, 28)), headers=auth("bob"))
    assert refused.status_code == 403 and "5 of 20" in refused.json()["error"]
    assert refused.json()["code"] == "budget_exhausted"
    usage = httpx.get(f"http://{server}/v2/models/{MODEL}/usage", headers=auth("bob")).json()
    assert (usage["images"], usage["remaining"], usage["budget"]) == (15, 5, 20)


def test_rate_limit_answers_429_with_retry_after(server):
    url = f"http://{server}/v2/models/{MODEL}/infer"
    assert httpx.post(url, json=infer_json(torch.rand(8, 1, 28, 28)), headers=auth("carol")).status_code == 200
    limited = httpx.post(url, json=infer_json(torch.rand(5, 1, 28, 28)), headers=auth("carol"))
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert "rate limit" in limited.json()["error"]


def test_a_paid_request_id_is_answered_again_without_a_second_charge(server):
    url = f"http://{server}/v2/models/{MODEL}/infer"
    body = infer_json(torch.rand(3, 1, 28, 28), request_id="retry-me")
    first = httpx.post(url, json=body, headers=auth("alice")).json()
    again = httpx.post(url, json=body, headers=auth("alice")).json()
    assert first["outputs"] == again["outputs"] and again["id"] == "retry-me"
    usage = httpx.get(f"http://{server}/v2/models/{MODEL}/usage", headers=auth("alice")).json()
    assert usage["images"] == 3
    other = httpx.post(url, json=body, headers=auth("bob"))  # ids are per account: bob pays for his own
    assert other.status_code == 200
    assert httpx.get(f"http://{server}/v2/models/{MODEL}/usage", headers=auth("bob")).json()["images"] == 3


def test_defences_are_per_account(server):
    url = f"http://{server}/v2/models/{MODEL}/infer"
    images = torch.rand(4, 1, 28, 28)
    clean = httpx.post(url, json=infer_json(images), headers=auth("alice")).json()["outputs"][0]["data"]
    noisy = httpx.post(url, json=infer_json(images), headers=auth("dave")).json()["outputs"][0]["data"]
    assert not np.allclose(clean, noisy, atol=1e-3)


def test_concurrent_clients_never_overrun_a_budget_and_the_ledger_equals_the_answers(service):
    """16 clients x 100 requests of 2 images against bob's budget of 20 and alice's unlimited one."""
    answered = {"alice": 0, "bob": 0}
    lock = threading.Lock()
    images = infer_json(torch.rand(2, 1, 28, 28))

    with running(create_app(service)) as address:
        def client(name: str) -> None:
            with httpx.Client() as http:
                for _ in range(100):
                    r = http.post(f"http://{address}/v2/models/{MODEL}/infer", json=images, headers=auth(name))
                    assert r.status_code in (200, 403), r.text
                    if r.status_code == 200:
                        with lock:
                            answered[name] += 2

        threads = [threading.Thread(target=client, args=("bob" if i % 4 == 0 else "alice",)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert answered["bob"] == 20 and service.ledger.usage("bob")["images"] == 20
    assert service.ledger.usage("alice")["images"] == answered["alice"] == 12 * 100 * 2


@pytest.mark.parametrize("spec", ["b4b", "knn-detector", "prada"])
def test_defence_state_survives_a_restart(tmp_path, spec):
    """A second service on the same ledger continues each account's defence state where the first left it."""
    from sslaudit.serving.accounts import hash_key

    keys = write_keys(tmp_path, f'[accounts.eve]\nkey_sha256 = "{hash_key("sk-eve")}"\ndefenses = ["{spec}"]\n')
    calibration = torch.rand(256, 1, 28, 28, generator=torch.Generator().manual_seed(0))

    def start() -> InferenceService:
        return InferenceService(tiny_victim(), load_accounts(keys), LedgerDB(tmp_path / "ledger.sqlite"), name=MODEL,
                                secret=DeploymentSecret.fixed("restart"), calibration=calibration)

    def telemetry(service: InferenceService) -> dict:  # B4B: coverage and sigma; detectors: queries, alarm
        (api,) = [a for chain, a in service._apis.items() if chain]
        return api.defenses[0].telemetry("eve")

    first = start()
    eve = first.authenticate("Bearer sk-eve")
    for seed in range(3):
        body = json.dumps(infer_json(torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(seed))))
        first.infer(eve, body.encode(), None)
    before = telemetry(first)
    first.ledger.close()
    again = start()
    assert telemetry(again) == before  # restored, not fresh
    body = json.dumps(infer_json(torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(9))))
    again.infer(again.authenticate("Bearer sk-eve"), body.encode(), None)
    assert telemetry(again) != before


def test_cli_new_key_prints_a_keys_file_entry_that_loads(tmp_path):
    from click.testing import CliRunner

    from sslaudit.cli import main

    out = CliRunner().invoke(main, ["serve", "--new-key", "zoe"])
    assert out.exit_code == 0
    key = out.stderr.split(": ")[-1].strip()
    (tmp_path / "keys.toml").write_text(out.stdout)
    (account,) = load_accounts(tmp_path / "keys.toml")
    assert account.name == "zoe" and key.startswith("sk-") and key not in out.stdout


@pytest.mark.parametrize("text,words", [
    ("[accounts.x]\nkey_sha256 = 'abc'\n", "64 lowercase hex"),
    ("[accounts.x]\nkey_sha256 = '" + "a" * 64 + "'\nbudget = -1\n", "budget must be"),
    ("[accounts.x]\nkey_sha256 = '" + "a" * 64 + "'\nbugdet = 5\n", "unknown settings"),
    ("[accounts.x]\nkey_sha256 = '" + "a" * 64 + "'\ndefenses = ['nope']\n", "nope"),
    ("not toml [", "not valid TOML"),
    ("", "no [accounts.NAME]"),
])
def test_cli_serve_refuses_a_bad_keys_file_in_one_line(tmp_path, text, words):
    from click.testing import CliRunner

    from sslaudit.cli import main

    (tmp_path / "keys.toml").write_text(text)
    out = CliRunner().invoke(main, ["serve", "--keys", str(tmp_path / "keys.toml")])
    assert out.exit_code != 0 and words in out.output and "Traceback" not in out.output
    assert len(out.output.strip().splitlines()) == 1, out.output


def test_cli_url_victim_needs_an_api_key():
    from click.testing import CliRunner

    from sslaudit.cli import main

    out = CliRunner(env={"SSLAUDIT_API_KEY": None}).invoke(main, ["steal", "--victim", "http://127.0.0.1:9/v2/models/m"])
    assert out.exit_code != 0 and "--api-key" in out.output


def test_expired_answers_are_swept_while_serving(tmp_path, monkeypatch):
    import sslaudit.serving.ledger_db as ledger_db

    db = LedgerDB(tmp_path / "l.sqlite")
    db.commit(db.reserve("a", 1, budget=None, request_id="old"), b"1234", seconds=0.0)
    monkeypatch.setattr(ledger_db, "PRUNE_EVERY", 2)
    now = ledger_db.time.time()
    monkeypatch.setattr(ledger_db.time, "time", lambda: now + ledger_db.REPLAY_SECONDS + 1)
    db.commit(db.reserve("a", 1, budget=None, request_id="new"), b"5678", seconds=0.0)
    assert db.replay("a", "old") is None and db.replay("a", "new") == (b"5678", 1)
    assert db.usage("a")["images"] == 2  # sweeping answers never touches what was charged

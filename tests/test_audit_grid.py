"""`sslaudit audit`: configs checked up front, content-addressed cells, a store that survives kill -9 and
two writers, and a rerun that skips every finished cell."""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import tomllib

import pytest
import torch

from sslaudit.grid.config import EXAMPLE, BadAuditConfig, Cell, parse_config
from sslaudit.grid.run import cell_key, run_audit
from sslaudit.grid.store import ResultStore
from sslaudit.models import InputSpec, build_encoder
from sslaudit.victim import Victim


def config_text(victim: str, **extra: object) -> str:
    lines = [f'victims = ["{victim}"]', 'defenses = ["none", "noise:sigma=0.5"]', 'attacks = ["mse"]',
             "budgets = [64]", "seeds = [0, 1]", "epochs = 1", "eval_train = 1000", "eval_test = 100"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    return "[audit]\nname = \"tiny\"\n" + "\n".join(lines) + "\n"


@pytest.fixture
def tiny_victim_path(tmp_path):
    torch.manual_seed(0)
    encoder = build_encoder("convnet-small", InputSpec(channels=1, size=28))
    return Victim(encoder, {"method": "simclr", "arch": "convnet-small", "config_key": "grid-test",
                            "input": encoder.spec.to_dict()}).save(tmp_path / "victim")


@pytest.mark.parametrize("text,words", [
    ("[audit]\nvictims = ['simclr']\nattacks = ['msee']\nbudgets = [5]\nseeds = [0]\n", "unknown attack 'msee'"),
    ("[audit]\nvictims = ['simclr']\nattacks = ['mse']\ndefenses = ['noise:sigma=-1']\nbudgets = [5]\nseeds = [0]\n",
     "sigma"),
    ("[audit]\nvictims = ['simclr']\nattacks = ['mse']\nbudgets = []\nseeds = [0]\n", "budgets must be"),
    ("[audit]\nvictims = ['simclr']\nattacks = ['mse']\nbudgets = [5]\nseeds = [0]\nbudgit = 3\n", "unknown keys"),
    ("[grid]\n", "[audit] table"),
])
def test_bad_configs_are_one_line_errors_before_anything_runs(text, words):
    with pytest.raises(BadAuditConfig, match=None) as err:
        parse_config(tomllib.loads(text))
    assert words in str(err.value) and "\n" not in str(err.value)


def test_the_example_is_the_full_grid_and_chains_are_kept():
    config = parse_config(tomllib.loads(EXAMPLE))
    assert len(config.cells()) == 2 * 3 * 3 * 2 * 2
    chained = parse_config(tomllib.loads(config_text("simclr").replace(
        'defenses = ["none", "noise:sigma=0.5"]', 'defenses = [["noise:sigma=0.5", "topk:fraction=0.3"]]')))
    assert chained.cells()[0].defenses == ["noise:sigma=0.5", "topk:fraction=0.3"]


def test_a_cell_key_names_its_settings_and_its_victim_weights():
    cell = Cell("simclr", "none", "mse", 500, 0)
    assert cell_key(cell, "w1") == cell_key(Cell("simclr", "none", "mse", 500, 0), "w1")
    others = {cell_key(cell, "w2"), cell_key(Cell("simclr", "none", "mse", 500, 1), "w1"),
              cell_key(Cell("simclr", "none", "mse", 501, 0), "w1"), cell_key(cell, "w1")}
    assert len(others) == 4


def _write_many(path: str, start: int) -> None:
    store = ResultStore(path)
    for i in range(start, start + 200):
        store.put(f"k{i % 300}", {"i": i}, {"value": i}, wall_seconds=0.0)


def test_two_writers_on_one_store_lose_nothing(tmp_path):
    path = str(tmp_path / "s.sqlite")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_many, args=(path, start)) for start in (0, 100)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    store = ResultStore(path)
    assert store.done_keys() == {f"k{i}" for i in range(300)}  # 0..299 written, overlaps once each
    assert store.meta_once("secret", "x") == store.meta_once("secret", "y") == "x"
    assert "secret" not in json.dumps(store.audit_document())  # the defences' key never reaches a report
    assert not store.put("k5", {}, {}, wall_seconds=0.0)  # the first writer of a key wins


@pytest.mark.slow
def test_a_rerun_skips_finished_cells_and_reports_the_same_numbers(needs_fmnist, tiny_victim_path, tmp_path):
    config = parse_config(tomllib.loads(config_text(str(tiny_victim_path))))
    store = ResultStore(tmp_path / "audit.sqlite")
    first = run_audit(config, store, progress=False)
    assert (first["cells"], first["ran"], first["skipped"]) == (4, 4, 0)
    again = run_audit(config, store, progress=False)
    assert (again["ran"], again["skipped"]) == (0, 4)
    doc = store.audit_document()
    assert doc["schema_version"] == "sslaudit.audit/1" and len(doc["cells"]) == 4
    noisy = [c for c in doc["cells"] if c["defense"] != "none"]
    assert noisy and all(c["result"]["honest"] is not None for c in noisy)  # a defence brings the honest user


@pytest.mark.slow
def test_ownership_verdicts_ride_with_each_cell(needs_fmnist, tiny_victim_path, tmp_path):
    text = config_text(str(tiny_victim_path), ownership=True).replace('seeds = [0, 1]', 'seeds = [0]').replace(
        'defenses = ["none", "noise:sigma=0.5"]', 'defenses = ["none"]')
    store = ResultStore(tmp_path / "audit.sqlite")
    run_audit(parse_config(tomllib.loads(text)), store, progress=False)
    (cell,) = store.audit_document()["cells"]
    (verdict,) = cell["ownership"]
    assert verdict["test"] == "dataset-inference" and 0 <= verdict["p_value"] <= 1


@pytest.mark.slow
def test_kill_9_mid_audit_loses_only_the_cell_in_flight(needs_fmnist, tiny_victim_path, tmp_path):
    (tmp_path / "audit.toml").write_text(config_text(str(tiny_victim_path), store=str(tmp_path / "audit.sqlite")))
    cmd = [sys.executable, "-m", "sslaudit.cli", "audit", "--config", str(tmp_path / "audit.toml"), "--no-progress",
           "--out", str(tmp_path)]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = ResultStore(tmp_path / "audit.sqlite")
    deadline = time.monotonic() + 300
    while not store.done_keys() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the audit and its worker processes
    proc.wait()
    before = {c["key"]: c["result"] for c in store.cells()}
    assert 1 <= len(before) < 4, len(before)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-1500:]
    assert f"skipped {len(before)} already stored" in done.stderr
    after = {c["key"]: c["result"] for c in store.cells()}
    assert len(after) == 4 and all(after[k] == v for k, v in before.items())


@pytest.mark.slow
def test_ray_executor_gives_the_local_numbers(needs_fmnist, tiny_victim_path, tmp_path):
    ray = pytest.importorskip("ray")
    config = parse_config(tomllib.loads(config_text(str(tiny_victim_path))))
    local, remote = ResultStore(tmp_path / "local.sqlite"), ResultStore(tmp_path / "ray.sqlite")
    remote.meta_once("secret", local.meta_once("secret", "ab" * 32))  # one audit's secret, as in a resume
    run_audit(config, local, progress=False)
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)  # a local Ray instance
    try:
        summary = run_audit(config, remote, executor="ray", progress=False)
    finally:
        ray.shutdown()
    assert summary["ran"] == 4

    def numbers(store: ResultStore) -> dict:  # every score and count; not the seconds each took
        out = {}
        for c in store.cells():
            stolen = {k: v for k, v in c["result"]["stolen"].items() if k != "train_seconds"}
            out[c["key"]] = (stolen, c["result"]["queries"], c["result"]["victim"], c["result"]["floor"],
                             c["result"].get("honest"))
        return out

    assert numbers(remote) == numbers(local)

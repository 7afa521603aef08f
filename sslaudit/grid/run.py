"""Run an audit grid: each missing cell in a worker process (or a Ray task), stored the moment it is done.

A cell's key is the SHA-256 of its settings, its victim's weights (content hash) and the versions that
decide its numbers, so a rerun skips exactly the finished cells and a changed victim or release reruns
them. Every cell runs in a fresh process with the same number of torch threads, whether the executor is
local processes or Ray, so both give the same numbers for the same seeds on the same machine.

>>> summary = run_audit(load_config("audit.toml"), ResultStore("audit.sqlite"))  # doctest: +SKIP
>>> summary["ran"], summary["skipped"]  # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict
import json
import multiprocessing
import os
import secrets
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Callable, Iterator

import torch
from tqdm.auto import tqdm

import sslaudit
from sslaudit.grid.config import AuditConfig, Cell
from sslaudit.grid.store import ResultStore
from sslaudit.runinfo import run_info

Done = tuple[str, dict, float]  # key, result, wall seconds


def cell_key(cell: Cell, victim_digest: str) -> str:
    """The content address of ``cell``: its settings, the victim's weights and the deciding versions."""
    settings = {k: v for k, v in cell.to_dict().items() if k != "ownership" or v}  # stores made before it keep keys
    payload = {"cell": settings, "victim": victim_digest, "sslaudit": sslaudit.__version__,
               "torch": ".".join(torch.__version__.split(".")[:2])}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def run_cell(cell: dict, threads: int, secret: str, progress: bool = False) -> tuple[dict, float]:
    """Steal once as ``cell`` says (in this process, with ``threads`` torch threads, the defences keyed by the
    audit's ``secret`` in hex): the result dict and the seconds it took."""
    from sslaudit import registry
    from sslaudit.audit import steal_curve
    from sslaudit.secret import DeploymentSecret
    from sslaudit.tasks import attack_pool, downstream_task
    from sslaudit.zoo import resolve_victim

    torch.set_num_threads(threads)
    began = time.perf_counter()
    c = Cell(**cell)
    victim = resolve_victim(c.victim, progress=False)
    attack = registry.build("attack", c.attack)
    if c.epochs:
        attack = attack.with_epochs(c.epochs)
    defenses = [registry.build("defense", spec) for spec in c.defenses]
    encoders: list = []
    (result,) = steal_curve(victim, attack, attack_pool(c.pool, size=victim.encoder.spec.size), [c.budget],
                            downstream_task(c.eval_train, c.eval_test), defenses=defenses,
                            price_per_1k=c.price_per_1k, seed=c.seed, progress=progress, honest=bool(defenses),
                            secret=DeploymentSecret.from_hex(secret), encoders=encoders)
    out = result.to_dict()
    if c.ownership:
        out["ownership"] = [asdict(v) for v in ownership_verdicts(c.victim, victim, encoders[0])]
    return out, time.perf_counter() - began


def ownership_verdicts(victim_spec: str, victim: Any, stolen: Any) -> list:
    """Dataset inference on the stolen encoder, and the watermark test when the victim has a watermark head
    saved beside it (``VICTIM.watermark.safetensors``, as ``sslaudit verify`` finds it)."""
    from sslaudit.ownership.dataset_inference import dataset_inference, default_splits
    from sslaudit.ownership.watermark import saved_watermark
    from sslaudit.ownership.watermark_verify import watermark_verdicts

    fit, evaluate, public = default_splits()
    verdicts = [dataset_inference(stolen, fit, evaluate, public)]
    head = saved_watermark(victim_spec, victim)
    if head is not None and head.dims[0] == stolen.dim:
        verdicts += watermark_verdicts(stolen, head, public)
    return verdicts


def victim_digests(config: AuditConfig) -> dict[str, str]:
    """Each victim's content hash (a victim named by a recipe is trained first if it is not cached)."""
    from sslaudit.score_cache import encoder_digest
    from sslaudit.zoo import resolve_victim

    return {name: encoder_digest(resolve_victim(name, progress=True).encoder) for name in config.victims}


def _local(todo: list[tuple[str, Cell]], workers: int, threads: int, secret: str, progress: bool) -> Iterator[Done]:
    context = multiprocessing.get_context("spawn")  # no fork of a process that has started torch's threads
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = {pool.submit(run_cell, cell.to_dict(), threads, secret, progress and workers == 1): key
                   for key, cell in todo}
        for future in as_completed(futures):
            result, seconds = future.result()
            yield futures[future], result, seconds


def _ray(todo: list[tuple[str, Cell]], threads: int, secret: str, address: str | None) -> Iterator[Done]:
    import ray

    if not ray.is_initialized():
        ray.init(address=address or os.environ.get("RAY_ADDRESS"), log_to_driver=False)
    gpus = 1 if torch.cuda.is_available() else 0
    task = ray.remote(num_cpus=threads, num_gpus=gpus, max_retries=2)(run_cell)
    pending = {task.remote(cell.to_dict(), threads, secret): key for key, cell in todo}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        result, seconds = ray.get(ready[0])
        yield pending.pop(ready[0]), result, seconds


def run_audit(config: AuditConfig, store: ResultStore, *, executor: str = "local", workers: int | None = None,
              ray_address: str | None = None, progress: bool = True,
              on_done: Callable[[str, dict], None] | None = None) -> dict:
    """Run every cell of ``config`` not yet in ``store``; a summary (cells, ran, skipped, wall seconds, keys)."""
    began = time.perf_counter()
    digests = victim_digests(config)
    cells = [(cell_key(c, digests[c.victim]), c) for c in config.cells()]
    by_key, done = dict(cells), store.done_keys()
    todo = [(key, cell) for key, cell in cells if key not in done]
    workers = workers or config.workers
    threads = max(1, (os.cpu_count() or 1) // workers)
    machine = {k: v for k, v in run_info(seed=0, wall_seconds=0).items() if k not in ("seed", "wall_seconds")}
    store.set_meta(name=config.name, price_per_1k=config.price_per_1k, config=config.raw, machine=machine,
                   created=machine["finished"])
    # The defences' secret: drawn once per store and kept in it (never in a report), so every executor and
    # every resume serves each cell the same noise, and the attack code never sees it.
    secret = str(store.meta_once("secret", secrets.token_hex(32)))
    runs = (_ray(todo, threads, secret, ray_address) if executor == "ray"
            else _local(todo, workers, threads, secret, progress))
    with tqdm(total=len(cells), initial=len(cells) - len(todo), desc=f"audit {config.name}", unit="cell",
              disable=not progress, position=0) as bar:
        for key, result, seconds in runs:
            store.put(key, by_key[key].to_dict(), result, wall_seconds=round(seconds, 1))
            if on_done:
                on_done(key, result)
            bar.update()
    return {"cells": len(cells), "ran": len(todo), "skipped": len(cells) - len(todo),
            "wall_seconds": round(time.perf_counter() - began, 1), "keys": {k for k, _ in cells}}

"""Benchmark: the shipped victim served over HTTP (Open Inference Protocol v2) vs called in process.

A real `sslaudit serve` process on loopback (uvicorn, one worker) answers one client sending batches
back to back: JSON tensors, binary tensors, and (for scale) the in-process ``SimulatedAPI.query`` in
this process. Per batch size: images per second over the whole run and p50 / p99 latency per request,
each a mean over ``--repeats`` runs with a 95 % interval. Every request carries fresh random images
and is metered by the server like any other.

    python bench/serve.py                       # batch sizes 1 16 64 256, 3 repeats
    python bench/serve.py --batches 64 --seconds 2
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch
from common import RESULTS, append_row, load_rows, write_markdown

from sslaudit.api import SimulatedAPI
from sslaudit.report.table import format_table
from sslaudit.serving.accounts import hash_key
from sslaudit.serving.protocol import HEADER_LENGTH, decode_infer_response, encode_infer_request
from sslaudit.stats import mean_interval
from sslaudit.zoo import resolve_victim

JSONL = RESULTS / "serve.jsonl"
KEY = "sk-bench"
MODES = ("in-process", "http-json", "http-binary")


def start_server(folder: Path, port: int) -> subprocess.Popen:
    keys = folder / "keys.toml"
    keys.write_text(f'[accounts.bench]\nkey_sha256 = "{hash_key(KEY)}"\n')
    proc = subprocess.Popen([sys.executable, "-m", "sslaudit.cli", "serve", "--keys", str(keys), "--port", str(port),
                             "--max-batch", "1024"], stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the server did not start")


def one_request(mode: str, images: torch.Tensor, http: httpx.Client | None, url: str,
                api: SimulatedAPI) -> torch.Tensor:
    if mode == "in-process":
        return api.query(images, "bench")
    body, length = encode_infer_request({"images": images}, binary=mode == "http-binary")
    headers = {"Authorization": f"Bearer {KEY}"} | ({HEADER_LENGTH: str(length)} if length else {})
    response = http.post(url, content=body, headers=headers)
    response.raise_for_status()
    header = response.headers.get(HEADER_LENGTH)
    return decode_infer_response(response.content, int(header) if header else None)["features"]


def measure(mode: str, batch: int, seconds: float, http: httpx.Client | None, url: str, api: SimulatedAPI) -> dict:
    gen = torch.Generator().manual_seed(batch)
    for _ in range(3):  # warm-up
        one_request(mode, torch.rand(batch, 1, 28, 28, generator=gen), http, url, api)
    latencies, began = [], time.perf_counter()
    while time.perf_counter() - began < seconds or len(latencies) < 20:
        images = torch.rand(batch, 1, 28, 28, generator=gen)
        t = time.perf_counter()
        out = one_request(mode, images, http, url, api)
        latencies.append(time.perf_counter() - t)
        assert out.shape[0] == batch
    wall = time.perf_counter() - began
    latencies.sort()
    return {"images_per_s": batch * len(latencies) / wall, "p50_ms": 1000 * latencies[len(latencies) // 2],
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
            "requests": len(latencies)}


def run(batches: list[int], repeats: int, seconds: float, port: int) -> None:
    victim = resolve_victim("simclr", progress=False)
    api = SimulatedAPI(victim.encoder, device=torch.device("cpu"))
    JSONL.unlink(missing_ok=True)  # a short run: measured afresh each time, on one machine
    url = f"http://127.0.0.1:{port}/v2/models/simclr/infer"

    def sweep(modes: tuple[str, ...], http: httpx.Client | None) -> None:
        for repeat in range(repeats):
            for batch in batches:
                for mode in modes:
                    row = {"mode": mode, "batch": batch, "repeat": repeat,
                           **measure(mode, batch, seconds, http, url, api)}
                    append_row(JSONL, row)
                    print(row, flush=True)

    sweep(MODES[:1], None)  # in process first, with no server alive: its idle threads would compete
    with tempfile.TemporaryDirectory() as folder, httpx.Client(timeout=120) as http:
        server = start_server(Path(folder), port)
        try:
            sweep(MODES[1:], http)
        finally:
            server.terminate()
    render()


def render() -> None:
    rows = load_rows(JSONL)
    table = []
    for batch in sorted({r["batch"] for r in rows}):
        for mode in MODES:
            group = [r for r in rows if r["batch"] == batch and r["mode"] == mode]
            if group:
                cells = [mean_interval([g[k] for g in group]).format(d) for k, d in
                         (("images_per_s", 0), ("p50_ms", 1), ("p99_ms", 1))]
                table.append([str(batch), mode, *cells, str(len(group))])
    notes = ("The shipped SimCLR victim (tiny convnet, 1x28x28 in, 256-d out) served by `sslaudit serve` (FastAPI + "
             "uvicorn, one process) on 127.0.0.1 to one client (httpx, keep-alive) sending batches back to back; "
             "`in-process` calls `SimulatedAPI.query` in the client's process, measured before the server starts. Each cell: mean over the repeats "
             "with a 95 % interval; latency per request, client side. Server and client share the CPU.")
    write_markdown(RESULTS / "serve.md", "Serving over HTTP vs in process",
                   format_table(["batch", "mode", "images/s", "p50 ms", "p99 ms", "repeats"], table,
                                markdown=True), notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64, 256])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    run(args.batches, args.repeats, args.seconds, args.port)


if __name__ == "__main__":
    main()

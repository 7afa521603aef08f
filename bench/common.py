"""Shared by the benchmarks: a description of the machine and resumable result files.

Each benchmark appends one JSON line per finished row, so an interrupted run
keeps what it measured and a re-run only does the missing rows.

>>> rows = load_rows(Path("bench/results/steal.jsonl"))  # doctest: +SKIP
"""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch

from sslaudit.device import autocast_dtype, pick_device
from sslaudit.evaluate import evaluate_features
from sslaudit.tasks import DownstreamTask

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """One line: CPU or GPU, cores, torch version and the precision training uses."""
    device = pick_device()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    precision = autocast_dtype(device)
    prec = str(precision).replace("torch.", "") if precision else "float32"
    return (f"{name}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
            f"autocast {prec}")


def raw_pixel_scores(task: DownstreamTask) -> dict[str, float]:
    """The probes on the images' pixels in [0, 1] (the baseline every victim should beat)."""
    flat = lambda data: data.images.flatten(1).float() / 255  # noqa: E731
    return evaluate_features(flat(task.train), flat(task.test), task)


def load_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_row(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fh.write(json.dumps(row) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def write_markdown(path: Path, title: str, table: str, notes: str = "", machine_line: str | None = None) -> None:
    """Write ``table`` under a heading with the machine it ran on (``machine_line`` where the rows say it
    themselves, e.g. rows gathered on several machines; default: this one)."""
    text = f"## {title}\n\nMachine: {machine_line or machine()}\n\n{table}\n"
    if notes:
        text += f"\n{notes}\n"
    path.write_text(text)

"""What every result records about how it was produced: seed, versions, device, commit, time.

>>> info = run_info(seed=0, wall_seconds=12.3)  # doctest: +SKIP
"""
from __future__ import annotations

import datetime as dt
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import numpy
import torch

import sslaudit
from sslaudit.device import autocast_dtype, pick_device


def git_commit() -> str | None:
    """The commit of the sslaudit checkout, or None outside a git checkout."""
    root = Path(sslaudit.__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _version(package: str) -> str | None:
    """An installed package's version without importing it (importing scikit-learn takes over a second)."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def run_info(*, seed: int, wall_seconds: float, device: torch.device | None = None) -> dict:
    device = device or pick_device()
    precision = autocast_dtype(device)
    return {
        "seed": seed,
        "wall_seconds": round(wall_seconds, 1),
        "device": str(device),
        "precision": str(precision).replace("torch.", "") if precision else "float32",
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "versions": {"sslaudit": sslaudit.__version__, "torch": torch.__version__, "numpy": numpy.__version__,
                     "scikit-learn": _version("scikit-learn"), "python": platform.python_version()},
        "commit": git_commit(),
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }

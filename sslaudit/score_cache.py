"""An on-disk cache of probe scores, so an encoder is evaluated on a task once, never into its card.

A victim's scores and the random-init floor's depend only on the encoder, the task and the protocol, so
they are kept as small JSON files under ``cache_dir() / "scores"`` (``$SSLAUDIT_CACHE`` or
``~/.cache/sslaudit``), keyed by:

- the encoder's **content hash** (:func:`encoder_digest`): SHA-256 over its architecture name, input
  spec, feature size and every state-dict tensor (name, dtype, shape, raw bytes) in name order. It
  names the weights themselves, wherever they came from (a recipe, a ``.safetensors`` file, timm, a
  random init with some seed), so retrained or edited weights never reuse old scores;
- ``task.key``, which names the split and the probe version (``tasks.PROBE_VERSION``);
- the metric set (:data:`METRIC_SET`: the metrics and the few-label draws and folds);
- the embedding precision: evaluation always embeds in float32 (bf16 autocast would give slightly
  different features on the processors that have it), so the same weights score the same everywhere.

Scores shipped with the package (``sslaudit/weights/scores/``: the shipped victims and the random-init
floors of the default stolen architecture for seeds 0-2, written by ``bench/ship_scores.py``) are read
when the user's cache has none, so a fresh install evaluates only what it stole.

Files are written atomically (a temporary file, then ``os.replace``); a file that cannot be read, or
that holds another key or incomplete scores, is ignored with a warning and rewritten.

>>> scores = cached_scores(victim.encoder, downstream_task())  # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from sslaudit.evaluate import FEW_LABEL_DRAWS, FEW_LABEL_FOLDS, evaluate_encoder
from sslaudit.tasks import DownstreamTask
from sslaudit.zoo import cache_dir

SCORE_NAMES = ("linear_1pct", "linear_1pct_spread", "linear_full", "knn")  # what evaluate_encoder returns
METRIC_SET = f"{'+'.join(SCORE_NAMES)}:draws{FEW_LABEL_DRAWS}:folds{FEW_LABEL_FOLDS}"
EVAL_PRECISION = "float32"  # evaluation never autocasts (sslaudit.evaluate.evaluate_encoder)
SHIPPED = Path(__file__).resolve().parent / "weights" / "scores"


def encoder_digest(encoder: nn.Module) -> str:
    """SHA-256 (hex) of ``encoder``'s architecture, input spec, feature size and state-dict tensors."""
    spec = getattr(encoder, "spec", None)
    head = {"arch": getattr(encoder, "arch", type(encoder).__qualname__), "dim": getattr(encoder, "dim", None),
            "spec": spec.to_dict() if hasattr(spec, "to_dict") else repr(spec)}
    digest = hashlib.sha256(json.dumps(head, sort_keys=True).encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        meta = f"{name}|{flat.dtype}|{tuple(tensor.shape)}|{flat.numel()}".encode()
        digest.update(len(meta).to_bytes(8, "big") + meta)
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def score_key(encoder: nn.Module, task: DownstreamTask) -> dict[str, str]:
    """What the cached scores of ``encoder`` on ``task`` depend on."""
    return {"encoder": encoder_digest(encoder), "task": task.key, "metrics": METRIC_SET,
            "precision": EVAL_PRECISION}


def score_path(key: dict[str, str], root: Path | None = None) -> Path:
    """Where the scores of ``key`` live under ``root`` (default: the user's cache)."""
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return (root or cache_dir() / "scores") / f"{name}.json"


def _read(path: Path, key: dict[str, str]) -> dict[str, float] | None:
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text())
        scores = stored["scores"]
        ok = stored["key"] == key and all(isinstance(scores[m], (int, float)) for m in SCORE_NAMES)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        ok, why = False, f"{type(err).__name__}: {err}"
    else:
        why = "another key or incomplete scores"
    if not ok:
        warnings.warn(f"ignoring the unreadable score cache file {path} ({why}); evaluating again", stacklevel=3)
        return None
    return {m: float(scores[m]) for m in SCORE_NAMES}


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cached_scores(encoder: nn.Module, task: DownstreamTask, *, progress: bool = False,
                  desc: str = "evaluate") -> dict[str, float]:
    """``evaluate_encoder(encoder, task)``, read from the cache when this exact key was evaluated before
    (``progress``: bars while it evaluates)."""
    key = score_key(encoder, task)
    path = score_path(key)
    scores = _read(path, key)
    if scores is None and score_path(key, SHIPPED).is_file():
        scores = _read(score_path(key, SHIPPED), key)
    if scores is None:
        found = evaluate_encoder(encoder, task, progress=progress, desc=desc)
        scores = {m: float(found[m]) for m in SCORE_NAMES}
        if all(math.isfinite(v) for v in scores.values()):
            try:
                write_atomically(path, json.dumps({"key": key, "scores": scores}, indent=1, sort_keys=True))
            except OSError as err:  # a read-only cache only costs the re-evaluation next time
                warnings.warn(f"could not write the score cache file {path} ({err})", stacklevel=2)
    return scores

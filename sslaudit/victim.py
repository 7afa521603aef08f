"""A victim: a trained encoder plus its card (provenance), saved as safetensors + JSON.

>>> victim.save("runs/simclr-tiny")  # doctest: +SKIP
>>> Victim.load("runs/simclr-tiny").card["method"]  # doctest: +SKIP
'simclr'
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from sslaudit.data import ImageData
from sslaudit.models import Encoder, InputSpec, build_encoder, count_parameters
from sslaudit.train import History


def config_to_dict(config: Any) -> dict:
    """A (nested) dataclass config as plain JSON-able data."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_key(config: Any) -> str:
    """Short stable hash of a config: trained victims are cached under it."""
    blob = json.dumps(config_to_dict(config), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def make_card(*, method: str, config: Any, data: ImageData, encoder: Encoder, history: History) -> dict:
    """The provenance card of a freshly trained victim (plain JSON data)."""
    card = {
        "method": method,
        "arch": encoder.arch,
        "parameters": count_parameters(encoder),
        "dim": encoder.dim,
        "input": encoder.spec.to_dict(),
        "config": config_to_dict(config),
        "config_key": config_key(config),
        "data": {"name": data.name, "images": len(data)},
        "epochs": len(history.loss),
        "train_seconds": round(sum(history.seconds), 1),
        "history": history.to_dict(),
        "device": str(next(encoder.parameters()).device),
        "platform": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "scores": {},
    }
    return json.loads(json.dumps(card))


@dataclass
class Victim:
    """An encoder with its card. ``encoder`` maps ``[0, 1]`` images to features."""

    encoder: Encoder
    card: dict

    @property
    def name(self) -> str:
        return f"{self.card['method']}-{self.card['arch']}-{self.card.get('config_key', 'custom')}"

    def save(self, path: str | Path) -> Path:
        """Write ``path.safetensors`` and ``path.json``; returns the weights path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        weights = path.with_suffix(".safetensors")
        state = {k: v.contiguous() for k, v in self.encoder.state_dict().items()}
        save_file(state, str(weights), metadata={"method": self.card["method"], "arch": self.card["arch"]})
        path.with_suffix(".json").write_text(json.dumps(self.card, indent=2, sort_keys=True))
        return weights

    @classmethod
    def load(cls, path: str | Path) -> "Victim":
        """Read a victim saved by :meth:`save` (``path`` with or without suffix)."""
        path = Path(path)
        card_path, weights = path.with_suffix(".json"), path.with_suffix(".safetensors")
        if not card_path.is_file() or not weights.is_file():
            raise FileNotFoundError(f"no victim at {path}: expected {card_path.name} and {weights.name}")
        card = json.loads(card_path.read_text())
        encoder = build_encoder(card["arch"], InputSpec.from_dict(card["input"]))
        encoder.load_state_dict(load_file(str(weights)))
        return cls(encoder.eval(), card)

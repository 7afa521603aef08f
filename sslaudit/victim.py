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


class BadCard(ValueError):
    """A victim card or weights file that cannot describe a usable encoder; the message says what to fix."""


CARD_INPUT_EXAMPLE = '{"channels": 3, "size": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}'


def input_from_card(value: Any, source: str | Path) -> InputSpec:
    """The card's ``input`` entry as an :class:`InputSpec`; a :class:`BadCard` says what it must contain."""
    ok = isinstance(value, dict) and all(
        isinstance(value.get(k), int) and not isinstance(value.get(k), bool) and value[k] >= 1
        for k in ("channels", "size"))
    if ok:
        try:
            stats = [tuple(float(v) for v in value.get(k) or ()) for k in ("mean", "std")]
            return InputSpec(value["channels"], value["size"], *stats)
        except (TypeError, ValueError):
            pass
    raise BadCard(f"{source}: 'input' must be an object with positive integer channels and size, and optional "
                  f"mean/std lists of one number per channel, e.g. {CARD_INPUT_EXAMPLE}; got {value!r}")


def load_matching(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str | Path,
                  model: str = "the model", error: type[ValueError] = BadCard) -> None:
    """Load ``state`` into ``module`` strictly; ``error`` names the first tensor whose shape does not match."""
    expected = module.state_dict()
    for key, tensor in state.items():
        if key in expected and tuple(expected[key].shape) != tuple(tensor.shape):
            raise error(f"{source} does not fit {model}: tensor {key!r} has shape {list(tensor.shape)} in the "
                        f"file but {list(expected[key].shape)} in the model")
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    if missing or unexpected:
        raise error(f"{source} does not fit {model}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    module.load_state_dict(state)


@dataclass
class Victim:
    """An encoder with its card. ``encoder`` maps ``[0, 1]`` images to features. ``head``: the projection
    head it was trained with, if kept (saved as ``path.head.safetensors``, its sizes in ``card["head"]``),
    so the API can serve the projector's output (:class:`sslaudit.defenses.projector.ServeProjector`)."""

    encoder: Encoder
    card: dict
    head: torch.nn.Module | None = None

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
        if self.head is not None:
            head_state = {k: v.contiguous() for k, v in self.head.state_dict().items()}
            save_file(head_state, str(path.with_suffix(".head.safetensors")))
        path.with_suffix(".json").write_text(json.dumps(self.card, indent=2, sort_keys=True))
        return weights

    @classmethod
    def load(cls, path: str | Path) -> "Victim":
        """Read a victim saved by :meth:`save` (``path`` with or without suffix)."""
        path = Path(path)
        card_path, weights = path.with_suffix(".json"), path.with_suffix(".safetensors")
        if not card_path.is_file() or not weights.is_file():
            raise FileNotFoundError(f"no victim at {path}: expected {card_path.name} and {weights.name}")
        try:
            card = json.loads(card_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise BadCard(f"{card_path} is not a readable JSON card ({err})") from err
        if not isinstance(card, dict) or not isinstance(card.get("arch"), str):
            raise BadCard(f"{card_path}: a victim card needs 'arch' (see `sslaudit list`) and 'input'")
        spec = input_from_card(card.get("input"), card_path)
        try:
            encoder = build_encoder(card["arch"], spec)
        except KeyError as err:
            raise BadCard(f"{card_path}: {err.args[0]}") from err
        try:
            state = load_file(str(weights))
        except Exception as err:  # noqa: BLE001 - any reader failure means an unusable weights file
            raise BadCard(f"{weights} is not a readable safetensors file ({type(err).__name__})") from err
        load_matching(encoder, state, weights, f"the {card['arch']} of its card")
        return cls(encoder.eval(), card, _load_head(card, path.with_suffix(".head.safetensors")))


def _load_head(card: dict, path: Path) -> torch.nn.Module | None:
    """The projection head saved beside a victim, rebuilt from ``card["head"]["sizes"]``; None if absent."""
    sizes = (card.get("head") or {}).get("sizes") if isinstance(card.get("head"), dict) else None
    if not path.is_file():
        return None
    if not isinstance(sizes, list):
        raise BadCard(f"{path} exists but the card has no 'head': {{'sizes': [in, hidden, out]}} to rebuild it")
    from sslaudit.nets.heads import projection_mlp

    try:
        head = projection_mlp(sizes)
    except (TypeError, ValueError) as err:
        raise BadCard(f"card 'head' sizes {sizes!r}: {err}") from err
    try:
        state = load_file(str(path))
    except Exception as err:  # noqa: BLE001
        raise BadCard(f"{path} is not a readable safetensors file ({type(err).__name__})") from err
    load_matching(head, state, path, f"the projection head {sizes}")
    return head.eval()

"""Bring your own encoder: timm, torchvision, TorchScript or ``module:factory``, with safe weights.

A provider audits the encoder it actually serves. The model is described by a
spec string and its weights file is read with safetensors, or with
``torch.load(weights_only=True)`` for ``.pt``/``.pth`` checkpoints; never
plain pickle. The user states the model's native input (channels, size, mean,
std), or a JSON card beside the weights carries it. The served encoder takes
the audit's images (e.g. 1x28x28 Fashion-MNIST) and resizes and converts
channels itself, the way a provider's preprocessing would.

>>> victim = load_external("timm:resnet18", weights="r18.safetensors",
...                        native=InputSpec(3, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))  # doctest: +SKIP
>>> victim = load_external("model.torchscript.pt", native=InputSpec(1, 28))  # doctest: +SKIP
"""
from __future__ import annotations

import importlib
import json
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sslaudit.models import Encoder, InputSpec
from sslaudit.victim import BadCard, Victim, input_from_card, load_matching

TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript", ".zip")


class BadCheckpoint(ValueError):
    """A weights file that cannot be read safely or does not fit the model."""


class NativeInput(nn.Module):
    """Resize ``[0, 1]`` images to the model's side, match its channels, normalise, run it."""

    def __init__(self, model: nn.Module, native: InputSpec) -> None:
        super().__init__()
        self.model, self.native = model, native
        self.register_buffer("mean", torch.tensor(native.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(native.std).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] != self.native.size or images.shape[-2] != self.native.size:
            images = F.interpolate(images, size=(self.native.size, self.native.size), mode="bilinear",
                                   align_corners=False, antialias=images.shape[-1] > self.native.size)
        if images.shape[1] != self.native.channels:
            images = images.mean(1, keepdim=True).expand(-1, self.native.channels, -1, -1)
        out = self.model((images - self.mean) / self.std)
        return out.flatten(1) if out.ndim > 2 else out


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a ``weights_only`` torch checkpoint (unwrapped, ``module.`` stripped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any reader failure means the same thing to the user
        raise BadCheckpoint(f"{path} is not a safetensors file or a checkpoint torch.load(weights_only=True) accepts "
                            f"({type(err).__name__}: {str(err)[:200]}); export the state_dict with safetensors") from err
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BadCheckpoint(f"{path} holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def build_model(spec: str) -> nn.Module:
    """``timm:NAME``, ``torchvision:NAME`` or ``package.module:factory`` → an un-trained feature model."""
    kind, _, name = spec.partition(":")
    if kind == "timm":
        timm = _require("timm")
        return timm.create_model(name, pretrained=False, num_classes=0)
    if kind == "torchvision":
        models = _require("torchvision.models")
        model = models.get_model(name, weights=None)
        for head in ("fc", "classifier", "heads", "head"):
            if hasattr(model, head):
                setattr(model, head, nn.Identity())
                break
        return model
    module = importlib.import_module(kind)
    factory = getattr(module, name, None)
    if not callable(factory):
        raise KeyError(f"{kind} has no callable {name!r}; give module:factory returning an nn.Module")
    model = factory()
    if not isinstance(model, nn.Module):
        raise ValueError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _require(module: str) -> object:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"{module.split('.')[0]} is not installed; pip install 'sslaudit[zoo]'") from err


def is_torchscript(path: Path) -> bool:
    return path.suffix in TORCHSCRIPT_SUFFIXES and zipfile.is_zipfile(path) and any(
        n.endswith("constants.pkl") or "/code/" in n for n in zipfile.ZipFile(path).namelist())


def card_input(weights: Path | None) -> InputSpec | None:
    """The ``input`` of a JSON card beside ``weights`` (``w.safetensors`` → ``w.json``), if any."""
    card = weights.with_suffix(".json") if weights else None
    if card is None or not card.is_file():
        return None
    try:
        data = json.loads(card.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadCard(f"{card} is not a readable JSON card ({err})") from err
    if not isinstance(data, dict) or "input" not in data:
        return None
    return input_from_card(data["input"], card)


def load_external(spec: str, *, weights: str | Path | None = None, native: InputSpec | None = None,
                  served: InputSpec | None = None, random_weights: bool = False) -> Victim:
    """A victim from an external model. ``native``: its own input; ``served``: what the API accepts.

    A model built from ``spec`` needs ``weights``; ``random_weights=True`` serves it randomly initialised.
    """
    path = Path(spec)
    weights = Path(weights) if weights else None
    if weights is None and not random_weights and not path.is_file():
        raise ValueError(f"{spec} has no weights: give its weights file with --weights, or pass --random-weights "
                         "to audit it randomly initialised")
    native = native or card_input(weights) or card_input(path if path.suffix else None)
    if native is None:
        raise ValueError(f"state the input of {spec}: --input-size, --channels (and --mean/--std), "
                         "or put a JSON card with an 'input' entry beside the weights")
    if path.is_file():
        if not is_torchscript(path):
            raise BadCheckpoint(f"{path} is not a TorchScript archive; give a weights file with --weights "
                                "and the model as timm:NAME, torchvision:NAME or module:factory")
        model = torch.jit.load(str(path), map_location="cpu")
    else:
        model = build_model(spec)
    if weights is not None:
        load_matching(model, read_weights(weights), weights, spec, error=BadCheckpoint)
    served = served or InputSpec(channels=1, size=28)
    backbone = NativeInput(model.eval(), native)
    with torch.no_grad():
        dim = backbone(torch.rand(2, served.channels, served.size, served.size)).shape[1]
    identity = InputSpec(served.channels, served.size, (0.0,) * served.channels, (1.0,) * served.channels)
    encoder = Encoder(backbone, identity, dim, arch=spec)
    card = {"method": "external", "arch": spec, "source": str(weights or path), "input": identity.to_dict(),
            "native_input": native.to_dict(), "dim": dim, "scores": {},
            "parameters": sum(p.numel() for p in model.parameters())}
    return Victim(encoder, card)

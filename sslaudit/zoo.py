"""The victim cache: find a trained victim by recipe and preset, or train and keep it.

Victims are keyed by the hash of their full config, so changing any setting
trains a new one and a second run reuses the first. The tiny SimCLR victim
ships inside the package (``sslaudit/weights``), so the default audit needs
no training. Training checkpoints every epoch: an interrupted run resumes.

>>> victim = resolve_victim("simclr")  # shipped tiny SimCLR  # doctest: +SKIP
>>> victim = resolve_victim("runs/my-victim.safetensors")  # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

import torch

from sslaudit.distributed import is_main
from sslaudit.external import load_external
from sslaudit.models import InputSpec
from sslaudit.tasks import downstream_task, victim_training_data
from sslaudit.registry import get_victim, names
from sslaudit.victim import BadCard, Victim, config_key

SHIPPED = Path(__file__).resolve().parent / "weights"


def cache_dir() -> Path:
    """``$SSLAUDIT_CACHE`` or ``~/.cache/sslaudit``."""
    return Path(os.environ.get("SSLAUDIT_CACHE", Path.home() / ".cache" / "sslaudit"))


def preset_config(method: str, preset: str = "tiny", epochs: int | None = None) -> object:
    recipe = get_victim(method)
    if preset not in recipe.presets:
        raise KeyError(f"{method} has no preset {preset!r}; choose one of: {', '.join(recipe.presets)}")
    config = recipe.presets[preset]
    if epochs is not None:
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=epochs))
    return config


def shipped_path(method: str, preset: str = "tiny") -> Path:
    """Where the package ships a trained ``method``/``preset`` victim (if it does)."""
    return SHIPPED / f"{method}-{preset}"


def find_victim(method: str, preset: str = "tiny", epochs: int | None = None) -> Victim | None:
    """A stored victim trained with exactly the current config of ``method``/``preset``."""
    key = config_key(preset_config(method, preset, epochs))
    for path in (shipped_path(method, preset), cache_dir() / "victims" / f"{method}-{key}"):
        if path.with_suffix(".safetensors").is_file():
            try:
                victim = Victim.load(path)
            except (BadCard, FileNotFoundError) as err:
                warnings.warn(f"skipping a bad cached victim: {err}", stacklevel=2)
                continue
            if victim.card.get("config_key") == key:
                return victim
    return None


def train_victim(method: str, preset: str = "tiny", *, epochs: int | None = None, progress: bool = True,
                 out: Path | None = None, score: bool = True, config: object | None = None) -> Victim:
    """Train ``method``/``preset`` on the protocol's victim data, score it, store it in the cache (or ``out``).

    ``config`` replaces the preset's settings (a recipe search, ``bench/esvit_recipe.py``); the card still
    names ``preset``, and its ``config_key`` is that of ``config``.

    Under ``torchrun`` every rank trains its share of each batch (:mod:`sslaudit.distributed`); rank 0
    scores and saves the victim and removes the checkpoint.
    """
    if config is not None and epochs is not None:
        raise ValueError("give epochs or config, not both; set the epochs in config.train")
    config = config if config is not None else preset_config(method, preset, epochs)
    key = config_key(config)
    target = out or cache_dir() / "victims" / f"{method}-{key}"
    checkpoint = cache_dir() / "checkpoints" / f"{method}-{key}.pt"
    torch.manual_seed(config.train.seed)  # the initial weights too, not only the data order
    victim = get_victim(method).train(victim_training_data(), config, progress=progress and is_main(),
                                      checkpoint=checkpoint)
    victim.card["preset"] = preset
    if not is_main():  # under torchrun rank 0 scores and saves; the other ranks only trained
        return victim
    if score:
        task = downstream_task()
        from sslaudit.score_cache import cached_scores  # imports cache_dir from here

        victim.card["scores"][task.key] = cached_scores(victim.encoder, task)  # provenance of the new card
    victim.card["saved_to"] = str(victim.save(target))
    checkpoint.unlink(missing_ok=True)
    return victim


def resolve_victim(spec: str, preset: str = "tiny", *, train_if_missing: bool = True, progress: bool = True,
                   weights: str | Path | None = None, native: InputSpec | None = None,
                   random_weights: bool = False) -> Victim:
    """A victim from a recipe name, a saved victim (``.safetensors``/``.json``), or an external model.

    External: ``timm:NAME``, ``torchvision:NAME``, ``module:factory`` (with ``weights``, or
    ``random_weights=True`` for a randomly initialised baseline) or a TorchScript file.
    """
    path = Path(spec)
    if ":" in spec or weights is not None or (path.is_file() and path.suffix not in (".safetensors", ".json")):
        return load_external(spec, weights=weights, native=native, random_weights=random_weights)
    if path.suffix in (".safetensors", ".json") or path.with_suffix(".safetensors").is_file():
        return Victim.load(path)
    if spec not in names("victim"):
        raise KeyError(f"unknown victim {spec!r}: give a recipe ({', '.join(names('victim'))}) or a saved .safetensors")
    victim = find_victim(spec, preset)
    if victim is None:
        if not train_if_missing:
            raise FileNotFoundError(f"no trained {spec} ({preset}) victim; run `sslaudit victims train {spec}`")
        victim = train_victim(spec, preset, progress=progress)
    return victim

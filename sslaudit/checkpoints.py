"""Training checkpoints: written atomically after every epoch by rank 0, resumed by every rank.

A checkpoint holds the model, the optimizer, the data-order generator (and, under ``torchrun``, every
rank's augmentation generator), the history and the next epoch. One that cannot be resumed is moved
aside with a one-line warning, never fatal.

>>> history, next_epoch = resume(path, model, optimizer, (order, aug), device)  # doctest: +SKIP
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path

import torch
from torch import nn

from sslaudit import distributed


def resume(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
           gens: tuple[torch.Generator, torch.Generator], device: torch.device) -> tuple[dict, int]:
    """Load a checkpoint written by :func:`save` into the run; (the history as a dict, next epoch)."""
    state = torch.load(path, map_location=device, weights_only=True)
    history, epoch = dict(state["history"]), int(state["epoch"])
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    order, aug = gens
    rank, ranks = distributed.world()
    _set_state(order, state["generator"], device)
    per_rank = state.get("rank_generators") or []
    if aug is order and per_rank:
        raise ValueError(f"the checkpoint was written by {len(per_rank)} ranks, this run has 1")
    if aug is not order:
        if len(per_rank) != ranks:
            raise ValueError(f"the checkpoint was written by {len(per_rank) or 1} rank(s), this run has {ranks}")
        _set_state(aug, per_rank[rank], device)
    return history, epoch


def _set_state(gen: torch.Generator, state: torch.Tensor, device: torch.device) -> None:
    gen.set_state(state.cpu() if device.type == "cpu" else state)


def set_aside(path: Path, err: BaseException) -> Path:
    """Rename an unusable checkpoint to ``<name>.corrupt-<timestamp>`` and warn in one line."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        target, n = path.with_name(f"{path.name}.corrupt-{stamp}-{n}"), n + 1
    try:
        path.replace(target)
    except FileNotFoundError:  # another process (a DDP rank) moved it first
        pass
    warnings.warn(f"checkpoint {path} could not be resumed ({type(err).__name__}: {' '.join(str(err).split())[:120]}); "
                  f"moved it to {target.name} and started fresh", RuntimeWarning, stacklevel=3)
    return target


def save(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
         gens: tuple[torch.Generator, torch.Generator], history: dict, epoch: int) -> None:
    """Rank 0 writes model, optimizer, generators (every rank's) and history; the others wait for it."""
    order, aug = gens
    rank_states = None
    if aug is not order:  # every rank takes part in the gather; rank 0 writes
        rank_states = [None] * distributed.world()[1]
        torch.distributed.all_gather_object(rank_states, aug.get_state().cpu())
    if distributed.is_main():
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "generator": order.get_state(),
            "history": history,
            "epoch": epoch,
        }
        if rank_states is not None:
            state["rank_generators"] = rank_states
        torch.save(state, tmp)
        tmp.replace(path)  # atomic: an interruption never leaves a half-written checkpoint
    distributed.barrier()

"""The one training loop every victim and attack shares.

Seeded, mixed precision (bf16 autocast on capable CPUs, CUDA when present),
linear warm-up then cosine decay per step, a progress bar, a finite-loss check every
``FINITE_CHECK_EVERY`` steps (no per-step host sync), and a checkpoint
after every epoch so an interrupted run resumes where it stopped.

>>> history = fit(model, step, (images,), TrainConfig(epochs=10, batch_size=256, lr=0.1))  # doctest: +SKIP
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from sslaudit import checkpoints, distributed
from sslaudit.device import autocast, fast_layout, pick_device

# Finiteness of the loss is checked every this many steps and at each epoch's end: checking a GPU loss
# every step would make the host wait for the device each step.
FINITE_CHECK_EVERY = 50
Step = Callable[[tuple[torch.Tensor, ...], torch.Generator], torch.Tensor]


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Optimisation settings; ``lr`` is the peak learning rate."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 1e-4
    optimizer: str = "sgd"  # sgd (momentum 0.9, nesterov) or adamw
    warmup_epochs: float = 1.0
    final_lr_fraction: float = 0.0
    drop_last: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be positive")
        if self.lr <= 0:
            raise ValueError("lr must be positive")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError("optimizer must be 'sgd' or 'adamw'")


@dataclass
class History:
    """Per-epoch mean loss and wall time of one run."""

    loss: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    samples_per_second: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def steps_per_epoch(cfg: TrainConfig, n: int) -> int:
    """Optimisation steps one epoch over ``n`` samples takes (a partial last batch is dropped with ``drop_last``)."""
    return n // cfg.batch_size if cfg.drop_last else math.ceil(n / cfg.batch_size)


def make_optimizer(params: Sequence[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD or AdamW; no weight decay on biases and norm parameters (1-d tensors)."""
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)


def lr_at(step: int, total: int, warmup: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``cfg.lr``, then cosine decay to ``final_lr_fraction * lr``."""
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    floor = cfg.final_lr_fraction
    return cfg.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def fit(
    model: nn.Module,
    step: Step,
    tensors: Sequence[torch.Tensor],
    cfg: TrainConfig,
    *,
    device: torch.device | None = None,
    checkpoint: Path | None = None,
    progress: bool = True,
    mixed_precision: bool = True,
    desc: str = "train",
) -> History:
    """Train ``model`` (all its parameters) by minimising ``step(batch, generator)``.

    ``tensors`` are aligned along dim 0 and moved to the device once; each step
    gets one shuffled batch of them. ``step`` does its own augmentation with
    the generator it is given. With ``checkpoint`` set, state is saved after
    every epoch and a run that finds the file resumes from it.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every rank takes its slice of each global batch of
    ``cfg.batch_size``, BatchNorm uses the global batch, gradients are averaged over ranks, each rank
    draws its augmentations from its own generator, and rank 0 writes the checkpoint that all resume
    from (:mod:`sslaudit.distributed`; a loss that compares samples gathers them with ``gather``).
    """
    device = device or pick_device()
    rank, ranks = distributed.setup()
    local = distributed.check_batch(cfg.batch_size)
    fast_layout(model.to(device))
    distributed.sync_batchnorm(model, device)
    tensors = tuple(t.to(device) for t in tensors)
    n = len(tensors[0])
    batches = steps_per_epoch(cfg, n)
    if batches == 0:
        raise ValueError(f"{n} samples give no full batch of {cfg.batch_size}; lower batch_size")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, cfg)
    total, warmup = cfg.epochs * batches, int(cfg.warmup_epochs * batches)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)  # the order: the same on every rank
    # One process draws augmentations from the order's generator (as it always has); ranks draw their own.
    aug = gen if ranks == 1 else torch.Generator(device=device)
    if aug is not gen:
        aug.manual_seed(_rank_seed(cfg.seed, rank))
    history, start = History(), 0
    if checkpoint is not None and Path(checkpoint).is_file():
        initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
        try:
            saved, start = checkpoints.resume(Path(checkpoint), model, optimizer, (gen, aug), device)
            history = History(**saved)
        except Exception as err:  # noqa: BLE001 - a checkpoint that cannot be resumed is set aside, never fatal
            if distributed.is_main():
                checkpoints.set_aside(Path(checkpoint), err)
            model.load_state_dict(initial)
            optimizer, history, start = make_optimizer(params, cfg), History(), 0
            gen.manual_seed(cfg.seed)
            if aug is not gen:
                aug.manual_seed(_rank_seed(cfg.seed, rank))
    model.train()
    # counted in steps, not epochs: one epoch of a slow recipe takes minutes on a laptop CPU
    bar = tqdm(total=(cfg.epochs - start) * batches, desc=desc, unit="step", disable=not progress, leave=False)
    seen, began = 0, time.perf_counter()
    for epoch in range(start, cfg.epochs):
        epoch_began, losses = time.perf_counter(), []
        order = torch.randperm(n, generator=gen, device=device)
        for b in range(batches):
            index = order[b * cfg.batch_size : (b + 1) * cfg.batch_size][rank * local : (rank + 1) * local]
            for group in optimizer.param_groups:
                group["lr"] = lr_at(epoch * batches + b, total, warmup, cfg)
            with autocast(device, enabled=mixed_precision):
                loss = step(tuple(t[index] for t in tensors), aug)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            distributed.average_gradients(params)
            optimizer.step()
            losses.append(loss.detach())
            seen += len(index) * ranks
            bar.update()
            if (b + 1) % FINITE_CHECK_EVERY == 0:  # a host sync: every N steps, not every step
                _check_finite(losses[-FINITE_CHECK_EVERY:], epoch)
        _check_finite(losses, epoch)
        history.loss.append(distributed.mean_over_ranks(float(torch.stack(losses).float().mean())))
        history.seconds.append(time.perf_counter() - epoch_began)
        bar.set_postfix(epoch=f"{epoch + 1}/{cfg.epochs}", loss=f"{history.loss[-1]:.4f}")
        if checkpoint is not None:
            checkpoints.save(checkpoint, model, optimizer, (gen, aug), history.to_dict(), epoch + 1)
    bar.close()
    history.samples_per_second = seen / max(1e-9, time.perf_counter() - began)
    model.eval()
    return history


def _rank_seed(seed: int, rank: int) -> int:
    """The seed of one rank's augmentation generator (distinct per rank, fixed by the run's seed)."""
    return seed + 7919 * (rank + 1)


def _check_finite(losses: list[torch.Tensor], epoch: int) -> None:
    """Raise if any of ``losses`` is not finite (one host sync for all of them)."""
    stacked = torch.stack(losses)
    if not bool(torch.isfinite(stacked).all()):
        bad = float(stacked[~torch.isfinite(stacked)][0])
        raise FloatingPointError(f"loss became {bad} at epoch {epoch}; lower the learning rate")

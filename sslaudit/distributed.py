"""Data-parallel training under ``torchrun``: the pieces :func:`sslaudit.train.fit` uses when ranks > 1.

One process per device; ``torchrun`` sets ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``, and :func:`setup`
joins the process group (NCCL on CUDA, gloo on CPU). Each rank trains on its slice of every global
batch and the gradients are averaged, so a step equals the single-process step on the whole batch when
the loss sees the whole batch:

- :func:`gather` concatenates a tensor over ranks with the gradient flowing back to each rank's part
  (lightly's ``gather_distributed``; written here, since torch's differentiable collectives are
  deprecated): a contrastive loss computed on gathered embeddings has every rank's negatives, and
  every rank computes the same loss;
- :func:`sync_batchnorm` makes BatchNorm use the global batch's statistics (SimCLR's "global BN"):
  torch's ``SyncBatchNorm`` on CUDA, :class:`GlobalBatchNorm` elsewhere (``SyncBatchNorm`` is GPU-only);
- :func:`average_gradients` all-reduces the gradients once per step, in one flat buffer.

Gradient scale: every rank's backward routes the gradients of all ranks' losses through the collectives,
so after averaging over ranks the update is that of the mean of the per-rank losses: the global loss
when each rank computes it on gathered tensors, the global mean when a loss is a mean over samples.

    torchrun --nproc_per_node 2 -m sslaudit.cli victims train simclr     # gloo on CPU, NCCL on GPUs

>>> world()  # outside torchrun
(0, 1)
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) when no process group is running."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True on rank 0 (and in a plain single process): the one that writes files and prints."""
    return world()[0] == 0


def setup() -> tuple[int, int]:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE`` > 1), once; (rank, world size)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size > 1 and dist.is_available() and not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
    return world()


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


def gather(x: torch.Tensor) -> torch.Tensor:
    """``x`` of every rank concatenated along dim 0 (rank order), differentiable; ``x`` itself on one rank.

    Every rank must pass the same shape (``fit`` gives each rank an equal share of every batch).
    """
    return x if world()[1] == 1 else _Gather.apply(x)


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """The sum of ``x`` over ranks, differentiable (the gradient is all-reduced back)."""
    return x if world()[1] == 1 else _AllReduceSum.apply(x)


class _Gather(torch.autograd.Function):
    """all_gather forward; backward: every rank's gradient of the gathered tensor, summed, its own rows."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(world()[1])]
        dist.all_gather(parts, x.contiguous())
        ctx.rows = len(x)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        rank = world()[0]
        return grad[rank * ctx.rows:(rank + 1) * ctx.rows]


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        out = x.contiguous().clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


def average_gradients(params: list[nn.Parameter]) -> None:
    """All-reduce the gradients of ``params`` to their mean over ranks (one flat buffer, one call)."""
    rank_count = world()[1]
    grads = [p.grad for p in params if p.grad is not None]
    if rank_count == 1 or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= rank_count
    for g, part in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(part.view_as(g))


def mean_over_ranks(value: float) -> float:
    """The mean of a per-rank number over ranks (the epoch's loss in the history)."""
    if world()[1] == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t) / world()[1]


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch (all ranks), on any device.

    Per channel, two all-reduces (differentiable): mean = Σx / N, then the biased variance
    Σ(x − mean)² / N; running statistics are updated with the unbiased variance, as ``nn.BatchNorm``
    does. Equal local batch sizes are assumed (``fit`` splits every global batch evenly).
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-d input, got {x.dim()}-d")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or world()[1] == 1:
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float()
        count = xf.numel() // xf.shape[1] * world()[1]
        mean = all_reduce_sum(xf.sum(dims)) / count  # two passes, as BatchNorm: no E[x²] − mean² cancellation
        centred = xf - mean.view(shape)
        var = all_reduce_sum(centred.pow(2).sum(dims)) / count
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * count / max(1, count - 1), alpha=m)
                self.num_batches_tracked += 1
        y = centred * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm of ``model`` replaced in place by one over the global batch (no-op on one rank).

    In place, so a step function that holds submodules (``encoder``, ``head``) sees the change.
    """
    if world()[1] == 1:
        return model
    for name, child in model.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, GlobalBatchNorm):
            if device.type == "cuda":
                replacement: nn.Module = nn.SyncBatchNorm.convert_sync_batchnorm(child)
            else:
                replacement = GlobalBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                              child.track_running_stats)
                replacement.load_state_dict(child.state_dict())
            setattr(model, name, replacement.to(device))
        else:
            sync_batchnorm(child, device)
    return model


def check_batch(batch_size: int) -> int:
    """The per-rank share of a global batch; one-line error where it does not split evenly."""
    size = world()[1]
    if batch_size % size:
        raise ValueError(f"batch_size {batch_size} does not split over {size} ranks; choose a multiple of {size}")
    return batch_size // size


"""Benchmark: training throughput of the real loops, as img/s and as a fraction of this machine's peak.

Times the second of two epochs of the real training steps (batched augmentation included) through
``sslaudit.train.fit``: the MSE extraction attack at batch 64 without augmentation and at its shipped
settings (batch 32, one augmented view), and the tiny SimCLR victim (two views, batch 512). Each row
runs in fp32, and in bf16 autocast where the CPU has native bf16 (elsewhere bf16 is emulated and
slower, so the toolkit never uses it there). ``--layouts`` compares memory layouts: ``nchw`` is the
loop before channels-last (``sslaudit.device.fast_layout`` switched off), ``channels_last`` the
default. FLOPs per image are counted by ``torch.utils.flop_counter`` on one training step; the peak is
a 2048³ matmul timed on the same threads.

    python bench/throughput.py                      # writes bench/results/throughput.md
    python bench/throughput.py --rows mse64 --layouts nchw channels_last
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Callable

import torch
from common import RESULTS, cpu_model, write_markdown
from torch.utils.flop_counter import FlopCounterMode

import sslaudit.train
from sslaudit.attack import Purchase
from sslaudit.attacks.direct_extraction import DirectExtraction
from sslaudit.device import cpu_has_bf16, fast_layout, pick_device
from sslaudit.features import embed
from sslaudit.models import build_encoder
from sslaudit.report.table import format_table
from sslaudit.tasks import victim_training_data
from sslaudit.victims.simclr import PRESETS, SimCLR, simclr_loss
from sslaudit.zoo import resolve_victim


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of an n³ matmul in ``dtype`` on this machine's torch threads (best of ``repeats``)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn: Callable[[], object]) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def mse_attack(batch: int, augment: bool) -> DirectExtraction:
    attack = DirectExtraction(loss="mse", augment_stolen=augment)
    return dataclasses.replace(attack, train=dataclasses.replace(attack.train, epochs=2, batch_size=batch))


def mse_rate(images: int, mixed: bool, batch: int, augment: bool) -> float:
    victim = resolve_victim("simclr", progress=False)
    x = victim_training_data().images[:images].float().div(255)
    purchase = Purchase(x, embed(victim.encoder, x), "bench")
    result = mse_attack(batch, augment).train_stolen(victim.encoder.spec, victim.encoder.dim, purchase,
                                                     mixed_precision=mixed)
    return images / result.history.seconds[-1]


def simclr_rate(images: int, mixed: bool) -> float:
    data = victim_training_data().subset(slice(0, images))
    config = dataclasses.replace(PRESETS["tiny"], train=dataclasses.replace(PRESETS["tiny"].train, epochs=2))
    victim = SimCLR.train(data, config, progress=False, mixed_precision=mixed)
    return images / victim.card["history"]["seconds"][-1]


def conv_bound_rate(images: int, mixed: bool, batch: int = 64, repeats: int = 30) -> float:
    """The ceiling of the MSE step: img/s if the step were its convolutions alone (forward + backward).

    Each of the stolen convnet's convolutions is timed on its own, at its real input shape and in the
    loop's layout (``sslaudit.train.fast_layout``), and the times are summed: BatchNorm, ReLU, the loss
    and the optimizer are left out. ``images`` and ``mixed`` are unused (fp32, as the rows beside it).
    """
    channels_last = sslaudit.train.fast_layout is fast_layout
    layout = (lambda t: t.contiguous(memory_format=torch.channels_last)) if channels_last else (lambda t: t)
    spec = resolve_victim("simclr", progress=False).encoder.spec
    encoder = sslaudit.train.fast_layout(build_encoder("convnet", spec))
    shapes: list[tuple[torch.nn.Module, torch.Size]] = []
    hooks = [m.register_forward_hook(lambda m, i, o: shapes.append((m, i[0].shape)))
             for m in encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    encoder(layout(torch.rand(batch, spec.channels, spec.size, spec.size)))
    for hook in hooks:
        hook.remove()
    total = 0.0
    for index, (conv, shape) in enumerate(shapes):
        x = layout(torch.rand(shape)).requires_grad_(index > 0)  # the first conv needs no input gradient
        grad = torch.randn_like(conv(x))
        for _ in range(3):
            conv(x).backward(grad)
        began = time.perf_counter()
        for _ in range(repeats):
            conv(x).backward(grad)
        total += (time.perf_counter() - began) / repeats
    return batch / total


def embed_rate(images: int, mixed: bool, folded: bool = True) -> float:
    """img/s of ``embed`` (evaluation's forward passes) on ``images`` FMNIST images; ``folded=False`` is the
    code before conv+BN folding (BatchNorm run separately, batches of 1,024)."""
    import sslaudit.features as features

    encoder = resolve_victim("simclr", progress=False).encoder
    x = victim_training_data().images[:images]
    keep = features.inference_copy
    if not folded:
        features.inference_copy = lambda m: m.eval()
    try:
        features.embed(encoder, x[:256], mixed_precision=mixed)
        began = time.perf_counter()
        features.embed(encoder, x, mixed_precision=mixed, batch_size=None if folded else 1024)
        return images / (time.perf_counter() - began)
    finally:
        features.inference_copy = keep


def flops_per_image(row: str) -> float:
    """FLOPs of one training step (forward + backward; the forward pass alone for the embedding rows)
    divided by the images it trains on."""
    spec = resolve_victim("simclr", progress=False).encoder.spec
    torch.manual_seed(0)
    encoder = build_encoder("convnet", spec)
    batch = 32
    x = torch.rand(batch, spec.channels, spec.size, spec.size)
    with FlopCounterMode(display=False) as counter:
        if row.startswith("embed"):
            with torch.no_grad():
                encoder.eval()(x)
        elif row == "simclr":
            from sslaudit.victims.simclr import ProjectionHead

            cfg = PRESETS["tiny"]
            head = ProjectionHead(encoder.dim, cfg.proj_hidden, cfg.proj_dim)
            simclr_loss(encoder, head, x, cfg, torch.Generator().manual_seed(0)).backward()
        else:
            encoder(x).pow(2).mean().backward()
    return counter.get_total_flops() / batch


ROWS = {
    "mse64": ("MSE steal, batch 64, no augmentation", lambda n, m: mse_rate(n, m, 64, False)),
    "mse-shipped": ("MSE steal, shipped settings (batch 32, one augmented view)", lambda n, m: mse_rate(n, m, 32, True)),
    "simclr": ("SimCLR tiny victim (2 views, batch 512)", simclr_rate),
    "embed-before": ("embedding for evaluation, before (BN separate, batch 1,024)",
                     lambda n, m: embed_rate(4 * n, m, folded=False)),
    "embed": ("embedding for evaluation (conv+BN folded, batch 256)", lambda n, m: embed_rate(4 * n, m)),
    "conv-bound": ("ceiling: the MSE step's convolutions alone, batch 64", conv_bound_rate),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--rows", nargs="+", choices=sorted(ROWS), default=list(ROWS))
    parser.add_argument("--layouts", nargs="+", choices=["nchw", "channels_last"], default=["nchw", "channels_last"])
    args = parser.parse_args()
    peak32 = matmul_peak(torch.float32)
    peak16 = matmul_peak(torch.bfloat16) if cpu_has_bf16() else None
    precisions = [("fp32", False)] + ([("bf16", True)] if peak16 else [])
    rows = []
    for key in args.rows:
        name, fn = ROWS[key]
        flops = flops_per_image({"conv-bound": "mse64"}.get(key, key))
        for layout in ["channels_last"] if key.startswith("embed") else args.layouts:
            sslaudit.train.fast_layout = fast_layout if layout == "channels_last" else (lambda m: m)
            for label, mixed in precisions:
                rate = fn(args.images, mixed)
                peak = peak16 if mixed else peak32
                rows.append([name, layout, label, f"{rate:.0f}", f"{flops / 1e6:.0f}",
                             f"{rate * flops / 1e9:.1f}", f"{rate * flops / 1e9 / peak:.0%}"])
                print(rows[-1], flush=True)
    sslaudit.train.fast_layout = fast_layout
    note = (f"CPU: {cpu_model()}, native bf16: {'yes' if cpu_has_bf16() else 'no (AVX2 only: bf16 rows omitted)'}; "
            f"device {pick_device()}, {torch.get_num_threads()} torch threads. Measured matmul peak: fp32 "
            f"{peak32:.0f} GFLOP/s" + (f", bf16 {peak16:.0f} GFLOP/s" if peak16 else "") + ". Images per second "
            f"in the second of two epochs over {args.images} FMNIST images; MFLOP/img counted on one training "
            "step of the stolen/victim convnet (forward + backward; SimCLR's two views and projection head "
            "included). `nchw`: the loop without channels-last (the code before it); `channels_last`: the "
            "default now.")
    table = format_table(["training step", "layout", "precision", "img/s", "MFLOP/img", "GFLOP/s", "of peak"],
                         rows, markdown=True)
    write_markdown(RESULTS / "throughput.md", "Training throughput of the real loops", table, note)


if __name__ == "__main__":
    torch.manual_seed(0)
    main()

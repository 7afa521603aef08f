"""Benchmark: contrastive losses under CPU bf16 autocast, logits in bf16 (before) vs float32 (now).

For each loss at its recipe's temperature, features come out of a bf16 matmul
inside the autocast region (as a projection head's would). Against a float64
float32 reference (no autocast) of the same inputs it reports the loss's relative error and the
gradient's relative error, with the logits computed under autocast as the code
did before (``loss.__wrapped__``: the same formula without the float32 guard)
and as it does now. Writes ``bench/results/precision.md``.

    python bench/precision.py
"""
from __future__ import annotations

import torch

from common import RESULTS, write_markdown

from sslaudit.attacks.cont_steal import cont_steal_loss
from sslaudit.attacks.rda import rda_loss
from sslaudit.attacks.ssl_small import moco_loss
from sslaudit.attacks.stolen_encoder import stolen_encoder_loss
from sslaudit.losses import cross_info_nce_loss, nt_xent_loss
from sslaudit.report.table import format_table

B, D, IN = 256, 128, 256
CASES = {  # name: (loss of (stolen, target), what uses it)
    "NT-Xent τ 0.5": (lambda f, s, t: f(s, t, 0.5), nt_xent_loss, "SimCLR victim"),
    "InfoNCE τ 0.1": (lambda f, s, t: f(s, t, 0.1), nt_xent_loss, "infonce attack"),
    "cross InfoNCE τ 0.2": (lambda f, s, t: f(s, t, 0.2), cross_info_nce_loss, "SplitMask victim"),
    "MoCo τ 0.1 (queue 4096)": (lambda f, s, t: f(s, t, QUEUE, 0.1), moco_loss, "ssl-small"),
    "RDA τ 0.07": (lambda f, s, t: f(s, t, 0.07), rda_loss, "rda attack"),
    "Cont-Steal τ 0.07": (lambda f, s, t: f(t, s, 0.07), cont_steal_loss, "contsteal attack"),
    "StolenEncoder λ 20": (lambda f, s, t: f(s, [s], t, 20.0), stolen_encoder_loss, "stolenencoder attack"),
}
gen = torch.Generator().manual_seed(0)
QUEUE = torch.nn.functional.normalize(torch.randn(4096, D, generator=gen), dim=1)


def errors(call, fn, raw, x: torch.Tensor, w: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """(relative loss error, relative gradient error) of ``fn`` under bf16 autocast vs ``raw`` in float32."""
    w64 = w.clone().requires_grad_(True)
    ref = call(raw, x @ w64, target)  # no autocast: float32 throughout
    ref.backward()
    wb = w.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = call(fn, x @ wb, target)
    got.backward()
    return (abs(got.item() - ref.item()) / abs(ref.item()),
            float((wb.grad.double() - w64.grad).norm() / w64.grad.norm()))


def main() -> None:
    x = torch.randn(B, IN, generator=gen)
    w = torch.randn(IN, D, generator=gen) / IN ** 0.5
    target = x @ w + 0.3 * torch.randn(B, D, generator=gen)  # answers close to the stolen features
    rows = []
    for name, (call, fn, user) in CASES.items():
        before = errors(call, fn.__wrapped__, fn.__wrapped__, x, w, target)  # logits under autocast: bf16
        now = errors(call, fn, fn.__wrapped__, x, w, target)
        rows.append([name, user, f"{before[0]:.1e}", f"{now[0]:.1e}", f"{before[1]:.1e}", f"{now[1]:.1e}"])
    table = format_table(["loss", "used by", "loss rel. err, bf16 logits", "loss rel. err, float32 logits",
                          "grad rel. err, bf16 logits", "grad rel. err, float32 logits"], rows, markdown=True)
    notes = (f"Batch {B}, {D}-d features from a bf16 matmul of {IN}-d inputs inside `torch.autocast('cpu', "
             "bfloat16)`; errors against the same formula in float32 without autocast. 'bf16 logits' is each loss's formula run under autocast "
             "without the float32 guard (the code before this change for NT-Xent, InfoNCE, cross InfoNCE, "
             "MoCo and RDA; Cont-Steal and StolenEncoder already had it); 'float32 logits' is the code now.")
    write_markdown(RESULTS / "precision.md", "Contrastive losses under bf16 autocast", table, notes)
    print(table)


if __name__ == "__main__":
    main()

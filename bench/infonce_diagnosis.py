"""Why does InfoNCE steal less than MSE from the tiny SimCLR victim? A model-free check.

Dziedzic et al.'s InfoNCE treats the stolen and victim embeddings of a batch as
2B views and asks each to pick its partner. Its optimum is a perfect copy only
if the victim's answers are already spread out on the sphere. This script
measures how concentrated the answers are, then starts free embeddings S *at*
the victim's answers V and lets gradient descent minimise InfoNCE(S, V) over
fixed batches: if the loss keeps falling while S drifts away from V, a perfect
copy is not what the loss asks for. It repeats this at another temperature,
with both sides standardised by the answers' statistics
(``DirectExtraction(standardize=True)``), and for MSE as a control.

    python bench/infonce_diagnosis.py   # writes bench/results/infonce_diagnosis.md
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from common import RESULTS, write_markdown

from sslaudit.attacks.direct_extraction import answer_statistics, info_nce_loss, mse_loss
from sslaudit.attack import choose_queries
from sslaudit.features import embed
from sslaudit.tasks import attack_pool
from sslaudit.report.table import format_table
from sslaudit.zoo import resolve_victim


def mean_pairwise_cosine(x: torch.Tensor) -> float:
    n = F.normalize(x, dim=1)
    cos = n @ n.T
    return float((cos.sum() - cos.diagonal().sum()) / (len(x) * (len(x) - 1)))


def drift(v: torch.Tensor, loss_fn, steps: int = 300, batch: int = 256, lr: float = 0.05) -> tuple[float, float, float]:
    """Minimise loss_fn(S_b, V_b) over free S starting at V; (loss at S=V, final loss, mean cos(S, V))."""
    s = v.clone().requires_grad_(True)
    opt = torch.optim.Adam([s], lr=lr)
    batches = torch.arange(len(v) - len(v) % batch).view(-1, batch)
    start = float(sum(loss_fn(v[b], v[b]) for b in batches) / len(batches))
    for i in range(steps):
        b = batches[i % len(batches)]
        opt.zero_grad()
        loss_fn(s[b], v[b]).backward()
        opt.step()
    with torch.no_grad():
        final = float(sum(loss_fn(s[b], v[b]) for b in batches) / len(batches))
        return start, final, float(F.cosine_similarity(s, v, dim=1).mean())


def main() -> None:
    victim = resolve_victim("simclr")
    v = embed(victim.encoder, choose_queries(attack_pool("fashion-mnist"), 5000, seed=0)).float()
    mean, std = answer_statistics(v)
    torch.manual_seed(0)
    geometry = (f"Victim answers on the 5,000 FMNIST pool queries: mean pairwise cosine "
                f"{mean_pairwise_cosine(v):.2f} (centred: {mean_pairwise_cosine(v - mean):.3f}); the mean answer "
                f"carries {float(mean.norm() / v.norm(dim=1).mean()):.0%} of the average answer's norm; "
                f"{float((v == 0).float().mean()):.1%} of the entries are exactly 0 (post-ReLU).")
    cases = {
        "InfoNCE τ=0.1 (paper)": lambda s, t: info_nce_loss(s, t, 0.1),
        "InfoNCE τ=0.5": lambda s, t: info_nce_loss(s, t, 0.5),
        "InfoNCE τ=0.1, standardised": lambda s, t: info_nce_loss((s - mean) / std, (t - mean) / std, 0.1),
        "MSE (control)": mse_loss,
    }
    rows = []
    for name, fn in cases.items():
        start, final, cos = drift(v, fn)
        rows.append([name, f"{start:.3f}", f"{final:.3f}", f"{cos:.3f}"])
        print(rows[-1], flush=True)
    table = format_table(["loss", "loss at perfect copy", "loss after 300 free steps", "cos(S, V) after"], rows,
                         markdown=True)
    write_markdown(RESULTS / "infonce_diagnosis.md", "InfoNCE diagnosis: is a perfect copy the optimum?", table,
                   geometry)


if __name__ == "__main__":
    main()

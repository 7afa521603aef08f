"""Benchmark: query-pattern detectors (``knn-detector``, ``prada``) on the shipped SimCLR victim.

Honest accounts (FMNIST train images: random task images, one-class and two-class users, 500 each)
and thieves (5,000 queries, several seeds: the MSE/StolenEncoder pool order, Cont-Steal's two
augmented views per image, the digits pool, each image sent 4 times) all query one
:class:`~sslaudit.api.SimulatedAPI` whose defence chain is the detectors in ``observe`` mode, so each
detector sees exactly what the attacks' own ``buy`` sends. An account's score is the most alarming
statistic over its stream (the record's ``min_score``); the threshold at 1 % per-account FPR is set on
the honest accounts, and TPR and queries until the alarm are read at it (from the running minimum
of each stream's statistic), next to each detector's own default threshold.

    OMP_NUM_THREADS=1 python bench/detection.py            # ~200 honest x 500 + 4 x 5 seeds x 5,000
    OMP_NUM_THREADS=1 python bench/detection.py --honest 30 --seeds 1   # a quick look
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from common import RESULTS, append_row, cpu_model, load_rows, write_markdown

from sslaudit.api import SimulatedAPI
from sslaudit.attack import ordered_pool, query_all
from sslaudit.attacks.cont_steal import ContSteal
from sslaudit.attacks.direct_extraction import DirectExtraction
from sslaudit.defenses.knn_detector import KNNDetector
from sslaudit.defenses.prada import PRADA
from sslaudit.secret import DeploymentSecret
from sslaudit.tasks import attack_pool, downstream_task
from sslaudit.zoo import resolve_victim

JSONL, MARKDOWN = RESULTS / "detection.jsonl", RESULTS / "detection.md"
QUERIES, HONEST_QUERIES, CALIBRATION, FPR = 5000, 500, 2000, 0.01
DETECTORS = {  # label -> detector (observe, trace on); K=50 is the paper's; K=1 is ICML'22's duplicate check
    "knn K=50 (features)": lambda: KNNDetector(trace=True),
    "knn K=1 (features)": lambda: KNNDetector(k=1, trace=True),
    "prada (features)": lambda: PRADA(trace=True),
    "prada (pixels, delta=0.95)": lambda: PRADA(space="pixels", delta=0.95, trace=True),
}
HONEST, LONG = ("random", "one-class", "two-class"), "honest-5000"
THIEVES = {
    "mse": "MSE / StolenEncoder: FMNIST pool, seeded order, once each",
    "contsteal-2views": "Cont-Steal / InfoNCE with 2 augmented views per image (2,500 images)",
    "digits": "MSE on the digits pool (1,797 images, then augmented copies)",
    "repeat-4": "each pool image sent 4 times (1,250 images; batches of 250, each sent 4 times)",
    LONG: "control, not a thief: an honest user of random task images sending 5,000 (not in the threshold)",
}


def honest_stream(i: int, train, kind: str | None = None, queries: int = HONEST_QUERIES
                  ) -> tuple[str, str, torch.Tensor]:
    """Honest account ``i``: (account, kind, images): random task images, one class or two classes in turn."""
    gen = torch.Generator().manual_seed(10_000 + i)
    kind = kind or HONEST[i % 3]
    if kind in ("random", LONG):
        pick = torch.randperm(len(train), generator=gen)[:queries]
    else:
        classes = torch.randperm(train.num_classes, generator=gen)[:1 if kind == "one-class" else 2]
        each = queries // len(classes)  # two-class: half from each, interleaved at random
        parts = [torch.nonzero(train.labels == c).flatten() for c in classes.tolist()]
        pick = torch.cat([m[torch.randperm(len(m), generator=gen)[:each]] for m in parts])
        pick = pick[torch.randperm(len(pick), generator=gen)]
    return f"honest-{kind}-{i}", kind, train.images[pick].float().div_(255)


def send_thief(api: SimulatedAPI, kind: str, seed: int, pools: dict) -> str:
    """Run what the attack's ``buy`` sends (or the repeat thief's calls); returns the account."""
    account = f"{kind}-{seed}"
    if kind == "mse":
        DirectExtraction(loss="mse").buy(api, pools["fashion-mnist"], QUERIES, seed=seed, account=account)
    elif kind == "contsteal-2views":
        ContSteal(views_per_image=2).buy(api, pools["fashion-mnist"], QUERIES, seed=seed, account=account)
    elif kind == "digits":
        DirectExtraction(loss="mse").buy(api, pools["digits"], QUERIES, seed=seed, account=account)
    else:
        images, _ = ordered_pool(pools["fashion-mnist"], QUERIES // 4, seed)
        for start in range(0, len(images), 250):
            for _ in range(4):
                api.query(images[start:start + 250], account=account)
    return account


def steps(scores: tuple[float, ...]) -> list[list[float]]:
    """The running minimum's change points ``[query number, new minimum]``: enough to find, for any
    threshold, the first query whose statistic is below it."""
    out, best = [], math.inf
    for i, s in enumerate(scores):
        if s == s and s < best:  # not NaN
            best = s
            out.append([i + 1, float(f"{s:.6g}")])
    return out


def first_below(change_points: list[list[float]], threshold: float) -> int | None:
    return next((int(q) for q, s in change_points if s < threshold), None)


def run(n_honest: int, seeds: int) -> None:
    torch.set_num_threads(1)
    began, cpu = time.perf_counter(), time.process_time()
    victim = resolve_victim("simclr")
    train = downstream_task().train
    pools = {name: attack_pool(name, size=victim.encoder.spec.size) for name in ("fashion-mnist", "digits")}
    calibration = train.images[torch.randperm(len(train), generator=torch.Generator().manual_seed(7))[:CALIBRATION]]
    api = SimulatedAPI(victim.encoder, defenses=[make() for make in DETECTORS.values()],
                       device=torch.device("cpu"), secret=DeploymentSecret.fixed("bench-detection"),
                       calibration=calibration.float().div_(255))
    served = dict(zip(DETECTORS, api.defenses))
    honest = []
    for i in range(n_honest):
        account, kind, images = honest_stream(i, train)
        query_all(api, images, account, batch_size=100)
        honest.append((account, kind))
    print(f"honest accounts done at {time.perf_counter() - began:.0f} s", flush=True)
    thieves = [(send_thief(api, kind, seed, pools), kind) for kind in THIEVES if kind != LONG
               for seed in range(seeds)]
    for seed in range(seeds):  # the control: honest, as long as a thief's stream
        account, _, images = honest_stream(50_000 + seed, train, LONG, QUERIES)
        query_all(api, images, account, batch_size=100)
        thieves.append((account, LONG))
    print(f"thieves done at {time.perf_counter() - began:.0f} s", flush=True)
    JSONL.unlink(missing_ok=True)
    for label, det in served.items():
        append_row(JSONL, {"detector": label, "settings": repr(det), "default_threshold": det.limit})
        for account, kind in honest + thieves:
            r = det.report(account)
            append_row(JSONL, {"detector": label, "account": account, "kind": kind, "queries": r.queries,
                               "min_score": r.min_score, "first_alarm": r.first_alarm, "steps": steps(r.scores)})
    render(time.perf_counter() - began, time.process_time() - cpu, n_honest, seeds)


def summarise(rows: list[dict], label: str) -> tuple[str, list[str]]:
    """The markdown rows of one detector, and a note on its honest accounts."""
    mine = [r for r in rows if r.get("detector") == label and "account" in r]
    default = next(r["default_threshold"] for r in rows if r.get("detector") == label and "account" not in r)
    honest = sorted((r for r in mine if r["kind"] in HONEST), key=_score)
    allowed = math.floor(FPR * len(honest))  # honest accounts allowed below the threshold
    at = _score(honest[allowed]) if allowed < len(honest) else math.inf
    fpr, default_fpr = _rate(honest, at), _rate(honest, default)
    lines = []
    for kind in THIEVES:
        thief = [r for r in mine if r["kind"] == kind]
        alarms = [q for q in (first_below(r["steps"], at) for r in thief) if q is not None]
        early = sum(q <= HONEST_QUERIES for q in alarms)
        dflt = [r["first_alarm"] for r in thief if r["first_alarm"] is not None]
        lines.append(f"| {label} | {kind} | {at:.4g} | {fpr:.1%} | {len(alarms)}/{len(thief)} | {early}/{len(thief)} "
                     f"| {_spread(alarms)} | {default:.4g} | {default_fpr:.1%} | {_rate(thief, default):.0%} "
                     f"| {_spread(dflt)} |")
    by_kind = ", ".join(f"{k} {_rate([r for r in honest if r['kind'] == k], default):.0%}" for k in HONEST)
    scores = [_score(r) for r in honest]
    note = (f"{label}: at the default threshold {default:.4g} honest accounts flagged: {by_kind}; honest scores: "
            f"median {statistics.median(scores):.4g}, smallest three {', '.join(f'{v:.4g}' for v in scores[:3])}")
    return note, lines


def _score(r: dict) -> float:
    return math.inf if r["min_score"] is None else r["min_score"]


def _rate(rows: list[dict], threshold: float) -> float:
    return sum(_score(r) < threshold for r in rows) / len(rows) if rows else math.nan


def _spread(values: list[int]) -> str:
    return f"{statistics.median(values):g} ({min(values)}-{max(values)})" if values else "-"


def render(wall: float, cpu: float, n_honest: int, seeds: int) -> None:
    rows = load_rows(JSONL)
    head = ("| detector | stream | threshold at 1 % FPR | honest FPR | TPR | TPR in first 500 queries "
            "| queries to alarm, median (range) | default threshold | honest FPR at default | TPR at default "
            "| queries to alarm at default |\n" + "|---" * 11 + "|")
    notes, lines = zip(*(summarise(rows, label) for label in DETECTORS))
    table = head + "\n" + "\n".join(line for block in lines for line in block)
    text = "\n\n".join([
        f"{n_honest} honest accounts x {HONEST_QUERIES} FMNIST-train queries (a third each: random task images, "
        f"one class, two classes), in calls of 100; {seeds} seeds of each stream below, {QUERIES:,} queries each:",
        "\n".join(f"- `{k}`: {v}" for k, v in THIEVES.items()),
        f"Calibration: {CALIBRATION:,} FMNIST-train images (the provider's). An account's score is the most "
        "alarming statistic over its stream (kNN: mean distance to the K nearest earlier queries; PRADA: "
        "Shapiro-Wilk W); it alarms when the score is below the threshold. 'Queries to alarm' counts the "
        "detected streams only. The 1 % threshold is the k-th smallest honest score with k = floor(1 % of the "
        "honest accounts) + 1, so that k - 1 honest accounts fall below it. 'TPR in first 500 queries' compares "
        "thieves with honest accounts over streams of the same length: a minimum over 5,000 queries is lower than over 500 even for the same traffic "
        f"(the `{LONG}` control rows: their 'TPR' is the false-positive rate of a long honest stream).",
        f"CPU: {cpu_model()}, 1 torch thread; wall time {wall:.0f} s, CPU time {cpu:.0f} s (encoder and "
        "detectors; the two cores were shared with other jobs).",
        "\n".join(f"- {n}" for n in notes)])
    write_markdown(MARKDOWN, "Query-pattern detection on the tiny SimCLR victim", table, text)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--honest", type=int, default=201, help="honest accounts (a multiple of 3)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per thief")
    args = parser.parse_args()
    run(args.honest, args.seeds)

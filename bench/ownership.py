"""Benchmark: ownership verification of the tiny SimCLR victim, its stolen copies and independent encoders.

Dataset inference (Dziedzic et al., NeurIPS 2022) and the rotation watermark (Dziedzic et al., ICML 2022;
``sslaudit.ownership``). Suspects: the victim; copies stolen from it (``--stolen NAME=PATH``, e.g. from
``sslaudit steal --queries 5000 --save-stolen PATH``, or ``--steal SPEC``: the bench steals them itself);
independent encoders trained on data disjoint from the private set (FMNIST test[:5000], the attacker's
pool): SimCLR tiny with seed 1, Barlow Twins tiny, SSL-Small; a watermarked SimCLR tiny (the default
config plus the watermark, trained on FMNIST train) and copies stolen from it (``--stolen-wm``,
``--steal``). Writes ``ownership.jsonl`` (one row per suspect, resumable) and ``ownership.md``.
Trained encoders are cached under ``$SSLAUDIT_CACHE/ownership``.

    python bench/ownership.py --stolen mse=runs/mse --stolen stolenencoder=runs/se --steal mse --steal stolenencoder
    python bench/ownership.py --images 400 --epochs 1 --independent-epochs 1 --steal mse --queries 300 \\
        --attack-epochs 1 --di-fit 1000 --di-eval 500 --eval-train 1000 --eval-test 500 --results /tmp/own  # smoke
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from pathlib import Path

import torch
from common import RESULTS, append_row, load_rows, write_markdown

from sslaudit import registry
from sslaudit.api import SimulatedAPI
from sslaudit.audit import victim_scores
from sslaudit.data import load_dataset
from sslaudit.models import Encoder
from sslaudit.ownership.dataset_inference import dataset_inference, default_splits
from sslaudit.ownership.watermark import (WatermarkConfig, load_watermark, save_watermark, train_watermarked,
                                          watermark_path)
from sslaudit.ownership.watermark_verify import watermark_verdicts
from sslaudit.report.table import format_table
from sslaudit.secret import DeploymentSecret
from sslaudit.tasks import attack_pool, downstream_task
from sslaudit.victim import Victim, config_key
from sslaudit.zoo import cache_dir, preset_config, resolve_victim

POOL_NOTE = "FMNIST test[:5000] (attacker pool)"


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:12]


def _fit_batch(config: object, n: int, epochs: int | None, seed: int | None = None) -> object:
    """``config`` with its batch at most ``n`` images, and ``epochs``/``seed`` when given."""
    train = dataclasses.replace(config.train, batch_size=min(config.train.batch_size, n))
    if epochs:
        train = dataclasses.replace(train, epochs=epochs)
    if seed is not None:
        train = dataclasses.replace(train, seed=seed)
    return dataclasses.replace(config, train=train)


def _cached(name: str, build: callable) -> Victim:
    """The victim cached as ``ownership/name``, else ``build()`` saved there."""
    path = cache_dir() / "ownership" / name
    if path.with_suffix(".json").is_file():
        return Victim.load(path)
    victim = build()
    victim.save(path)
    return victim


def _card(encoder: Encoder, method: str, key: str, data: str) -> dict:
    return {"method": method, "arch": encoder.arch, "dim": encoder.dim, "input": encoder.spec.to_dict(),
            "config_key": key, "data": {"name": data}, "scores": {}}


def watermarked_victim(args: argparse.Namespace) -> tuple[Victim, object]:
    data = load_dataset("fashion-mnist", "train")
    data = data.subset(slice(0, args.images)) if args.images else data
    config = _fit_batch(preset_config("simclr", "tiny"), len(data), args.epochs)
    wm = WatermarkConfig(weight=args.wm_weight)
    name = f"simclr+watermark-{_key(config_key(config), wm, len(data), args.secret)}"
    path = cache_dir() / "ownership" / name
    if not watermark_path(path).is_file():
        victim, head = train_watermarked(data, config, DeploymentSecret.fixed(args.secret), wm, progress=True)
        victim.save(path)
        save_watermark(head, path)
    return Victim.load(path), load_watermark(watermark_path(path))


def independents(args: argparse.Namespace, any_encoder: Encoder) -> dict[str, Victim]:
    """SimCLR (seed 1), Barlow Twins and SSL-Small trained on the attacker pool (disjoint from the private set)."""
    from sslaudit.registry import get_victim

    pool = attack_pool("fashion-mnist")
    pool = pool.subset(slice(0, args.images)) if args.images else pool
    scale = round(60000 / len(pool))  # equal steps: the recipes' epochs are set for 60,000 images
    out = {}
    for method, seed in (("simclr", 1), ("barlow_twins", 0)):
        base = preset_config(method, "tiny")
        config = _fit_batch(base, len(pool), args.independent_epochs or base.train.epochs * scale, seed)

        def build(method: str = method, config: object = config) -> Victim:
            torch.manual_seed(config.train.seed)
            return get_victim(method).train(pool, config, progress=True)
        out[f"{method} (seed {seed})"] = _cached(f"{method}-{config_key(config)}-{len(pool)}", build)
    attack = registry.build("attack", "ssl-small")
    attack = attack.with_epochs(args.independent_epochs) if args.independent_epochs else attack
    key = _key(attack, len(pool))
    out["ssl-small"] = _cached(f"ssl-small-{key}", lambda: Victim(
        attack.run(SimulatedAPI(any_encoder), pool, 1, progress=True).encoder, _card(any_encoder, "ssl-small", key,
                                                                                    pool.name)))
    return out


def stolen(victim: Victim, spec: str, args: argparse.Namespace) -> Victim:
    """A copy of ``victim`` stolen with attack ``spec`` and ``--queries`` queries from the FMNIST pool."""
    attack = registry.build("attack", spec)
    attack = attack.with_epochs(args.attack_epochs) if args.attack_epochs else attack
    key = _key(victim.name, attack, args.queries)

    def build() -> Victim:
        api = SimulatedAPI(victim.encoder, budget=args.queries)
        result = attack.run(api, attack_pool("fashion-mnist"), args.queries, progress=True)
        return Victim(result.encoder, _card(result.encoder, f"stolen:{spec}", key, "fashion-mnist:test[:5000]"))
    return _cached(f"stolen-{key}", build)


def _pairs(items: list[str], option: str) -> dict[str, Victim]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            raise SystemExit(f"{option} takes NAME=PATH, e.g. mse=runs/stolen-mse; got {item!r}")
        out[name] = Victim.load(Path(path))
    return out


def run(args: argparse.Namespace) -> None:
    jsonl, markdown = args.results / "ownership.jsonl", args.results / "ownership.md"
    victim = resolve_victim(args.victim)
    wm_victim, head = watermarked_victim(args)
    suspects: list[tuple[str, str, Victim]] = [("victim", "FMNIST train (private)", victim)]
    copies = {**{s: stolen(victim, s, args) for s in args.steal}, **_pairs(args.stolen, "--stolen")}
    suspects += [(f"stolen from the victim: {n}", POOL_NOTE + " + victim answers", v) for n, v in copies.items()]
    suspects += [(f"independent: {n}", POOL_NOTE, v) for n, v in independents(args, victim.encoder).items()]
    suspects += [("watermarked victim", "FMNIST train (private)", wm_victim)]
    wm_copies = {**{s: stolen(wm_victim, s, args) for s in args.steal}, **_pairs(args.stolen_wm, "--stolen-wm")}
    suspects += [(f"stolen from the watermarked victim: {n}", POOL_NOTE + " + its answers", v)
                 for n, v in wm_copies.items()]
    fit, evaluate, public = default_splits(args.di_fit, args.di_eval)
    public = public.subset(slice(0, args.public), public.name) if args.public else public
    task = downstream_task(args.eval_train, args.eval_test)
    settings = {"di_fit": len(fit), "di_eval": len(evaluate), "public": len(public), "components": args.components,
                "null_heads": args.null_heads, "watermark": wm_victim.name}
    done = {(r["suspect"], r["encoder"], json.dumps(r["settings"], sort_keys=True)) for r in load_rows(jsonl)}
    for label, trained_on, suspect in suspects:
        if (label, suspect.name, json.dumps(settings, sort_keys=True)) in done:
            continue
        row = {"suspect": label, "encoder": suspect.name, "trained_on": trained_on, "settings": settings,
               "dataset_inference": dataset_inference(suspect.encoder, fit, evaluate, public,
                                                      components=args.components).to_dict()}
        if suspect.encoder.dim == head.dims[0]:
            binomial, ranked = watermark_verdicts(suspect.encoder, head, public, heads=args.null_heads)
            row["watermark_binomial"], row["watermark_null_heads"] = binomial.to_dict(), ranked.to_dict()
        if label in ("victim", "watermarked victim"):
            row["scores"] = {"task": task.key, **victim_scores(suspect, task)}
        print(f"{label}: DI p {row['dataset_inference']['p_value']:.3g}, watermark accuracy "
              f"{row.get('watermark_binomial', {}).get('statistic')}", flush=True)
        append_row(jsonl, row)
    render(jsonl, markdown)


def _cell(verdict: dict | None, key: str) -> str:
    return "" if verdict is None else f"{verdict[key]:.3g}"


def render(jsonl: Path, markdown: Path) -> None:
    found = load_rows(jsonl)
    rows = [[r["suspect"], r["trained_on"], _cell(r["dataset_inference"], "statistic"),
             _cell(r["dataset_inference"], "p_value"), r["dataset_inference"]["verdict"],
             _cell(r.get("watermark_binomial"), "statistic"), _cell(r.get("watermark_binomial"), "p_value"),
             _cell(r.get("watermark_null_heads"), "statistic"), _cell(r.get("watermark_null_heads"), "p_value"),
             "" if "scores" not in r else f"{100 * r['scores']['linear_full']:.1f} / {100 * r['scores']['knn']:.1f}"]
            for r in found]
    header = ["suspect", "trained on", "DI Δ", "DI p", "DI verdict", "WM acc", "WM p (binomial)", "WM margin",
              "WM p (null heads)", "lin full / kNN %"]
    s = found[-1]["settings"] if found else {}
    notes = (f"Dataset inference: GMM ({s.get('components')} diagonal components) on the suspect's L2-normalised "
             f"features of {s.get('di_fit')} private FMNIST train images; Δ = mean log-likelihood of "
             f"{s.get('di_eval')} other private train images minus that of {s.get('public')} of FMNIST "
             "test[5000:]; one-sided t-test, verdict at p < 0.01. Watermark: the watermarked victim's secret head "
             "on the suspect's features of the same public images, each turned by one quarter turn (classes "
             "{0°, 90°} vs {180°, 270°}, balanced): accuracy with a binomial test against 0.5, and the mean margin "
             f"ranked among {s.get('null_heads')} fresh random heads (exact under independence). Only copies of the "
             "*watermarked* victim are expected to carry the watermark. Probe scores (the two victims): FMNIST "
             "linear probe on all train labels and kNN, test on FMNIST test[5000:].")
    write_markdown(markdown, "Ownership verification", format_table(header, rows, markdown=True), notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--victim", default="simclr")
    parser.add_argument("--stolen", action="append", default=[], help="NAME=PATH of a copy of the victim")
    parser.add_argument("--stolen-wm", action="append", default=[], help="NAME=PATH of a copy of the watermarked one")
    parser.add_argument("--steal", action="append", default=[], help="attack spec: steal both victims with it here")
    parser.add_argument("--queries", type=int, default=5000)
    parser.add_argument("--attack-epochs", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None, help="watermarked victim's epochs (default: preset's)")
    parser.add_argument("--independent-epochs", type=int, default=None,
                        help="default: SimCLR/Barlow preset epochs x 12 (equal steps on 5,000 images), SSL-Small's own")
    parser.add_argument("--images", type=int, default=None, help="train on the first N images only (smoke runs)")
    parser.add_argument("--wm-weight", type=float, default=WatermarkConfig().weight)
    parser.add_argument("--secret", default="bench-ownership", help="label of the fixed watermark secret")
    parser.add_argument("--components", type=int, default=10)
    parser.add_argument("--di-fit", type=int, default=10_000)
    parser.add_argument("--di-eval", type=int, default=5_000)
    parser.add_argument("--public", type=int, default=None, help="first N of FMNIST test[5000:] (smoke runs)")
    parser.add_argument("--null-heads", type=int, default=199)
    parser.add_argument("--eval-train", type=int, default=None)
    parser.add_argument("--eval-test", type=int, default=None)
    parser.add_argument("--results", type=Path, default=RESULTS)
    run(parser.parse_args())


if __name__ == "__main__":
    main()

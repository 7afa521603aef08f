"""The ``sslaudit`` command line.

    sslaudit list
    sslaudit victims train simclr --preset tiny
    sslaudit victims list
    sslaudit steal --victim simclr --attack infonce --queries 5000 --pool fashion-mnist --json out.json
    sslaudit steal --victim simclr --attack mse --save-stolen runs/stolen-mse
    sslaudit verify --victim simclr --suspect runs/stolen-mse
    sslaudit serve --victim simclr --keys keys.toml --port 8000
    sslaudit audit --config audit.toml
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import click

from sslaudit import registry
from sslaudit.cli_options import (MIN_EVAL_TEST, AtLeast, NonNegativeNumber, OneLineGroup, Probability,
                                  build_component, check_arch, check_writable, eval_train_type, friendly,
                                  load_suspect, min_eval_train, save_stolen_encoder)
from sslaudit.cli_audit import audit
from sslaudit.cli_report import report
from sslaudit.cli_serve import serve
from sslaudit.registry import parse_component  # noqa: F401 - re-exported: bench/ imports it from here

POSITIVE = AtLeast(1)


@click.group(cls=OneLineGroup)
@click.version_option(package_name="sslaudit")
def main() -> None:
    """How cheaply can an SSL encoder behind an API be stolen, and which defence stops it?"""


@main.command("list")
def list_cmd() -> None:
    """Print every registered victim, attack, defence, architecture and query pool."""
    for kind, label in (("victim", "victims"), ("attack", "attacks"), ("defense", "defenses"),
                        ("arch", "architectures"), ("pool", "pools")):
        click.echo(f"{label}: {', '.join(registry.names(kind))}")


@main.group()
def data() -> None:
    """Get the datasets the audits use."""


@data.command("download")
@click.argument("name", type=click.Choice(["fashion-mnist"]))
def data_download(name: str) -> None:
    """Download NAME's original files with torchvision into ~/.cache/sslaudit (needs internet)."""
    from sslaudit.data import download_fashion_mnist

    click.echo(f"saved to {friendly(download_fashion_mnist)}")


@main.group()
def victims() -> None:
    """Train and inspect victim encoders."""


@victims.command("train")
@click.argument("method")
@click.option("--preset", default="tiny", show_default=True, help="tiny (CPU, minutes) or standard (GPU)")
@click.option("--epochs", type=POSITIVE, default=None, help="override the preset's epochs (changes the cache key)")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="save here instead of the cache")
def victims_train(method: str, preset: str, epochs: int | None, out: Path | None) -> None:
    """Train METHOD (e.g. simclr) on Fashion-MNIST train and cache it."""
    from sslaudit.distributed import is_main
    from sslaudit.zoo import train_victim

    victim = friendly(lambda: train_victim(method, preset, epochs=epochs, out=out))
    if is_main():  # under torchrun: one report, from rank 0
        click.echo(json.dumps({"saved": victim.card["saved_to"], "train_seconds": victim.card["train_seconds"],
                               "scores": victim.card["scores"]}, indent=2))


@victims.command("list")
def victims_list() -> None:
    """Show the shipped and cached victims with their cards (unreadable ones are skipped with a warning)."""
    from sslaudit.victim import BadCard, Victim
    from sslaudit.zoo import SHIPPED, cache_dir

    found = sorted(SHIPPED.glob("*.json")) + sorted((cache_dir() / "victims").glob("*.json"))
    shown = 0
    for card_path in found:
        try:
            card = Victim.load(card_path).card
        except (BadCard, FileNotFoundError) as err:
            click.echo(f"warning: skipping a bad victim: {' '.join(str(err).split())}", err=True)
            continue
        shown += 1
        click.echo(f"{card_path.with_suffix('')}  {card.get('method', '?')} {card['arch']} "
                   f"{card.get('parameters', 0):,} params  {card.get('epochs', '?')} epochs  "
                   f"{card.get('train_seconds', 0):.0f}s  key {card.get('config_key', 'custom')}")
    if not shown:
        click.echo("no trained victims; run `sslaudit victims train simclr`")


@main.command()
@click.option("--victim", "victim_spec", default="simclr", show_default=True,
              help="a victim recipe name (uses the shipped/cached victim) or a saved .safetensors")
@click.option("--preset", default="tiny", show_default=True)
@click.option("--weights", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="weights of an external victim (.safetensors, or .pt/.pth read with weights_only=True)")
@click.option("--random-weights", is_flag=True, help="serve an external model with random weights (no --weights)")
@click.option("--input-size", type=POSITIVE, default=None, help="external victim: its native input side in pixels")
@click.option("--channels", type=POSITIVE, default=None, help="external victim: its native input channels")
@click.option("--mean", default=None, help="external victim: per-channel mean, e.g. 0.485,0.456,0.406")
@click.option("--std", default=None, help="external victim: per-channel std, e.g. 0.229,0.224,0.225")
@click.option("--attack", "attack_spec", default="mse", show_default=True,
              help="NAME[:key=value,...], e.g. mse:standardize=true (see `sslaudit list`)")
@click.option("--queries", default="5000", show_default=True,
              help="query budget (images sent); a list such as 500,1000,2000,5000 gives one row per budget")
@click.option("--pool", default="fashion-mnist", show_default=True, type=click.Choice(registry.names("pool")))
@click.option("--defense", "defense_specs", multiple=True, help="e.g. noise:sigma=0.1 (repeatable, applied in order)")
@click.option("--stolen-arch", default=None, help="architecture of the stolen encoder (default: convnet)")
@click.option("--epochs", type=POSITIVE, default=None, help="override the attack's training epochs (every phase)")
@click.option("--price", type=NonNegativeNumber(), default=1.0, show_default=True, help="API price per 1,000 images")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--eval-train", type=eval_train_type(), default=None,
              help=f"probe on a stratified subset of N >= {min_eval_train()} train images (quick runs)")
@click.option("--eval-test", type=AtLeast(MIN_EVAL_TEST), default=None,
              help=f"probe on the first N >= {MIN_EVAL_TEST} held-out test images (quick runs)")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="also write results here")
@click.option("--save-stolen", type=click.Path(path_type=Path), default=None,
              help="save the stolen encoder of the largest budget here (PATH.safetensors + PATH.json), "
                   "readable by `sslaudit verify --suspect PATH`")
@click.option("--honest/--no-honest", default=None,
              help="also score an honest account that solves the task through the (defended) API "
                   "[default: on when a --defense is given]")
@click.option("--api-key", envvar="SSLAUDIT_API_KEY", default=None,
              help="URL victim: the attacker's API key (or $SSLAUDIT_API_KEY)")
@click.option("--eval-api-key", envvar="SSLAUDIT_EVAL_API_KEY", default=None,
              help="URL victim: the key that buys the victim's features for scoring (default: --api-key)")
@click.option("--progress/--no-progress", default=True)
def steal(victim_spec: str, preset: str, weights: Path | None, random_weights: bool, input_size: int | None,
          channels: int | None, mean: str | None, std: str | None, attack_spec: str, queries: str, pool: str,
          defense_specs: tuple[str, ...], stolen_arch: str | None, epochs: int | None, price: float, seed: int,
          eval_train: int | None, eval_test: int | None, json_path: Path | None, save_stolen: Path | None,
          api_key: str | None, eval_api_key: str | None, honest: bool | None, progress: bool) -> None:
    """Steal a victim through a simulated API and print victim vs stolen vs random-init floor."""
    from sslaudit.tasks import attack_pool, downstream_task
    from sslaudit.api import QueryRefused
    from sslaudit.audit import steal_curve
    from sslaudit.report.json import write_json
    from sslaudit.report.terminal import results_table
    from sslaudit.zoo import resolve_victim

    # Everything the user typed is checked before any victim is loaded or any model trained.
    budgets = _budgets(queries)
    if random_weights and weights:
        raise click.BadParameter("give --weights or --random-weights, not both", param_hint="'--random-weights'")
    native = _native_input(input_size, channels, mean, std)
    attack = _build_attack(attack_spec, stolen_arch, epochs)
    defenses = [build_component("defense", spec, "--defense") for spec in defense_specs]
    if json_path:
        check_writable(json_path)
    if save_stolen:
        check_writable(save_stolen.with_suffix(".safetensors"), "--save-stolen")
    api = None
    if victim_spec.startswith(("http://", "https://")):
        api, victim = _remote_target(victim_spec, api_key, eval_api_key, bool(defense_specs) or bool(honest))
    else:
        victim = friendly(lambda: resolve_victim(victim_spec, preset, progress=progress, weights=weights,
                                                 native=native, random_weights=random_weights))
    task = friendly(lambda: downstream_task(eval_train, eval_test))
    images = friendly(lambda: attack_pool(pool, size=victim.encoder.spec.size))
    click.echo(f"stealing {victim.name} with {attack_spec}, {queries} queries from {images.name}", err=True)
    encoders: list = []
    try:
        reports = steal_curve(victim, attack, images, budgets, task, defenses=defenses, price_per_1k=price,
                              seed=seed, progress=progress, encoders=encoders, api=api,
                              honest=bool(defense_specs) if honest is None else honest)
    except QueryRefused as err:  # a detector with action=refuse stopped the thief: nothing was stolen
        raise click.ClickException(f"the defended API refused the attacker, so nothing was stolen: {err}") from err
    click.echo(results_table(reports))
    if json_path:
        write_json(json_path, reports[0] if len(reports) == 1 else reports)
        click.echo(f"wrote {json_path}", err=True)
    if save_stolen:
        saved = save_stolen_encoder(encoders[-1], reports[-1], save_stolen, attack=attack_spec.split(":")[0],
                                    victim=victim.name, seed=seed)
        click.echo(f"saved the stolen encoder ({reports[-1].queries.sent} queries) to {saved}", err=True)


@main.command()
@click.option("--victim", "victim_spec", default="simclr", show_default=True,
              help="the owner's victim: a recipe name (shipped/cached victim) or a saved .safetensors")
@click.option("--preset", default="tiny", show_default=True)
@click.option("--suspect", "suspect_path", type=click.Path(path_type=Path), required=True,
              help="the suspect encoder: PATH.safetensors + PATH.json, e.g. from `steal --save-stolen`")
@click.option("--watermark", "watermark_file", type=click.Path(path_type=Path), default=None,
              help="the victim's watermark head [default: VICTIM.watermark.safetensors beside a saved victim]")
@click.option("--components", type=POSITIVE, default=10, show_default=True, help="GMM components (dataset inference)")
@click.option("--alpha", type=Probability(), default=0.01, show_default=True, help="significance level")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="also write verdicts here")
@click.option("--progress/--no-progress", default=True)
def verify(victim_spec: str, preset: str, suspect_path: Path, watermark_file: Path | None, components: int,
           alpha: float, json_path: Path | None, progress: bool) -> None:
    """Is SUSPECT the victim or derived from it? Dataset inference, and the watermark test if the victim has one."""
    from sslaudit.cli_options import find_watermark, load_head_option, write_atomically
    from sslaudit.ownership.dataset_inference import dataset_inference, default_splits
    from sslaudit.ownership.watermark_verify import watermark_verdicts
    from sslaudit.zoo import resolve_victim

    if json_path:
        check_writable(json_path)
    suspect = load_suspect(suspect_path)
    head = load_head_option(watermark_file)
    victim = friendly(lambda: resolve_victim(victim_spec, preset, progress=progress))
    if head is None:
        head = find_watermark(victim_spec, victim)
    private_fit, private_eval, public = friendly(default_splits)
    click.echo(f"verifying {suspect_path} ({suspect.name}) against {victim.name}", err=True)
    verdicts = [dataset_inference(suspect.encoder, private_fit, private_eval, public, components=components,
                                  alpha=alpha)]
    if head is not None and head.dims[0] != suspect.encoder.dim:
        click.echo(f"watermark: skipped (the head reads {head.dims[0]}-d features, the suspect gives "
                   f"{suspect.encoder.dim}-d)", err=True)
    elif head is not None:
        verdicts += watermark_verdicts(suspect.encoder, head, public, alpha=alpha)
    for verdict in verdicts:
        click.echo(verdict.line())
    if json_path:
        out = {"victim": victim.name, "suspect": str(suspect_path), "suspect_card": suspect.name,
               "tests": [v.to_dict() for v in verdicts]}
        write_atomically(json_path, json.dumps(out, indent=2))
        click.echo(f"wrote {json_path}", err=True)


def _remote_target(url: str, api_key: str | None, eval_api_key: str | None, local_only: bool) -> tuple:
    """The attack's API and the scored victim for a live endpoint at ``url``."""
    from sslaudit.remote import RemoteAPI, RemoteError
    from sslaudit.remote_victim import remote_victim

    if not api_key:
        raise click.BadParameter("a URL victim needs --api-key (or $SSLAUDIT_API_KEY)", param_hint="'--api-key'")
    if local_only:
        raise click.BadParameter("--defense and --honest apply to the simulated API; a live endpoint has its own",
                                 param_hint="'--defense'")
    try:
        return RemoteAPI(url, api_key), remote_victim(url, eval_api_key or api_key)
    except (RemoteError, ValueError, KeyError) as err:
        raise click.ClickException(f"{url}: {err}") from err


def _budgets(text: str) -> list[int]:
    """``"500,1000"`` → ``[500, 1000]``; every budget a positive whole number of queries."""
    try:
        budgets = sorted({int(item) for item in text.split(",") if item.strip()})
    except ValueError:
        raise click.BadParameter(f"--queries takes whole numbers such as 5000 or 500,1000,2000; got {text!r}")
    if not budgets or budgets[0] < 1:
        raise click.BadParameter(f"--queries must be positive; got {text!r}")
    return budgets


def _native_input(size: int | None, channels: int | None, mean: str | None, std: str | None) -> object:
    """The external victim's input as the user stated it (None when not stated)."""
    from sslaudit.models import InputSpec

    if size is None and channels is None:
        if mean or std:
            raise click.BadParameter("--mean/--std need --input-size and --channels")
        return None
    if size is None or channels is None:
        raise click.BadParameter("give both --input-size and --channels")
    try:
        stats = [tuple(float(v) for v in text.split(",")) if text else () for text in (mean, std)]
        return InputSpec(channels, size, *stats)
    except ValueError as err:
        raise click.BadParameter(f"--mean/--std take one number per channel, e.g. 0.5,0.5,0.5 ({err})") from err


def _build_attack(spec: str, stolen_arch: str | None, epochs: int | None) -> object:
    """The attack from ``NAME[:key=value,...]``, then ``--stolen-arch`` and ``--epochs`` applied on top."""
    attack = build_component("attack", spec, "--attack")
    if stolen_arch:
        attack = dataclasses.replace(attack, stolen_arch=check_arch(stolen_arch, "--stolen-arch"))
    if epochs:
        attack = attack.with_epochs(epochs)
    return attack


main.add_command(serve)
main.add_command(audit)
main.add_command(report)

if __name__ == "__main__":
    sys.exit(main())

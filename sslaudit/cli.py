"""The ``sslaudit`` command line.

    sslaudit list
    sslaudit victims train simclr --preset tiny
    sslaudit victims list
    sslaudit steal --victim simclr --attack infonce --queries 5000 --pool fashion-mnist --json out.json
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import click

from sslaudit import registry
from sslaudit.models import BACKBONES


def parse_component(text: str) -> tuple[str, dict]:
    """``"noise:sigma=0.2,relative=false"`` → ``("noise", {"sigma": 0.2, "relative": False})``."""
    name, _, rest = text.partition(":")
    options: dict = {}
    for item in filter(None, rest.split(",")):
        key, sep, raw = item.partition("=")
        if not sep:
            raise click.BadParameter(f"expected key=value in {text!r}, got {item!r}")
        options[key.strip()] = _parse_value(raw.strip())
    return name.strip(), options


def _parse_value(raw: str) -> object:
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


@click.group()
@click.version_option(package_name="sslaudit")
def main() -> None:
    """How cheaply can an SSL encoder behind an API be stolen, and which defence stops it?"""


@main.command("list")
def list_cmd() -> None:
    """Print every registered victim, attack, defence and architecture."""
    for kind in ("victim", "attack", "defense"):
        click.echo(f"{kind}s: {', '.join(registry.names(kind))}")
    click.echo(f"architectures: {', '.join(sorted(BACKBONES))}")
    click.echo("pools: fashion-mnist, digits")


@main.group()
def data() -> None:
    """Get the datasets the audits use."""


@data.command("download")
@click.argument("name", type=click.Choice(["fashion-mnist"]))
def data_download(name: str) -> None:
    """Download NAME's original files with torchvision into ~/.cache/sslaudit (needs internet)."""
    from sslaudit.data import download_fashion_mnist

    click.echo(f"saved to {_friendly(download_fashion_mnist)}")


@main.group()
def victims() -> None:
    """Train and inspect victim encoders."""


@victims.command("train")
@click.argument("method")
@click.option("--preset", default="tiny", show_default=True, help="tiny (CPU, minutes) or standard (GPU)")
@click.option("--epochs", type=int, default=None, help="override the preset's epochs (changes the cache key)")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="save here instead of the cache")
def victims_train(method: str, preset: str, epochs: int | None, out: Path | None) -> None:
    """Train METHOD (e.g. simclr) on Fashion-MNIST train and cache it."""
    from sslaudit.zoo import train_victim

    victim = _friendly(lambda: train_victim(method, preset, epochs=epochs, out=out))
    click.echo(json.dumps({"saved": victim.card["saved_to"], "train_seconds": victim.card["train_seconds"],
                           "scores": victim.card["scores"]}, indent=2))


@victims.command("list")
def victims_list() -> None:
    """Show the shipped and cached victims with their cards."""
    from sslaudit.victim import Victim
    from sslaudit.zoo import SHIPPED, cache_dir

    found = sorted(SHIPPED.glob("*.json")) + sorted((cache_dir() / "victims").glob("*.json"))
    if not found:
        click.echo("no trained victims; run `sslaudit victims train simclr`")
    for card_path in found:
        card = Victim.load(card_path).card
        click.echo(f"{card_path.with_suffix('')}  {card['method']} {card['arch']} {card['parameters']:,} params"
                   f"  {card['epochs']} epochs  {card['train_seconds']:.0f}s  key {card['config_key']}")


@main.command()
@click.option("--victim", "victim_spec", default="simclr", show_default=True,
              help="a victim recipe name (uses the shipped/cached victim) or a saved .safetensors")
@click.option("--preset", default="tiny", show_default=True)
@click.option("--weights", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="weights of an external victim (.safetensors, or .pt/.pth read with weights_only=True)")
@click.option("--input-size", type=int, default=None, help="external victim: its native input side in pixels")
@click.option("--channels", type=int, default=None, help="external victim: its native input channels")
@click.option("--mean", default=None, help="external victim: per-channel mean, e.g. 0.485,0.456,0.406")
@click.option("--std", default=None, help="external victim: per-channel std, e.g. 0.229,0.224,0.225")
@click.option("--attack", "attack_name", default="mse", show_default=True, help="see `sslaudit list`")
@click.option("--queries", default="5000", show_default=True,
              help="query budget (images sent); a list such as 500,1000,2000,5000 gives one row per budget")
@click.option("--pool", default="fashion-mnist", show_default=True, type=click.Choice(["fashion-mnist", "digits"]))
@click.option("--defense", "defense_specs", multiple=True, help="e.g. noise:sigma=0.1 (repeatable, applied in order)")
@click.option("--stolen-arch", default=None, help="architecture of the stolen encoder (default: convnet)")
@click.option("--epochs", type=int, default=None, help="override the attack's training epochs (every phase)")
@click.option("--price", type=float, default=1.0, show_default=True, help="API price per 1,000 images")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--eval-train", type=int, default=None, help="probe on a stratified subset of N train images (quick runs)")
@click.option("--eval-test", type=int, default=None, help="probe on the first N held-out test images (quick runs)")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="also write results here")
@click.option("--progress/--no-progress", default=True)
def steal(victim_spec: str, preset: str, weights: Path | None, input_size: int | None, channels: int | None,
          mean: str | None, std: str | None, attack_name: str, queries: str, pool: str, defense_specs: tuple[str, ...],
          stolen_arch: str | None, epochs: int | None, price: float, seed: int, eval_train: int | None,
          eval_test: int | None, json_path: Path | None, progress: bool) -> None:
    """Steal a victim through a simulated API and print victim vs stolen vs random-init floor."""
    from sslaudit.tasks import attack_pool, downstream_task
    from sslaudit.audit import steal_curve
    from sslaudit.report.table import results_table
    from sslaudit.zoo import resolve_victim

    budgets = _budgets(queries)
    native = _native_input(input_size, channels, mean, std)
    victim = _friendly(lambda: resolve_victim(victim_spec, preset, progress=progress, weights=weights, native=native))
    attack = _build_attack(attack_name, stolen_arch, epochs)
    defenses = [_build_defense(spec) for spec in defense_specs]
    task = _friendly(lambda: downstream_task(eval_train, eval_test))
    images = attack_pool(pool, size=victim.encoder.spec.size)
    click.echo(f"stealing {victim.name} with {attack_name}, {queries} queries from {images.name}", err=True)
    reports = steal_curve(victim, attack, images, budgets, task, defenses=defenses, price_per_1k=price, seed=seed,
                          progress=progress)
    click.echo(results_table(reports))
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(reports[0] if len(reports) == 1 else {"curve": reports}, indent=2))
        click.echo(f"wrote {json_path}", err=True)


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
    parse = lambda text: tuple(float(v) for v in text.split(",")) if text else ()  # noqa: E731
    return _friendly(lambda: InputSpec(channels, size, parse(mean), parse(std)))


def _build_attack(name: str, stolen_arch: str | None, epochs: int | None) -> object:
    factory = _friendly(lambda: registry.get_attack(name))
    attack = factory()
    if stolen_arch:
        if stolen_arch not in BACKBONES:
            raise click.BadParameter(f"unknown architecture {stolen_arch!r}; choose from {', '.join(BACKBONES)}")
        attack = dataclasses.replace(attack, stolen_arch=stolen_arch)
    if epochs:
        attack = attack.with_epochs(epochs)
    return attack


def _build_defense(spec: str) -> object:
    name, options = parse_component(spec)
    cls = _friendly(lambda: registry.get_defense(name))
    try:
        return cls(**options)
    except TypeError as err:
        raise click.BadParameter(f"defence {name!r}: {err}") from err


def _friendly(thunk):  # type: ignore[no-untyped-def]
    """Turn expected user errors into a one-line message instead of a traceback."""
    from sslaudit.data import DataNotFoundError

    try:
        return thunk()
    except (KeyError, DataNotFoundError, FileNotFoundError, ValueError, ImportError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        raise click.ClickException(str(message)) from err


if __name__ == "__main__":
    sys.exit(main())

"""``sslaudit serve``: a victim behind the Open Inference Protocol v2, metered per API key.

    sslaudit serve --new-key alice >> keys.toml
    sslaudit serve --victim simclr --keys keys.toml --port 8000
"""
from __future__ import annotations

from pathlib import Path

import click

from sslaudit.cli_options import AtLeast, NonNegativeNumber, friendly

POSITIVE = AtLeast(1)


@click.command()
@click.option("--victim", "victim_spec", default="simclr", show_default=True, help="recipe name or saved victim")
@click.option("--preset", default="tiny", show_default=True)
@click.option("--keys", "keys_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="TOML keys file (accounts, budgets, rate limits, defences); the ledger is kept beside it")
@click.option("--name", default="", help="model name in the URL (default: the --victim value, e.g. simclr)")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=POSITIVE, default=8000, show_default=True)
@click.option("--price", type=NonNegativeNumber(), default=1.0, show_default=True, help="price per 1,000 images")
@click.option("--max-batch", type=POSITIVE, default=1024, show_default=True, help="images per request at most")
@click.option("--new-key", "new_key_for", default=None, metavar="ACCOUNT",
              help="print a fresh API key for ACCOUNT and its keys-file lines, then exit")
def serve(victim_spec: str, preset: str, keys_path: Path | None, name: str, host: str, port: int, price: float,
          max_batch: int, new_key_for: str | None) -> None:
    """Serve a victim over the Open Inference Protocol v2 (REST), metered per API key."""
    from sslaudit.serving.accounts import BadKeysFile, hash_key, new_key

    if new_key_for:
        key = new_key()
        click.echo(f"API key for {new_key_for} (give it to them; it is not stored): {key}", err=True)
        click.echo(f'[accounts.{new_key_for}]\nkey_sha256 = "{hash_key(key)}"')
        return
    if keys_path is None:
        raise click.UsageError("give --keys keys.toml (make one with `sslaudit serve --new-key NAME`)")
    from sslaudit.serving.launch import LedgerInUse, open_service, serve as run_server

    try:
        service = friendly(lambda: open_service(victim_spec, keys_path, preset=preset, name=name, price_per_1k=price,
                                                max_batch=max_batch))
    except (BadKeysFile, LedgerInUse) as err:
        raise click.ClickException(str(err)) from err
    url = f"http://{host}:{port}/v2/models/{service.name}"
    click.echo(f"serving {service.victim.name} at {url} to {len(service.accounts)} accounts", err=True)
    run_server(service, host=host, port=port)

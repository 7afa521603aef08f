"""``sslaudit audit``: run an audit grid into a resumable store, then write its reports.

    sslaudit audit --example > audit.toml
    sslaudit audit --config audit.toml                       # local processes; a rerun skips finished cells
    sslaudit audit --config audit.toml --executor ray --ray-address auto
"""
from __future__ import annotations

from pathlib import Path

import click

from sslaudit.cli_options import AtLeast, friendly


def default_store(name: str) -> Path:
    from sslaudit.zoo import cache_dir

    safe = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in name) or "audit"
    return cache_dir() / "audits" / f"{safe}.sqlite"


@click.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="the audit's TOML file (`--example` prints one)")
@click.option("--example", is_flag=True, help="print a commented example config and exit")
@click.option("--store", "store_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="SQLite results store (default: the config's store, else the cache's audits/NAME.sqlite)")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--ray-address", envvar="RAY_ADDRESS", default=None, help="Ray cluster address (or $RAY_ADDRESS)")
@click.option("--workers", type=AtLeast(1), default=None, help="local processes at once (default: the config's, 1)")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="folder for report.html/.md/.json (default: beside the store)")
@click.option("--progress/--no-progress", default=True)
def audit(config_path: Path | None, example: bool, store_path: Path | None, executor: str, ray_address: str | None,
          workers: int | None, out_dir: Path | None, progress: bool) -> None:
    """Run every cell of an audit grid not yet in its store, then write the HTML, Markdown and JSON reports."""
    from sslaudit.grid.config import EXAMPLE, BadAuditConfig, load_config

    if example:
        click.echo(EXAMPLE, nl=False)
        return
    if config_path is None:
        raise click.UsageError("give --config audit.toml (`sslaudit audit --example > audit.toml` writes one)")
    try:
        config = load_config(config_path)
    except BadAuditConfig as err:
        raise click.ClickException(str(err)) from err
    from sslaudit.grid.run import run_audit
    from sslaudit.grid.store import ResultStore

    store = ResultStore(store_path or (Path(config.store) if config.store else default_store(config.name)))
    click.echo(f"audit {config.name!r}: {len(config.cells())} cells, store {store.path}", err=True)
    summary = friendly(lambda: run_audit(config, store, executor=executor, workers=workers, ray_address=ray_address,
                                         progress=progress))
    click.echo(f"ran {summary['ran']} cells, skipped {summary['skipped']} already stored, "
               f"{summary['wall_seconds']:.0f} s", err=True)
    out = out_dir or store.path.parent
    paths = {kind: out / f"{store.path.stem}.{kind}" for kind in ("html", "md", "json")}
    from sslaudit.report.audit_json import write_audit_reports

    write_audit_reports(store.audit_document(summary["keys"]), **paths)
    click.echo("wrote " + ", ".join(str(p) for p in paths.values()), err=True)

"""``sslaudit report``: an audit's findings as JSON, Markdown and one self-contained HTML page.

The argument is an audit document (``*.json``, schema ``sslaudit.audit/1``) or the SQLite results store
an audit wrote. The executive summary and the findings are printed; ``--html``, ``--md`` and ``--json``
write the reports (each atomically). Every mistake is one line.

>>> main.add_command(report)  # in sslaudit/cli.py  # doctest: +SKIP
$ sslaudit report audit.sqlite --html audit.html --md audit.md --json audit.json
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

import click

from sslaudit.cli_options import check_writable, friendly

SQLITE_MAGIC = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file


def load_document(source: Path) -> dict:
    """The audit document in ``source``: a ``.json`` document, else an SQLite results store."""
    from sslaudit.report.audit_json import check_audit, load_audit

    if not source.is_file():
        raise FileNotFoundError(f"no audit document or results store at {source}")
    if source.suffix.lower() == ".json":
        return load_audit(source)
    with source.open("rb") as handle:
        if handle.read(len(SQLITE_MAGIC)) != SQLITE_MAGIC:
            raise ValueError(f"{source} is neither an audit document (.json) nor an SQLite results store; give "
                             "the .sqlite file `sslaudit audit` wrote, or a .json audit document")
    try:
        from sslaudit.grid.store import ResultStore

        store = ResultStore(source)
        try:
            doc = store.audit_document()
        finally:
            store.close()
    except sqlite3.DatabaseError as err:
        raise ValueError(f"{source} is not an sslaudit results store ({err}); give the .sqlite file an audit "
                         "wrote, or an audit document ending in .json") from err
    if not doc.get("cells"):
        raise ValueError(f"the results store {source} holds no finished cell yet; run `sslaudit audit` first")
    return check_audit(doc, str(source))


@click.command("report")
@click.argument("source", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--html", "html_path", type=click.Path(path_type=Path), default=None,
              help="Write the report as one self-contained HTML page (figures inlined, no external requests).")
@click.option("--md", "md_path", type=click.Path(path_type=Path), default=None, help="Write the Markdown report.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Write the audit document as JSON (NaN as null); `sslaudit report` reads it back.")
def report(source: Path, html_path: Path | None, md_path: Path | None, json_path: Path | None) -> None:
    """Report on an audit: SOURCE is its results store (.sqlite) or an audit document (.json).

    Prints the executive summary and the findings, and writes the reports asked for.
    """
    from sslaudit.report.audit_json import write_audit_reports
    from sslaudit.report.audit_sections import analyse
    from sslaudit.report.cell_groups import defense_label

    for path, option in ((html_path, "--html"), (md_path, "--md"), (json_path, "--json")):
        if path is not None:
            check_writable(path, option)
    doc = friendly(lambda: load_document(source))
    analysis = friendly(lambda: analyse(doc))
    click.echo(analysis.title)
    for paragraph in analysis.summary:
        click.echo("\n" + paragraph)
    click.echo("")
    for finding in analysis.findings:
        click.echo(f"{finding.severity:<6}  {finding.victim} · {defense_label(finding.defense)}: {finding.text}")
    written = friendly(lambda: write_audit_reports(doc, html=html_path, md=md_path, json=json_path))
    for path in written:
        click.echo(f"wrote {path}")

"""Read an audit document (schema ``sslaudit.audit/1``) and write its reports: JSON, Markdown, HTML.

The JSON report is the audit document itself, NaN and infinities written as ``null`` so any JSON reader
accepts it; :func:`load_audit` reads it back. Every file is written atomically (a temporary file beside
it, then ``os.replace``), so a reader never sees half a report.

>>> write_audit_reports(load_audit("audit.json"), html="audit.html", md="audit.md")  # doctest: +SKIP
[PosixPath('audit.html'), PosixPath('audit.md')]
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from sslaudit.report.audit_sections import analyse
from sslaudit.report.json import _finite
from sslaudit.score_cache import write_atomically

AUDIT_SCHEMA = "sslaudit.audit/1"


def audit_to_json(doc: Mapping[str, Any], indent: int | None = 2) -> str:
    """The audit document as strict JSON (NaN and infinities as null)."""
    return json.dumps(_finite(dict(doc)), indent=indent, allow_nan=False)


def check_audit(doc: Any, source: str = "the audit document") -> dict:
    """``doc`` if it is an ``sslaudit.audit/1`` document with a list of cells, else a one-line ValueError."""
    if not isinstance(doc, dict):
        raise ValueError(f"{source} is not an audit document (a JSON object with schema_version {AUDIT_SCHEMA!r})")
    version = doc.get("schema_version")
    if version != AUDIT_SCHEMA:
        raise ValueError(f"{source} has schema_version {version!r}; this sslaudit reads {AUDIT_SCHEMA!r} "
                         "(write one with `sslaudit report STORE --json out.json`)")
    if not isinstance(doc.get("cells"), list):
        raise ValueError(f"{source} has no list of cells")
    return doc


def load_audit(path: str | Path) -> dict:
    """The audit document in the JSON file at ``path`` (FileNotFoundError, or a one-line ValueError)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no audit document at {path}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not JSON ({err}); give an audit document written by `sslaudit report`") from err
    return check_audit(doc, str(path))


def write_audit_reports(doc: Mapping[str, Any], html: str | Path | None = None, md: str | Path | None = None,
                        json: str | Path | None = None) -> list[Path]:
    """Write the requested reports of ``doc`` (each atomically); returns the paths written, in that order.
    Everything is rendered before the first file is written, so a bad document leaves no file behind."""
    from sslaudit.report.audit_html import audit_html
    from sslaudit.report.audit_markdown import audit_markdown

    check_audit(doc)
    texts: list[tuple[Path, str]] = []
    if html is not None or md is not None:
        analysis = analyse(doc)
        if html is not None:
            texts.append((Path(html), audit_html(analysis)))
        if md is not None:
            texts.append((Path(md), audit_markdown(analysis)))
    if json is not None:
        texts.append((Path(json), audit_to_json(doc) + "\n"))
    umask = os.umask(0o022)
    os.umask(umask)
    for path, text in texts:
        write_atomically(path, text)
        path.chmod(0o666 & ~umask)  # the temporary file was private (0600); a report is for sharing
    return [path for path, _ in texts]

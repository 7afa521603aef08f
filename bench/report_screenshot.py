"""Render an audit document to its HTML report and screenshot it in headless Chromium.

    python bench/report_screenshot.py audit.json shot.png [--html report.html] [--width 1200] [--height 3000]

The HTML goes to ``--html`` (default: a temporary file, removed afterwards); Chromium comes from
``apt-get install chromium``.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from sslaudit.report.audit_json import load_audit, write_audit_reports
from sslaudit.report.browser import find_chromium, screenshot


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("audit", type=Path, help="an audit document (.json, schema sslaudit.audit/1)")
    parser.add_argument("png", type=Path, help="where to save the screenshot")
    parser.add_argument("--html", type=Path, default=None, help="keep the rendered HTML here")
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds Chromium may take")
    args = parser.parse_args(argv)
    if find_chromium() is None:
        print("error: no Chromium found; install it (apt-get install chromium)", file=sys.stderr)
        return 1
    try:
        doc = load_audit(args.audit)
        with tempfile.TemporaryDirectory(prefix="sslaudit-report-") as tmp:
            html = args.html or Path(tmp) / "report.html"
            write_audit_reports(doc, html=html)
            shot = screenshot(html, args.png, width=args.width, height=args.height, timeout=args.timeout)
    except (FileNotFoundError, ValueError, ImportError, RuntimeError, TimeoutError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 1
    print(f"saved {shot} ({shot.stat().st_size:,} bytes) from {html}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Copy the benchmark tables from ``bench/results/*.md`` into the README between markers.

    python bench/readme.py   # replaces <!-- bench:NAME --> ... <!-- /bench:NAME --> blocks
"""
from __future__ import annotations

import re
from pathlib import Path

from common import RESULTS

README = RESULTS.parent.parent / "README.md"


def splice(text: str, name: str, table: str) -> str:
    pattern = re.compile(rf"(<!-- bench:{name} -->\n).*?(<!-- /bench:{name} -->)", re.S)
    return pattern.sub(lambda m: m.group(1) + table.replace("## ", "### ", 1).strip() + "\n" + m.group(2), text)


def main() -> None:
    text = README.read_text()
    for path in sorted(RESULTS.glob("*.md")):
        text = splice(text, path.stem, path.read_text())
    README.write_text(text)


if __name__ == "__main__":
    main()

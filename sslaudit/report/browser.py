"""Headless Chromium for the HTML report: a screenshot of a page, or its DOM after scripts ran.

Chromium starts with a fresh profile in a temporary folder and with its own background traffic off
(no component updates, sync, first-run or background networking), so the only requests it makes are
the page's own. ``find_chromium()`` is None where no Chromium is installed (``apt-get install chromium``).

>>> screenshot("report.html", "shot.png", width=1200, height=3000)  # doctest: +SKIP
PosixPath('shot.png')
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Sequence

CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "chromium", "chromium-browser")
QUIET_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
               "--disable-component-update", "--disable-sync", "--disable-extensions", "--disable-default-apps",
               "--disable-domain-reliability", "--disable-client-side-phishing-detection", "--no-pings",
               "--disable-features=NetworkTimeServiceQuerying,OptimizationHints,MediaRouter,Translate",
               "--hide-scrollbars", "--mute-audio")


def find_chromium() -> str | None:
    """The first Chromium executable found, or None."""
    for candidate in CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def _url(page: str | Path) -> str:
    """``page`` unchanged when it is a URL, else the ``file://`` URL of the file."""
    text = str(page)
    if text.startswith(("http://", "https://", "file://")):
        return text
    path = Path(page).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no page at {path}")
    return path.as_uri()


def run_chromium(page: str | Path, *flags: str, timeout: float = 60, chromium: str | None = None
                 ) -> subprocess.CompletedProcess:
    """Chromium on ``page`` (a file or a URL) with :data:`QUIET_FLAGS`, a fresh profile and ``flags``."""
    executable = chromium or find_chromium()
    if executable is None:
        raise FileNotFoundError("no Chromium found; install it (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="sslaudit-chromium-") as profile:
        command = [executable, *QUIET_FLAGS, f"--user-data-dir={profile}", *flags, _url(page)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as err:
            raise TimeoutError(f"Chromium did not finish {_url(page)} within {timeout:g} s") from err
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"Chromium exited with {done.returncode} on {_url(page)}: {last}")
    return done


def screenshot(page: str | Path, png: str | Path, *, width: int = 1200, height: int = 3000, timeout: float = 60,
               chromium: str | None = None, extra_flags: Sequence[str] = ()) -> Path:
    """Render ``page`` in a ``width`` × ``height`` window and save a PNG screenshot at ``png``."""
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    run_chromium(page, f"--screenshot={png}", f"--window-size={width},{height}", *extra_flags, timeout=timeout,
                 chromium=chromium)
    if not png.is_file():
        raise RuntimeError(f"Chromium wrote no screenshot at {png}")
    return png


def dump_dom(page: str | Path, *, timeout: float = 60, chromium: str | None = None,
             extra_flags: Sequence[str] = ()) -> str:
    """The page's DOM as Chromium serialises it once the page has loaded (``extra_flags``: e.g. a proxy)."""
    return run_chromium(page, "--dump-dom", *extra_flags, timeout=timeout, chromium=chromium).stdout

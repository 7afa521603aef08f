"""The HTML audit report in a real browser: headless Chromium renders it, and it requests nothing else.

Skipped where Chromium is missing (CI installs it: ``apt-get install chromium``). Chromium is pointed
at a local logging HTTP proxy for every address, so any request made, to any host, is logged; the
control page below proves the log sees an external image. Chromium itself calls a few of its own
services at start-up whatever the page (component updates, account and time checks, even with an empty
page and every background flag off): those hosts are listed, and any other host fails the test.
"""
from __future__ import annotations

import struct
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from audit_helpers import bench_audit, make_cell, sweep

from sslaudit.report.audit_html import audit_html
from sslaudit.report.browser import dump_dom, find_chromium, screenshot

CHROMIUM_OWN_HOSTS = {"update.googleapis.com", "accounts.google.com", "clients2.google.com",
                      "clientservices.googleapis.com", "redirector.gvt1.com", "safebrowsing.googleapis.com",
                      "optimizationguide-pa.googleapis.com", "edgedl.me.gvt1.com"}
pytestmark = pytest.mark.skipif(find_chromium() is None, reason="Chromium is not installed (apt-get install chromium)")


def png_pixels_vary(data: bytes) -> tuple[int, int, bool]:
    """(width, height, whether the image holds more than one colour), read with zlib and struct alone: a
    single-colour image's filtered scanlines hold only a handful of distinct byte values."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    chunks, offset = [], 8
    while offset < len(data):
        (length,), kind = struct.unpack(">I", data[offset:offset + 4]), data[offset + 4:offset + 8]
        if kind == b"IDAT":
            chunks.append(data[offset + 8:offset + 8 + length])
        offset += 12 + length
    return width, height, len(set(zlib.decompress(b"".join(chunks)))) > 16


def _blank_png(width: int = 64, height: int = 64) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    rows = b"".join(b"\x00" + b"\xff\xff\xff" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def report_page(tmp_path_factory) -> Path:
    pytest.importorskip("matplotlib")
    doc = bench_audit('audit <img src="https://evil.example/x.png">')
    doc["cells"] += sweep("mse", {500: [0.85, 0.9, 0.88]}, defense="noise:sigma=2.0", utility=0.8)
    doc["cells"].append(make_cell(attack="mse", budget=5000, ownership=[
        {"test": "dataset-inference", "statistic": 9.1, "p_value": 2e-5, "verdict": "stolen-or-victim",
         "n": 5000, "alpha": 0.01, "extra": {}}]))
    page = tmp_path_factory.mktemp("report") / "report.html"
    page.write_text(audit_html(doc))
    return page


def test_the_blank_check_can_fail() -> None:
    assert png_pixels_vary(_blank_png()) == (64, 64, False)


def test_chromium_renders_the_report(report_page: Path, tmp_path: Path) -> None:
    shot = screenshot(report_page, tmp_path / "shot.png", width=1200, height=3000, timeout=60)
    data = shot.read_bytes()
    assert len(data) > 20_000
    assert png_pixels_vary(data) == (1200, 3000, True)


class _Logged(BaseHTTPRequestHandler):
    """A proxy that serves the report for its own address and answers 404 to everything else, logging all."""

    page: bytes = b""
    own: str = ""
    log: list[tuple[str, str, str]] = []

    def _answer(self) -> None:
        self.log.append((self.command, self.path, self.headers.get("Referer", "")))
        ok = self.command == "GET" and self.path in (self.own, "/report.html")
        self.send_response(200 if ok else 404)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(self.page) if ok else 0))
        self.end_headers()
        if ok:
            self.wfile.write(self.page)

    do_GET = do_HEAD = do_POST = do_CONNECT = _answer

    def log_message(self, *args: object) -> None:
        pass


def _host(method: str, target: str) -> str:
    return target.split(":")[0] if method == "CONNECT" else urlsplit(target).hostname or ""


def _requests_made(page: bytes) -> tuple[list[tuple[str, str, str]], str, str]:
    """(every request Chromium made as (method, target, referer), the page's URL, the DOM) loading ``page``
    through the logging proxy."""
    log: list[tuple[str, str, str]] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (_Logged,), {"page": page, "log": log}))
    url = f"http://127.0.0.1:{server.server_port}/report.html"
    server.RequestHandlerClass.own = url
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        dom = dump_dom(url, timeout=60, extra_flags=(f"--proxy-server=http://127.0.0.1:{server.server_port}",
                                                    "--proxy-bypass-list=<-loopback>"))
    finally:
        server.shutdown()
        server.server_close()
    return log, url, dom


def test_the_report_requests_nothing_but_itself(report_page: Path) -> None:
    log, url, dom = _requests_made(report_page.read_bytes())
    assert [entry for entry in log if entry[1] == url] == [("GET", url, "")]
    assert [entry for entry in log if entry[2]] == []  # nothing was fetched on the page's behalf
    assert {_host(method, target) for method, target, _ in log} - CHROMIUM_OWN_HOSTS == {"127.0.0.1"}
    assert dom.count("<svg") == 2 and "Executive summary" in dom and "2e-05" in dom


def test_the_request_log_sees_an_external_fetch() -> None:
    log, url, _ = _requests_made(b'<!DOCTYPE html><link rel="icon" href="data:,">'
                                 b'<img src="http://external.example/pixel.png">')
    assert ("GET", url, "") in log
    assert ("GET", "http://external.example/pixel.png", url.removesuffix("report.html")) in log, log
    assert "external.example" in {_host(method, target) for method, target, _ in log} - CHROMIUM_OWN_HOSTS

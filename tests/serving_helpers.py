"""Loopback servers for the serving tests: an in-thread uvicorn, and keys files with known keys."""
from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

import torch
import uvicorn

from sslaudit.models import InputSpec, build_encoder
from sslaudit.serving.accounts import hash_key
from sslaudit.victim import Victim

KEYS = {"alice": "sk-alice", "bob": "sk-bob", "carol": "sk-carol", "dave": "sk-dave"}
KEYS_TOML = f"""
[defaults]
budget = 100000

[accounts.alice]
key_sha256 = "{hash_key(KEYS['alice'])}"

[accounts.bob]
key_sha256 = "{hash_key(KEYS['bob'])}"
budget = 20

[accounts.carol]
key_sha256 = "{hash_key(KEYS['carol'])}"
rate_limit = 5
burst = 8

[accounts.dave]
key_sha256 = "{hash_key(KEYS['dave'])}"
defenses = ["noise:sigma=0.5"]
"""


def tiny_victim(seed: int = 0) -> Victim:
    torch.manual_seed(seed)
    encoder = build_encoder("convnet-small", InputSpec(channels=1, size=28)).eval()
    return Victim(encoder, {"method": "simclr", "arch": "convnet-small", "config_key": "test",
                           "input": encoder.spec.to_dict()})


def write_keys(folder: Path, text: str = KEYS_TOML) -> Path:
    path = folder / "keys.toml"
    path.write_text(text)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running(app: object):
    """Serve ``app`` on a free loopback port in a thread; yields ``host:port``; stops on exit."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)

"""A live Open Inference Protocol v2 endpoint as a :class:`~sslaudit.api.RepresentationAPI`.

Every attack runs unchanged against ``RemoteAPI``: it reads the input spec and the feature size from
the model's metadata and the account's usage, sends binary tensors in batches, waits out 429
``Retry-After``, retries transient failures (connection errors, 5xx) with backoff, and keeps every paid
answer in a local SQLite cache keyed by the API key and the image bytes, so an interrupted purchase
resumes without paying twice. Each request carries an id derived from its images, so a retry of a
request the server answered but whose response was lost is served again uncharged (servers that keep
answers by request id, as ``sslaudit serve`` does). ``ledger`` reports the server's own accounting.

>>> api = RemoteAPI("http://127.0.0.1:8000/v2/models/simclr", api_key="sk-...")  # doctest: +SKIP
>>> feats = api.query(images)  # doctest: +SKIP
>>> api.ledger("attacker").images  # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import torch

from sslaudit.api import InvalidQuery, Ledger, QueryBudgetExceeded, QueryRefused, check_account
from sslaudit.models import InputSpec
from sslaudit.serving.protocol import BUDGET_EXHAUSTED, HEADER_LENGTH, decode_infer_response, encode_infer_request


class RemoteError(RuntimeError):
    """The endpoint failed or refused in a way no retry fixes; the message is the server's."""


class AnswerCache:
    """Paid answers by (key digest, image digest) in SQLite: what was bought is never bought again."""

    def __init__(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT, image TEXT, features BLOB, "
                           "PRIMARY KEY (key, image))")
        self._lock = threading.Lock()

    def get(self, key: str, digests: list[str]) -> dict[str, torch.Tensor]:
        with self._lock:
            rows = [self._conn.execute("SELECT features FROM answers WHERE key = ? AND image = ?", (key, d)).fetchone()
                    for d in digests]
        return {d: torch.frombuffer(bytearray(r[0]), dtype=torch.float32) for d, r in zip(digests, rows) if r}

    def put(self, key: str, digests: list[str], features: torch.Tensor) -> None:
        rows = [(key, d, f.contiguous().numpy().tobytes()) for d, f in zip(digests, features.float())]
        with self._lock:
            self._conn.executemany("INSERT OR REPLACE INTO answers VALUES (?, ?, ?)", rows)


def image_digest(image: torch.Tensor) -> str:
    return hashlib.sha256(image.float().contiguous().numpy().tobytes()).hexdigest()[:40]


class RemoteAPI:
    """``query``/``ledger`` over HTTP against ``url`` (``http://host:port/v2/models/NAME``).

    ``api_key`` is used for every account name unless ``keys`` maps that account to its own key (sybils).
    ``cache``: the answer cache's file (None: ``~/.cache/sslaudit/remote/answers.sqlite``; False: none).
    """

    def __init__(self, url: str, api_key: str | None = None, *, keys: dict[str, str] | None = None,
                 batch_size: int = 256, cache: str | Path | bool | None = None, retries: int = 6,
                 max_wait: float = 60.0, timeout: float = 60.0, binary: bool = True) -> None:
        self.url, self.keys, self.api_key = url.rstrip("/"), dict(keys or {}), api_key
        self.retries, self.max_wait, self.binary = retries, max_wait, binary
        self._http = httpx.Client(timeout=timeout)
        self.metadata = meta = self._request("GET", self.url, key=None).json()
        shape = next(i["shape"] for i in meta["inputs"])
        if len(shape) != 4 or shape[2] != shape[3]:
            raise RemoteError(f"{url} takes input shape {shape}; sslaudit needs images (-1, C, S, S)")
        self.spec = InputSpec(int(shape[1]), int(shape[2]))
        self.max_batch = int((meta.get("parameters") or {}).get("max_batch", batch_size))
        self.batch_size = min(batch_size, self.max_batch)
        self.dim = int(next(o["shape"] for o in meta["outputs"])[-1])
        if api_key or self.keys:  # the size this account is served (defences may change it)
            self.dim = int(self.usage(next(iter(self.keys), "default")).get("dim", self.dim))
        if cache is None:
            from sslaudit.zoo import cache_dir

            cache = cache_dir() / "remote" / "answers.sqlite"
        self._cache = AnswerCache(cache) if cache else None

    def _key(self, account: str) -> str:
        key = self.keys.get(account, self.api_key)
        if not key:
            raise InvalidQuery(f"no API key for account {account!r}; pass api_key= or keys={{account: key}}")
        return key

    def _request(self, method: str, url: str, *, key: str | None, **kwargs: object) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}) or {})  # type: ignore[arg-type]
        if key:
            headers["Authorization"] = f"Bearer {key}"
        delay = 0.5
        for attempt in range(self.retries + 1):
            try:
                response = self._http.request(method, url, headers=headers, **kwargs)  # type: ignore[arg-type]
            except httpx.TransportError as err:
                if attempt == self.retries:
                    raise RemoteError(f"{url} unreachable after {attempt + 1} tries: {err}") from err
                time.sleep(delay)
                delay = min(delay * 2, self.max_wait)
                continue
            if response.status_code == 429 and attempt < self.retries:
                time.sleep(min(float(response.headers.get("retry-after", delay)), self.max_wait))
            elif response.status_code >= 500 and attempt < self.retries:
                time.sleep(delay)
                delay = min(delay * 2, self.max_wait)
            else:
                return _raise_for(response)
        raise AssertionError("unreachable")

    def usage(self, account: str = "default") -> dict:
        """The server's accounting for ``account``'s key (images, calls, cost, budget, remaining, dim)."""
        return self._request("GET", f"{self.url}/usage", key=self._key(account)).json()

    def ledger(self, account: str) -> Ledger:
        u = self.usage(check_account(account))
        return Ledger(images=u["images"], calls=u["calls"], cost=u["cost"], compute_seconds=u["compute_seconds"],
                      budget=u["budget"])

    def query(self, images: torch.Tensor, account: str = "default") -> torch.Tensor:
        """Features for ``images`` bought with ``account``'s key; answers already paid for come from the cache."""
        key = self._key(check_account(account))
        tag = hashlib.sha256(f"{self.url}\n{key}".encode()).hexdigest()[:32]
        images = images.detach().cpu().float()
        digests = [image_digest(im) for im in images]
        known = self._cache.get(tag, digests) if self._cache else {}
        missing = [i for i, d in enumerate(digests) if d not in known]
        for start in range(0, len(missing), self.batch_size):
            index = missing[start:start + self.batch_size]
            batch_digests = [digests[i] for i in index]
            request_id = hashlib.sha256((tag + "".join(batch_digests)).encode()).hexdigest()[:32]
            body, length = encode_infer_request({"images": images[index]}, binary=self.binary, request_id=request_id)
            headers = {"Content-Type": "application/octet-stream" if length else "application/json"}
            if length is not None:
                headers[HEADER_LENGTH] = str(length)
            response = self._request("POST", f"{self.url}/infer", key=key, content=body, headers=headers)
            header = response.headers.get(HEADER_LENGTH)
            features = next(iter(decode_infer_response(response.content, int(header) if header else None).values()))
            if self._cache:
                self._cache.put(tag, batch_digests, features)
            known.update(zip(batch_digests, features))
        return torch.stack([known[d] for d in digests]) if digests else torch.empty(0, self.dim)


def _raise_for(response: httpx.Response) -> httpx.Response:
    """``response`` if it succeeded, else the sslaudit error its status and ``{"error"}`` mean."""
    if response.status_code < 400:
        return response
    try:
        body = response.json()
        message, code = body.get("error", response.text), body.get("code")
    except (ValueError, AttributeError):
        message, code = response.text[:300], None
    status = response.status_code
    if status == 400 or status == 413:
        raise InvalidQuery(f"the endpoint refused the request ({status}): {message}")
    if status == 403 and code == BUDGET_EXHAUSTED:
        raise QueryBudgetExceeded(message)
    if status == 403:
        raise QueryRefused(message)
    raise RemoteError(f"{response.request.url} answered {status}: {message}")

"""A per-deployment secret from which defences draw their randomness.

The attacker knows the code, every public setting and their own account name,
so a defence's noise must not follow from those: it comes from 32 random
bytes held by the deployment (``secrets.token_bytes``), mixed with the account
name (and, for defences that must answer a repeated image identically, the
image bytes) by keyed BLAKE2b. Reproducible runs ask for it explicitly:
``DeploymentSecret.fixed("label")``, ``DeploymentSecret.from_hex(...)``, or the
environment variable ``SSLAUDIT_SECRET`` (hex) read by
:meth:`DeploymentSecret.from_env`, which is what a :class:`SimulatedAPI` uses
when given no secret. The repr never shows the key.

>>> secret = DeploymentSecret.fixed("tests")
>>> secret.seed("noise", "alice") == DeploymentSecret.fixed("tests").seed("noise", "alice")
True
>>> secret.seed("noise", "alice") == secret.seed("noise", "bob")
False
>>> DeploymentSecret().seed("noise", "alice") == DeploymentSecret().seed("noise", "alice")
False
>>> repr(secret)
'DeploymentSecret(<hidden>, fixed)'
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets

import torch

ENV_VAR = "SSLAUDIT_SECRET"
_PERSON = b"sslaudit-seed-v1"  # BLAKE2b personalisation: at most 16 bytes


def _framed(*parts: bytes) -> bytes:
    """An unambiguous encoding: the part count, then each part with its 8-byte length."""
    out = [len(parts).to_bytes(8, "big")]
    for part in parts:
        out += [len(part).to_bytes(8, "big"), part]
    return b"".join(out)


def _image_bytes(image: torch.Tensor) -> list[bytes]:
    flat = image.detach().to("cpu", torch.float32).contiguous()
    return [repr(tuple(flat.shape)).encode(), flat.numpy().tobytes()]


class DeploymentSecret:
    """32 secret bytes (random by default) → per-account (and per-image) seeds and generators."""

    __slots__ = ("_key", "_fixed")

    def __init__(self, key: bytes | None = None) -> None:
        self._fixed = key is not None  # given by the user (reproducible), not drawn here
        if key is None:
            key = secrets.token_bytes(32)
        if not isinstance(key, bytes) or not 16 <= len(key) <= 64:
            raise ValueError("a DeploymentSecret key must be 16 to 64 bytes; pass None for a random one")
        self._key = key

    @classmethod
    def fixed(cls, label: str) -> "DeploymentSecret":
        """A reproducible secret derived from ``label`` (tests, reruns); anyone who knows the label has it."""
        if not isinstance(label, str) or not label:
            raise ValueError(f"fixed() needs a non-empty string label; got {label!r}")
        key = hashlib.blake2b(label.encode(), digest_size=32, person=b"sslaudit-fixed").digest()
        return cls(key)

    @classmethod
    def from_hex(cls, text: str) -> "DeploymentSecret":
        """A secret given as 32 to 128 hex digits (e.g. ``secrets.token_hex(32)``)."""
        try:
            key = bytes.fromhex(text.strip())
        except (AttributeError, ValueError):
            raise ValueError("a DeploymentSecret hex string must be 32 to 128 hex digits") from None
        if not 16 <= len(key) <= 64:
            raise ValueError("a DeploymentSecret hex string must be 32 to 128 hex digits")
        return cls(key)

    @classmethod
    def from_env(cls, var: str = ENV_VAR) -> "DeploymentSecret":
        """The secret in ``$SSLAUDIT_SECRET`` (hex) when set, else a fresh random one."""
        text = os.environ.get(var)
        return cls.from_hex(text) if text else cls()

    def digest(self, purpose: str, account: str, image: torch.Tensor | None = None, size: int = 32) -> bytes:
        """Keyed BLAKE2b of (purpose, account[, image]): the root of every derived seed."""
        if not isinstance(purpose, str) or not purpose:
            raise ValueError(f"purpose must be a non-empty string; got {purpose!r}")
        if not isinstance(account, str):
            raise ValueError(f"account must be a string; got {type(account).__name__}")
        parts = [purpose.encode(), account.encode()]
        if image is not None:
            parts += _image_bytes(image)
        return hashlib.blake2b(_framed(*parts), key=self._key, digest_size=size, person=_PERSON).digest()

    def seed(self, purpose: str, account: str, image: torch.Tensor | None = None) -> int:
        """A 64-bit seed for (purpose, account[, image])."""
        return int.from_bytes(self.digest(purpose, account, image, size=8), "big")

    def generator(self, purpose: str, account: str, image: torch.Tensor | None = None,
                  device: str | torch.device = "cpu") -> torch.Generator:
        """A torch generator seeded with :meth:`seed`."""
        return torch.Generator(device=device).manual_seed(self.seed(purpose, account, image))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DeploymentSecret) and hmac.compare_digest(self._key, other._key)

    def __hash__(self) -> int:
        return hash(self.digest("hash", ""))

    def __repr__(self) -> str:
        return f"DeploymentSecret(<hidden>, {'fixed' if self._fixed else 'random'})"

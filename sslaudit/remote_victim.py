"""A live endpoint as a victim: its features, bought through an evaluation key, scored like any encoder.

The audit scores the victim by the protocol's probes on its frozen features; behind a URL those
features can only be bought. :class:`RemoteEncoder` is a module whose forward pass queries the endpoint
(one query per image, answers cached on disk by :class:`~sslaudit.remote.RemoteAPI`, so the ~65,000
evaluation images are bought once). Its content hash for the score cache covers the URL, the metadata
and the answers to 8 fixed images: if the model behind the URL changes, old scores are not reused.

>>> victim = remote_victim("http://127.0.0.1:8000/v2/models/simclr", api_key="sk-eval")  # doctest: +SKIP
"""
from __future__ import annotations

import hashlib

import torch
from torch import nn

from sslaudit.remote import RemoteAPI
from sslaudit.victim import Victim

EVAL_ACCOUNT = "evaluation"
FINGERPRINT_IMAGES = 8


class RemoteEncoder(nn.Module):
    """``forward(images)`` = the endpoint's answers for ``images``, bought with ``api``'s key."""

    def __init__(self, api: RemoteAPI, account: str = EVAL_ACCOUNT) -> None:
        super().__init__()
        self.api, self.account = api, account
        self.spec, self.dim = api.spec, api.dim
        self.arch = "remote:" + hashlib.sha256(api.url.encode()).hexdigest()[:12]
        gen = torch.Generator().manual_seed(0)
        probe = torch.rand(FINGERPRINT_IMAGES, api.spec.channels, api.spec.size, api.spec.size, generator=gen)
        self.register_buffer("fingerprint", api.query(probe, account))  # in the state dict: the score-cache key

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.api.query(images.float().clamp(0, 1).cpu(), self.account).to(images.device)


def remote_victim(url: str, api_key: str, **remote_options: object) -> Victim:
    """The endpoint at ``url`` as a :class:`Victim` scored through ``api_key``'s account."""
    api = RemoteAPI(url, api_key, **remote_options)  # type: ignore[arg-type]
    encoder = RemoteEncoder(api)
    method = str(api.metadata.get("parameters", {}).get("method", "") or "remote")
    card = {"method": method, "arch": encoder.arch, "config_key": "remote", "url": url,
            "input": encoder.spec.to_dict(), "scores": {}}
    return Victim(encoder, card)

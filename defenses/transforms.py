"""B4B per-account transforms: every account sees the features through its own secret, fixed map.

From "Bucks for Buckets (B4B): Active Defenses Against Stealing Encoders"
(Dubiński, Pawlak, Boenisch, Trzciński & Dziedzic, NeurIPS 2023; reference code
``stapaw/b4b-active-encoder-defense``: ``src/transforms/affine.py``,
``src/transforms/binary.py``, ``src/binary/utils.py``,
``end2end-stealing/train_mapper.py``). A thief who splits queries over sybil
accounts gets answers in different spaces and must first learn to map one onto
another, which costs queries; an honest user trains a head in their own space
and loses nothing. ``kind`` (d = feature size):

* ``affine``: ``x * s + t``, ``s, t ~ U(-scale, scale)^d`` (B4B: scale 1);
* ``pad_shuffle``: append ``pad_dim`` values ``~ N(0, 1)``, drawn once per
  account (constant across queries), then a fixed permutation of the
  ``d + pad_dim`` coordinates; ``pad_dim`` defaults to ``d`` (B4B's configs use
  ``base_dim = pad_dim``);
* ``affine_pad_shuffle``: ``affine`` then ``pad_shuffle`` (the default [choice]:
  it combines all three of B4B's feature-space steps);
* ``binary``: ``2d`` random hyperplanes, bits ``1[x . w_j > b_j]`` in
  ``{0, 1}^{2d}``, as the code draws them: ``w_j = (-tan(2 pi u), 1)`` with
  ``u ~ U(0, 1)^{d-1}``, through a point ``p_j`` of the 1,000-step grid in
  ``[0, 1]^d`` (``b_j = w_j . p_j``); computed in float32 like the code;
* ``full_affine``: ``x A + B``, ``A ~ U(-scale, scale)^{d x d}``,
  ``B ~ U(-scale, scale)^d`` (B4B's end-to-end sybil experiment).

Every parameter comes from ``secret.generator("transform-" + kind, account)``,
so a map is fixed per account (every call, every thread), differs between
accounts and deployments, and cannot be rebuilt from the code and an account
name. It is drawn once per account into a
:class:`~sslaudit.defenses.common.PerAccount` cache (a copy per device and
dtype), which is only a cache: the map is a function of (secret, kind, account, d).

Known weaknesses (the audit measures them, the defence does not hide them):
the pad values are constant, so an attacker drops them as the coordinates with
zero variance across queries, and undoes the shuffle with them; ``affine`` and
``full_affine`` are invertible linear maps, so a linear probe is unaffected and
a sybil learns the map between two accounts by least squares on a few paired
queries (B4B's own remapping study measures how many). ``binary`` draws its
hyperplanes through ``[0, 1]^d`` as the code does, which suits non-negative
features of order 1 (B4B's post-ReLU SimSiam features) [INFER]; on other
scales many bits may be constant.

Public API (used by the B4B defence): :class:`AccountTransform` with
``apply(account, features)``, ``map_for(account, dim)`` and ``out_dim(dim)``;
an :class:`AccountMap` has ``apply(features)`` and ``out_dim``.

>>> from sslaudit.secret import DeploymentSecret
>>> t = AccountTransform(kind="pad_shuffle", pad_dim=3, secret=DeploymentSecret.fixed("doc"))
>>> t.out_dim(5), t.apply("alice", torch.ones(2, 5)).shape
(8, torch.Size([2, 8]))
>>> torch.equal(t.apply("alice", torch.ones(1, 5)), t.apply("alice", torch.ones(1, 5)))
True
>>> AccountTransform(kind="rotate")
Traceback (most recent call last):
ValueError: transform kind must be one of affine, pad_shuffle, affine_pad_shuffle, binary, full_affine; got 'rotate'
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field, fields, replace

import torch

from sslaudit.defenses.common import PerAccount, choice, integer, number
from sslaudit.registry import register_defense
from sslaudit.secret import DeploymentSecret

KINDS = ("affine", "pad_shuffle", "affine_pad_shuffle", "binary", "full_affine")
PADDED = ("pad_shuffle", "affine_pad_shuffle")
SCALED = ("affine", "affine_pad_shuffle", "full_affine")
_OWN = threading.Lock()  # module-level, so an instance stays copyable


@dataclass(frozen=True, eq=False)
class AccountMap:
    """One account's map of ``dim``-sized features: ``x*s + t``, then ``x @ matrix + offset`` (binary:
    ``x @ matrix > offset``), then ``cat(x, pad)[:, perm]``; each step present only if its tensors are."""

    kind: str
    dim: int
    s: torch.Tensor | None = None
    t: torch.Tensor | None = None
    matrix: torch.Tensor | None = None
    offset: torch.Tensor | None = None
    pad: torch.Tensor | None = None
    perm: torch.Tensor | None = None

    @property
    def out_dim(self) -> int:
        if self.perm is not None:
            return len(self.perm)
        return self.matrix.shape[1] if self.matrix is not None else self.dim

    def to(self, device: torch.device, dtype: torch.dtype) -> "AccountMap":
        """A copy with the float tensors on ``device`` as ``dtype`` (the permutation stays an index)."""
        tensors = {f.name: v for f in fields(self) if isinstance(v := getattr(self, f.name), torch.Tensor)}
        return replace(self, **{name: t.to(device, dtype) if t.is_floating_point() else t.to(device)
                                for name, t in tensors.items()})

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"this map takes (B, {self.dim}) features; got {tuple(x.shape)}")
        if self.s is not None and self.t is not None:
            x = x * self.s + self.t
        if self.matrix is not None and self.offset is not None:
            y = x @ self.matrix
            x = (y > self.offset).to(x.dtype) if self.kind == "binary" else y + self.offset
        if self.pad is not None and self.perm is not None:
            x = torch.cat([x, self.pad.expand(len(x), -1)], dim=1)[:, self.perm]
        return x


def draw_map(kind: str, dim: int, pad_dim: int, scale: float, generator: torch.Generator) -> AccountMap:
    """Draw one account's map from ``generator`` (float64 draws, stored as float32, on the CPU)."""
    def uniform(*shape: int) -> torch.Tensor:
        return (torch.rand(*shape, generator=generator, dtype=torch.float64) * 2 - 1) * scale

    parts: dict[str, torch.Tensor] = {}
    if kind in ("affine", "affine_pad_shuffle"):
        parts["s"], parts["t"] = uniform(dim), uniform(dim)
    if kind == "full_affine":
        parts["matrix"], parts["offset"] = uniform(dim, dim), uniform(dim)
    if kind == "binary":  # src/binary/utils.py: init_projection_parameters(2d, d)
        n = 2 * dim
        angles = 2 * math.pi * torch.rand(dim - 1, n, generator=generator, dtype=torch.float64)
        slopes = torch.cat([-torch.tan(angles), torch.ones(1, n, dtype=torch.float64)])
        grid = torch.linspace(0, 1, 1000, dtype=torch.float64)
        points = grid[torch.randint(0, 1000, (n, dim), generator=generator)]
        parts["matrix"], parts["offset"] = slopes, (slopes * points.T).sum(dim=0)
    if kind in PADDED:
        parts["pad"] = torch.randn(pad_dim, generator=generator, dtype=torch.float64)
        parts["perm"] = torch.randperm(dim + pad_dim, generator=generator)
    return AccountMap(kind, dim, **{k: v.float() if v.is_floating_point() else v for k, v in parts.items()})


@register_defense("transform")
@dataclass(kw_only=True)
class AccountTransform:
    """Serve each account ``map_for(account, d).apply(features)``: B4B's per-account transform of ``kind``."""

    kind: str = "affine_pad_shuffle"
    pad_dim: int | None = None  # padded kinds only; None: d
    scale: float | None = None  # affine draws only: U(-scale, scale); None: 1
    secret: DeploymentSecret | None = None
    _own: DeploymentSecret | None = field(default=None, init=False, repr=False, compare=False)
    _maps: PerAccount[dict] = field(default_factory=lambda: PerAccount(dict, derived=True), init=False, repr=False,
                                    compare=False)

    def __post_init__(self) -> None:
        self.kind = choice("transform", "kind", self.kind, KINDS)
        if self.pad_dim is not None:
            if self.kind not in PADDED:
                raise ValueError(f"transform pad_dim applies to kind=pad_shuffle or affine_pad_shuffle only; "
                                 f"got kind={self.kind!r}")
            self.pad_dim = integer("transform", "pad_dim", self.pad_dim, "pad_dim=512", minimum=0)
        if self.scale is not None:
            if self.kind not in SCALED:
                raise ValueError(f"transform scale applies to kind={', '.join(SCALED)} only; got kind={self.kind!r}")
            self.scale = number("transform", "scale", self.scale, "scale=1", minimum=0.0, strict=True)
        if self.secret is not None and not isinstance(self.secret, DeploymentSecret):
            raise ValueError("transform secret must be a DeploymentSecret (or None for the API's own)")

    def bind(self, secret: DeploymentSecret) -> "AccountTransform":
        """A fresh copy for one deployment: no maps yet, keyed by ``self.secret`` or else ``secret``."""
        return replace(self, secret=self.secret if self.secret is not None else secret)

    def out_dim(self, dim: int) -> int:
        """The served size for encoder features of size ``dim``."""
        dim = integer("transform", "dim", dim, "dim=512")
        if self.kind in PADDED:
            return dim + (dim if self.pad_dim is None else self.pad_dim)
        return 2 * dim if self.kind == "binary" else dim

    def _secret(self) -> DeploymentSecret:
        if self.secret is not None:
            return self.secret
        with _OWN:  # unbound: this instance's own secret, drawn once
            if self._own is None:
                self._own = DeploymentSecret.from_env()
            return self._own

    def map_for(self, account: str, dim: int, device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32) -> AccountMap:
        """``account``'s map of ``dim``-sized features (drawn on first use, then cached), on ``device``."""
        dim, device = integer("transform", "dim", dim, "dim=512"), torch.device(device)
        secret = self._secret()

        def get(cache: dict) -> AccountMap:
            base_key, key = (dim, torch.device("cpu"), torch.float32), (dim, device, dtype)
            if base_key not in cache:
                pad = dim if self.pad_dim is None else self.pad_dim
                scale = 1.0 if self.scale is None else self.scale
                cache[base_key] = draw_map(self.kind, dim, pad, scale, secret.generator("transform-" + self.kind,
                                                                                         account))
            if key not in cache:
                cache[key] = cache[base_key].to(device, dtype)
            return cache[key]

        return self._maps.update(account, get)

    def apply(self, account: str, features: torch.Tensor) -> torch.Tensor:
        """``features`` (B, d) as ``account`` sees them: (B, ``out_dim(d)``), same device and dtype."""
        if features.ndim != 2:
            raise ValueError(f"transform takes (B, d) features; got shape {tuple(features.shape)}")
        return self.map_for(account, features.shape[1], features.device, features.dtype).apply(features)

    def __call__(self, account: str, images: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return self.apply(account, features)

    def __getstate__(self) -> dict:
        """Copies (``copy.deepcopy``, other processes) drop the cache: the maps are rebuilt from the secret."""
        return {k: v for k, v in self.__dict__.items() if k != "_maps"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _maps=PerAccount(dict, derived=True))

"""The rotation watermark of Dziedzic, Dhawan, Kaleem, Guan, Papernot, "On the Difficulty of Defending
Self-Supervised Learning against Model Extraction", ICML 2022 (code cleverhans-lab/ssl-attacks-defenses,
``simclr.py::train``, ``watermark.py``, ``models/resnet_simclr.py::WatermarkMLP``).

While the victim trains, the encoder also learns a secret side task: a fixed random MLP head (the
reference's ``WatermarkMLP``: dim → 256 → 128 → 2) must tell the rotation class of an image from its
features. The head is *not* optimised (the reference's optimiser holds the encoder's parameters only),
so the encoder learns to satisfy a random head that only the owner has. Verification: the accuracy
of that head on a suspect's features of rotated images; a copy that reproduces the victim's features
inherits it, an independent encoder scores about 50 %.

Why this watermark (not SSLGuard, CCS 2022, or SSL-WM, NDSS 2024): it is verified black-box on
features through the owner's head, which is what a stolen copy in the victim's coordinates reproduces;
it costs one extra pass over the training images per epoch; SSLGuard needs a shadow encoder and a
trigger optimisation, and SSL-WM verifies on downstream classifiers, not on the encoder.

Choices and departures (each stated where it matters):

- task: exact quarter turns, k ∈ {0, 1} (0°, 90°) → class 0, k ∈ {2, 3} (180°, 270°) → class 1, the
  grid version of the reference's ``RandomRotation`` (0–180°) vs (180–360°): no interpolation, no cut
  corners, no ambiguous angles at the class boundaries of a 28 px image;
- schedule: the shared loop (``sslaudit.train.fit``) has no per-epoch hook, so the reference's pass
  over the watermark loader after each epoch is interleaved: every step adds ``weight`` × the
  cross-entropy of the step's own images, each rotated by a k drawn per image (one extra pass over the
  training set per epoch, no extra optimiser steps); SimCLR's augmentation stream is unchanged;
- randomness: the head and the rotations come from a :class:`~sslaudit.secret.DeploymentSecret`
  (purposes ``watermark-head``, ``watermark-rotations``), never from a public seed;
- verification (:mod:`sslaudit.ownership.watermark_verify`): the head's accuracy on a suspect's
  features of turned images, a binomial test against 0.5 and an exact rank test among fresh heads.

Only meaningful for suspects in the victim's feature coordinates (copies trained to reproduce its
answers); an encoder with its own coordinates (SSL-Small, any independent one) scores ~50 % either way.
The head is saved beside the victim (``<victim>.watermark.safetensors``); the secret itself never is.

>>> head = WatermarkHead.random(16, generator=torch.Generator().manual_seed(0))
>>> head(torch.randn(4, 16)).shape, any(p.requires_grad for p in head.parameters())
(torch.Size([4, 2]), False)
>>> rotate(torch.arange(4.0).view(1, 1, 2, 2), torch.tensor([2])).flatten().tolist()
[3.0, 2.0, 1.0, 0.0]
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from sslaudit.data import ImageData
from sslaudit.models import build_encoder
from sslaudit.secret import DeploymentSecret
from sslaudit.train import fit
from sslaudit.victim import BadCard, Victim, config_key, config_to_dict, load_matching, make_card
from sslaudit.victims.simclr import ProjectionHead, SimCLRConfig, simclr_loss

TASK = "rot90: k in {0,1} -> 0, k in {2,3} -> 1"
FORMAT = "sslaudit.watermark/1"
OWNER = "owner"  # the account name the owner's secret draws are keyed with


@dataclass(frozen=True, kw_only=True)
class WatermarkConfig:
    """``weight`` of the watermark loss beside NT-Xent and the head's hidden widths (the reference's 256, 128).

    Weight 10 (the reference's separate steps weigh 1, over 200 CIFAR epochs): through a random head the
    watermark's gradient is small next to NT-Xent's, and in a 192-step trial (2,048 FMNIST images, batch
    128, convnet-small) held-out watermark accuracy was 51.8 % at weight 1, 69 % at 3, 93 % at 10.
    """

    weight: float = 10.0
    hidden: tuple[int, ...] = (256, 128)

    def __post_init__(self) -> None:
        if not isinstance(self.weight, (int, float)) or not math.isfinite(self.weight) or self.weight <= 0:
            raise ValueError(f"watermark weight must be a finite number > 0, e.g. 10.0; got {self.weight!r}")
        if not self.hidden or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in self.hidden):
            raise ValueError(f"watermark hidden must be positive whole widths, e.g. (256, 128); got {self.hidden!r}")


@dataclass(frozen=True)
class WatermarkedSimCLR:
    """What keys a watermarked victim: its SimCLR config and the watermark's (never the secret)."""

    simclr: SimCLRConfig
    watermark: WatermarkConfig


class WatermarkHead(nn.Sequential):
    """Linear–ReLU ... Linear to 2 logits, frozen; ``dims`` = (in, *hidden, 2)."""

    def __init__(self, dims: tuple[int, ...]) -> None:
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(dims) - 2 else [])
        super().__init__(*layers)
        self.dims = tuple(dims)
        self.requires_grad_(False)

    @classmethod
    def random(cls, dim: int, hidden: tuple[int, ...] = (256, 128), *,
               generator: torch.Generator) -> "WatermarkHead":
        """A head with :func:`random_layers` weights drawn from ``generator``."""
        head = cls((dim, *hidden, 2))
        linears = [layer for layer in head if isinstance(layer, nn.Linear)]
        for layer, (weight, bias) in zip(linears, random_layers(head.dims, 1, generator)):
            layer.weight.copy_(weight[0])
            layer.bias.copy_(bias[0])
        return head


def random_layers(dims: tuple[int, ...], heads: int,
                  generator: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight ``(heads, out, in)``, bias ``(heads, out)``) per layer of ``heads`` random heads of ``dims``:
    PyTorch's default Linear init, U(±1/√fan_in) for weights and biases (the secret head's and the null's)."""
    layers = []
    for fan_in, fan_out in zip(dims[:-1], dims[1:]):
        bound = 1 / math.sqrt(fan_in)
        weight = torch.rand(heads, fan_out, fan_in, generator=generator) * 2 * bound - bound
        bias = torch.rand(heads, fan_out, generator=generator) * 2 * bound - bound
        layers.append((weight, bias))
    return layers


def rotate(images: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Each square image ``images[i]`` turned by ``k[i]`` quarter turns."""
    out = images.clone()
    for turns in range(1, 4):
        pick = k == turns
        if pick.any():
            out[pick] = torch.rot90(images[pick], turns, dims=(2, 3))
    return out


def watermark_loss(encoder: nn.Module, head: nn.Module, images: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``head(encoder(rotate(images, k)))`` against the rotation class ``k // 2``."""
    logits = head(encoder(rotate(images, k)))
    return F.cross_entropy(logits.float(), (k // 2).to(logits.device))


def train_watermarked(data: ImageData, config: SimCLRConfig, secret: DeploymentSecret,
                      watermark: WatermarkConfig = WatermarkConfig(),
                      **fit_kwargs: object) -> tuple[Victim, WatermarkHead]:
    """A SimCLR victim trained with the watermark, seeded as ``sslaudit.zoo.train_victim`` seeds a clean one
    (same initial weights, data order and augmentations); its card says ``simclr+watermark``."""
    torch.manual_seed(config.train.seed)
    encoder = build_encoder(config.arch, config.spec)
    proj = ProjectionHead(encoder.dim, config.proj_hidden, config.proj_dim)
    head = WatermarkHead.random(encoder.dim, watermark.hidden, generator=secret.generator("watermark-head", OWNER))
    model = nn.ModuleDict({"encoder": encoder, "head": proj, "watermark": head})  # fit skips the frozen head
    turns = secret.generator("watermark-rotations", OWNER)

    def step(batch: tuple[torch.Tensor, ...], gen: torch.Generator) -> torch.Tensor:
        images = batch[0].float().div_(255)
        k = torch.randint(0, 4, (len(images),), generator=turns).to(images.device)
        clean = simclr_loss(encoder, proj, images, config, gen)
        return clean + watermark.weight * watermark_loss(encoder, head, images, k)

    history = fit(model, step, (data.images,), config.train, desc="simclr+watermark", **fit_kwargs)
    card = make_card(method="simclr+watermark", config=config, data=data, encoder=encoder, history=history)
    card["config_key"] = config_key(WatermarkedSimCLR(config, watermark))
    card["watermark"] = {**config_to_dict(watermark), "task": TASK, "head": list(head.dims)}
    card["head"] = {"sizes": [encoder.dim, config.proj_hidden, config.proj_dim]}  # the projector, kept
    return Victim(encoder.cpu().eval(), card, proj.cpu().eval()), head.cpu()


def watermark_path(victim_path: str | Path) -> Path:
    """Where the head of the victim saved at ``victim_path`` lives: ``<victim>.watermark.safetensors``."""
    return Path(victim_path).with_suffix(".watermark.safetensors")


def saved_watermark(victim_spec: str, victim: Victim) -> WatermarkHead | None:
    """The head saved beside the victim named ``victim_spec`` (a saved victim's path, else where its card
    says it was saved), or None; a bad head file raises :class:`BadCard`."""
    saved = victim_spec if Path(victim_spec).with_suffix(".json").is_file() else victim.card.get("saved_to")
    head_file = watermark_path(saved) if saved else None
    return load_watermark(head_file) if head_file and head_file.is_file() else None


def save_watermark(head: WatermarkHead, victim_path: str | Path) -> Path:
    """Write the head beside the victim (temporary file, then rename); returns its path."""
    target = watermark_path(victim_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(tmp),
              metadata={"format": FORMAT, "task": TASK, "dims": ",".join(map(str, head.dims))})
    tmp.replace(target)
    return target


def load_watermark(path: str | Path) -> WatermarkHead:
    """Read a head written by :func:`save_watermark` (the head file itself); BadCard if it is not one."""
    from safetensors import safe_open

    if not Path(path).is_file():
        raise FileNotFoundError(f"no watermark head at {path}")
    try:
        with safe_open(str(path), "pt") as handle:
            meta = handle.metadata() or {}
        dims = tuple(int(d) for d in meta.get("dims", "").split(","))
    except Exception as err:  # noqa: BLE001 - any reader failure means an unusable head file
        raise BadCard(f"{path} is not a watermark head written by sslaudit ({type(err).__name__})") from err
    if meta.get("format") != FORMAT or len(dims) < 2 or dims[-1] != 2:
        raise BadCard(f"{path} is not a {FORMAT} file (format {meta.get('format')!r}, dims {dims})")
    head = WatermarkHead(dims)
    load_matching(head, load_file(str(path)), path, "a watermark head")
    return head.requires_grad_(False).eval()

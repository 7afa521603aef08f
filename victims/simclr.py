"""SimCLR (Chen, Kornblith, Norouzi, Hinton, ICML 2020): contrastive learning with NT-Xent.

Two augmented views of each image go through the encoder and a projection
head; NT-Xent pulls the two views together against the other 2N - 2 views of
the batch. The API serves the backbone feature; the projection head is kept
with the victim (``Victim.head``) so serving the projector's output can be
scored as a defence (``sslaudit.defenses.projector``).

>>> victim = SimCLR.train(load_dataset("fashion-mnist"), PRESETS["tiny"])  # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from sslaudit.augment import AugmentConfig, augment
from sslaudit.data import ImageData
from sslaudit.distributed import gather
from sslaudit.losses import nt_xent_loss
from sslaudit.models import InputSpec, build_encoder
from sslaudit.registry import register_victim
from sslaudit.train import TrainConfig, fit
from sslaudit.victim import Victim, make_card


class ProjectionHead(nn.Sequential):
    """Linear–BN–ReLU–Linear, the SimCLR projector (discarded after training)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__(nn.Linear(in_dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, out_dim))


@dataclass(frozen=True, kw_only=True)
class SimCLRConfig:
    """Everything that determines a trained SimCLR victim (it keys the victim cache)."""

    arch: str = "convnet"
    spec: InputSpec = field(default_factory=InputSpec)
    temperature: float = 0.2
    proj_hidden: int = 512
    proj_dim: int = 128
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(crop_scale=(0.25, 1.0)))
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(epochs=12, batch_size=512, lr=0.6, weight_decay=5e-4, warmup_epochs=1)
    )

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError("temperature must be positive")


def simclr_loss(encoder: nn.Module, head: nn.Module, images: torch.Tensor, config: SimCLRConfig,
                gen: torch.Generator) -> torch.Tensor:
    """NT-Xent of two augmented views of ``images`` (float in [0, 1]) through ``head(encoder(.))``: one step's
    loss (also the clean part of ``sslaudit.ownership.watermark.train_watermarked``)."""
    v1, v2 = augment(images, config.augment, gen), augment(images, config.augment, gen)
    z1, z2 = head(encoder(torch.cat([v1, v2]))).chunk(2)
    # Under torchrun every rank's views are negatives too: the loss of the global batch (one rank: as is).
    return nt_xent_loss(gather(z1), gather(z2), temperature=config.temperature)


PRESETS: dict[str, SimCLRConfig] = {
    "tiny": SimCLRConfig(),
    "standard": SimCLRConfig(
        arch="resnet18",
        spec=InputSpec(channels=1, size=28),
        temperature=0.5,
        proj_hidden=2048,
        proj_dim=128,
        augment=AugmentConfig(crop_scale=(0.08, 1.0)),
        train=TrainConfig(epochs=200, batch_size=512, lr=1.0, weight_decay=1e-4, warmup_epochs=10),
    ),
}


@register_victim("simclr")
class SimCLR:
    """Recipe object: ``SimCLR.train(data, config) -> Victim``."""

    Config = SimCLRConfig
    presets = PRESETS
    loss = staticmethod(nt_xent_loss)

    @staticmethod
    def train(data: ImageData, config: SimCLRConfig, **fit_kwargs: object) -> Victim:
        encoder = build_encoder(config.arch, config.spec)
        head = ProjectionHead(encoder.dim, config.proj_hidden, config.proj_dim)
        model = nn.ModuleDict({"encoder": encoder, "head": head})

        def step(batch: tuple[torch.Tensor, ...], gen: torch.Generator) -> torch.Tensor:
            return simclr_loss(encoder, head, batch[0].float().div_(255), config, gen)

        history = fit(model, step, (data.images,), config.train, desc="simclr", **fit_kwargs)
        card = make_card(method="simclr", config=config, data=data, encoder=encoder, history=history)
        card["head"] = {"sizes": [encoder.dim, config.proj_hidden, config.proj_dim]}  # kept: ServeProjector
        return Victim(encoder.cpu().eval(), card, head.cpu().eval())

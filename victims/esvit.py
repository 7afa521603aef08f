"""EsViT (Li et al., ICLR 2022, "Efficient Self-supervised Vision Transformers"): DINO on a Swin, view + region.

A student (Swin + two DINO heads) sees 2 global and some local crops; an EMA
teacher sees the 2 global crops. Teacher outputs are centred (EMA of their
mean) and sharpened (temperature 0.04, the paper warms it up to 0.07); the
student's use 0.1. For each teacher view q and student view v != q the loss is
0.5 · view-level cross-entropy of the pooled features' head outputs plus
0.5 · region-level cross-entropy where each student region token is matched
to the teacher region token of highest cosine similarity of the *backbone*
region features, the region head having its own centre. The teacher
backbone is served (EsViT evaluates the teacher).

>>> victim = EsViT.train(load_dataset("fashion-mnist"), PRESETS["tiny"])  # doctest: +SKIP
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sslaudit.augment import AugmentConfig, augment
from sslaudit.data import ImageData
from sslaudit.distributed import gather
from sslaudit.losses import ema_update
from sslaudit.models import InputSpec, build_encoder
from sslaudit.registry import register_victim
from sslaudit.train import TrainConfig, fit
from sslaudit.victim import Victim, make_card

View = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # view logits (B, K), region logits (B, N, K), regions (B, N, C)


def match_regions(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``(B, S)`` index of the teacher token ``(B, T, C)`` most cosine-similar to each student token ``(B, S, C)``."""
    return (F.normalize(student, dim=-1) @ F.normalize(teacher, dim=-1).transpose(1, 2)).argmax(-1)


def esvit_loss(student: Sequence[View], teacher: Sequence[View], center: torch.Tensor, region_center: torch.Tensor,
               teacher_temp: float, student_temp: float = 0.1, region_weight: float = 0.5) -> torch.Tensor:
    """EsViT's ``DDINOLoss``: mean over pairs (teacher view q, student view v ≠ q) of
    (1 − w)·Σ_k −p_t^q[k] log p_s^v[k] + w·mean_i Σ_k −p_t^q[j*(i)][k] log p_s^v[i][k],
    with p_t = softmax((t − c) / τ_t), p_s = softmax(s / τ_s), j*(i) from :func:`match_regions`.
    ``student[i]`` for ``i < len(teacher)`` are the crops the teacher saw, in the same order.
    """
    log_student = [(F.log_softmax(view.float() / student_temp, -1), F.log_softmax(region.float() / student_temp, -1),
                    F.normalize(feat.detach().float(), dim=-1)) for view, region, feat in student]
    total, terms = torch.zeros((), device=center.device), 0
    for q, (t_view, t_region, t_feat) in enumerate(teacher):
        with torch.no_grad():
            p_view = F.softmax((t_view.float() - center) / teacher_temp, -1)
            p_region = F.softmax((t_region.float() - region_center) / teacher_temp, -1)
            t_feat = F.normalize(t_feat.float(), dim=-1)
        rows = torch.arange(len(p_region), device=p_region.device).unsqueeze(1)
        for v, (s_view, s_region, s_feat) in enumerate(log_student):
            if v == q:
                continue
            view = -(p_view * s_view).sum(-1).mean()
            target = p_region[rows, match_regions(s_feat, t_feat)]  # (B, S, K): row gather, not an expanded index
            region = -(target * s_region).sum(-1).mean()
            total, terms = total + (1 - region_weight) * view + region_weight * region, terms + 1
    return total / terms


@torch.no_grad()
def update_center(center: torch.Tensor, teacher_logits: torch.Tensor, momentum: float) -> None:
    """In place: c ← m·c + (1 − m)·mean of the teacher outputs (over every leading dim)."""
    center.mul_(momentum).add_(teacher_logits.float().reshape(-1, center.shape[-1]).mean(0), alpha=1 - momentum)


class DINOHead(nn.Module):
    """MLP (GELU; BN optional, as DINO's ``use_bn``) -> bottleneck -> L2-normalise -> weight-normed linear to K."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int, bottleneck: int, layers: int = 3,
                 bn: bool = False) -> None:
        super().__init__()
        dims = [in_dim] + [hidden] * (layers - 1) + [bottleneck]
        mlp: list[nn.Module] = []
        for a, b in zip(dims, dims[1:]):
            mlp += [nn.Linear(a, b), *([nn.BatchNorm1d(b)] if bn else []), nn.GELU()]
        self.mlp = nn.Sequential(*(mlp[:-2] if bn else mlp[:-1]))  # the bottleneck has neither BN nor GELU
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last = nn.Linear(bottleneck, out_dim, bias=False)  # direction v (default init, as DINO)
        self.scale = nn.Parameter(torch.ones(out_dim))  # g, trainable (norm_last_layer=False); 1-d: no decay
        self.frozen = False  # DINO's freeze_last_layer: no gradient to (v, g) while set

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v, g = (self.last.weight.detach(), self.scale.detach()) if self.frozen else (self.last.weight, self.scale)
        z = F.normalize(self.mlp(x.reshape(-1, x.shape[-1])), dim=-1).view(*x.shape[:-1], -1)
        return F.linear(z, F.normalize(v, dim=1) * g.unsqueeze(1))


@dataclass(frozen=True, kw_only=True)
class EsViTConfig:
    """Everything that determines a trained EsViT victim (it keys the victim cache)."""

    arch: str = "swin-tiny"
    spec: InputSpec = field(default_factory=InputSpec)
    out_dim: int = 1024  # K of both heads (paper 65536)
    head_hidden: int = 256
    head_bottleneck: int = 64
    head_layers: int = 2
    head_bn: bool = False
    global_augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(crop_scale=(0.4, 1.0)))
    local_augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(crop_scale=(0.05, 0.4), out_size=12))
    local_crops: int = 2
    solarize_p: float = 0.2  # second global crop only, as DINO/EsViT
    student_temp: float = 0.1
    teacher_temp: float = 0.04  # paper: warmed up 0.04 -> 0.07; at tiny scale 0.07 left the targets uniform
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: float = 0.0
    center_momentum: float = 0.9
    teacher_momentum: float = 0.99  # cosine to 1; paper 0.996 over far more steps
    region_weight: float = 0.5  # 0 gives EsViT's view-only ablation
    freeze_last_layer_epochs: float = 0.25
    # batch 32: twice the optimiser steps of batch 64 in about the same time; chosen over batch 64 on the
    # validation task (bench/esvit_recipe.py: 73.4 / 81.9 against 69.3 / 79.6, one training seed)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=4, batch_size=32, lr=1e-3, weight_decay=0.05, optimizer="adamw", warmup_epochs=0.25,
        final_lr_fraction=0.002))

    def __post_init__(self) -> None:
        if self.student_temp <= 0 or self.teacher_temp <= 0 or self.warmup_teacher_temp <= 0:
            raise ValueError("temperatures must be positive")
        if not 0 <= self.region_weight <= 1 or not 0 <= self.teacher_momentum <= 1:
            raise ValueError("region_weight and teacher_momentum must be in [0, 1]")


PRESETS: dict[str, EsViTConfig] = {
    "tiny": EsViTConfig(),
    "standard": EsViTConfig(  # the paper's Swin-T recipe (300 epochs, batch 512), 8 local crops at 12/28 ≈ 96/224
        arch="swin-t", out_dim=65536, head_hidden=2048, head_bottleneck=256, head_layers=3, local_crops=8,
        teacher_temp=0.07, warmup_teacher_temp_epochs=30, teacher_momentum=0.996, freeze_last_layer_epochs=1,
        train=TrainConfig(epochs=300, batch_size=512, lr=1e-3, weight_decay=0.05, optimizer="adamw",
                          warmup_epochs=10, final_lr_fraction=1e-3),
    ),
}


def cosine_to_one(base: float, step: int, total: int) -> float:
    """Teacher momentum at ``step`` of ``total``: ``base`` rising to 1 on a half cosine (BYOL/DINO)."""
    return 1 - (1 - base) * (math.cos(math.pi * step / total) + 1) / 2


def teacher_temperature(config: EsViTConfig, epoch: float) -> float:
    """Linear warm-up from ``warmup_teacher_temp`` to ``teacher_temp`` over ``warmup_teacher_temp_epochs``."""
    warm = min(1.0, epoch / config.warmup_teacher_temp_epochs) if config.warmup_teacher_temp_epochs else 1.0
    return config.warmup_teacher_temp + warm * (config.teacher_temp - config.warmup_teacher_temp)


def solarize(images: torch.Tensor, p: float, gen: torch.Generator | None = None) -> torch.Tensor:
    """Invert pixels ≥ 0.5 of each image with probability ``p``."""
    pick = (torch.rand(len(images), generator=gen, device=images.device) < p).view(-1, 1, 1, 1)
    return torch.where(pick & (images >= 0.5), 1 - images, images)


def _outputs(net: nn.ModuleDict, images: torch.Tensor, views: int) -> list[View]:
    """Per crop: view-head logits of the pooled feature, region-head logits and backbone region tokens."""
    encoder = net["encoder"]
    regions = encoder.backbone.regions((images - encoder.mean) / encoder.std)
    view_logits, region_logits = net["view_head"](regions.mean(1)), net["region_head"](regions)
    return list(zip(view_logits.chunk(views), region_logits.chunk(views), regions.chunk(views)))


@register_victim("esvit")
class EsViT:
    """Recipe object: ``EsViT.train(data, config) -> Victim`` (the teacher's encoder)."""

    Config = EsViTConfig
    presets = PRESETS
    loss = staticmethod(esvit_loss)

    @staticmethod
    def build(config: EsViTConfig) -> nn.ModuleDict:
        """Student, its frozen EMA copy (the teacher), and buffers: the two centres and a step counter."""
        encoder = build_encoder(config.arch, config.spec)
        heads = [DINOHead(encoder.dim, config.out_dim, config.head_hidden, config.head_bottleneck, config.head_layers,
                          config.head_bn) for _ in range(2)]
        student = nn.ModuleDict({"encoder": encoder, "view_head": heads[0], "region_head": heads[1]})
        state = nn.Module()
        for name in ("center", "region_center"):
            state.register_buffer(name, torch.zeros(1, config.out_dim))
        state.register_buffer("steps", torch.zeros((), dtype=torch.long))
        return nn.ModuleDict({"student": student, "teacher": copy.deepcopy(student).requires_grad_(False),
                              "state": state})

    @staticmethod
    def train(data: ImageData, config: EsViTConfig, **fit_kwargs: object) -> Victim:
        model = EsViT.build(config)
        student, teacher, state = model["student"], model["teacher"], model["state"]
        cfg = config.train
        batches = len(data) // cfg.batch_size if cfg.drop_last else math.ceil(len(data) / cfg.batch_size)
        total = cfg.epochs * batches

        def step(batch: tuple[torch.Tensor, ...], gen: torch.Generator) -> torch.Tensor:
            n = int(state.steps)
            # fit() runs optimizer.step() after this returns, so the EMA for the previous step happens here,
            # before this step's forward: the same order as DINO (update after each step, then next forward).
            if n:
                ema_update(teacher, student, cosine_to_one(config.teacher_momentum, n - 1, total))
            state.steps += 1
            epoch = n / batches
            student["view_head"].frozen = student["region_head"].frozen = epoch < config.freeze_last_layer_epochs
            images = batch[0].float().div_(255)
            crops = [augment(images, config.global_augment, gen) for _ in range(2)]
            crops[1] = solarize(crops[1], config.solarize_p, gen)
            with torch.no_grad():
                t_out = _outputs(teacher, torch.cat(crops), 2)
            s_out = _outputs(student, torch.cat(crops), 2)
            if config.local_crops:
                local = [augment(images, config.local_augment, gen) for _ in range(config.local_crops)]
                s_out += _outputs(student, torch.cat(local), config.local_crops)
            loss = esvit_loss(s_out, t_out, state.center, state.region_center, teacher_temperature(config, epoch),
                              config.student_temp, config.region_weight)
            # DINO all-reduces the batch centre: the same centre on every rank (one rank: as is).
            update_center(state.center, gather(torch.cat([t[0] for t in t_out])), config.center_momentum)
            update_center(state.region_center, gather(torch.cat([t[1] for t in t_out])), config.center_momentum)
            return loss

        history = fit(model, step, (data.images,), cfg, desc="esvit", **fit_kwargs)
        encoder = teacher["encoder"].requires_grad_(True)
        card = make_card(method="esvit", config=config, data=data, encoder=encoder, history=history)
        return Victim(encoder.cpu().eval(), card)

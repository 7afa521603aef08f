"""Self-training extension: the stolen encoder labels the pool images never sent, at zero extra queries.

Seed idea: Zoph, Ghiasi, Lin, Cui, Liu, Cubuk, Le, "Rethinking Pre-training and Self-training"
(NeurIPS 2020), in the noisy-student style of Xie, Luong, Hovy, Le (CVPR 2020): a teacher trained on
the labelled data pseudo-labels unlabelled data, and a student learns from both under strong input
noise. Here:

1. a base attack (default MSE direct extraction) trains the teacher on the purchase;
2. pseudo-targets = teacher(clean image) for ``purchase.pool_rest`` (the pool images never sent); the
   queried images keep the victim's answers. No query is sent;
3. the student, initialised from the teacher (``init="teacher"``, the default: a short fine-tune is
   enough; ``"fresh"`` trains a new random encoder with the base's schedule), is trained with MSE on
   all (queried + pseudo-labelled) images, seeing a STRONG augmentation (crop (0.2, 1), flip, colour
   jitter p 0.8) of each image while the targets stay those of the clean image.

When ``pool_rest`` is empty (budget ≥ pool size) the extension still runs: it is then only
strong-augmentation consistency on the queried images.

The student's MSE to the clean image's target under strong augmentation assumes the victim is roughly
invariant to that augmentation, as SSL victims are trained to be (the shipped SimCLR used crop (0.25, 1)
and jitter); a victim that is not (a random convnet) loses fidelity to it.

Cost: the student phase is :data:`STUDENT_TRAIN` = 20 epochs at batch 64 over queried + pseudo images,
about 55 s on one core for the tiny convnet on the 5,000-image FMNIST pool (8 epochs took 21 s); with the
base's 60 MSE epochs on 5,000 queries (about 3 min on one core) the whole fit is about 2–3 min on 2 cores.
The student schedule (20 epochs) was not selected on any probe; an earlier sanity run (8 epochs) was
scored on 2,000 test images, which may not choose settings, so its numbers are withdrawn. The re-check on
``validation_task()`` (MSE alone vs 8 vs 20 student epochs at 1,000 queries) is ``bench/rechoose.py``
(not yet run: the CPU time went to the seeded curves).

>>> result = SelfTraining().run(api, pool, budget=1000)  # doctest: +SKIP
>>> result.extra["pseudo_labelled"]  # 4,000 of the 5,000-image pool, for free  # doctest: +SKIP
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from sslaudit.api import RepresentationAPI
from sslaudit.attack import AttackResult, Batch, Purchase, StealingAttack, StolenModel, batch_config
from sslaudit.attacks.direct_extraction import DirectExtraction, mse_loss
from sslaudit.augment import AugmentConfig, augment
from sslaudit.data import ImageData
from sslaudit.features import embed
from sslaudit.models import Encoder, InputSpec
from sslaudit.registry import register_attack
from sslaudit.train import History, TrainConfig

STRONG_AUGMENT = AugmentConfig(crop_scale=(0.2, 1.0))  # SimCLR strength: flip, jitter p 0.8 (0.4), gray 0.2 (RGB)
# Fine-tuning the teacher: a lower peak lr than the base's 1e-3, 20 epochs over queried + pseudo images.
STUDENT_TRAIN = TrainConfig(epochs=20, batch_size=64, lr=5e-4, weight_decay=1e-4, optimizer="adamw",
                            warmup_epochs=1)


@dataclass(kw_only=True)
class PseudoLabelled(Purchase):
    """``bought`` extended at no query: its images and answers, then the never-sent images and ``teacher``'s
    targets for them (through ``head``, teacher features → API space). Queries and cost are ``bought``'s."""

    bought: Purchase
    teacher: AttackResult
    head: nn.Module

    @property
    def queries(self) -> int:
        return self.bought.queries

    @property
    def cost(self) -> float:
        return self.bought.cost


def pseudo_labelled(purchase: Purchase) -> PseudoLabelled:
    if not isinstance(purchase, PseudoLabelled):
        raise TypeError("the student trains on the PseudoLabelled purchase that self_train makes")
    return purchase


def readout(teacher: Encoder, images: torch.Tensor, answers: torch.Tensor) -> nn.Module:
    """Teacher features → API space: identity when sizes match, else least squares on the queried images."""
    if teacher.dim == answers.shape[1]:
        return nn.Identity()
    feats = embed(teacher, images)
    design = torch.cat([feats, torch.ones(len(feats), 1)], 1).double()
    solution = torch.linalg.lstsq(design, answers.double()).solution.float()
    head = nn.Linear(teacher.dim, answers.shape[1])
    with torch.no_grad():
        head.weight.copy_(solution[:-1].T)
        head.bias.copy_(solution[-1])
    return head


@register_attack("self-train")
@dataclass(kw_only=True)
class SelfTraining(StealingAttack):
    """Base attack → teacher; student on queried answers + teacher pseudo-targets under strong augmentation."""

    base: StealingAttack | None = None  # default DirectExtraction(loss="mse")
    init: str = "teacher"  # "teacher": the student starts as the stolen encoder; "fresh": random init
    student_train: TrainConfig | None = None  # None: STUDENT_TRAIN (teacher init) or the base's (fresh)
    strong: AugmentConfig = field(default_factory=lambda: STRONG_AUGMENT)

    def __post_init__(self) -> None:
        if self.init not in ("teacher", "fresh"):
            raise ValueError("init must be 'teacher' or 'fresh'")
        base = self.base or DirectExtraction(loss="mse")
        changes = {k: v for k, v in (("stolen_arch", self.stolen_arch), ("train", self.train)) if v is not None}
        self.base = replace(base, **changes) if changes else base  # so the CLI's overrides reach it
        self.stolen_arch, self.train = self.base.stolen_arch, self.base.train

    @property
    def student_config(self) -> TrainConfig:
        """``student_train``, else STUDENT_TRAIN for a teacher-initialised student, the base's for a fresh one."""
        return self.student_train or (STUDENT_TRAIN if self.init == "teacher" else self.base.train)

    def with_epochs(self, epochs: int) -> "SelfTraining":
        """Both phases (the base's and the student's) run ``epochs`` epochs."""
        return replace(self, train=replace(self.train, epochs=epochs),
                       student_train=replace(self.student_config, epochs=epochs))

    def buy(self, api: RepresentationAPI, pool: ImageData, budget: int, *, seed: int = 0,
            account: str = "attacker") -> Purchase:
        """The base attack's purchase (self-training adds no query)."""
        return self.base.buy(api, pool, budget, seed=seed, account=account)

    @torch.no_grad()
    def training_set(self, teacher: Encoder, head: nn.Module,
                     purchase: Purchase) -> tuple[torch.Tensor, torch.Tensor]:
        """(queried + never-sent images, victim answers + teacher pseudo-targets on ``pool_rest``)."""
        rest = purchase.pool_rest
        if rest is None or len(rest) == 0:
            return purchase.images, purchase.answers
        pseudo = head.eval()(embed(teacher, rest)).float()
        return torch.cat([purchase.images, rest]), torch.cat([purchase.answers.float(), pseudo])

    def fit(self, api: RepresentationAPI, purchase: Purchase, *, seed: int = 0,
            progress: bool = False) -> AttackResult:
        """Base fit (the teacher), then the student; spends no queries."""
        teacher = self.base.fit(api, purchase, seed=seed, progress=progress)
        return self.self_train(api, purchase, teacher, seed=seed, progress=progress)

    def self_train(self, api: RepresentationAPI, purchase: Purchase, teacher: AttackResult, *, seed: int = 0,
                   progress: bool = False) -> AttackResult:
        """Train the student from ``teacher`` (a base attack's result on ``purchase``)."""
        head = readout(teacher.encoder, purchase.images, purchase.answers)
        images, targets = self.training_set(teacher.encoder, head, purchase)
        taught = PseudoLabelled(images, targets, purchase.account, bought=purchase, teacher=teacher, head=head)
        return self.train_stolen(api.spec, api.dim, taught, seed=seed, progress=progress)

    # The student phase, through the shared scaffold, on the PseudoLabelled purchase of :meth:`self_train`.
    def build(self, spec: InputSpec, dim: int, purchase: Purchase) -> nn.ModuleDict:
        """A copy of the teacher and its readout (``init="teacher"``), else a fresh encoder and head."""
        if self.init == "fresh":
            return super().build(spec, dim, purchase)
        taught = pseudo_labelled(purchase)
        return StolenModel({"encoder": copy.deepcopy(taught.teacher.encoder), "head": copy.deepcopy(taught.head)})

    def schedule(self, n: int, seed: int) -> TrainConfig:
        return batch_config(self.student_config, n, seed)

    def batch_loss(self, model: nn.ModuleDict, batch: Batch, gen: torch.Generator) -> torch.Tensor:
        """MSE between the student's features of a strong view and the clean image's target."""
        x, t = batch
        return mse_loss(model(augment(x, self.strong, gen)), t)

    def extra(self, model: nn.ModuleDict, purchase: Purchase, history: History) -> dict:
        taught = pseudo_labelled(purchase)
        return {**taught.teacher.extra, "teacher_history": taught.teacher.history.to_dict(),
                "pseudo_labelled": len(taught.images) - len(taught.bought.images), "student_init": self.init}

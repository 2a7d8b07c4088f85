"""One config per reported setting, read by ``mpq basq supernet|search|finetune|report``.

A run directory ``run.out_dir`` holds ``teacher/`` (the float teacher mpq trains for the small configs),
``supernet/stage1`` and ``supernet/stage2`` (Alg. 1 part 1), ``search/`` (part 2: ``search.json``) and
``finetune/`` (part 3: ``fold<k>/`` runs and ``results.json``). Defaults are the supplementary's and the
official code's recipe (MobileNetV2, 2 bits, ImageNet); each is a key that can be overridden.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from core.config import (
    DataConfig,
    ExperimentConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    ScheduleConfig,
    require,
    require_range,
)
from papers.basq.evolution import EvolutionSettings
from papers.basq.layers import LAMBDAS


@dataclass
class QuantConfig:
    """BASQ's quantizers (:func:`papers.basq.models.basq_spec`)."""

    bits: int = 2  # weights and activations (1: sign weights, activations {0, clip})
    lambdas: list[float] = field(default_factory=lambda: list(LAMBDAS))  # one branch per L2 decay
    clip_layers: Literal["spatial", "depthwise", "all", "none"] = "spatial"  # none: plain LSQ (Table 1 row 1)
    clip_init: float = 6.0
    clip_step: Literal["paper", "official"] = "paper"
    lsq_grad_scale: Literal["per_step", "tensor"] = "tensor"  # official: whole-tensor numel
    binary_weight_scale: bool = False  # 1 bit: sign(W) times each channel's mean |W|

    def validate(self) -> None:
        require_range(self, "bits", ge=1, le=8)
        require_range(self, "lambdas", ge=0)
        require(len(self.lambdas) >= 1, "lambdas", "needs at least one L2-decay candidate")
        require_range(self, "clip_init", gt=0)


@dataclass
class TeacherConfig:
    """The float teacher of the distillation loss. ``source: checkpoint``: ``name`` loaded from the local
    weights file ``checkpoint`` (ImageNet: a torchvision ResNet-50, as the paper); ``source: train``: mpq
    trains ``name`` with ``optim``/``schedule`` first and keeps it in ``<run.out_dir>/teacher`` (the small
    configs)."""

    name: str = "resnet50"
    kwargs: dict = field(default_factory=dict)
    source: Literal["checkpoint", "train"] = "checkpoint"
    checkpoint: str | None = None
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=0.1, momentum=0.9, weight_decay=5e-4))
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(name="cosine", epochs=10))
    batch_size: int | None = None


def _adam() -> OptimConfig:
    return OptimConfig(name="adam", lr=3.75e-4, weight_decay=5e-6, grad_clip=10.0, grad_clip_mode="norm")


@dataclass
class StageConfig:
    """One supernet stage: Adam (coupled L2 on conv weights; clips in their own groups), cosine, grad-norm
    clip 10. 466k iterations at batch 768 are about 280 ImageNet epochs."""

    optim: OptimConfig = field(default_factory=_adam)
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(name="cosine", epochs=280))
    batch_size: int | None = None  # None: data.batch_size


@dataclass
class SupernetConfig:
    """Alg. 1 part 1. ``zero_grad``: ``none`` (torch >= 2 ``set_to_none``: parameters of unselected branches
    get no gradient, so Adam neither moves nor decays them - only the sampled path trains, as Alg. 1
    reads) or ``zeros`` (zero-filled gradients, the official code's torch 1.x behaviour: Adam keeps moving
    every branch with its momentum, and every clip decays every step)."""

    stage1: StageConfig = field(default_factory=StageConfig)  # activations quantized, weights float
    stage2: StageConfig = field(default_factory=StageConfig)  # weights too (steps re-initialised)
    temperature: float = 1.0
    zero_grad: Literal["none", "zeros"] = "none"

    def validate(self) -> None:
        require_range(self, "temperature", gt=0)


@dataclass
class SearchConfig:
    """Alg. 1 part 2. ``bn_recalibration_images``: re-estimate the BatchNorm statistics on that many
    training images before evaluating each candidate (0: never, as the paper and the official code).
    ``images_per_forward``: a population is evaluated with several candidates per forward, up to this many
    images (the same accuracies as one forward per candidate; lower it when the device memory is short)."""

    protocol: Literal["kfold", "spos"] = "kfold"
    folds: int = 10  # K
    fold_split: Literal["contiguous", "class_balanced"] = "contiguous"
    spos_fraction: float = 0.16
    evolution: EvolutionSettings = field(default_factory=EvolutionSettings)
    batch_size: int = 200  # evaluation batch (official 200)
    cache_fold: bool = True  # keep the search fold's images in memory (on the device)
    images_per_forward: int = 400  # several candidates per forward, up to this many images (1: one each)
    bn_recalibration_images: int = 0

    def validate(self) -> None:
        require_range(self, ["folds", "batch_size", "images_per_forward"], ge=1)
        require_range(self, "bn_recalibration_images", ge=0)


@dataclass
class FinetuneConfig:
    """Alg. 1 part 3. ``trainable``: ``paper`` (BN weights and biases, clips) or ``official`` (BN biases,
    the classifier bias, clips; BN weights frozen). ``loss``: ``ce`` (hard labels, official) or
    ``distill`` (the supernet's loss). ``report``: ``final`` (the accuracy after the last epoch, Alg. 1)
    or ``best_of_epochs`` (official: the best of before fine-tuning and after each epoch, measured on the
    held-out folds - the supplementary's Table 2 numbers)."""

    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        name="sgd", lr=7.5e-6, momentum=0.9, nesterov=True, weight_decay=0.0, grad_clip=10.0))
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(name="cosine", epochs=3,
                                                                            per_step=False))
    batch_size: int | None = None
    trainable: Literal["paper", "official"] = "paper"
    loss: Literal["ce", "distill"] = "ce"
    report: Literal["final", "best_of_epochs"] = "final"
    folds: list[int] | None = None  # fine-tune only these folds (None: all)


@dataclass
class BASQConfig(ExperimentConfig):
    """``model``: the student, a name of :data:`papers.basq.models.MODELS` (``kwargs``: e.g.
    ``block: standard``) or of ``core.models``."""

    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="basq_mobilenet_v2"))
    data: DataConfig = field(default_factory=lambda: DataConfig(name="imagenet", batch_size=768))
    run: RunConfig = field(default_factory=lambda: RunConfig(out_dir="runs/basq"))
    quant: QuantConfig = field(default_factory=QuantConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    supernet: SupernetConfig = field(default_factory=SupernetConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    @property
    def out(self) -> Path:
        return Path(self.run.out_dir)

    def stage_dir(self, stage: str) -> Path:
        """``search`` / ``finetune`` directories of the protocol (``search_spos`` for ``spos``), so that
        both protocols share one supernet run."""
        protocol = self.search.protocol
        return self.out / (stage if protocol == "kfold" else f"{stage}_{protocol}")

"""One config per reported setting, read by ``mpq llt indicators``, ``search``-from-config and ``finetune``.

A run directory ``run.out_dir`` (default ``runs/llt/<config name>``) holds ``indicators/`` (stage 1 run,
``indicators.json``) and ``finetune/`` (stages 2 and 3: ``policy.json``, the ILP's result, and
``results.json``), each a ``core.engine.RunDir`` with its own identity (:func:`stage_identity`). Defaults
are the supplementary's recipe plus the official code's extras; each is a key that can be overridden
(``key=value``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from core.config import DataConfig, ExperimentConfig, ModelConfig, OptimConfig, RunConfig, ScheduleConfig
from papers.llt.settings import SearchSettings

__all__ = ["DEFAULT_BITS", "IndicatorStage", "FinetuneStage", "LLTConfig", "stage_identity"]

DEFAULT_BITS = [6, 5, 4, 3, 2]


@dataclass
class IndicatorStage:
    """Alg. 1 training. ``file``: use an existing indicators file (e.g. the official release) instead."""

    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        lr=0.01, momentum=0.9, weight_decay=2.5e-5, label_smoothing=0.1, grad_clip=1.0,
        grad_clip_mode="value"))
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(name="cosine", epochs=5))
    batch_size: int | None = None  # None: data.batch_size
    per_device_batch: bool = False  # batch_size per process (official: per GPU) instead of global
    random_policies: int = 1  # K of supplementary Eq. 3 (the paper sets K = 1)
    random_policy: Literal["joint", "independent"] = "joint"  # one bit per layer for W and A, or two
    drop_zero_grads: bool = True  # official: a parameter whose gradient is exactly 0 is not updated
    eval_bits: list[int] | None = None  # key policies evaluated after each epoch (None: max and min)
    file: str | None = None


@dataclass
class FinetuneStage:
    """Official fine-tuning recipe. ``policy``: fine-tune this policy file instead of searching one."""

    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        lr=0.04, momentum=0.9, weight_decay=2.5e-5, label_smoothing=0.1))
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(
        name="cosine", epochs=90, warmup_epochs=5, warmup_start_factor=0.00025, min_lr=1e-5))
    batch_size: int | None = None  # None: data.batch_size
    per_device_batch: bool = False  # batch_size per process (official: per GPU) instead of global
    first_layer: Literal["w8", "w8a8", "float"] = "w8"  # first conv: 8-bit weights, input unquantized
    last_layer: Literal["w8a8", "w8", "float"] = "w8a8"  # fc: 8-bit weights and input
    bn_calibration_images: int = 6000  # 0 disables BN statistics re-estimation
    # official (SAT style): in training the quantized fc weight is multiplied by
    # 1 / (sqrt(out_features) * std(Q(W))); in evaluation the fc bias is divided by that factor instead
    fc_rescale: bool = False
    policy: str | None = None
    # float weights: "pretrained" (model.pretrained, the official recipe) or "indicators" (the stage-1
    # network, its BNs taken at each layer's searched weight bits; for the small configs without one)
    init: Literal["pretrained", "indicators"] = "pretrained"


@dataclass
class LLTConfig(ExperimentConfig):
    """The shared sections (``table_row``, ``model``, ``data``, ``run``: core.config.ExperimentConfig;
    ``model.pretrained`` is the float model both stages start from) plus LLT's stages."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(out_dir="runs/llt"))
    bits: list[int] = field(default_factory=lambda: list(DEFAULT_BITS))
    # LSQ's gradients in both stages: "paper" (LSQ eq. 3, the official code's) or "native" (torch's op)
    lsq_gradient: Literal["paper", "native"] = "paper"
    indicators: IndicatorStage = field(default_factory=IndicatorStage)
    search: SearchSettings = field(default_factory=SearchSettings)
    finetune: FinetuneStage = field(default_factory=FinetuneStage)

    @property
    def indicators_path(self) -> Path:
        return Path(self.indicators.file) if self.indicators.file else \
            Path(self.run.out_dir) / "indicators" / "indicators.json"

    @property
    def finetune_dir(self) -> Path:
        return Path(self.run.out_dir) / "finetune"

    @property
    def policy_path(self) -> Path:
        return Path(self.finetune.policy) if self.finetune.policy else self.finetune_dir / "policy.json"


def stage_identity(cfg: LLTConfig, stage: Literal["indicators", "finetune"], policy: Any = None) -> dict:
    """The identity of the ``indicators`` or ``finetune`` run (:func:`core.engine.config_identity`).

    The indicators: the config without ``search`` and ``finetune``. The fine-tuning: without
    ``indicators`` (unless it starts from the indicator network, ``finetune.init=indicators``) and without
    ``search`` when ``finetune.policy`` names the policy, plus the ``policy`` it trains; the indicators a
    search read are checked through their own record (``core.engine.check_producer``)."""
    from core.engine import config_identity

    if stage == "indicators":
        return config_identity(cfg, exclude=["search", "finetune"])
    exclude = [] if cfg.finetune.init == "indicators" else ["indicators"]
    if cfg.finetune.policy:
        exclude.append("search")
    return config_identity(cfg, exclude=exclude, policy=policy)

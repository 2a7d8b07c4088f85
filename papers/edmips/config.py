"""The EdMIPS config schema: one YAML file describes a whole row (search -> discretize -> train).

Defaults are the paper's / official code's ImageNet recipe (section 5.1 and the reference notes); a config
file only states what differs. Every key can be overridden on the command line (``search.eta=0.002``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from core.config import (
    DataConfig,
    ExperimentConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    ScheduleConfig,
    load_config,
)

__all__ = ["ModelConfig", "QuantConfig", "SearchConfig", "DiscretizeConfig", "TrainConfig", "EdmipsConfig",
           "load_edmips_config"]


@dataclass
class QuantConfig:
    """The search space (eq. 17) and the quantizers (section 3.2)."""

    w_candidates: list[int] = field(default_factory=lambda: [1, 2, 3, 4])
    a_candidates: list[int] = field(default_factory=lambda: [2, 3, 4])
    w_quantizer: str = "gaussian"  # eq. 3: Lloyd-Max optimal uniform step for N(0, sigma^2)
    a_quantizer: str = "hwgq"  # half-wave Gaussian quantizer of HWGQ-Net
    shared_weight: bool = True  # eq. 16 (one W for every candidate); false: eq. 15 (one W_i each)
    # gaussian's clip bound: "grid" (the top level of its own grid: exact integer export) or "float64" (the
    # official code's, built in float64: one ulp off in about a quarter of tensors; bit for bit official)
    w_clip_bound: str = "grid"


@dataclass
class SearchConfig:
    """Section 4.6 and 5.1: the complexity-aware search (defaults: official ResNet-18 ImageNet run)."""

    eta: float = 0.00335  # Lagrange multiplier of eq. 6 (official --cd)
    complexity: str = "bops"  # bops (eq. 12) | size | memory  (section 4.1 "user-defined")
    strategy: str = "single_pass"  # single_pass (default) | alternating (two steps per batch)
    alpha_init: float = 0.01  # section 5.1: all architecture parameters set to 0.01
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        name="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4))
    arch_optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        name="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4))
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(
        name="step", epochs=25, step_size=10, gamma=0.1))
    max_steps_per_epoch: int = 0  # 0: the whole epoch (a cap for smoke runs)
    eval_every: int = 1  # evaluate the relaxed model every N epochs (0: only at the end)


@dataclass
class DiscretizeConfig:
    """Section 4.7: winner-take-all (eq. 18) or multinomial sampling with n trials (eq. 19)."""

    rule: str = "argmax"  # argmax | multinomial
    trials: int = 1  # n of eq. 19 (1: one categorical sample; 50: close to argmax)
    samples: int = 1  # architectures drawn with the multinomial rule
    target_avg_bits: float = 0.0  # > 0: keep the sample whose average bits is closest (section 5.6)
    seed: int = 0
    search_dir: str = ""  # the search to discretize ("": RUN_DIR/search); lets samples share one search


@dataclass
class TrainConfig:
    """Section 5.1: the discretised (or uniform) network trained from scratch."""

    policy: str = "searched"  # searched (RUN_DIR/policy.json) | uniform | a path to a policy.json
    uniform_w_bits: int = 2  # the HWGQ-Net baseline when policy=uniform
    uniform_a_bits: int = 2
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        name="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4))
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(
        name="multistep", epochs=95, milestones=[30, 60, 90], gamma=0.1))
    max_steps_per_epoch: int = 0


@dataclass
class EdmipsConfig(ExperimentConfig):
    """The shared sections (``table_row``, ``model``, ``data``, ``run``: core.config.ExperimentConfig)
    with EdMIPS's defaults, plus the search space and the three stages. ``model.name`` goes to
    ``core.models.build_model``: ``edmips_resnet18/50`` are the official BN-before-conv ResNets,
    ``resnet18/50``, ``alexnet``, ``googlenet``, ``inception_v3`` come from torchvision (auxiliary
    classifiers removed, section 5.1)."""

    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="edmips_resnet18"))
    data: DataConfig = field(default_factory=lambda: DataConfig(name="imagenet", batch_size=256))
    quant: QuantConfig = field(default_factory=QuantConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    discretize: DiscretizeConfig = field(default_factory=DiscretizeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(out_dir="runs/edmips/resnet18_imagenet"))


def load_edmips_config(path: str | os.PathLike | None = None,
                       overrides: list[str] | None = None) -> EdmipsConfig:
    """Load a config file plus ``key=value`` overrides on top of this schema's defaults (a partial
    section such as ``search.schedule.epochs=5`` keeps the schema's ``name: step``)."""
    return load_config(EdmipsConfig, path, overrides)

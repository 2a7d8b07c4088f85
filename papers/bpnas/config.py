"""The BP-NAS config schema: one YAML file describes a row (search -> derive -> train) and its figures.

The supplementary gives no hyper-parameters beyond the budgets and "160 epochs" (section 5); every default
below is a documented choice (``papers/bpnas/README.md``, "Choices where the texts are silent"). Every key
can be overridden on the command line (``search.b_max=3.5``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from core.config import (
    DataConfig,
    ExperimentConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    ScheduleConfig,
    load_config,
    require,
    require_range,
)
from core.quant.scale_clip import DEFAULT_A_K, DEFAULT_W_K, STATS
from papers.bpnas.supernet import PATH_MODES, TABLE1_PAIRS, check_pairs

__all__ = ["ModelConfig", "QuantConfig", "SearchConfig", "DeriveConfig", "TrainConfig", "FiguresConfig",
           "BpnasConfig", "load_bpnas_config"]

EDGES = ("float", "w8", "w8a8")


@dataclass
class QuantConfig:
    """Search space, blocks and quantizers (distribution reshaping, supp. section 5)."""

    pairs: list[list[int]] = field(default_factory=lambda: [list(p) for p in TABLE1_PAIRS])
    blocks: Any = 2  # layer -> block rule (papers.bpnas.supernet.block_of): 2 = ResNet block "layerS.I"
    w_quant: str = "scale_clip"  # scale_clip (uniformization) | dorefa (PACT's weights) | any core quantizer
    a_quant: str = "scale_clip"  # scale_clip | pact (the comparison of Fig. 2) | any core quantizer
    uniformize: bool = True  # scale_clip weights: clip at w_k * w_stat (True) or plain range [-max, max]
    w_k: float = DEFAULT_W_K
    w_stat: str = "mean_abs"
    a_k: float = DEFAULT_A_K
    a_stat: str = "mean_abs"
    a_momentum: float = 0.1
    pact_alpha_init: float = 10.0
    first: str = "w8a8"  # supp. Table 1: "We quantize the first convolutional layer into 8-bit"
    last: str = "w8a8"  # the classifier is not in the table; kept at 8 bits, outside the budget
    edge_quant: str = "lsq"  # quantizer of the 8-bit first / last layers

    def validate(self) -> None:
        try:
            check_pairs(self.pairs)
        except Exception as exc:  # ConfigError with the dotted key below
            require(False, "pairs", str(exc))
        require(self.first in EDGES and self.last in EDGES, "first",
                f"first / last must be one of {list(EDGES)}, got {self.first!r} / {self.last!r}")
        require(self.w_stat in STATS and self.a_stat in STATS, "w_stat",
                f"w_stat / a_stat must be one of {list(STATS)}, got {self.w_stat!r} / {self.a_stat!r}")
        require_range(self, ["w_k", "a_k", "pact_alpha_init"], gt=0)
        require_range(self, "a_momentum", gt=0, le=1)
        ok = (isinstance(self.blocks, int) and not isinstance(self.blocks, bool) and self.blocks >= 1) \
            or self.blocks in ("parent", "layer") or (isinstance(self.blocks, dict) and all(
                isinstance(v, (str, list)) for v in self.blocks.values()))
        require(ok, "blocks", "must be a name-prefix depth (int >= 1), 'parent', 'layer' or a mapping "
                f"{{block: [layer name prefixes]}}, got {self.blocks!r}")


@dataclass
class SearchConfig:
    """The barrier-penalty search (supp. eq. 3-7)."""

    b_max: float = 4.0  # B_max, average bits sqrt(BOPs / FLOPs) under the bpnas convention
    mu: float = 0.01  # barrier weight of eq. 3
    prob1_weight: float = 0.1  # weight of the Prob-1 regularizer (eq. 6)
    paths: str = "sample"  # sample (one pair per block per step) | mixture (softmax-weighted sum)
    baseline_decay: float = 0.9  # sampled paths: moving-average baseline of the score-function gradient
    warmup_epochs: int = 5  # epochs of weight training (paths from the initial p) before alpha moves
    init_margin: float = 0.1  # start at E(SN) <= B_max - init_margin (uniform p when it is already there)
    boundary_eps: float = 1e-3  # an architecture step must end at E(SN) <= B_max - boundary_eps
    max_backtracks: int = 20  # step halvings before an architecture step is rejected
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        name="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4))
    arch_optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        name="adam", lr=1e-3, betas=(0.5, 0.999), weight_decay=0.0))
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(name="cosine", epochs=60))
    max_steps_per_epoch: int = 0  # 0: the whole epoch (a cap for smoke runs)
    eval_every: int = 1

    def validate(self) -> None:
        require_range(self, ["b_max", "init_margin", "boundary_eps"], gt=0)
        require_range(self, ["mu", "prob1_weight", "warmup_epochs", "max_steps_per_epoch", "max_backtracks"],
                      ge=0)
        require_range(self, "baseline_decay", ge=0, lt=1)
        require_range(self, "eval_every", ge=1)
        require(self.paths in PATH_MODES, "paths", f"must be one of {list(PATH_MODES)}, got {self.paths!r}")
        require(self.init_margin > self.boundary_eps, "init_margin",
                f"must exceed search.boundary_eps ({self.boundary_eps}) so that the start is feasible")


@dataclass
class DeriveConfig:
    """The final model: the highest-probability pair of every block."""

    repair: bool = True  # if the argmax model breaks B_max, cheapen it (least log-probability lost per BOP)


@dataclass
class TrainConfig:
    """Training of the derived (or a published / uniform / random) mixed-precision network."""

    policy: str = "searched"  # searched | uniform | random | table1_bmax3 | ... | a policy.json path
    uniform_w_bits: int = 4
    uniform_a_bits: int = 4
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        name="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4))
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(
        name="multistep", epochs=160, milestones=[80, 120], gamma=0.1))
    max_steps_per_epoch: int = 0

    def validate(self) -> None:
        require_range(self, ["uniform_w_bits", "uniform_a_bits"], ge=1, le=32)
        require_range(self, "max_steps_per_epoch", ge=0)


@dataclass
class FiguresConfig:
    """Supp. Fig. 1 (uniformization on/off) and Fig. 2 (reshaping vs PACT) on one random block policy."""

    pairs: list[list[int]] = field(default_factory=lambda: [[1, 1], [2, 2], [4, 4], [8, 8]])
    seed: int = 0  # draws the random block policy (train.policy=random)
    baseline_w_quant: str = "dorefa"  # Fig. 2's PACT arm: PACT activations with DoReFa weights, as in PACT
    baseline_a_quant: str = "pact"

    def validate(self) -> None:
        try:
            check_pairs(self.pairs)
        except Exception as exc:
            require(False, "pairs", str(exc))


@dataclass
class BpnasConfig(ExperimentConfig):
    """The shared sections (``table_row``, ``model``, ``data``, ``run``: core.config.ExperimentConfig) with
    BP-NAS's defaults (ResNet-20 on CIFAR-10, supp. Table 1), plus the search space and the stages.
    ``model.name`` goes to ``core.models.build_model``: ``resnet20`` (CIFAR, option-A shortcuts),
    ``resnet18`` / ``resnet50`` (torchvision), ``digits_resnet`` (CPU demo)."""

    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="resnet20"))
    data: DataConfig = field(default_factory=lambda: DataConfig(name="cifar10", batch_size=128))
    quant: QuantConfig = field(default_factory=QuantConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    derive: DeriveConfig = field(default_factory=DeriveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    figures: FiguresConfig = field(default_factory=FiguresConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(out_dir="runs/bpnas/default"))


def load_bpnas_config(path: str | os.PathLike | None = None,
                      overrides: list[str] | None = None) -> BpnasConfig:
    """A config file plus ``key=value`` overrides on top of this schema's defaults."""
    return load_config(BpnasConfig, path, overrides)

"""The OneMPS config schema and the presets that turn the one training code path into VIMPS, DNAS and the
EdMIPS proxy.

The slides give the loss and its special cases but no hyper-parameters; every default below is a choice
documented in ``papers/onemps/README.md``. Every key can be overridden (``search.eta1=20``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

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
from core.errors import ConfigError

#: The configurations of the slide "Generalization to EdMIPS and DNAS" as overrides of the OneMPS config.
#: VIMPS: one search per fixed eta with directly learned per-layer logits; DNAS and the EdMIPS proxy are
#: VIMPS with the slide's three differences (Concrete relaxation / softmax proxy, no entropy, and DNAS's
#: multiplicative hardware loss).
PRESETS: dict[str, list[str]] = {
    "onemps": [],
    "vimps": ["search.probability_model=direct", "search.eta_distribution=fixed"],
    "dnas": ["search.probability_model=direct", "search.eta_distribution=fixed", "search.gates=gumbel_soft",
             "search.entropy_weight=0", "search.hardware_loss=multiplicative"],
    "edmips_proxy": ["search.probability_model=direct", "search.eta_distribution=fixed",
                     "search.gates=softmax", "search.entropy_weight=0"],
}


@dataclass
class QuantConfig:
    """The search space B^w x B^x per layer and the quantizers (slides: {Int8, Int4, Int2}, uniform grid,
    QAT)."""

    w_candidates: list[int] = field(default_factory=lambda: [2, 4, 8])
    a_candidates: list[int] = field(default_factory=lambda: [2, 4, 8])
    quantizer: str = "lsq"  # weights signed per-tensor, activations unsigned (signed where inputs can be < 0)
    w_options: dict = field(default_factory=dict)
    a_options: dict = field(default_factory=dict)
    signed_inputs: Literal["auto", "never"] = "auto"  # auto: signed activation quantizers where inputs go < 0
    first: Literal["float", "w8", "w8a8", "quantize"] = "w8"  # first conv: 8-bit weights, image input as is
    last: Literal["float", "w8", "w8a8", "quantize"] = "w8a8"  # classifier: W8A8
    conditional_bn: Literal["weight", "activation", "pair", "none"] = "weight"
    bops_convention: str = "exact"  # MACs of h_{k,b} (core.bops convention; searchable layers only)

    def validate(self) -> None:
        require_range(self, ["w_candidates", "a_candidates"], ge=1, le=8)
        for key in ("w_candidates", "a_candidates"):
            values = getattr(self, key)
            require(bool(values) and len(set(values)) == len(values), key,
                    f"must be distinct bits, got {values}")
        require(min(self.w_candidates) >= 2 or self.quantizer != "lsq", "w_candidates",
                "LSQ's signed weights need at least 2 bits")


@dataclass
class SearchConfig:
    """Supernet + f_theta training (slide "One-shot Mixed Precision Search")."""

    probability_model: Literal["mlp", "direct"] = "mlp"  # mlp: f_theta(eta) (OneMPS); direct: VIMPS
    mlp_depth: int = 2  # hidden layers of f_theta
    mlp_width: int = 64  # units per hidden layer
    eta0: float = 0.003  # [eta0, eta1]: the range of p(eta), of f_theta's input normalisation, of the sweep
    eta1: float = 3.0
    eta_distribution: Literal["uniform", "log_uniform", "fixed"] = "log_uniform"  # p(eta); fixed: search.eta
    eta: float = 0.1  # the penalty of a fixed-eta search (VIMPS, EdMIPS proxy)
    gates: Literal["gumbel_hard", "gumbel_soft", "softmax"] = "gumbel_hard"
    tau_start: float = 5.0  # Gumbel-softmax temperature schedule, per step
    tau_end: float = 0.5
    tau_schedule: Literal["exponential", "linear", "constant"] = "exponential"
    hardware_loss: Literal["boltzmann", "multiplicative"] = "boltzmann"
    entropy_weight: float = 1e-3  # lambda
    kernel_weight: float = 1e-2  # mu
    dnas_beta: float = 0.05  # DNAS: task loss x beta (log Cost)^gamma, Cost in BOPs (beta ln Cost ~ 1)
    dnas_gamma: float = 1.0
    arch_warmup_epochs: int = 0  # epochs during which only the weights step (theta frozen)
    init_quantizers: bool = True  # initialise every option's LSQ step on one batch before training
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        name="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4))
    arch_optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        name="adam", lr=1e-3, weight_decay=0.0))
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(name="cosine", epochs=30))
    max_steps_per_epoch: int = 0  # 0: whole epochs (a cap for smoke runs)

    def validate(self) -> None:
        require_range(self, ["eta0", "tau_start", "tau_end"], gt=0)
        require_range(self, ["eta", "entropy_weight", "kernel_weight", "arch_warmup_epochs",
                             "max_steps_per_epoch"], ge=0)
        require_range(self, ["dnas_beta", "dnas_gamma"], gt=0)
        require_range(self, "mlp_depth", ge=0)
        require_range(self, "mlp_width", ge=1)
        require(self.eta1 > self.eta0, "eta1", f"must be > eta0 ({self.eta0}), got {self.eta1}")
        if self.eta_distribution == "fixed":
            require(self.eta > 0, "eta", "a fixed-eta search needs eta > 0")
        if self.hardware_loss == "multiplicative":
            require(self.eta_distribution == "fixed", "hardware_loss",
                    "DNAS's multiplicative loss is a fixed-beta search (search.eta_distribution=fixed)")


@dataclass
class ParetoConfig:
    """After training: sweep eta over [eta0, eta1], most probable child per eta, evaluated with the supernet
    weights after BN re-calibration on ``bn_images`` training images."""

    points: int = 20  # abstract: "20 to 40 supernet evaluations"
    spacing: Literal["linear", "log"] = "log"  # the abstract sweeps linearly: pareto.spacing=linear (README)
    bn_images: int = 2048
    max_eval_batches: int = 0  # 0: the whole validation split

    def validate(self) -> None:
        require_range(self, "points", ge=2)
        require_range(self, ["bn_images", "max_eval_batches"], ge=0)


@dataclass
class FinetuneConfig:
    """A child trained as a fixed-precision LSQ network (its kernels, steps and BN from the supernet)."""

    point: int = -1  # index into pareto/front.json (-1: the most accurate front point)
    policy: str = ""  # or a policy.json path (then the child starts from init below)
    init: Literal["supernet", "float"] = "supernet"  # the child's weights: its supernet options, or float
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="sgd", lr=0.01, momentum=0.9,
                                                                   weight_decay=1e-4))
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(name="cosine", epochs=10))
    max_steps_per_epoch: int = 0
    bn_images: int = 2048  # BN re-estimation before the final evaluation (0: none)

    def validate(self) -> None:
        require_range(self, ["max_steps_per_epoch", "bn_images"], ge=0)


@dataclass
class CorrelateConfig:
    """Kendall tau between child accuracy under each configuration's supernet and standalone accuracy of
    the same M architectures (slide "Correlation between the child and standalone model performances")."""

    architectures: int = 8  # M
    presets: list[str] = field(default_factory=lambda: ["onemps", "edmips_proxy", "dnas"])
    seed: int = 0  # architecture sampling
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="sgd", lr=0.1, momentum=0.9,
                                                                   weight_decay=1e-4))  # standalone training
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(name="cosine", epochs=10))
    table_rows: dict[str, str] = field(default_factory=dict)  # preset -> table row its results.json fills

    def validate(self) -> None:
        require_range(self, "architectures", ge=2)
        unknown = [p for p in self.presets if p not in PRESETS]
        require(not unknown and bool(self.presets), "presets",
                f"must be a non-empty list of {sorted(PRESETS)}, got {self.presets}")
        require(set(self.table_rows) <= set(self.presets), "table_rows",
                f"names presets outside correlate.presets {self.presets}: {sorted(self.table_rows)}")


@dataclass
class OneMpsConfig(ExperimentConfig):
    """``table_row``, ``model`` (``pretrained``: a local float checkpoint the supernet starts from, every
    weight option a copy of it), ``data``, ``run`` (core's shared sections) and the OneMPS stages."""

    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="resnet18"))
    data: DataConfig = field(default_factory=lambda: DataConfig(name="imagenet", batch_size=256))
    quant: QuantConfig = field(default_factory=QuantConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    pareto: ParetoConfig = field(default_factory=ParetoConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    correlate: CorrelateConfig = field(default_factory=CorrelateConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(out_dir="runs/onemps/default"))


def load_onemps_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None,
                       preset: str | None = None) -> OneMpsConfig:
    """A config file plus the ``preset``'s overrides (:data:`PRESETS`), then the command-line overrides."""
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    return load_config(OneMpsConfig, path, [*PRESETS.get(preset or "onemps", []), *(overrides or [])])

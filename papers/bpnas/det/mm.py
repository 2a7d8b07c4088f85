"""BP-NAS's detection components, registered in mmdet's and mmengine's registries (no monkey-patching).

Load them in an mmdet config with ``custom_imports = dict(imports=["papers.bpnas.det.mm"])``:

- ``BpnasFasterRCNN`` (``mmdet.registry.MODELS``): mmdet's ``FasterRCNN`` converted at build time by
  ``core.nn.quantize_model``. ``bpnas=dict(mode="search", ...)`` makes every conv / linear a ``PairConv2d`` /
  ``PairLinear`` of the ``bpnas_pairs`` kind, grouped into supp. Table 2's 32 blocks
  (:func:`papers.bpnas.det.blocks.faster_rcnn_blocks`), with feasible initial logits; its ``loss()`` adds
  ``loss_barrier`` (supp. eq. 3), ``loss_prob1`` (eq. 6, weighted) and, with sampled paths,
  ``loss_arch_score`` (the score-function term ``(L_task - b) sum_b log p_b(s_b)``) to mmdet's loss dict.
  ``bpnas=dict(mode="train", policy=PATH)`` makes them fixed-precision ``QConv2d`` / ``QLinear`` at the
  policy's bits (the final training).
- ``BpnasOptimWrapperConstructor`` / ``BpnasOptimWrapper`` (``mmengine.registry``): the weights' optimizer
  (the config's ``optimizer``; the lr schedule acts on it) and the architecture logits' own optimizer
  (``arch_optimizer``, default Adam 1e-3, betas (0.5, 0.999)); ``step()`` steps the weights, then the logits
  through :func:`papers.bpnas.losses.guarded_arch_step` (a step that would leave ``E(SN) <= B_max - eps`` is
  backtracked, the search never leaves the feasible domain). During warm-up the logits' gradients are
  dropped. Both optimizers' states are in the checkpoint (resume).
- ``BpnasSearchHook`` (``mmengine.registry.HOOKS``): before every training iteration, warm-up on / off and
  one pair per block drawn from ``p`` with a generator seeded by ``(seed, iteration)`` (the same on every
  rank, again on resume); after every epoch ``arch_history.json`` and ``arch_state.json`` (read by the
  derive stage) in the work dir; the history travels in the checkpoint.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from core.errors import ConfigError
from core.extras import require
from core.nn import arch_parameters, freeze_full_precision_quantizers, quantize_model
from core.policy import BitPolicy
from papers.bpnas.config import QuantConfig
from papers.bpnas.det.blocks import CONVENTION, count_detector, faster_rcnn_blocks
from papers.bpnas.losses import (
    SupernetCost,
    barrier_penalty,
    feasible_init,
    guarded_arch_step,
    path_log_prob,
    prob1_regularizer,
)
from papers.bpnas.models import fixed_spec, supernet_spec
from papers.bpnas.search import block_snapshot
from papers.bpnas.supernet import PATH_MODES, TABLE2_PAIRS, block_selectors, check_pairs

require("mmdet", "BP-NAS detection")
from mmdet.models.detectors import FasterRCNN  # noqa: E402
from mmdet.registry import MODELS  # noqa: E402
from mmengine.dist import is_main_process  # noqa: E402
from mmengine.hooks import Hook  # noqa: E402
from mmengine.logging import MessageHub  # noqa: E402
from mmengine.model import is_model_wrapper  # noqa: E402
from mmengine.optim import OptimWrapper  # noqa: E402
from mmengine.registry import HOOKS, OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS, OPTIMIZERS  # noqa: E402

MODES = ("search", "train")
ARCH_STATE_FILE, ARCH_HISTORY_FILE = "arch_state.json", "arch_history.json"


@dataclass
class DetBpnas:
    """``model.bpnas`` of a ``BpnasFasterRCNN`` config (the search's keys as in ``papers.bpnas.config``)."""

    mode: str = "search"  # search: the supernet | train: fixed bits from `policy`
    policy: str | None = None  # train: a policy.json (layer-level BitPolicy)
    pairs: list = field(default_factory=lambda: [list(p) for p in TABLE2_PAIRS])
    blocks: Any = None  # None: supp. Table 2's 32 blocks for the backbone's depth
    paths: str = "sample"
    b_max: float = 4.25
    mu: float = 0.01
    prob1_weight: float = 0.1
    baseline_decay: float = 0.9
    init_margin: float = 0.1
    boundary_eps: float = 1e-3
    max_backtracks: int = 20
    count_size: list = field(default_factory=lambda: [800, 1344])  # (H, W) of E(SN)'s MAC count
    num_rois: int | None = None  # RoIs of the box head in the count (None: train_cfg.rcnn.sampler.num)
    quant: dict = field(default_factory=dict)  # papers.bpnas.config.QuantConfig keys (w_k, a_k, ...)

    @classmethod
    def build(cls, cfg: dict | None) -> DetBpnas:
        cfg = dict(cfg or {})
        unknown = sorted(set(cfg) - {f.name for f in fields(cls)})
        if unknown:
            known = [f.name for f in fields(cls)]
            raise ConfigError(f"model.bpnas: unknown key(s) {unknown}; known: {known}")
        out = cls(**cfg)
        if out.mode not in MODES:
            raise ConfigError(f"model.bpnas.mode must be one of {list(MODES)}, got {out.mode!r}")
        if out.mode == "train" and not out.policy:
            raise ConfigError("model.bpnas.mode=train needs model.bpnas.policy (a policy.json path)")
        if out.paths not in PATH_MODES:
            raise ConfigError(f"model.bpnas.paths must be one of {list(PATH_MODES)}, got {out.paths!r}")
        out.pairs = [list(p) for p in check_pairs(out.pairs)]
        if not (out.b_max > 0 and out.init_margin > out.boundary_eps > 0 and out.mu >= 0):
            raise ConfigError("model.bpnas: need b_max > 0, init_margin > boundary_eps > 0 and mu >= 0")
        return out

    def quant_config(self) -> QuantConfig:
        try:
            q = QuantConfig(**self.quant)
        except TypeError as exc:
            raise ConfigError(f"model.bpnas.quant: {exc}") from None
        q.validate()
        return q


def unwrap(model: Any) -> Any:
    return model.module if is_model_wrapper(model) else model


def _spec_for_detector(spec: Any, quant: QuantConfig) -> Any:
    """Every layer searched / quantized (Table 2 includes the stem and all bbox-head linears); signed
    inputs decided on the first batch (normalised images, FPN sums and RoI features can be negative)."""
    a_options = dict(spec.a_options)
    if quant.a_quant == "scale_clip":
        a_options["signed"] = None
    return replace(spec, first="quantize", last="quantize", a_options=a_options)


def _total(value: Any) -> torch.Tensor:
    return sum(v.mean() for v in value) if isinstance(value, (list, tuple)) else value.mean()


@MODELS.register_module()
class BpnasFasterRCNN(FasterRCNN):
    """mmdet's Faster R-CNN as BP-NAS's supernet (``bpnas.mode=search``) or final network (``train``)."""

    def __init__(self, *args: Any, bpnas: dict | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.opts = o = DetBpnas.build(bpnas)
        quant = o.quant_config()
        depth = getattr(self.backbone, "depth", 50)
        self.block_rule = o.blocks if o.blocks is not None else faster_rcnn_blocks(depth)
        quant.blocks = self.block_rule
        self.num_rois = o.num_rois or int(self.train_cfg.rcnn.sampler.num)
        self.arch_active = False
        self.arch_trace: list[float] = []
        self.arch_counters = {"steps": 0, "backtracks": 0, "rejected": 0}
        if o.mode == "train":
            self.layer_names = quantize_model(self, _spec_for_detector(fixed_spec(quant), quant))
            self.policy = BitPolicy.load(o.policy)
            self.policy.validate(self)
            self.policy.apply(self)
            freeze_full_precision_quantizers(self)
            self._refreeze()
            self.selectors, self.cost, self.init_record = [], None, None
            return
        report = count_detector(self, o.count_size, self.num_rois)
        quant.pairs = o.pairs
        self.layer_names = quantize_model(self, _spec_for_detector(supernet_spec(quant, o.paths), quant))
        self._refreeze()
        self.selectors = block_selectors(self)
        self.cost = SupernetCost.from_report(self.selectors, report)
        self.init_record = feasible_init(self.cost, o.b_max, o.init_margin)
        self.register_buffer("score_baseline", torch.tensor(math.nan, dtype=torch.float64))

    def _refreeze(self) -> None:
        """The swapped layers are new modules: apply mmdet's ``frozen_stages`` to them again now (mmdet's
        ResNet does it at build time and on ``train()``), so that DDP and the optimizer see the same frozen
        parameters as in mmdet's float detector; the frozen stages' blocks are still searched (their logits
        stay trainable)."""
        if hasattr(self.backbone, "_freeze_stages"):
            self.backbone._freeze_stages()
        for p in arch_parameters(self):
            p.requires_grad_(True)

    def train(self, mode: bool = True) -> BpnasFasterRCNN:
        super().train(mode)  # mmdet's ResNet.train() freezes its frozen stages' parameters, logits included
        self._refreeze()
        return self

    @property
    def sampled(self) -> bool:
        return self.opts.mode == "search" and self.opts.paths == "sample"

    def loss(self, batch_inputs: torch.Tensor, batch_data_samples: list) -> dict:
        """mmdet's losses plus the search terms (their keys contain ``loss``, so mmengine sums them)."""
        losses = super().loss(batch_inputs, batch_data_samples)
        if self.opts.mode != "search":
            return losses
        o = self.opts
        task = sum(_total(v) for k, v in losses.items() if "loss" in k)
        expected = self.cost.expected_avg_bits()
        losses["loss_barrier"] = barrier_penalty(expected, o.b_max, o.mu).float()
        losses["loss_prob1"] = o.prob1_weight * prob1_regularizer([s.probs() for s in self.selectors]).float()
        if self.sampled:
            value, base = float(task.detach()), float(self.score_baseline)
            advantage = 0.0 if math.isnan(base) else value - base
            losses["loss_arch_score"] = advantage * path_log_prob(self.selectors).float()
            new = value if math.isnan(base) else o.baseline_decay * base + (1 - o.baseline_decay) * value
            self.score_baseline.fill_(new)
        losses["expected_avg_bits"] = expected.detach().float()
        return losses

    def arch_state(self, epoch: int, extra: dict | None = None) -> dict:
        """What ``arch_state.json`` holds (the derive stage's input, as in the classification search)."""
        o = self.opts
        return {**(extra or {}), "model": "faster_rcnn", "input_size": [3, *o.count_size],
                "num_rois": self.num_rois, "b_max": o.b_max, "mu": o.mu, "prob1_weight": o.prob1_weight,
                "paths": o.paths, "convention": CONVENTION, "include_first": True, "include_last": True,
                "epoch": int(epoch), "flops": self.cost.flops, "fixed_bops": self.cost.fixed_bops,
                "expected_avg_bits": self.cost.value(), "init": self.init_record,
                "blocks": block_snapshot(self.selectors, self.cost)}


@OPTIM_WRAPPERS.register_module()
class BpnasOptimWrapper(OptimWrapper):
    """The weights' optimizer (``self.optimizer``) and the architecture logits' (``arch_optimizer``)."""

    def __init__(self, optimizer: torch.optim.Optimizer, arch_optimizer: torch.optim.Optimizer | None = None,
                 detector: Any = None, **kwargs: Any) -> None:
        super().__init__(optimizer, **kwargs)
        self.arch_optimizer, self.detector = arch_optimizer, detector

    def step(self, **kwargs: Any) -> None:
        det = self.detector
        if self.arch_optimizer is None or det is None:
            return super().step(**kwargs)
        if not det.arch_active:  # warm-up: weights only
            for s in det.selectors:
                s.alpha.grad = None
            return super().step(**kwargs)
        super().step(**kwargs)
        o = det.opts
        info = guarded_arch_step(self.arch_optimizer, det.cost, o.b_max, o.boundary_eps, o.max_backtracks)
        det.arch_trace.append(info["expected_avg_bits"])
        for key in ("backtracks", "rejected"):
            det.arch_counters[key] += int(info[key])
        det.arch_counters["steps"] += 1
        MessageHub.get_current_instance().update_scalar("train/arch_backtracks", info["backtracks"])

    def zero_grad(self, **kwargs: Any) -> None:
        super().zero_grad(**kwargs)
        if self.arch_optimizer is not None:
            self.arch_optimizer.zero_grad(**kwargs)

    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.arch_optimizer is not None:
            state["bpnas_arch_optimizer"] = self.arch_optimizer.state_dict()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state = dict(state_dict)
        arch = state.pop("bpnas_arch_optimizer", None)
        super().load_state_dict(state)
        if self.arch_optimizer is not None:
            if arch is None:
                raise ConfigError("the checkpoint has no architecture optimizer state: it is not a BP-NAS "
                                  "search checkpoint")
            self.arch_optimizer.load_state_dict(arch)


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class BpnasOptimWrapperConstructor:
    """``optim_wrapper=dict(constructor="BpnasOptimWrapperConstructor", optimizer=..., arch_optimizer=...)``:
    the weights (every parameter but the logits) in ``optimizer``, the logits in ``arch_optimizer``."""

    ARCH_DEFAULT = {"type": "Adam", "lr": 1e-3, "betas": (0.5, 0.999), "weight_decay": 0.0}

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: dict | None = None) -> None:
        if paramwise_cfg:
            raise ConfigError("BpnasOptimWrapperConstructor: paramwise_cfg is not supported (the logits have "
                              "their own optimizer, arch_optimizer)")
        self.cfg = copy.deepcopy(dict(optim_wrapper_cfg))
        self.cfg.setdefault("type", "BpnasOptimWrapper")
        self.arch_cfg = dict(self.cfg.pop("arch_optimizer", None) or self.ARCH_DEFAULT)
        self.optimizer_cfg = dict(self.cfg.pop("optimizer"))

    def __call__(self, model: Any) -> BpnasOptimWrapper:
        det = unwrap(model)
        arch = arch_parameters(det)
        ids = {id(p) for p in arch}
        weights = [p for p in det.parameters() if id(p) not in ids and p.requires_grad]
        optimizer = OPTIMIZERS.build({**self.optimizer_cfg, "params": weights})
        arch_opt = OPTIMIZERS.build({**self.arch_cfg, "params": arch}) if arch else None
        return OPTIM_WRAPPERS.build({**self.cfg, "optimizer": optimizer, "arch_optimizer": arch_opt,
                                     "detector": det if arch else None})


@HOOKS.register_module()
class BpnasSearchHook(Hook):
    """Warm-up switch and path sampling per iteration; the architecture record per epoch (module doc)."""

    priority = "HIGH"

    def __init__(self, warmup_epochs: int = 0, seed: int = 0, out_dir: str | None = None) -> None:
        self.warmup_epochs, self.seed, self.out_dir = int(warmup_epochs), int(seed), out_dir
        self.history: list[dict] = []

    def before_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None) -> None:
        det = unwrap(runner.model)
        det.arch_active = runner.epoch >= self.warmup_epochs
        if det.sampled:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + runner.iter)
            for s in det.selectors:
                s.resample(generator)

    def before_train(self, runner: Any) -> None:
        if not self.history:
            self._record(runner, 0)  # the feasible initial p

    def after_train_epoch(self, runner: Any) -> None:
        self._record(runner, runner.epoch + 1)

    def _record(self, runner: Any, epoch: int) -> None:
        det = unwrap(runner.model)
        state = det.arch_state(epoch)
        argmax = {b["name"]: b["pairs"][max(range(len(b["probs"])), key=b["probs"].__getitem__)]
                  for b in state["blocks"]}
        entry = {"epoch": epoch, "probs": [b["probs"] for b in state["blocks"]],
                 "expected_avg_bits": state["expected_avg_bits"],
                 "argmax_avg_bits": det.cost.avg_bits(argmax), **det.arch_counters}
        det.arch_counters = {"steps": 0, "backtracks": 0, "rejected": 0}
        self.history = [e for e in self.history if e["epoch"] < epoch] + [entry]
        if not is_main_process():
            return
        from core.io import atomic_write_text

        out = Path(self.out_dir or runner.work_dir)
        blocks = state["blocks"]
        history = {"blocks": [b["name"] for b in blocks], "pairs": [b["pairs"] for b in blocks],
                   "b_max": state["b_max"], "epochs": self.history}
        atomic_write_text(out / ARCH_HISTORY_FILE, json.dumps(history) + "\n")
        atomic_write_text(out / ARCH_STATE_FILE, json.dumps(state, indent=1) + "\n")

    def before_save_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        checkpoint["bpnas_arch_history"] = copy.deepcopy(self.history)

    def after_load_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        self.history = list(checkpoint.get("bpnas_arch_history", []))

"""Section 5.1: train the discretised mixed-precision network (or a uniform HWGQ baseline) from scratch.

``train.policy`` picks the network: ``searched`` (RUN_DIR/policy.json from the discretize stage), ``uniform``
(every searchable layer at ``train.uniform_w_bits`` / ``train.uniform_a_bits``: the HWGQ-Net baselines of
Table 1 and Figure 5), ``float`` (the full-precision reference) or a path to any ``policy.json``. The
quantized layers are core's fixed-precision ``QConv2d`` / ``QLinear`` with the same Gaussian weight and
HWGQ activation quantizers as the search; first conv and last fc stay full precision. The schedule is the
paper's (95 epochs, lr 0.1 decayed 10x at 30/60/90; the 50-epoch exploration runs decay at 15/30/45).

At the end RUN_DIR/results.json holds the fields of the project's results contract, and
RUN_DIR/train/export.json tells ``mpq export RUN_DIR`` how to rebuild the final network
(``core.export.spec``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch.nn as nn

from core.bops import count
from core.engine import (
    Trainer,
    atomic_write_text,
    build_optimizer,
    build_scheduler,
    is_main,
    log,
    trainer_kwargs,
)
from core.errors import ConfigError
from core.export.spec import write_export_spec
from core.policy import BitPolicy
from papers.edmips.common import (
    POLICY_FILE,
    RESULTS_FILE,
    build_data,
    code_version,
    device_name,
    num_classes_of,
    run_paths,
    setup,
)
from papers.edmips.config import EdmipsConfig
from papers.edmips.models import build_float_model, export_spec, quantize_fixed

POLICY_SOURCES = ("searched", "uniform", "float")


def resolve_policy(cfg: EdmipsConfig, model: nn.Module) -> BitPolicy | None:
    """The BitPolicy named by ``train.policy`` for ``model`` (already quantized); None for ``float``."""
    src = cfg.train.policy
    root, _, _ = run_paths(cfg)
    if src == "float":
        return None
    if src == "uniform":
        return BitPolicy.uniform(model, cfg.train.uniform_w_bits, cfg.train.uniform_a_bits,
                                 meta={"method": "uniform-hwgq", "model": cfg.model.name})
    path = root / POLICY_FILE if src == "searched" else Path(src)
    if not path.is_file():
        hint = ("run `mpq edmips discretize` with the same config first" if src == "searched"
                else f"train.policy must be one of {', '.join(POLICY_SOURCES)} or a policy.json path")
        raise ConfigError(f"policy file {path} not found: {hint}")
    return BitPolicy.load(path)


def build_train_model(cfg: EdmipsConfig, num_classes: int) -> tuple[nn.Module, BitPolicy | None]:
    """The network of ``train.policy``: fixed-precision quantized layers with the policy's bits."""
    model = build_float_model(cfg.model, num_classes)
    if cfg.train.policy == "float":
        return model, None
    quantize_fixed(model, cfg.quant)
    policy = resolve_policy(cfg, model)
    policy.validate(model)
    policy.apply(model)
    return model, policy


def _stage_times(root: Path) -> dict[str, float]:
    times: dict[str, float] = {}
    search_time = root / "search" / "search_time.json"
    if search_time.is_file():
        times["search"] = json.loads(search_time.read_text()).get("search_wall_s")
    policy = root / POLICY_FILE
    if policy.is_file():
        t = json.loads(policy.read_text()).get("meta", {}).get("discretize_wall_s")
        if t is not None:
            times["discretize"] = t
    return times


def run_train(cfg: EdmipsConfig) -> dict:
    """``mpq edmips train``: final training from scratch; writes RUN_DIR/train/ and RUN_DIR/results.json."""
    t0 = time.perf_counter()
    info = setup(cfg)
    data = build_data(cfg.data, info, cfg.run.seed, cfg.train.max_steps_per_epoch)
    root, _, train_dir = run_paths(cfg)
    model, policy = build_train_model(cfg, num_classes_of(cfg, data))
    model.to(info.device)
    optimizer = build_optimizer(cfg.train.optim, model.parameters())
    scheduler = build_scheduler(cfg.train.schedule, optimizer, len(data.train))
    trainer = Trainer(model, {"weights": optimizer}, data.train, data.val, epochs=cfg.train.schedule.epochs,
                      schedulers={"weights": scheduler}, device=info.device, config=cfg,
                      **{**trainer_kwargs(cfg.run, cfg.train.optim), "run_dir": train_dir})
    record = trainer.fit()
    if "val_top1" not in record:
        raise ConfigError("training finished without a validation result (no val loader?)")
    report = count(model, data.input_size, policy=policy, convention="edmips")
    results = {
        "paper": "edmips",
        "row": cfg.row,
        "model": cfg.model.name,
        "dataset": cfg.data.name,
        "policy_source": cfg.train.policy,
        "policy": policy.to_dict() if policy is not None else None,
        "params": report.params,
        "macs": report.macs,
        "macs_all": report.macs_all,
        "bops": report.bops,
        "bops_convention": "edmips",
        "avg_bits": report.avg_bits,
        "size_mb": report.size_mb(),
        "top1": record["val_top1"],
        "top5": record["val_top5"],
        "epochs": cfg.train.schedule.epochs,
        "wall_time_s": {**_stage_times(root), "train": time.perf_counter() - t0},
        "device": device_name(info.device),
        "world_size": info.world_size,
        "seed": cfg.run.seed,
        "code_version": code_version(),
    }
    if is_main():
        atomic_write_text(root / RESULTS_FILE, json.dumps(results, indent=2) + "\n")
        write_export_spec(train_dir, export_spec(  # for `mpq export RUN_DIR`: the final weights are last.pt
            cfg.model, cfg.quant, num_classes_of(cfg, data), data.input_size,
            policy.to_dict() if policy is not None else None, "checkpoints/last.pt",
            {"paper": "edmips", "row": cfg.row, "policy_source": cfg.train.policy}))
    log(f"EdMIPS train: top-1 {results['top1']:.2f} top-5 {results['top5']:.2f}, average bits "
        f"{results['avg_bits']:.3f} -> {root / RESULTS_FILE}")
    return results

"""Training of the derived mixed-precision network (or a published, uniform or random one).

``train.policy`` picks the network: ``searched`` (RUN_DIR/policy.json of the derive stage), a packaged
policy (``table1_bmax3``, ``table1_bmax3.5``, ``table1_bmax4``: supp. Table 1, ``papers/bpnas/policies/``),
``uniform`` (every searched layer at ``train.uniform_w_bits`` / ``train.uniform_a_bits``), ``random`` (each
block at a pair drawn from ``figures.pairs`` with ``figures.seed``: supp. section 5) or a path to any
``policy.json``. The layers are core's fixed-precision ``QConv2d`` / ``QLinear`` with the reshaping
quantizers of ``quant`` (the same as the search); the first conv and the classifier at 8 bits.

At the end ``RUN_DIR/results.json`` is a :class:`core.results.RunResult` (counts under the ``bpnas``
convention; ``extra``: ``policy_source``, ``epochs``, ``b_max`` and ``within_budget`` of a policy that states
a budget, the ``quantizers``), and ``RUN_DIR/train/export.json`` lets ``mpq export RUN_DIR`` rebuild the
network.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch.nn as nn

from core.engine import (
    Trainer,
    build_optimizer,
    build_scheduler,
    classification_data,
    is_main,
    log,
    trainer_kwargs,
)
from core.errors import ConfigError
from core.export.spec import write_export_spec
from core.nn import freeze_full_precision_quantizers
from core.policy import BitPolicy
from core.results import RunResult, run_result, write_results
from papers.bpnas.common import POLICY_FILE, RESULTS_FILE, num_classes_of, run_paths, setup
from papers.bpnas.config import BpnasConfig
from papers.bpnas.models import CONVENTION, build_fixed_model, export_spec, policy_report, random_block_policy

POLICY_DIR = Path(__file__).resolve().parent / "policies"
POLICY_SOURCES = ("searched", "uniform", "random")


def packaged_policies() -> list[str]:
    return sorted(p.stem for p in POLICY_DIR.glob("*.json"))


def resolve_policy(cfg: BpnasConfig, names: list[str]) -> BitPolicy:
    """The BitPolicy named by ``train.policy`` for a model whose policy layers are ``names``."""
    src = cfg.train.policy
    root, _, _ = run_paths(cfg)
    if src == "uniform":
        return BitPolicy.uniform(names, cfg.train.uniform_w_bits, cfg.train.uniform_a_bits,
                                 meta={"method": "uniform", "model": cfg.model.name})
    if src == "random":
        return random_block_policy(names, cfg.quant.blocks, cfg.figures.pairs, cfg.figures.seed)
    if src in packaged_policies():
        return BitPolicy.load(POLICY_DIR / f"{src}.json")
    path = root / POLICY_FILE if src == "searched" else Path(src)
    if not path.is_file():
        hint = ("run `mpq bpnas search` and `mpq bpnas derive` with the same config first"
                if src == "searched" else
                f"train.policy must be one of {', '.join(POLICY_SOURCES)}, a packaged policy "
                f"({', '.join(packaged_policies())}) or a policy.json path")
        raise ConfigError(f"policy {src!r}: {path} not found; {hint}")
    return BitPolicy.load(path)


def build_train_model(cfg: BpnasConfig, num_classes: int) -> tuple[nn.Module, BitPolicy]:
    """The fixed-precision network with the bits of ``train.policy`` applied."""
    model, names = build_fixed_model(cfg, num_classes)
    policy = resolve_policy(cfg, names)
    policy.validate(model)
    policy.apply(model)
    freeze_full_precision_quantizers(model)
    return model, policy


def _stage_times(root: Path) -> dict[str, float]:
    times: dict[str, float] = {}
    search_time = root / "search" / "search_time.json"
    if search_time.is_file():
        times["search"] = json.loads(search_time.read_text()).get("search_wall_s")
    policy = root / POLICY_FILE
    if policy.is_file():
        t = json.loads(policy.read_text()).get("meta", {}).get("derive_wall_s")
        if t is not None:
            times["derive"] = t
    return times


def run_train(cfg: BpnasConfig) -> RunResult:
    """``mpq bpnas train``: train the network of ``train.policy``; writes RUN_DIR/train/ and results.json."""
    t0 = time.perf_counter()
    info = setup(cfg)
    data = classification_data(cfg.data, cfg.run.seed, info=info,
                               max_steps=cfg.train.max_steps_per_epoch)
    root, _, train_dir = run_paths(cfg)
    num_classes = num_classes_of(cfg)
    model, policy = build_train_model(cfg, num_classes)
    model.to(info.device)
    optimizer = build_optimizer(cfg.train.optim, model.parameters())
    scheduler = build_scheduler(cfg.train.schedule, optimizer, len(data.train))
    trainer = Trainer(model, {"weights": optimizer}, data.train, data.val, epochs=cfg.train.schedule.epochs,
                      schedulers={"weights": scheduler}, device=info.device, config=cfg,
                      **{**trainer_kwargs(cfg.run, cfg.train.optim), "run_dir": train_dir})
    record = trainer.fit()
    if "val_top1" not in record:
        raise ConfigError("training finished without a validation result (no val loader?)")
    report = policy_report(cfg, policy, num_classes, data.input_size)
    b_max = policy.meta.get("b_max")
    method = "bpnas" if policy.meta.get("method") == "bpnas" else cfg.train.policy
    within = None if b_max is None else report.avg_bits <= b_max
    uniformize = cfg.quant.uniformize if cfg.quant.w_quant == "scale_clip" else None
    result = run_result(cfg, info, paper="bpnas", method=method, report=report, policy=policy,
                        metrics={"top1": record["val_top1"], "top5": record["val_top5"],
                                 "loss": record["val_loss"]},
                        wall_time_s={**_stage_times(root), "train": time.perf_counter() - t0},
                        extra={"policy_source": cfg.train.policy, "epochs": cfg.train.schedule.epochs,
                               "b_max": b_max, "within_budget": within,
                               "quantizers": {"w": cfg.quant.w_quant, "a": cfg.quant.a_quant,
                                              "uniformize": uniformize}})
    write_results(root / RESULTS_FILE, result)
    if is_main():  # for `mpq export RUN_DIR`: the final weights are last.pt
        meta = {"paper": "bpnas", "table_row": cfg.table_row, "policy_source": cfg.train.policy}
        write_export_spec(train_dir, export_spec(cfg, num_classes, data.input_size, policy,
                                                 "checkpoints/last.pt", meta))
    log(f"BP-NAS train: top-1 {record['val_top1']:.2f} top-5 {record['val_top5']:.2f}, average bits "
        f"{report.avg_bits:.3f} ({CONVENTION}) -> {root / RESULTS_FILE}")
    return result

"""Section 5.1: train the discretised mixed-precision network (or a uniform HWGQ baseline) from scratch.

``train.policy`` picks the network: ``searched`` (RUN_DIR/discretize/policy.json), ``uniform``
(every searchable layer at ``train.uniform_w_bits`` / ``train.uniform_a_bits``: the HWGQ-Net baselines of
Table 1 and Figure 5), ``float`` (the full-precision reference) or a path to any ``policy.json``. The
quantized layers are core's fixed-precision ``QConv2d`` / ``QLinear`` with the same Gaussian weight and
HWGQ activation quantizers as the search; first conv and last fc stay full precision. The schedule is the
paper's (95 epochs, lr 0.1 decayed 10x at 30/60/90; the 50-epoch exploration runs decay at 15/30/45).

At the end RUN_DIR/train/results.json is the run's :class:`core.results.RunResult` (counts under the
``edmips`` convention; wall times of the search, accumulated over its resumes, the discretisation and the
training, accumulated likewise; ``extra``: ``policy_source``, ``epochs``), and RUN_DIR/train/export.json
tells ``mpq export RUN_DIR`` how to rebuild the final network (``core.export.spec``).
"""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from core.bops import count
from core.engine import (
    RunDir,
    Trainer,
    build_optimizer,
    build_scheduler,
    check_producer,
    classification_data,
    is_main,
    log,
    trainer_kwargs,
)
from core.errors import ConfigError
from core.export.spec import write_export_spec
from core.policy import BitPolicy
from core.results import RunResult, run_result, write_results
from papers.edmips.common import (
    DISCRETIZE_DIR,
    POLICY_FILE,
    RESULTS_FILE,
    SEARCH_DIR,
    TRAIN_DIR,
    num_classes_of,
    setup,
    stage_dir,
    stage_identity,
)
from papers.edmips.config import EdmipsConfig
from papers.edmips.models import build_float_model, export_spec, quantize_fixed

POLICY_SOURCES = ("searched", "uniform", "float")


def resolve_policy(cfg: EdmipsConfig, model: nn.Module) -> BitPolicy | None:
    """The BitPolicy named by ``train.policy`` for ``model`` (already quantized); None for ``float``. A
    ``searched`` policy must come from this config's search and discretisation (their records in its
    meta; a search that stopped early gives a warning)."""
    src = cfg.train.policy
    if src == "float":
        return None
    if src == "uniform":
        return BitPolicy.uniform(model, cfg.train.uniform_w_bits, cfg.train.uniform_a_bits,
                                 meta={"method": "uniform-hwgq", "model": cfg.model.name})
    path = stage_dir(cfg, DISCRETIZE_DIR) / POLICY_FILE if src == "searched" else Path(src)
    if not path.is_file():
        hint = ("run `mpq edmips discretize` with the same config first" if src == "searched"
                else f"train.policy must be one of {', '.join(POLICY_SOURCES)} or a policy.json path")
        raise ConfigError(f"policy file {path} not found: {hint}")
    policy = BitPolicy.load(path)
    if src == "searched":
        fix = "Re-run `mpq edmips search` and `mpq edmips discretize` with this config."
        check_producer(policy.meta.get("producer"), stage_identity(cfg, DISCRETIZE_DIR),
                       what=f"policy {path}", fix=fix)
        check_producer(policy.meta.get("search"), stage_identity(cfg, SEARCH_DIR),
                       what=f"search behind the policy {path}", fix=fix)
    return policy


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


def _stage_times(policy: BitPolicy | None) -> dict[str, float]:
    """Wall times of the stages that made ``policy``, from its meta: the search's (accumulated over its
    resumes, from the search's record) and the discretisation's."""
    meta = policy.meta if policy is not None else {}
    times: dict[str, float] = {}
    search = meta.get("search")
    progress = search.get("progress") if isinstance(search, dict) else None
    if isinstance(progress, dict) and progress.get("wall_time_s") is not None:
        times["search"] = float(progress["wall_time_s"])
    if meta.get("discretize_wall_s") is not None:
        times["discretize"] = float(meta["discretize_wall_s"])
    return times


def run_train(cfg: EdmipsConfig) -> RunResult:
    """``mpq edmips train``: final training from scratch; writes RUN_DIR/train/ (checkpoints, results.json,
    export.json), whose lock it holds from before the data is read to after the results are written."""
    info = setup(cfg)
    model, policy = build_train_model(cfg, num_classes_of(cfg))
    with RunDir(stage_dir(cfg, TRAIN_DIR)) as run:
        identity = stage_identity(cfg, TRAIN_DIR, policy)
        run.claim(identity, cfg.run.resume)  # lock + identity check; nothing written yet
        data = classification_data(cfg.data, cfg.run.seed, info=info,
                                   max_steps=cfg.train.max_steps_per_epoch)
        model.to(info.device)
        optimizer = build_optimizer(cfg.train.optim, model.parameters())
        scheduler = build_scheduler(cfg.train.schedule, optimizer, len(data.train))
        trainer = Trainer(model, {"weights": optimizer}, data.train, data.val,
                          epochs=cfg.train.schedule.epochs, schedulers={"weights": scheduler},
                          device=info.device, config=cfg, identity=identity,
                          **{**trainer_kwargs(cfg.run, cfg.train.optim), "run_dir": run})
        record = trainer.fit()
        if "val_top1" not in record:
            raise ConfigError("training finished without a validation result (no val loader?)")
        report = count(model, data.input_size, policy=policy, convention="edmips")
        method = {"uniform": "uniform", "float": "float"}.get(cfg.train.policy, "edmips")
        result = run_result(cfg, info, paper="edmips", method=method, report=report, policy=policy,
                            metrics={"top1": record["val_top1"], "top5": record["val_top5"],
                                     "loss": record["val_loss"]},
                            wall_time_s={**_stage_times(policy), "train": trainer.wall_time_s},
                            extra={"policy_source": cfg.train.policy, "epochs": cfg.train.schedule.epochs})
        write_results(run.path / RESULTS_FILE, result)
        if is_main():  # for `mpq export RUN_DIR`: the final weights are last.pt
            write_export_spec(run.path, export_spec(
                cfg.model, cfg.quant, num_classes_of(cfg), data.input_size,
                policy.to_dict() if policy is not None else None, "checkpoints/last.pt",
                {"paper": "edmips", "table_row": cfg.table_row, "policy_source": cfg.train.policy}))
    log(f"EdMIPS train: top-1 {record['val_top1']:.2f} top-5 {record['val_top5']:.2f}, average bits "
        f"{report.avg_bits:.3f} -> {run.path / RESULTS_FILE}")
    return result

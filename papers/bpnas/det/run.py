"""``mpq bpnas det-search`` / ``det-train``: the detection stages on mmengine's Runner.

A stage loads an mmdet config (``-c NAME|PATH``: a packaged ``papers/bpnas/configs/det/NAME.py`` or a file)
that inherits mmdet's own Faster R-CNN config, applies ``KEY=VALUE`` overrides (``data.root`` and
``run.out_dir`` set ``bpnas_run.data_root`` / ``out_dir``; everything else is an mmengine config key), points
the datasets and ``CocoMetric`` at the data (``core.data.coco``) and runs ``Runner.train()`` under
:func:`core.engine.mmengine_compat.mmengine_safe_loading` (resume under ``torch.load(weights_only=True)``).
The run directory is laid out like the classification stages::

    RUN_DIR/search/    mmengine work dir: checkpoints, logs, arch_history.json, arch_state.json
    RUN_DIR/policy.json   the derived policy (core.policy.BitPolicy; meta: blocks, B_max, average bits)
    RUN_DIR/train/     mmengine work dir of the final training
    RUN_DIR/results.json  core.results.RunResult (metrics: bbox mAP in percent; counts: bpnas convention)

Under ``torchrun`` the Runner uses its ``pytorch`` launcher (``launcher`` is set from ``WORLD_SIZE``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from core.errors import ConfigError
from core.extras import require

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "det"
POLICY_DIR = Path(__file__).resolve().parents[1] / "policies" / "det"
PACKAGED_POLICIES = {"table2": POLICY_DIR / "table2_faster_rcnn_r50_fpn.json"}
SHORTCUTS = {"data.root": "bpnas_run.data_root", "run.out_dir": "bpnas_run.out_dir",
             "run.seed": "bpnas_run.seed", "run.resume": "bpnas_run.resume"}


def config_names() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.py") if not p.name.startswith("_"))


def load_det_config(name: str, overrides: list[str] | None = None) -> Any:
    """The mmengine ``Config`` of ``name`` with the overrides; ``bpnas_run.out_dir`` defaulted."""
    Config = require("mmengine.config", "BP-NAS detection").Config
    path = Path(name).expanduser()
    if not path.is_file():
        path = CONFIG_DIR / (name if name.endswith(".py") else f"{name}.py")
    if not path.is_file():
        raise ConfigError(f"det config {name!r} not found: neither a file nor a packaged one "
                          f"({', '.join(config_names())})")
    try:
        cfg = Config.fromfile(str(path))
    except (TypeError, ValueError, KeyError, SyntaxError, FileNotFoundError, ImportError) as exc:
        raise ConfigError(f"det config {path}: {type(exc).__name__}: {exc}") from None
    if "bpnas_run" not in cfg:
        raise ConfigError(f"{path} has no bpnas_run section: inherit papers/bpnas/configs/det/"
                          "faster_rcnn_r50_fpn_coco.py")
    values = {}
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not KEY=VALUE")
        try:
            values[SHORTCUTS.get(key, key)] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: the value is not YAML ({exc})") from None
    cfg.merge_from_dict(values)
    if cfg.bpnas_run.out_dir is None:
        cfg.bpnas_run.out_dir = f"runs/bpnas/{path.stem}"
    return cfg


def _data_root(cfg: Any) -> Path:
    run = cfg.bpnas_run
    if run.data_root is not None:
        return Path(run.data_root)
    if run.fixture:
        from papers.bpnas.det.fixture import make_tiny_coco

        root = Path(run.out_dir) / "data"
        if not (root / "annotations" / "instances_val2017.json").is_file():
            make_tiny_coco(root, **run.fixture)
        return root
    raise ConfigError("no COCO data: pass data.root=/path/to/coco (annotations/instances_{train,val}2017"
                      ".json and {train,val}2017/)")


def runner_config(cfg: Any, stage: str, model_bpnas: dict) -> Any:
    """A copy of ``cfg`` ready for ``Runner.from_cfg``: data, evaluator, work dir, stage settings."""
    from core.data.coco import coco_metric_config, mmdet_dataset_config

    c = cfg.copy()
    run = c.bpnas_run
    root = _data_root(c)
    train_ds = mmdet_dataset_config(root, "train", pipeline=c.train_pipeline)
    val_ds = mmdet_dataset_config(root, "val", pipeline=c.test_pipeline)
    c.train_dataloader.dataset = train_ds
    c.val_dataloader.dataset = val_ds
    c.test_dataloader.dataset = val_ds
    c.val_evaluator = c.test_evaluator = coco_metric_config(root, "val")
    c.model.roi_head.bbox_head.num_classes = len(train_ds["metainfo"]["classes"])
    c.model.bpnas = {**c.model.get("bpnas", {}), **model_bpnas}
    c.work_dir = str(Path(run.out_dir) / stage)
    c.randomness = dict(seed=int(run.seed))
    c.resume = bool(run.resume)
    c.load_from = None
    # mmengine keeps one Visualizer per name in the process: a unique name, so that a second Runner in the
    # same process (det-search then det-train, tests) writes its scalars into its own work dir
    c.visualizer.name = f"bpnas_{stage}_{time.time_ns()}"
    c.launcher = "pytorch" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "none"
    wrapper = {}
    if c.launcher == "pytorch" and not torch.cuda.is_available():
        # mmengine's launcher sets a CUDA device; on CPU the gloo group is made in _run and DDP gets no device
        c.env_cfg.dist_cfg.backend = "gloo"
        wrapper = dict(device_ids=None)
    section = run[stage]
    c.train_cfg.max_epochs = int(section.epochs)
    if stage == "search":
        base = c.optim_wrapper
        c.optim_wrapper = dict(constructor="BpnasOptimWrapperConstructor", type="BpnasOptimWrapper",
                               optimizer=base.optimizer, arch_optimizer=section.arch_optimizer,
                               **({"clip_grad": base.clip_grad} if base.get("clip_grad") else {}))
        hook = dict(type="BpnasSearchHook", warmup_epochs=int(section.warmup_epochs), seed=int(run.seed))
        c.custom_hooks = [*c.get("custom_hooks", []), hook]
        quant = c.model.bpnas.get("quant", {})
        kinds = {quant.get("w_quant", "scale_clip"), quant.get("a_quant", "scale_clip")}
        if kinds != {"scale_clip"}:
            # a sampled step leaves the other candidates' quantizer parameters (e.g. PACT clips) unused
            wrapper["find_unused_parameters"] = True
    if c.launcher == "pytorch" and wrapper:
        c.model_wrapper_cfg = dict(type="MMDistributedDataParallel", broadcast_buffers=False, **wrapper)
    return c


def _model_name(c: Any) -> str:
    return f"faster_rcnn_r{c.model.backbone.depth}_fpn"


def _run(c: Any) -> Any:
    from core.engine.mmengine_compat import mmengine_safe_loading

    Runner = require("mmengine.runner", "BP-NAS detection").Runner
    gloo = c.launcher == "pytorch" and c.env_cfg.dist_cfg.backend == "gloo"
    if gloo and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo")  # torchrun's env:// variables
    runner = Runner.from_cfg(c)
    with mmengine_safe_loading():
        runner.train()
    return runner


def run_det_search(cfg: Any) -> Any:
    """The barrier-penalty search of the detector, then the derivation -> RUN_DIR/policy.json."""
    from core.engine import is_main, log
    from papers.bpnas.derive import derive_policy, load_arch_state

    t0 = time.perf_counter()
    c = runner_config(cfg, "search", {"mode": "search"})
    runner = _run(c)
    det = runner.model.module if hasattr(runner.model, "module") else runner.model
    state = load_arch_state(Path(c.work_dir) / "arch_state.json")
    policy = derive_policy(state, repair=bool(cfg.bpnas_run.repair))
    policy.meta.update(model=_model_name(c), dataset=cfg.bpnas_run.dataset,
                       search_wall_s=time.perf_counter() - t0, include_first=True, include_last=True,
                       num_rois=state.get("num_rois"))
    if det.arch_trace:  # this process's architecture steps (since a resume)
        policy.meta["diagnostics"]["max_expected_avg_bits_after_step"] = max(det.arch_trace)
    out = Path(cfg.bpnas_run.out_dir) / "policy.json"
    if is_main():
        policy.save(out)
    log(f"BP-NAS det-search: {len(policy.meta['blocks'])} blocks, average bits {policy.meta['avg_bits']:.4f} "
        f"(B_max {state['b_max']:g}, E(SN) max after a step "
        f"{max(det.arch_trace, default=float('nan')):.4f}) -> {out}")
    return policy


def resolve_det_policy(cfg: Any) -> Path:
    """``bpnas_run.train.policy`` as a file: ``searched`` needs det-search's RUN_DIR/policy.json."""
    src = cfg.bpnas_run.train.policy
    if src in PACKAGED_POLICIES:
        return PACKAGED_POLICIES[src]
    path = Path(cfg.bpnas_run.out_dir) / "policy.json" if src == "searched" else Path(src)
    if not path.is_file():
        hint = ("run `mpq bpnas det-search` with the same config (run.out_dir) first" if src == "searched"
                else f"bpnas_run.train.policy must be searched, {', '.join(PACKAGED_POLICIES)} or a "
                "policy.json path")
        raise ConfigError(f"det-train policy {src!r}: {path} not found; {hint}")
    return path


def run_det_train(cfg: Any) -> Any:
    """Train the fixed-precision detector of ``bpnas_run.train.policy``; evaluate; RUN_DIR/results.json."""
    from core.engine import is_main, log
    from core.results import RunResult, code_version, counts_from_report, describe_device, write_results
    from papers.bpnas.det.blocks import count_detector

    t0 = time.perf_counter()
    policy_path = resolve_det_policy(cfg)
    c = runner_config(cfg, "train", {"mode": "train", "policy": str(policy_path)})
    runner = _run(c)
    metrics = runner.val_loop.run()
    det = runner.model.module if hasattr(runner.model, "module") else runner.model
    size = det.opts.count_size
    report = count_detector(det, size, det.num_rois, policy=det.policy)
    bbox = {k.split("/")[-1]: float(v) for k, v in metrics.items() if k.startswith("coco/bbox_")}
    if "bbox_mAP" not in bbox:
        raise ConfigError(f"the evaluation returned no bbox mAP ({sorted(metrics)})")
    b_max = det.policy.meta.get("b_max")
    device = next(det.parameters()).device
    source = str(cfg.bpnas_run.train.policy)
    result = RunResult(
        paper="bpnas", method="bpnas" if det.policy.meta.get("method") == "bpnas" else source,
        table_row=cfg.bpnas_run.table_row, model=_model_name(c), dataset=cfg.bpnas_run.dataset,
        counts=counts_from_report(report),
        metrics={"map": 100 * bbox["bbox_mAP"], "map50": 100 * bbox.get("bbox_mAP_50", 0.0),
                 "map75": 100 * bbox.get("bbox_mAP_75", 0.0)},
        wall_time_s={"train": time.perf_counter() - t0}, device=describe_device(device),
        world_size=int(os.environ.get("WORLD_SIZE", "1")), seed=int(cfg.bpnas_run.seed),
        code_version=code_version(), policy=det.policy.to_dict(), config={"det_config": c.filename},
        extra={"policy_source": str(cfg.bpnas_run.train.policy), "policy_file": str(policy_path),
               "b_max": b_max, "within_budget": None if b_max is None else report.avg_bits <= b_max,
               "count_size": list(size), "num_rois": det.num_rois, "bbox": bbox,
               "epochs": int(cfg.bpnas_run.train.epochs)})
    if is_main():
        write_results(Path(cfg.bpnas_run.out_dir) / "results.json", result)
    log(f"BP-NAS det-train: bbox mAP {result.metrics['map']:.2f}, average bits {report.avg_bits:.3f} "
        f"({report.convention}, all layers) -> {Path(cfg.bpnas_run.out_dir) / 'results.json'}")
    return result

"""Architecture search (supplementary Alg. 1 part 2): per fold, the evolutionary search of the selection
vector that maximises the supernet's top-1 accuracy on that fold.

The supernet is evaluated in eval mode with each branch's own running BatchNorm statistics from supernet
training (official: no re-calibration per candidate; ``search.bn_recalibration_images > 0`` re-estimates
the statistics of the candidate's BatchNorms on that many training images before each evaluation - an
option; the paper does not say it does). After the search, the best candidate is measured on the
fold's held-out images (``heldout_top1_before_finetune``; official ``full_accs``).

Output: ``<run.out_dir>/search/fold<k>.json`` per fold as it finishes (a restarted search skips the folds
already done) and ``search.json`` with every fold; single process (``torchrun`` is refused).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from core.data import build_dataset_from_config
from core.engine import RunDir, check_producer, evaluate, log, reestimate_bn_statistics, setup_process
from core.errors import ConfigError
from core.io import atomic_write_json, read_json
from core.nn import quantizable_layers
from papers.basq.common import load_supernet, stage_identity, train_loader
from papers.basq.config import BASQConfig
from papers.basq.evolution import EvolutionSearch
from papers.basq.folds import (
    CachedBatches,
    Split,
    candidates_top1,
    dataset_targets,
    heldout_loader,
    make_splits,
    top1,
)
from papers.basq.layers import (
    BranchBatchNorm2d,
    clip_values,
    search_space,
    searchable_blocks,
    selected_clips,
    set_selection,
)


@contextmanager
def quantized_weights_frozen(model: nn.Module) -> Iterator[None]:
    """The search never changes a weight: quantize each layer's weight once, run its weight quantizer as
    the identity (32 bits) meanwhile, and restore both afterwards. The forward is unchanged (the conv sees
    the same quantized weight); each candidate evaluation saves the weight quantizers' work."""
    saved = []
    with torch.no_grad():
        for _, layer in quantizable_layers(model):
            quantizer = layer.weight_quantizer
            if quantizer.bits < 32:
                saved.append((layer, layer.weight.detach().clone(), quantizer.bits))
                layer.weight.copy_(quantizer(layer.weight))
                quantizer.bits = 32
    try:
        yield
    finally:
        with torch.no_grad():
            for layer, weight, bits in saved:
                layer.weight.copy_(weight)
                layer.weight_quantizer.bits = bits


class SelectedBNRecalibration:
    """Re-estimate the running statistics of the BatchNorms the current selection uses (the selected
    branches' and the shared ones) on ``images`` training images (core's BN re-estimation), leaving the
    other branches' statistics as the supernet left them."""

    def __init__(self, model: nn.Module, loader: Any, images: int, device: torch.device) -> None:
        self.model, self.loader, self.images, self.device = model, loader, int(images), device
        self.branch_bns = [m for m in model.modules() if isinstance(m, BranchBatchNorm2d)]
        self.snapshot = {id(bn): {k: v.clone() for k, v in bn.state_dict().items()}
                         for m in self.branch_bns for bn in m.bns}

    def __call__(self) -> None:
        reestimate_bn_statistics(self.model, self.loader, self.images, self.device)
        for m in self.branch_bns:  # reset by the re-estimation but not used: restore them
            for bn in m.bns:
                if bn is not m.selected:
                    bn.load_state_dict(self.snapshot[id(bn)])


def search_fold(model: nn.Module, split: Split, val_set: Any, cfg: BASQConfig, device: torch.device,
                recalibrate: SelectedBNRecalibration | None = None) -> dict:
    """Alg. 1 part 2, lines 4-14 for one fold; returns the fold's record."""
    s = cfg.search
    fold = (CachedBatches(val_set, split.search, s.batch_size, device, cfg.data.workers) if s.cache_fold
            else heldout_loader(val_set, split.search, s.batch_size, cfg.data.workers))

    blocks = searchable_blocks(model)

    def fitness(candidates: list[tuple[int, ...]]) -> list[float]:
        if recalibrate is None:
            return candidates_top1(model, blocks, candidates, fold, device, s.images_per_forward)
        values = []
        for candidate in candidates:  # each candidate's own BN statistics: one at a time
            set_selection(model, candidate, blocks)
            recalibrate()
            values.append(top1(model, fold, device))
        return values

    model.eval()
    rng = np.random.default_rng([cfg.run.seed, split.index])
    result = EvolutionSearch(search_space(model), fitness, s.evolution, rng).run(
        log=lambda msg: log(f"fold {split.index}: {msg}"))
    set_selection(model, result.best)
    if recalibrate is not None:
        recalibrate()
    loader = heldout_loader(val_set, split.heldout, s.batch_size, cfg.data.workers)
    heldout = evaluate(model, loader, device, desc=f"fold {split.index} held-out")
    log(f"fold {split.index}: best {list(result.best)} top-1 {result.best_fitness:.2f} on the fold "
        f"({len(split.search)} images), {heldout['top1']:.2f} on the held-out {len(split.heldout)} images; "
        f"{len(result.evaluated)} candidates in {result.seconds:.1f} s")
    return {**split.to_dict(), "selection": list(result.best), "fold_top1": result.best_fitness,
            "heldout_top1_before_finetune": heldout["top1"], "heldout_top5_before_finetune": heldout["top5"],
            "clips": selected_clips(model),
            "best_so_far": result.best_so_far, "history": result.history,
            "evaluated": len(result.evaluated), "seconds": result.seconds}


def run_search(cfg: BASQConfig) -> Path:
    """Every fold's search; writes and returns ``<run.out_dir>/search/search.json``."""
    info = setup_process(cfg.run)
    if info.world_size > 1:
        raise ConfigError("mpq basq search runs in one process: start it without torchrun")
    out_dir = cfg.stage_dir("search")
    t0 = time.perf_counter()
    model = load_supernet(cfg, info.device).eval()  # checked before anything is written
    with RunDir(out_dir).open(stage_identity(cfg, "search"), cfg.run.resume, cfg) as run:
        val_set = build_dataset_from_config(cfg.data, "val", augment=False)
        s = cfg.search
        splits = make_splits(dataset_targets(val_set), s.protocol, s.folds, s.fold_split, s.spos_fraction,
                             cfg.run.seed)
        recalibrate = None
        if s.bn_recalibration_images > 0:
            train_set = build_dataset_from_config(cfg.data, "train")
            loader = train_loader(cfg, train_set, None, "data.batch_size")
            recalibrate = SelectedBNRecalibration(model, loader, s.bn_recalibration_images, info.device)
        folds = []
        with quantized_weights_frozen(model):
            for split in splits:
                path = out_dir / f"fold{split.index}.json"
                if path.is_file():
                    folds.append(read_json(path, "fold search result", "delete it to search the fold again"))
                    log(f"fold {split.index}: done before ({path})")
                    continue
                record = search_fold(model, split, val_set, cfg, info.device, recalibrate)
                atomic_write_json(path, record)
                folds.append(record)
        summary = {"protocol": s.protocol, "fold_split": s.fold_split, "folds": folds,
                   "search_space": list(search_space(model)), "lambdas": list(cfg.quant.lambdas),
                   "branch_clips": clip_values(model),  # every branch's clip (supplementary Fig. 2)
                   "seconds": time.perf_counter() - t0}
        run.update_record(progress={"finished": True, "folds": len(folds)})
        summary["producer"] = run.producer_record()  # what `finetune` checks (check_producer)
        atomic_write_json(out_dir / "search.json", summary)
    mean = float(np.mean([f["heldout_top1_before_finetune"] for f in folds]))
    log(f"search: {len(folds)} fold(s); mean held-out top-1 before fine-tuning {mean:.2f}; "
        f"wrote {out_dir / 'search.json'}")
    return out_dir / "search.json"


def load_search(cfg: BASQConfig) -> dict:
    """``search.json`` of this config's run, after checking that the search belongs to this config."""
    path = cfg.stage_dir("search") / "search.json"
    if not path.is_file():
        raise ConfigError(f"no search results at {path}; run `mpq basq search` with this config first")
    data = read_json(path, "BASQ search results", "run `mpq basq search` with this config")
    check_producer(data.get("producer"), stage_identity(cfg, "search"), what=f"search in {path}",
                   fix="run `mpq basq search` with this config")
    return data

"""Fine-tuning (supplementary Alg. 1 part 3) and the K-fold accuracy.

For each fold ``k``: the supernet with fold ``k``'s selection ``Top1_k``; every parameter frozen except
the BatchNorms and the clips of the selected path (lines 3-5; ``finetune.trainable``: ``paper`` trains
BN weights and biases, ``official`` only BN biases and the classifier bias); ``finetune.schedule.epochs``
(3) epochs on the training set in train mode (so the BatchNorm statistics settle as well, "for
stabilizing batch statistics"); the accuracy on the *other* folds, ``D_val - D_val,fold,k`` (line 8).
The final accuracy is the mean over the folds (line 10). The official recipe: SGD Nesterov lr 7.5e-6,
cosine over the epochs, gradient-norm clip 10, hard-label cross-entropy, and each clip keeps its branch's
L2 decay ``lambda_j``.

The reported fold accuracy (``finetune.report``): ``final`` (after the last epoch) or
``best_of_epochs`` (official: the best of {before fine-tuning, after epoch 1, 2, 3} on the held-out
folds; the supplementary's Table 2 numbers are these).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from core.data import build_dataset_from_config
from core.engine import (
    Trainer,
    build_optimizer,
    build_scheduler,
    is_main,
    log,
    setup_process,
    trainer_kwargs,
)
from core.errors import ConfigError
from core.export.spec import write_export_spec
from core.nn import quantizable_layers
from papers.basq.common import export_spec, load_supernet, stage_identity, train_loader
from papers.basq.config import BASQConfig
from papers.basq.folds import dataset_targets, heldout_loader, make_splits
from papers.basq.layers import BranchBatchNorm2d, searchable_blocks, set_selection
from papers.basq.search import load_search
from papers.basq.supernet import distillation_step, prepare_teacher


def finetune_param_groups(model: nn.Module, trainable: str = "paper") -> list[dict]:
    """Freeze ``model`` except the BatchNorms and clips on the selected path (module docstring); returns
    the optimizer groups: the BN (and classifier-bias) parameters without decay, then one group per
    selected branch index ``j`` with its clips and ``weight_decay = lambda_j``."""
    model.requires_grad_(False)
    unused = {id(bn) for m in model.modules() if isinstance(m, BranchBatchNorm2d) for bn in m.bns
              if bn is not m.selected}
    bns = [m for m in model.modules()
           if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in unused]
    params = [bn.bias for bn in bns if bn.bias is not None]
    if trainable == "paper":
        params += [bn.weight for bn in bns if bn.weight is not None]
    elif trainable == "official":
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if linears and linears[-1].bias is not None:
            params.append(linears[-1].bias)
    else:
        raise ConfigError(f"finetune.trainable must be 'paper' or 'official', got {trainable!r}")
    clips: dict[int, list[nn.Parameter]] = {}
    lambdas: dict[int, float] = {}
    for _, conv in searchable_blocks(model):
        j = conv.selector.index
        clips.setdefault(j, []).append(conv.act_quantizer.alpha)
        lambdas[j] = conv.lambdas[j]
    groups = [{"params": params, "weight_decay": 0.0, "name": "batchnorm"}]
    groups += [{"params": clips[j], "weight_decay": lambdas[j], "name": f"clips_lambda{j}"}
               for j in sorted(clips)]
    for g in groups:
        for p in g["params"]:
            p.requires_grad_(True)
    return [g for g in groups if g["params"]]


class FinetuneTrainer(Trainer):
    """:class:`core.engine.Trainer` with the distillation loss when a ``teacher`` is given."""

    def __init__(self, *args: Any, teacher: nn.Module | None = None, temperature: float = 1.0,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.teacher = teacher.to(self.device).eval() if teacher is not None else None
        self.temperature = temperature

    def compute_loss(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict]:
        if self.teacher is None:
            return super().compute_loss(images, targets)
        return distillation_step(self.model, self.teacher, images, targets, self.temperature)


def reported_accuracy(before: dict, epochs: list[dict], rule: str) -> dict:
    """The fold's ``{"top1", "top5"}`` under ``finetune.report`` (module docstring): the last epoch's, or
    the one with the best top-1 among before fine-tuning and each epoch (the earliest on ties)."""
    if rule == "final":
        return epochs[-1] if epochs else before
    if rule == "best_of_epochs":
        return max([before, *epochs], key=lambda r: r["top1"])
    raise ConfigError(f"finetune.report must be 'final' or 'best_of_epochs', got {rule!r}")


def finetune_fold(cfg: BASQConfig, fold: dict, heldout: Any, train_set: Any, device: torch.device,
                  teacher: nn.Module | None) -> dict:
    """Alg. 1 part 3, lines 3-8 for one fold; returns its record."""
    ft = cfg.finetune
    model = load_supernet(cfg, device)
    set_selection(model, fold["selection"])
    groups = finetune_param_groups(model, ft.trainable)
    loader = train_loader(cfg, train_set, ft.batch_size, "finetune.batch_size")
    optimizer = build_optimizer(ft.optim, groups)
    kw = trainer_kwargs(cfg.run, ft.optim)
    kw["run_dir"] = cfg.stage_dir("finetune") / f"fold{fold['index']}"
    trainer = FinetuneTrainer(model, optimizer, loader, heldout, epochs=ft.schedule.epochs,
                              schedulers=build_scheduler(ft.schedule, optimizer, len(loader)), device=device,
                              config=cfg, identity=stage_identity(cfg, "finetune"), teacher=teacher,
                              temperature=cfg.supernet.temperature, **kw)
    trainer.fit()
    if is_main():  # for `mpq export <finetune dir>/fold<k>`: the fold's final weights are last.pt
        write_export_spec(kw["run_dir"], export_spec(
            cfg, [n for n, _ in quantizable_layers(model)], "checkpoints/last.pt",
            {"paper": "basq", "row": cfg.table_row, "fold": fold["index"], "selection": fold["selection"],
             "weights": "after the last fine-tuning epoch"}))
    epochs = [{"top1": r["val_top1"], "top5": r["val_top5"]} for r in trainer.history if "val_top1" in r]
    before = {"top1": fold["heldout_top1_before_finetune"], "top5": fold["heldout_top5_before_finetune"]}
    reported = reported_accuracy(before, epochs, ft.report)
    log(f"fold {fold['index']}: held-out top-1 {before['top1']:.2f} before fine-tuning, "
        f"{' / '.join(format(e['top1'], '.2f') for e in epochs)} after each epoch; reported ({ft.report}) "
        f"{reported['top1']:.2f}")
    return {"index": fold["index"], "selection": fold["selection"], "fold_top1": fold["fold_top1"],
            "heldout_top1_before_finetune": before["top1"],
            "heldout_top1_epochs": [e["top1"] for e in epochs],
            "top1": reported["top1"], "top5": reported["top5"], "wall_time_s": trainer.wall_time_s}


def run_finetune(cfg: BASQConfig) -> dict:
    """Every fold (or ``finetune.folds``); returns ``{"folds": [...], "top1": mean}`` and writes the
    results (``<run.out_dir>/finetune/results.json``)."""
    from papers.basq.report import write_results

    t0 = time.perf_counter()
    info = setup_process(cfg.run)
    search = load_search(cfg)
    train_set = build_dataset_from_config(cfg.data, "train")
    val_set = build_dataset_from_config(cfg.data, "val", augment=False)
    s = cfg.search
    splits = {sp.index: sp for sp in make_splits(dataset_targets(val_set), s.protocol, s.folds, s.fold_split,
                                                  s.spos_fraction, cfg.run.seed)}
    teacher = None
    if cfg.finetune.loss == "distill":
        teacher = prepare_teacher(cfg, info.device)
    wanted = cfg.finetune.folds
    records = []
    for fold in search["folds"]:
        if wanted is not None and fold["index"] not in wanted:
            continue
        heldout = heldout_loader(val_set, splits[fold["index"]].heldout, s.batch_size, cfg.data.workers)
        records.append(finetune_fold(cfg, fold, heldout, train_set, info.device, teacher))
    return write_results(cfg, info, search, records, time.perf_counter() - t0)


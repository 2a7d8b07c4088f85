"""K-fold splits of the validation set (supplementary Sec. 4.1, Alg. 1 ``Divide_fold``) and fold evaluation.

Protocols (``search.protocol``):

- ``kfold`` (the paper's main results): the validation set is divided into ``K`` folds; fold ``k``
  selects the architecture (search) and the other ``K - 1`` folds measure it (``D_val - D_val,fold,k``),
  so no image both selects and evaluates; the final accuracy is the mean over the ``K`` folds.
- ``spos`` (Table 3, "BASQ (SPOS)"): one selection on a random ``spos_fraction`` (16%) of the validation
  set and the evaluation on the *entire* validation set (the selection images included).

Fold splits (``search.fold_split``):

- ``contiguous`` (official): fold ``k`` is the ``k``-th run of consecutive images of the validation set
  in its stored order (``numpy.array_split``: sizes differ by at most one). ImageNet's validation
  folder is read sorted by class, so each fold holds about 100 whole classes (the official folds:
  5,000 consecutive images each); a fold then never sees the classes it is measured on.
- ``class_balanced``: each class's images (shuffled with the seed) are dealt to the folds in turn, the
  classes one after another, so every fold holds about ``1/K`` of every class and fold sizes differ by at
  most one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from core.errors import ConfigError

FOLD_SPLITS = ("contiguous", "class_balanced")
PROTOCOLS = ("kfold", "spos")


@dataclass(frozen=True)
class Split:
    """One selection/evaluation pair: ``search`` indices select the architecture (``D_val,fold,k``),
    ``heldout`` indices measure it. Indices refer to the validation set."""

    index: int
    search: np.ndarray
    heldout: np.ndarray

    def to_dict(self) -> dict:
        return {"index": self.index, "search_images": int(len(self.search)),
                "heldout_images": int(len(self.heldout))}


def dataset_targets(dataset: Dataset) -> np.ndarray:
    """The class labels of ``dataset`` in order (``.targets`` when present, through ``Subset`` layers;
    otherwise read item by item)."""
    if isinstance(dataset, Subset):
        return dataset_targets(dataset.dataset)[np.asarray(dataset.indices)]
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        return np.asarray(targets.tolist() if isinstance(targets, torch.Tensor) else targets, dtype=np.int64)
    return np.asarray([int(dataset[i][1]) for i in range(len(dataset))], dtype=np.int64)


def fold_indices(targets: Sequence[int], k: int, split: str = "contiguous",
                 seed: int = 0) -> list[np.ndarray]:
    """``k`` disjoint folds covering ``range(len(targets))`` (module docstring), each sorted."""
    n = len(targets)
    if split not in FOLD_SPLITS:
        raise ConfigError(f"fold_split must be one of {list(FOLD_SPLITS)}, got {split!r}")
    if not 1 <= k <= n:
        raise ConfigError(f"cannot divide {n} validation images into {k} folds (need 1 <= folds <= {n})")
    if split == "contiguous":
        return [np.asarray(f, dtype=np.int64) for f in np.array_split(np.arange(n), k)]
    targets = np.asarray(targets)
    rng = np.random.default_rng(seed)
    dealt = np.concatenate([rng.permutation(np.flatnonzero(targets == c)) for c in np.unique(targets)])
    assignment = np.empty(n, dtype=np.int64)
    assignment[dealt] = np.arange(n) % k
    return [np.flatnonzero(assignment == f) for f in range(k)]


def make_splits(targets: Sequence[int], protocol: str = "kfold", folds: int = 10,
                fold_split: str = "contiguous", spos_fraction: float = 0.16, seed: int = 0) -> list[Split]:
    """The selection/evaluation pairs of ``protocol`` (module docstring)."""
    n = len(targets)
    if protocol == "kfold":
        if folds < 2:
            raise ConfigError(f"search.folds must be >= 2 for the k-fold protocol, got {folds}")
        parts = fold_indices(targets, folds, fold_split, seed)
        everything = np.arange(n)
        return [Split(k, part, np.setdiff1d(everything, part, assume_unique=True))
                for k, part in enumerate(parts)]
    if protocol == "spos":
        if not 0 < spos_fraction < 1:
            raise ConfigError(f"search.spos_fraction must be in (0, 1), got {spos_fraction}")
        m = max(1, round(spos_fraction * n))
        chosen = np.sort(np.random.default_rng(seed).permutation(n)[:m])
        return [Split(0, chosen, np.arange(n))]
    raise ConfigError(f"search.protocol must be one of {list(PROTOCOLS)}, got {protocol!r}")


class CachedBatches:
    """The images at ``indices`` of ``dataset``, read once and kept (on ``device``) as batches: the
    evolutionary search evaluates ~945 candidates on the same fold."""

    def __init__(self, dataset: Dataset, indices: Sequence[int], batch_size: int, device: torch.device | str,
                 workers: int = 0) -> None:
        loader = DataLoader(Subset(dataset, [int(i) for i in indices]), batch_size=batch_size, shuffle=False,
                            num_workers=workers)
        self.batches = [(x.to(device), y.to(device)) for x, y in loader]
        self.count = sum(len(y) for _, y in self.batches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def heldout_loader(dataset: Dataset, indices: Sequence[int], batch_size: int,
                   workers: int = 0) -> DataLoader:
    """An evaluation loader over ``indices`` of ``dataset`` (sharded over DDP ranks; global batch)."""
    from core.data import build_loader
    from core.engine import get_info

    per_rank = max(1, batch_size // get_info().world_size)
    return build_loader(Subset(dataset, [int(i) for i in indices]), per_rank, train=False, workers=workers)


@torch.no_grad()
def top1(model: nn.Module, batches: Any, device: torch.device | str | None = None) -> float:
    """Top-1 accuracy (percent) of ``model`` in eval mode over ``(images, targets)`` batches (a model
    already in eval mode is left alone: switching modes walks every module, which costs as much as the
    forward of a small network)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    if was_training:
        model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    total = 0
    for images, targets in batches:
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        correct += (model(images).argmax(1) == targets).sum()
        total += len(targets)
    if was_training:
        model.train()
    if total == 0:
        raise ConfigError("fold evaluation: no images to evaluate on")
    return 100.0 * int(correct) / total


@torch.no_grad()
def candidates_top1(model: nn.Module, blocks: list, candidates: Sequence[Sequence[int]], batches: Any,
                    device: torch.device | str, images_per_forward: int = 400) -> list[float]:
    """Top-1 (percent) of each candidate selection over ``(images, targets)`` batches, several candidates
    per forward: a batch of ``n`` images is repeated for up to ``images_per_forward // n`` candidates, each
    repetition through its own branches (``layers.per_sample_selection``; eval mode, so every sample is
    normalised with its branch's running statistics and the result equals one forward per candidate)."""
    from papers.basq.layers import per_sample_selection, set_selection

    if model.training:
        raise ConfigError("candidates_top1 evaluates in eval mode: call model.eval() first")
    correct = torch.zeros(len(candidates), dtype=torch.long, device=device)
    total = 0
    for images, targets in batches:
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        n = len(targets)
        k = max(1, images_per_forward // max(1, n))
        for start in range(0, len(candidates), k):
            chunk = candidates[start:start + k]
            if len(chunk) == 1:  # one candidate: the ordinary forward
                set_selection(model, chunk[0], blocks)
                logits = model(images)
            else:
                with per_sample_selection(blocks, chunk, n, device):
                    logits = model(images.repeat(len(chunk), *([1] * (images.dim() - 1))))
            hits = (logits.argmax(1) == targets.repeat(len(chunk))).view(len(chunk), n).sum(1)
            correct[start:start + len(chunk)] += hits
        total += n
    if total == 0:
        raise ConfigError("fold evaluation: no images to evaluate on")
    return (correct.double() * (100.0 / total)).tolist()

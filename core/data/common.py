"""Shared pieces of the datasets: metadata, layout errors, tensor normalisation."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch

from core.errors import DataError

__all__ = ["DatasetInfo", "require_dir", "require_file", "Normalize", "IMAGENET_MEAN", "IMAGENET_STD",
           "skipped_files"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    in_channels: int
    default_image_size: int
    layout: str  # the expected on-disk layout, quoted in errors
    needs_root: bool = True


def require_dir(path: str | os.PathLike | None, name: str, layout: str) -> Path:
    if path is None:
        raise DataError(f"{name}: no root given; pass --root / data.root=DIR with this layout:\n{layout}")
    p = Path(path).expanduser()
    if not p.is_dir():
        raise DataError(f"{name}: directory not found: {p}\nexpected layout:\n{layout}")
    return p


def require_file(path: Path, name: str, layout: str) -> Path:
    if not path.is_file():
        raise DataError(f"{name}: missing file {path}\nexpected layout:\n{layout}")
    return path


class Normalize:
    """``(x - mean) / std`` on a float CHW tensor (a picklable callable for worker processes)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def skipped_files(loader: Any) -> set[str] | None:
    """The files skipped as corrupt by the dataset behind ``loader`` (a DataLoader, a wrapper with
    ``.loader``, a ``Subset``...), or ``None`` when that dataset does not skip files. A dataset that
    can skip (``data.skip_corrupt``) exposes ``skipped``: the set of paths skipped so far."""
    obj = loader
    for _ in range(8):
        if obj is None:
            return None
        skipped = getattr(obj, "skipped", None)
        if isinstance(skipped, (set, frozenset)) and getattr(obj, "skip_corrupt", True):
            return set(skipped)
        inner = getattr(obj, "dataset", None)
        obj = inner if inner is not None else getattr(obj, "loader", None)
    return None

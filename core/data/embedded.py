"""What the embedded datasets (``digits``, ``mnist5k``) share: small grey images held in memory.

A subclass provides the raw images (``N, 1, H, W`` in [0, 1]), the labels and a fixed seeded split; this
base resizes them (bilinear) to ``image_size``, repeats them to 3 channels, normalises them with the train
split's mean / std and, for a training split with ``augment``, translates each image randomly by up to
``image_size // 8`` pixels (the vacated border filled with the background value).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from core.errors import DataError

__all__ = ["EmbeddedImageDataset", "stratified_split"]


def stratified_split(targets: torch.Tensor, val_per_class: int, split_seed: int) -> tuple[torch.Tensor,
                                                                                        torch.Tensor]:
    """(train indices, val indices), sorted: ``val_per_class`` images of every class drawn by a seeded
    permutation of that class's indices, the rest for train."""
    gen = torch.Generator().manual_seed(split_seed)
    val = []
    for c in torch.unique(targets).tolist():
        idx = torch.nonzero(targets == c).flatten()
        val.append(idx[torch.randperm(len(idx), generator=gen)[:val_per_class]])
    val_idx = torch.cat(val).sort().values
    mask = torch.ones(len(targets), dtype=torch.bool)
    mask[val_idx] = False
    return torch.nonzero(mask).flatten(), val_idx


class EmbeddedImageDataset(Dataset):
    """In-memory tensors ``images`` (N, 3, S, S), normalised, and ``targets`` (N,)."""

    name = "embedded"
    classes = [str(i) for i in range(10)]
    min_size = 8

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, train_idx: torch.Tensor,
                 idx: torch.Tensor, split: str, image_size: int, augment: bool):
        if split not in ("train", "val"):
            raise DataError(f"{self.name}: split must be 'train' or 'val', got {split!r}")
        if image_size < self.min_size:
            raise DataError(f"{self.name}: image_size must be >= {self.min_size}, got {image_size}")
        up = self._resize(images, image_size)
        mean, std = up[train_idx].mean().item(), up[train_idx].std().item()
        self.images = ((up[idx] - mean) / std).expand(-1, 3, -1, -1).contiguous()
        self.targets = targets[idx].clone()
        self.mean, self.std = mean, std
        self.split, self.image_size = split, image_size
        self.augment = augment and split == "train"
        self.shift = max(1, image_size // 8)

    @staticmethod
    def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
        if size == images.shape[-1]:
            return images.clone()
        return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.images[i]
        if self.augment:
            dx, dy = torch.randint(-self.shift, self.shift + 1, (2,)).tolist()
            background = (0.0 - self.mean) / self.std
            x = torch.roll(x, shifts=(dy, dx), dims=(1, 2)).clone()
            if dy > 0:
                x[:, :dy] = background
            elif dy < 0:
                x[:, dy:] = background
            if dx > 0:
                x[:, :, :dx] = background
            elif dx < 0:
                x[:, :, dx:] = background
        return x, int(self.targets[i])

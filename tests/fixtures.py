"""Writers of tiny datasets in their true on-disk formats, loaded in tests through the real loaders.

- :func:`write_cifar10` / :func:`write_cifar100`: python-pickle batch directories as distributed.
- :func:`write_imagenet`: an ImageFolder tree of real JPEG files (PIL).
- :func:`write_coco`: COCO detection JSON (pycocotools / mmdet format) plus JPEG images.

Images carry a class-dependent colour so that a model can learn something from them.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["write_cifar10", "write_cifar100", "write_imagenet", "write_coco", "write_corrupt_jpeg",
           "results_record", "IMAGENET_CLASSES"]

IMAGENET_CLASSES = ("n01440764", "n01443537", "n01484850")


def _cifar_images(rng: np.random.Generator, labels: np.ndarray, num_classes: int) -> np.ndarray:
    noise = rng.integers(0, 64, size=(len(labels), 3, 32, 32))
    tint = (labels[:, None, None, None] * (191 // max(num_classes - 1, 1))).astype(np.int64)
    return (noise + tint).clip(0, 255).astype(np.uint8).reshape(len(labels), 3072)


def _dump(obj: dict, path: Path) -> None:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=2)


def write_cifar10(root: str | Path, n_per_class: int = 2, n_val_per_class: int | None = None,
                  seed: int = 0) -> Path:
    """``root/cifar-10-batches-py`` with data_batch_1..5 (``n_per_class`` train images per class in
    all), test_batch (``n_val_per_class``, default = ``n_per_class``) and batches.meta."""
    rng = np.random.default_rng(seed)
    d = Path(root) / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    train = rng.permutation(np.repeat(np.arange(10), n_per_class))
    for i, chunk in enumerate(np.array_split(train, 5), 1):
        _dump({"batch_label": f"training batch {i} of 5", "labels": [int(v) for v in chunk],
               "data": _cifar_images(rng, chunk, 10),
               "filenames": [f"img_{i}_{j}.png" for j in range(len(chunk))]},
              d / f"data_batch_{i}")
    test = np.repeat(np.arange(10), n_val_per_class if n_val_per_class is not None else n_per_class)
    _dump({"batch_label": "testing batch 1 of 1", "labels": [int(v) for v in test],
           "data": _cifar_images(rng, test, 10), "filenames": [f"test_{j}.png" for j in range(len(test))]},
          d / "test_batch")
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _dump({"num_cases_per_batch": 10000, "label_names": names, "num_vis": 3072}, d / "batches.meta")
    return d


def write_cifar100(root: str | Path, n_per_class: int = 1, n_val_per_class: int | None = None,
                   seed: int = 0) -> Path:
    """``root/cifar-100-python`` with train, test and meta (fine and coarse labels)."""
    rng = np.random.default_rng(seed)
    d = Path(root) / "cifar-100-python"
    d.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_per_class), ("test", n_val_per_class if n_val_per_class is not None
                                               else n_per_class)):
        fine = rng.permutation(np.repeat(np.arange(100), n))
        _dump({"filenames": [f"{split}_{j}.png" for j in range(len(fine))], "batch_label": f"{split} batch",
               "fine_labels": [int(v) for v in fine], "coarse_labels": [int(v) // 5 for v in fine],
               "data": _cifar_images(rng, fine, 100)}, d / split)
    _dump({"fine_label_names": [f"class_{i:03d}" for i in range(100)],
           "coarse_label_names": [f"super_{i:02d}" for i in range(20)]}, d / "meta")
    return d


def _jpeg(path: Path, size: tuple[int, int], colour: Sequence[int], rng: np.random.Generator) -> None:
    w, h = size
    arr = rng.integers(0, 48, size=(h, w, 3)) + np.asarray(colour)[None, None, :]
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(path, format="JPEG", quality=90)


def write_imagenet(root: str | Path, classes: int | Sequence[str] = IMAGENET_CLASSES, per_class: int = 3,
                   size: tuple[int, int] = (64, 48), val_per_class: int | None = None,
                   seed: int = 0) -> Path:
    """``root/{train,val}/<class>/*.JPEG``: real JPEG files of ``size`` (width, height)."""
    rng = np.random.default_rng(seed)
    names = [f"n{i:08d}" for i in range(classes)] if isinstance(classes, int) else list(classes)
    root = Path(root)
    n_val = val_per_class if val_per_class is not None else per_class
    for split, n in (("train", per_class), ("val", n_val)):
        for c, name in enumerate(names):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            colour = [(c * 80) % 200, (c * 50) % 200, (c * 120) % 200]
            for j in range(n):
                _jpeg(d / f"{name}_{split}_{j:04d}.JPEG", size, colour, rng)
    return root


def write_corrupt_jpeg(path: str | Path, size: tuple[int, int] = (64, 48)) -> Path:
    """A JPEG cut off after its header (PIL identifies it but cannot decode it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".full.jpg")
    _jpeg(tmp, size, (90, 90, 90), np.random.default_rng(1))
    data = tmp.read_bytes()
    tmp.unlink()
    path.write_bytes(data[: len(data) // 3])
    return path


def write_coco(root: str | Path, n_images: int = 4, splits: Sequence[str] = ("train", "val"),
               size: tuple[int, int] = (160, 128), seed: int = 0) -> Path:
    """``root/annotations/instances_{split}2017.json`` and ``root/{split}2017/*.jpg``: two categories
    (ids 1 and 3, as COCO ids are not contiguous), 1-3 boxes per image."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    categories = [{"id": 1, "name": "person", "supercategory": "person"},
                  {"id": 3, "name": "car", "supercategory": "vehicle"}]
    ann_id = 1
    for split in splits:
        img_dir = root / f"{split}2017"
        img_dir.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(n_images):
            image_id = 1000 * (split == "val") + i + 1
            file_name = f"{image_id:012d}.jpg"
            _jpeg(img_dir / file_name, size, (100, 60, 30), rng)
            images.append({"id": image_id, "file_name": file_name, "width": size[0], "height": size[1]})
            for _ in range(int(rng.integers(1, 4))):
                w, h = float(rng.integers(16, size[0] // 2)), float(rng.integers(16, size[1] // 2))
                x, y = float(rng.integers(0, size[0] - w)), float(rng.integers(0, size[1] - h))
                cat = int(rng.choice([1, 3]))
                annotations.append({"id": ann_id, "image_id": image_id, "category_id": cat,
                                    "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0,
                                    "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]})
                ann_id += 1
        ann_dir = root / "annotations"
        ann_dir.mkdir(parents=True, exist_ok=True)
        doc = {"info": {"description": "mpq test fixture"}, "licenses": [], "images": images,
               "annotations": annotations, "categories": categories}
        (ann_dir / f"instances_{split}2017.json").write_text(json.dumps(doc))
    return root


def results_record(**fields) -> dict:
    """A valid ``core.results.RunResult`` as JSON data, with ``fields`` replacing the placeholders."""
    record = {"schema_version": 1, "paper": "test", "method": "test", "table_row": None, "model": "m",
              "dataset": "d", "counts": {"convention": "exact", "scope": "all", "params": 10, "macs": 100.0,
                                         "macs_all": 100.0, "bops": 102400.0, "avg_bits": 32.0,
                                         "size_mb": 0.001},
              "metrics": {"top1": 50.0}, "wall_time_s": {"train": 1.0}, "device": "cpu", "world_size": 1,
              "seed": 0, "code_version": "0.1.0", "policy": None, "config": None, "extra": {}}
    record.update(fields)
    return record

"""``coco``: COCO-format detection data (annotation JSON + images), for mmdet and for plain torch.

Layout::

    ROOT/annotations/instances_train2017.json   ROOT/train2017/*.jpg
    ROOT/annotations/instances_val2017.json     ROOT/val2017/*.jpg

(``ann_file`` / ``img_dir`` options override the two paths for other layouts.)
:func:`mmdet_dataset_config` returns the mmdet ``CocoDataset`` config dict for a root (classes read
from the annotation file), :func:`coco_metric_config` the matching ``CocoMetric``; :func:`validate_coco`
loads the annotation file with pycocotools and checks that every listed image exists.
:class:`CocoDetection` is a torch dataset of ``(image, {"boxes" (xyxy), "labels", "image_id"})``.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from core.data.common import require_dir
from core.errors import DataError

__all__ = ["COCO_LAYOUT", "coco_paths", "load_coco", "validate_coco", "mmdet_dataset_config",
           "coco_metric_config", "CocoDetection"]

COCO_LAYOUT = ("ROOT/annotations/instances_{train,val}2017.json and ROOT/{train,val}2017/<file_name> "
               "(COCO detection format; or pass ann_file=... and img_dir=...)")


def coco_paths(root: str | Path | None, split: str = "train", ann_file: str | None = None,
               img_dir: str | None = None, year: int = 2017) -> tuple[Path, Path, Path]:
    """``(root, annotation file, image directory)``; DataError if either is missing."""
    if split not in ("train", "val"):
        raise DataError(f"coco: split must be 'train' or 'val', got {split!r}")
    root = require_dir(root, "coco", COCO_LAYOUT)
    ann = root / (ann_file or f"annotations/instances_{split}{year}.json")
    images = root / (img_dir or f"{split}{year}")
    if not ann.is_file():
        raise DataError(f"coco: annotation file not found: {ann}; expected layout:\n{COCO_LAYOUT}")
    if not images.is_dir():
        raise DataError(f"coco: image directory not found: {images}; expected layout:\n{COCO_LAYOUT}")
    return root, ann, images


def load_coco(ann: Path):
    """pycocotools ``COCO`` for ``ann`` (its prints silenced); DataError if the file is malformed."""
    from pycocotools.coco import COCO

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(ann))
    except (json.JSONDecodeError, KeyError, TypeError, AssertionError, UnicodeDecodeError) as exc:
        raise DataError(f"coco: {ann} is not a valid COCO annotation file ({type(exc).__name__}: {exc}); "
                        f"it needs 'images', 'annotations' and 'categories'") from None


def validate_coco(root: str | Path | None, split: str = "train", check_images: bool = True, **paths: Any
                  ) -> dict:
    """Load the annotation file with pycocotools and check the images exist. Returns counts."""
    root, ann, images = coco_paths(root, split, **paths)
    coco = load_coco(ann)
    for key in ("images", "annotations", "categories"):
        if key not in coco.dataset:
            raise DataError(f"coco: {ann} has no '{key}' list; layout:\n{COCO_LAYOUT}")
    missing = []
    if check_images:
        names = [im["file_name"] for im in coco.dataset["images"]]
        missing = [n for n in names if not (images / n).is_file()]
    if missing:
        raise DataError(f"coco: {len(missing)} image(s) listed in {ann} are missing from {images}, e.g. "
                        f"{missing[0]}")
    return {"images": len(coco.dataset["images"]), "annotations": len(coco.dataset["annotations"]),
            "categories": len(coco.dataset["categories"])}


def _class_names(ann: Path) -> tuple[str, ...]:
    cats = sorted(load_coco(ann).dataset.get("categories", []), key=lambda c: c["id"])
    return tuple(c["name"] for c in cats)


def mmdet_dataset_config(root: str | Path | None, split: str = "train", pipeline: list | None = None,
                         **paths: Any) -> dict:
    """An mmdet 3.x ``CocoDataset`` config dict for ``root`` (``metainfo.classes`` from the file)."""
    root, ann, images = coco_paths(root, split, **paths)
    cfg: dict[str, Any] = {
        "type": "CocoDataset",
        "data_root": str(root),
        "ann_file": str(ann.relative_to(root)),
        "data_prefix": {"img": str(images.relative_to(root)) + "/"},
        "metainfo": {"classes": _class_names(ann)},
        "test_mode": split == "val",
        "pipeline": list(pipeline or []),
    }
    if split == "train":
        cfg["filter_cfg"] = {"filter_empty_gt": True, "min_size": 32}
    return cfg


def coco_metric_config(root: str | Path | None, split: str = "val", metric: str = "bbox",
                       **paths: Any) -> dict:
    """The mmdet ``CocoMetric`` evaluator config for the same annotation file."""
    _, ann, _ = coco_paths(root, split, **paths)
    return {"type": "CocoMetric", "ann_file": str(ann), "metric": metric, "format_only": False}


class CocoDetection(Dataset):
    """Images as float CHW tensors in [0, 1]; targets with xyxy ``boxes`` and contiguous ``labels``
    (category ids sorted, mapped to 0..C-1); crowd boxes dropped."""

    def __init__(self, root: str | Path | None, split: str = "train", **paths: Any):
        _, ann, self.img_dir = coco_paths(root, split, **paths)
        self.coco = load_coco(ann)
        self.ids = sorted(self.coco.imgs)
        cat_ids = sorted(self.coco.cats)
        self.cat_to_label = {c: i for i, c in enumerate(cat_ids)}
        self.classes = [self.coco.cats[c]["name"] for c in cat_ids]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict]:
        image_id = self.ids[i]
        info = self.coco.imgs[image_id]
        path = self.img_dir / info["file_name"]
        try:
            with Image.open(path) as img:
                arr = np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
        except (OSError, SyntaxError, ValueError) as exc:
            raise DataError(f"coco: cannot decode {path} ({type(exc).__name__}: {exc})") from None
        anns = [a for a in self.coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        xywh = [a["bbox"] for a in anns]
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in xywh], dtype=torch.float32)
        boxes = boxes.reshape(-1, 4)
        labels = torch.tensor([self.cat_to_label[a["category_id"]] for a in anns], dtype=torch.long)
        image = torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)
        return image, {"boxes": boxes, "labels": labels, "image_id": image_id}

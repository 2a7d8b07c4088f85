"""A tiny generated COCO-format detection dataset (CPU runs and tests of the detection part).

``make_tiny_coco(root)`` writes ``ROOT/annotations/instances_{train,val}2017.json`` and
``ROOT/{train,val}2017/*.jpg`` (core.data.coco's layout): noisy grey images with 1-3 filled rectangles
each, the class given by the colour (``red``, ``green``, ``blue``), boxes in COCO ``xywh``. Deterministic in
``seed``; rewriting an existing root with the same arguments gives the same files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from core.io import atomic_write_text

CLASSES = ("red", "green", "blue")


def _image(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, list[tuple[int, list]]]:
    img = rng.normal(110, 20, (height, width, 3)).clip(0, 255)
    objects = []
    for _ in range(int(rng.integers(1, 4))):
        w, h = (int(v) for v in rng.integers(min(width, height) // 5, min(width, height) // 2, 2))
        x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        label = int(rng.integers(len(CLASSES)))
        colour = np.full(3, 40.0)
        colour[label] = 230.0
        img[y:y + h, x:x + w] = colour + rng.normal(0, 8, (h, w, 3))
        objects.append((label, [float(x), float(y), float(w), float(h)]))
    return img.clip(0, 255).astype(np.uint8), objects


def make_tiny_coco(root: str | Path, n_train: int = 8, n_val: int = 4, width: int = 160, height: int = 128,
                   seed: int = 0) -> Path:
    """Write the dataset under ``root`` (returned as a Path)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASSES)]
    for split, n in (("train", n_train), ("val", n_val)):
        (root / f"{split}2017").mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(n):
            img, objects = _image(rng, width, height)
            name = f"{split}_{i:04d}.jpg"
            Image.fromarray(img).save(root / f"{split}2017" / name, quality=95)
            image_id = i + 1
            images.append({"id": image_id, "file_name": name, "width": width, "height": height})
            for label, box in objects:
                annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                    "category_id": label + 1, "bbox": box, "area": box[2] * box[3],
                                    "iscrowd": 0})
        data = {"images": images, "annotations": annotations, "categories": categories}
        atomic_write_text(root / "annotations" / f"instances_{split}2017.json", json.dumps(data) + "\n")
    return root

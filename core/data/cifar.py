"""``cifar10`` / ``cifar100`` from the standard python-pickle batch directories (never downloads).

Layout (as torchvision expects; ``root`` may be the parent or the directory itself)::

    cifar-10-batches-py/   data_batch_1 .. data_batch_5, test_batch, batches.meta
    cifar-100-python/      train, test, meta

The pickles are read with a restricted unpickler that only rebuilds numpy arrays, so a tampered file
cannot run code. Images stay in memory as uint8 tensors; the standard training augmentation is
RandomCrop(32, padding=4) + horizontal flip, done on tensors.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from core.data.common import Normalize, require_dir, require_file
from core.errors import DataError

__all__ = ["CifarDataset", "CIFAR10_LAYOUT", "CIFAR100_LAYOUT", "find_cifar_dir"]

CIFAR10_LAYOUT = ("ROOT/cifar-10-batches-py/{data_batch_1..data_batch_5, test_batch, batches.meta} "
                  "(the python version from https://www.cs.toronto.edu/~kriz/cifar.html, extracted; "
                  "ROOT may also be the cifar-10-batches-py directory itself)")
CIFAR100_LAYOUT = ("ROOT/cifar-100-python/{train, test, meta} (the python version, extracted; "
                   "ROOT may also be the cifar-100-python directory itself)")

_SPEC = {
    "cifar10": dict(dirname="cifar-10-batches-py", train=[f"data_batch_{i}" for i in range(1, 6)],
                    val=["test_batch"], meta="batches.meta", label_key="labels", names_key="label_names",
                    layout=CIFAR10_LAYOUT, mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)),
    "cifar100": dict(dirname="cifar-100-python", train=["train"], val=["test"], meta="meta",
                     label_key="fine_labels", names_key="fine_label_names", layout=CIFAR100_LAYOUT,
                     mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762)),
}

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset pickle")
        if module.startswith("numpy.core"):
            module = "numpy._core" + module[len("numpy.core"):]
        return super().find_class(module, name)


def load_pickle(path: Path, name: str, layout: str) -> dict:
    try:
        with open(path, "rb") as fh:
            obj = _ArrayUnpickler(fh, encoding="latin1").load()
    except Exception as exc:  # noqa: BLE001 - truncated, not a pickle, or unsafe content
        raise DataError(f"{name}: cannot read {path} ({type(exc).__name__}: {exc}); expected layout:\n"
                        f"{layout}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{name}: {path} holds a {type(obj).__name__}, expected a dict; layout:\n{layout}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _integer_labels(raw: object, path: Path, name: str, key: str) -> list[int]:
    """The labels of one batch as Python ints; anything but integers is a DataError naming the file."""
    try:
        arr = np.asarray(raw)
    except ValueError:  # ragged
        arr = None
    if arr is None or arr.ndim != 1 or (arr.dtype.kind not in "iu" and arr.size):
        bad = next((v for v in (raw if isinstance(raw, (list, tuple)) else [raw])
                    if isinstance(v, bool) or not isinstance(v, (int, np.integer))), raw)
        raise DataError(f"{name}: {path}: '{key}' must be a list of integer class indices, found {bad!r} "
                        f"({type(bad).__name__}); the file is not a CIFAR batch or is damaged")
    return [int(v) for v in arr]


def find_cifar_dir(name: str, root: str | Path | None) -> Path:
    spec = _SPEC[name]
    root = require_dir(root, name, spec["layout"])
    for candidate in (root / spec["dirname"], root):
        if (candidate / spec["meta"]).is_file() or (candidate / spec["val"][0]).is_file():
            return candidate
    raise DataError(f"{name}: no {spec['dirname']} batches under {root}; expected layout:\n{spec['layout']}")


class CifarDataset(Dataset):
    """CIFAR-10/100 ``split`` ("train" or "val" = the test batch) held as uint8 (N, 3, 32, 32)."""

    def __init__(self, name: str, root: str | Path | None, split: str = "train", augment: bool = True,
                 padding: int = 4):
        if name not in _SPEC:
            raise DataError(f"unknown CIFAR variant {name!r}")
        if split not in ("train", "val"):
            raise DataError(f"{name}: split must be 'train' or 'val', got {split!r}")
        spec = _SPEC[name]
        directory = find_cifar_dir(name, root)
        datas, labels = [], []
        for fname in spec[split]:
            batch = load_pickle(require_file(directory / fname, name, spec["layout"]), name, spec["layout"])
            if "data" not in batch or spec["label_key"] not in batch:
                raise DataError(f"{name}: {directory / fname} lacks 'data'/'{spec['label_key']}'; layout:\n"
                                f"{spec['layout']}")
            data = np.asarray(batch["data"], dtype=np.uint8)
            if data.ndim != 2 or data.shape[1] != 3072 or len(batch[spec["label_key"]]) != len(data):
                raise DataError(f"{name}: {directory / fname}: data has shape {data.shape}, expected "
                                f"(N, 3072) with N labels")
            datas.append(data)
            labels.extend(_integer_labels(batch[spec["label_key"]], directory / fname, name,
                                          spec["label_key"]))
        meta_path = directory / spec["meta"]
        if meta_path.is_file():
            meta = load_pickle(meta_path, name, spec["layout"])
            self.classes = [str(c) for c in meta.get(spec["names_key"], [])]
        else:
            self.classes = []
        num_classes = 10 if name == "cifar10" else 100
        if not self.classes:
            self.classes = [str(i) for i in range(num_classes)]
        self.images = torch.from_numpy(np.concatenate(datas).reshape(-1, 3, 32, 32))
        self.targets = torch.tensor(labels, dtype=torch.long)
        if len(self.targets) and (self.targets.min() < 0 or self.targets.max() >= num_classes):
            raise DataError(f"{name}: labels outside 0..{num_classes - 1} in {directory}")
        self.name, self.split, self.root = name, split, directory
        self.augment = augment and split == "train"
        self.padding = padding
        self.normalize = Normalize(spec["mean"], spec["std"])

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.images[i]
        if self.augment:
            p = self.padding
            if p > 0:
                x = torch.nn.functional.pad(x, (p, p, p, p))
                top, left = torch.randint(0, 2 * p + 1, (2,)).tolist()
                x = x[:, top:top + 32, left:left + 32]
            if torch.rand(()) < 0.5:
                x = x.flip(-1)
        return self.normalize(x.float().div_(255.0)), int(self.targets[i])

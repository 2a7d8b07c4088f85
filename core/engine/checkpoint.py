"""Atomic, ``weights_only``-safe checkpoints.

A checkpoint is a dict of tensors and plain Python types only (``model``, ``optimizers``,
``schedulers``, ``epoch``, ``step``, ``rng``, ``extra``), so it loads with
``torch.load(weights_only=True)`` and loading one never unpickles arbitrary objects. ``save`` refuses
anything else up front, instead of writing a file that would later fail to load.
"""

from __future__ import annotations

import os
import re
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any

import torch

from core.engine.dist import is_main
from core.errors import CheckpointError
from core.io import atomic_path

__all__ = ["Checkpointer", "load_checkpoint", "check_plain"]

_PLAIN = (type(None), bool, int, float, complex, str, bytes, torch.Tensor, torch.dtype, torch.device,
          torch.Size)
_EPOCH_RE = re.compile(r"^epoch_(\d+)\.pt$")


def check_plain(obj: Any, where: str = "state") -> None:
    """Raise ``CheckpointError`` naming the first value that ``weights_only`` loading would reject."""
    if isinstance(obj, _PLAIN):
        return
    if type(obj) in (dict, OrderedDict, Counter):
        for k, v in obj.items():
            check_plain(k, f"{where} key")
            check_plain(v, f"{where}[{k!r}]")
        return
    if type(obj) in (list, tuple, set):
        for i, v in enumerate(obj):
            check_plain(v, f"{where}[{i}]")
        return
    raise CheckpointError(f"cannot checkpoint {where}: {type(obj).__module__}.{type(obj).__qualname__} "
                          "is not a tensor or plain Python type; convert it (e.g. .tolist(), int(), "
                          "a dict) in the code that builds the state")


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """``torch.load(path, weights_only=True)`` with a clear error for a missing or unsafe file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt, truncated or unsafe: one clear message
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise CheckpointError(f"cannot load checkpoint {path} with weights_only=True ({type(exc).__name__}: "
                              f"{first}); the file is corrupt or holds "
                              "non-tensor objects (mpq never unpickles arbitrary objects)") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, expected a dict")
    return state


class Checkpointer:
    """Writes ``<dir>/epoch_NNNN.pt`` and ``<dir>/last.pt`` atomically (temp file + ``os.replace``), so
    a kill at any moment leaves either the old or the new file, never a torn one. Rank 0 only writes.

    ``keep``: how many per-epoch files to keep (``None``: all). ``last.pt`` is always kept.
    """

    def __init__(self, directory: str | os.PathLike, keep: int | None = None):
        directory = Path(getattr(directory, "checkpoints", directory))
        self.dir = directory
        self.keep = keep

    def _atomic_save(self, state: dict, path: Path) -> None:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)

    def save(self, state: dict, name: str | None = None, epoch: int | None = None) -> Path | None:
        """Save ``state`` as ``name`` (default ``epoch_{epoch:04d}.pt``) and update ``last.pt``.
        Returns the path written (``None`` on ranks other than 0)."""
        check_plain(state)
        if name is None:
            if epoch is None:
                epoch = int(state.get("epoch", 0))
            name = f"epoch_{epoch:04d}.pt"
        if not is_main():
            return None
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / name
        self._atomic_save(state, path)
        if name != "last.pt":
            self._link_last(path)
            self._prune()
        return path

    def _link_last(self, path: Path) -> None:
        last = self.dir / "last.pt"
        tmp = self.dir / f".last.pt.{os.getpid()}.tmp"
        try:
            if tmp.exists():
                tmp.unlink()
            os.link(path, tmp)  # a hard link: no second copy of a large file
        except OSError:
            import shutil

            shutil.copyfile(path, tmp)
        os.replace(tmp, last)

    def _prune(self) -> None:
        if self.keep is None:
            return
        epochs = self.epoch_files()
        for path in epochs[: max(0, len(epochs) - self.keep)]:
            path.unlink(missing_ok=True)

    def epoch_files(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.dir.iterdir() if (m := _EPOCH_RE.match(p.name))]
        return [p for _, p in sorted(found)]

    def latest(self) -> Path | None:
        """``last.pt`` if present, else the highest ``epoch_NNNN.pt``, else ``None``."""
        last = self.dir / "last.pt"
        if last.is_file():
            return last
        epochs = self.epoch_files()
        return epochs[-1] if epochs else None

    def load(self, path: str | os.PathLike | None = None, map_location: Any = "cpu") -> dict:
        """Load ``path`` (default :meth:`latest`) with ``weights_only=True``."""
        if path is None:
            path = self.latest()
            if path is None:
                raise CheckpointError(f"no checkpoint in {self.dir}")
        return load_checkpoint(path, map_location)

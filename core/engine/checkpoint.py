"""Atomic, ``weights_only``-safe checkpoints with an integrity checksum.

A checkpoint is a dict of tensors and plain Python types only (``model``, ``optimizers``,
``schedulers``, ``epoch``, ``step``, ``rng``, ``extra``, ...), so it loads with
``torch.load(weights_only=True)`` and loading one never unpickles arbitrary objects. ``save`` refuses
anything else up front, instead of writing a file that would later fail to load.

Integrity: ``save`` stores ``integrity = {"sha256": ...}``, a SHA-256 over the state's content (every
tensor's dtype, shape and bytes, every plain value), and ``load_checkpoint`` recomputes it: a flipped
bit in the tensor data (which ``torch.load`` reads without complaint) or in the pickled values is an
error, never a silently different model. :meth:`Checkpointer.load_latest` falls back from a corrupt
``last.pt`` to the newest ``epoch_N.pt`` that loads and passes the check, saying so.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any

import torch

from core.engine.dist import is_main
from core.errors import CheckpointError
from core.io import atomic_path, output_error

__all__ = ["Checkpointer", "load_checkpoint", "check_plain", "state_digest", "safe_torch_load"]

_PLAIN = (type(None), bool, int, float, complex, str, bytes, torch.Tensor, torch.dtype, torch.device,
          torch.Size)
_EPOCH_RE = re.compile(r"^epoch_(\d+)\.pt$")
INTEGRITY_KEY = "integrity"


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


def _feed(h: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        h.update(f"T{t.dtype}{tuple(t.shape)};".encode())
        if t.numel():
            h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)};".encode())
        for k, v in obj.items():
            _feed(h, k)
            _feed(h, v)
    elif isinstance(obj, (list, tuple)):
        h.update(f"{type(obj).__name__[0]}{len(obj)};".encode())
        for v in obj:
            _feed(h, v)
    elif isinstance(obj, (set, frozenset)):
        _feed(h, sorted(obj, key=repr))
    else:
        h.update(f"{type(obj).__name__}:{obj!r};".encode())


def state_digest(state: dict) -> str:
    """SHA-256 (hex) of a checkpoint state's content, without its ``integrity`` entry."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k != INTEGRITY_KEY})
    return h.hexdigest()


def safe_torch_load(path: str | os.PathLike, map_location: Any = "cpu", what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)``; a file that needs more than tensors and plain types (a
    pickled object, possibly malicious) or that is corrupt raises ``CheckpointError`` with mpq's own
    message (torch's suggests disabling the safe loader, which mpq never does)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt, truncated or unsafe: one clear message
        text = str(exc)
        found = re.search(r"GLOBAL ([\w.]+)", text)
        if found:
            raise CheckpointError(
                f"refused to load {what} {path}: it holds a pickled object ({found.group(1)}), not only "
                f"tensors and plain Python types. mpq loads {what}s with the safe loader only, so nothing "
                "in the file ran; use a file written by mpq, or a plain state_dict of tensors") from None
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        detail = next((ln for ln in lines if ln.startswith("Unsupported")), lines[0] if lines else "")
        if "weights_only" in detail:  # never repeat torch's advice to disable the safe loader
            detail = ""
        raise CheckpointError(f"cannot read {what} {path}: not a torch checkpoint, or a corrupt or truncated "
                              f"one ({type(exc).__name__}{': ' + detail if detail else ''})") from None


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", verify: bool = True) -> dict:
    """Load a checkpoint safely (:func:`safe_torch_load`) and, with ``verify``, check its stored
    SHA-256 (a checkpoint written without one, by an older mpq, loads unchecked)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    state = safe_torch_load(path, map_location)
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, expected a dict")
    stored = state.get(INTEGRITY_KEY)
    if verify and isinstance(stored, dict) and "sha256" in stored:
        if state_digest(state) != stored["sha256"]:
            raise CheckpointError(f"checkpoint {path} is corrupt: its content does not match the SHA-256 "
                                  "stored when it was written (a damaged disk or an incomplete copy)")
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
            try:
                torch.save(state, tmp)
            except RuntimeError as exc:  # torch's writer: "unexpected pos ..." on a full disk
                err = output_error(exc, path, "write checkpoint")
                if err is None:
                    raise
                raise err from exc

    def save(self, state: dict, name: str | None = None, epoch: int | None = None) -> Path | None:
        """Save ``state`` (plus its SHA-256) as ``name`` (default ``epoch_{epoch:04d}.pt``) and update
        ``last.pt``. Returns the path written (``None`` on ranks other than 0)."""
        check_plain(state)
        if name is None:
            if epoch is None:
                epoch = int(state.get("epoch", 0))
            name = f"epoch_{epoch:04d}.pt"
        if not is_main():
            return None
        state = {**state, INTEGRITY_KEY: {"sha256": state_digest(state)}}
        path = self.dir / name
        self._atomic_save(state, path)
        if name != "last.pt":
            self._link_last(path)
            self._prune()
        return path

    def _link_last(self, path: Path) -> None:
        with atomic_path(self.dir / "last.pt") as tmp:
            tmp.unlink()
            try:
                os.link(path, tmp)  # a hard link: no second copy of a large file
            except OSError:
                import shutil

                shutil.copyfile(path, tmp)

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

    def candidates(self) -> list[Path]:
        """``last.pt`` then the epoch files, newest first: the order in which a resume tries them."""
        last = self.dir / "last.pt"
        return ([last] if last.is_file() else []) + self.epoch_files()[::-1]

    def load_latest(self, map_location: Any = "cpu") -> tuple[Path, dict] | None:
        """The newest checkpoint that loads and passes its integrity check, as ``(path, state)``; a
        corrupt one is skipped with a warning naming it (a file that is a hard link of one already
        found corrupt is not read twice). ``None`` when there is no checkpoint; ``CheckpointError``
        when there are some but none is usable."""
        failed: list[tuple[Path, str]] = []
        for path in self.candidates():
            if any(_same_file(path, bad) for bad, _ in failed):
                continue
            try:
                state = load_checkpoint(path, map_location)
            except CheckpointError as exc:
                failed.append((path, str(exc)))
                continue
            if failed:
                warnings.warn("skipped unusable checkpoint(s): " + "; ".join(m for _, m in failed)
                              + f"; resuming from {path} instead", stacklevel=2)
            return path, state
        if failed:
            raise CheckpointError(f"no usable checkpoint in {self.dir}: " + "; ".join(m for _, m in failed)
                                  + ". Restore a good copy, or start afresh with run.resume=none")
        return None

    def load(self, path: str | os.PathLike | None = None, map_location: Any = "cpu") -> dict:
        """Load ``path`` (default: the newest usable checkpoint, see :meth:`load_latest`)."""
        if path is None:
            found = self.load_latest(map_location)
            if found is None:
                raise CheckpointError(f"no checkpoint in {self.dir}")
            return found[1]
        return load_checkpoint(path, map_location)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False

"""The run directory, the metrics log (``metrics.jsonl``) and progress output."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from core.config import save_config
from core.engine.dist import barrier, is_main
from core.errors import ConfigError
from core.io import atomic_write_text

__all__ = ["RunDir", "MetricsLogger", "Progress", "atomic_write_text", "log"]


def log(msg: str) -> None:
    """Print on rank 0 only (flushed, so CI logs interleave correctly)."""
    if is_main():
        print(msg, flush=True)


class RunDir:
    """One run's directory: ``config.yaml``, ``metrics.jsonl``, ``checkpoints/`` (+ policy/results from
    paper trainers). Only rank 0 creates or writes anything."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if is_main():
            self.checkpoints.mkdir(parents=True, exist_ok=True)
        barrier()

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def save_config(self, cfg: Any) -> None:
        """Write the resolved config (a dataclass or mapping) as ``config.yaml``."""
        if is_main():
            save_config(cfg, self.config_path)

    def write_json(self, name: str, obj: Any) -> Path:
        """Atomically write ``obj`` as ``<run dir>/<name>`` (e.g. ``results.json``); rank 0 only."""
        path = self.path / name
        if is_main():
            atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")
        return path

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.item() if obj.numel() == 1 else obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _scalar(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        v = v.detach().item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf; keep it readable
    return v


class MetricsLogger:
    """Appends one JSON object per call to ``metrics.jsonl`` (rank 0); optional TensorBoard."""

    def __init__(self, run_dir: RunDir | str | os.PathLike, tensorboard: bool = False):
        self.path = (run_dir.metrics_path if isinstance(run_dir, RunDir)
                     else Path(run_dir) / "metrics.jsonl")
        self._tb = None
        if tensorboard and is_main():
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError("tensorboard=true but the tensorboard package is not installed: "
                                  "pip install 'mpq[tensorboard]' or set run.tensorboard=false") from None
            self._tb = SummaryWriter(log_dir=str(self.path.parent / "tensorboard"))

    def log(self, step: int | None = None, epoch: int | None = None, **scalars: Any) -> dict:
        record = {"time": round(time.time(), 3)}
        if step is not None:
            record["step"] = int(step)
        if epoch is not None:
            record["epoch"] = int(epoch)
        record.update({k: _scalar(v) for k, v in scalars.items()})
        if is_main():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as fh:
                fh.write(json.dumps(record, default=_json_default) + "\n")
            if self._tb is not None:
                for k, v in record.items():
                    if k not in ("time", "step", "epoch") and isinstance(v, (int, float)):
                        self._tb.add_scalar(k, v, global_step=step if step is not None else epoch)
        return record

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate_after(self, step: int) -> None:
        """Drop records with ``step > step`` (a resumed run re-logs what the checkpoint lost)."""
        if not is_main() or not self.path.exists():
            return
        kept = [r for r in self.read() if r.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def reset(self) -> None:
        if is_main() and self.path.exists():
            atomic_write_text(self.path, "")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


class Progress:
    """Iterate with a tqdm bar on a TTY, or with a plain line every ``every`` items (and at the end)
    otherwise; silent on ranks other than 0. ``set_postfix(**scalars)`` adds numbers to the line."""

    def __init__(self, iterable: Iterable, desc: str = "", total: int | None = None, every: int = 50,
                 enabled: bool | None = None):
        self.iterable = iterable
        self.desc = desc
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.every = max(1, every)
        self.enabled = is_main() if enabled is None else enabled
        self.postfix: dict[str, Any] = {}
        self._bar = None
        if self.enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=desc, dynamic_ncols=True, leave=False)

    def set_postfix(self, **scalars: Any) -> None:
        self.postfix = {k: _scalar(v) for k, v in scalars.items()}
        if self._bar is not None:
            self._bar.set_postfix({k: _fmt(v) for k, v in self.postfix.items()}, refresh=False)

    def __iter__(self) -> Iterator:
        start = time.perf_counter()
        i = 0
        try:
            for i, item in enumerate(self.iterable, 1):
                yield item
                if self._bar is not None:
                    self._bar.update(1)
                elif self.enabled and (i % self.every == 0 or i == self.total):
                    self._line(i, time.perf_counter() - start)
        finally:
            if self._bar is not None:
                self._bar.close()

    def _line(self, i: int, elapsed: float) -> None:
        total = f"/{self.total}" if self.total else ""
        eta = ""
        if self.total:
            eta = f" eta {_hms(elapsed / i * (self.total - i))}"
        extra = " ".join(f"{k} {_fmt(v)}" for k, v in self.postfix.items())
        print(f"{self.desc} [{i}{total}] {_hms(elapsed)}{eta} {extra}".rstrip(), flush=True)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _hms(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"

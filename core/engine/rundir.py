"""The run directory, the metrics log (``metrics.jsonl``) and progress output.

A run directory holds one run (see ``docs/core_api.md``, "Run directories"):

- ``run.json``: the run's identity (resolved config minus the keys that cannot change results, see
  :mod:`core.engine.identity`), the code version, every start of the run, and its progress;
- ``config.yaml`` (the resolved config), ``metrics.jsonl``, ``checkpoints/``, and what the stage writes;
- ``.lock`` while a process owns it (:mod:`core.engine.lock`), ``.previous/<time>/`` for the files of
  older runs set aside by ``run.resume=none``.

:meth:`RunDir.claim` takes the lock and checks the identity without writing anything;
:meth:`RunDir.start` then writes (so a refused resume leaves the directory as it was);
:meth:`RunDir.open` does both for a stage without a :class:`~core.engine.Trainer`.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from core.config import save_config
from core.engine.dist import get_info, is_main, on_main
from core.engine.identity import code_version, config_identity, format_diff, identity_diff
from core.engine.lock import RunLock
from core.errors import ConfigError, RunDirError
from core.io import atomic_write_text, output_error, remove_orphaned_temps

__all__ = ["RunDir", "MetricsLogger", "Progress", "atomic_write_text", "check_producer", "log",
           "RESUME_MODES"]

RUN_FILE, LOCK_FILE, PREVIOUS_DIR = "run.json", ".lock", ".previous"
_RUN_MARKERS = (RUN_FILE, "config.yaml", "metrics.jsonl", "checkpoints")
#: ``run.resume``: ``auto`` (continue the same run), ``none`` (start afresh; older files moved to
#: ``.previous/``), ``force`` (continue although identity keys changed; the changes are recorded), or
#: a checkpoint path.
RESUME_MODES = ("auto", "none", "force")


def log(msg: str) -> None:
    """Print on rank 0 only (flushed, so CI logs interleave correctly)."""
    if is_main():
        print(msg, flush=True)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def _on_main(fn: Callable[[], Any], path: Path, action: str = "write") -> Any:
    """:func:`~core.engine.dist.on_main` with an ``OSError`` turned into an ``OutputError``."""
    def guarded() -> Any:
        try:
            return fn()
        except OSError as exc:
            err = output_error(exc, path, action)
            if err is None:
                raise
            raise err from exc

    return on_main(guarded)


class RunDir:
    """One run's directory; only rank 0 creates or writes anything (see the module docstring)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock = RunLock(self.path / LOCK_FILE)
        self._holds = 0
        self._claimed: dict | None = None
        self._started = False
        _on_main(lambda: self.path.mkdir(parents=True, exist_ok=True), self.path, "create directory")

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def record_path(self) -> Path:
        return self.path / RUN_FILE

    # ------------------------------------------------------------------ ownership and identity
    def claim(self, identity: Mapping[str, Any] | None = None, resume: str = "auto") -> None:
        """Take the directory for this run (collective; rank 0 holds the lock) and check that it may
        continue here: with ``resume`` other than ``none``, a recorded identity must equal ``identity``
        (``force``: differences allowed, recorded by :meth:`start`). Writes nothing but the lock;
        removes temporary files orphaned by a killed process. Raises :class:`RunDirError`."""
        identity = dict(identity or {})
        resume = str(resume or "none")
        self._claimed = _on_main(lambda: self._claim_main(identity, resume), self.path)
        self._holds += 1

    def _claim_main(self, identity: dict, resume: str) -> dict:
        took_over = self._lock.acquire() if not self._lock.held else None
        acquired_now = self._holds == 0
        try:
            if took_over:
                log(took_over)
            removed = remove_orphaned_temps(self.path)
            if removed:
                log(f"removed {len(removed)} temporary file(s) left by an interrupted write in {self.path}")
            record = self.read_record()
            changed: list = []
            if resume == "none":
                entries = self._entries()
                if entries and not any((self.path / m).exists() for m in _RUN_MARKERS):
                    raise RunDirError(f"run.resume=none would set aside the files in {self.path}, but it "
                                      "holds no mpq run (no run.json, config.yaml, metrics.jsonl or "
                                      "checkpoints/); choose a new or empty run.out_dir")
            elif record is None:
                if any(self.checkpoints.glob("*.pt")) and resume != "force":
                    raise RunDirError(f"{self.path} holds checkpoints but no {RUN_FILE} (an older mpq, or a "
                                      "copied directory), so they cannot be told apart from another run's. "
                                      "Start afresh with run.resume=none (the files move to "
                                      f"{PREVIOUS_DIR}/), choose another run.out_dir, or, if they are this "
                                      "run's, continue with run.resume=force")
            else:
                changed = identity_diff(record.get("identity", {}), identity)
                if changed and resume != "force":
                    raise RunDirError(
                        f"{self.path} holds another run: {len(changed)} key(s) differ from the run recorded "
                        f"in {RUN_FILE} (recorded -> now):\n{format_diff(changed)}\nTo keep that run, choose "
                        "another run.out_dir; to discard it and start afresh here, set run.resume=none (its "
                        f"files move to {self.path / PREVIOUS_DIR}/); to continue it under the new values "
                        "anyway, set run.resume=force (the change is recorded in run.json)")
                if changed:
                    warnings.warn(f"run.resume=force: continuing the run in {self.path} with changed keys:\n"
                                  f"{format_diff(changed)}", stacklevel=3)
                if record.get("code_version") not in (None, code_version()):
                    warnings.warn(f"the run in {self.path} was started with mpq "
                                  f"{record.get('code_version')}, it continues with {code_version()}",
                                  stacklevel=3)
            return {"identity": identity, "resume": resume, "changed": changed}
        except BaseException:
            if acquired_now:
                self._lock.release()
            raise

    def start(self, config: Any = None) -> None:
        """After :meth:`claim` and any validation: set older files aside (``resume=none``), write
        ``run.json`` (identity, code version, this start) and ``config.yaml`` (collective)."""
        if self._claimed is None:
            raise RuntimeError("RunDir.start() before claim()")
        claimed = self._claimed
        first = not self._started
        self._started = True
        _on_main(lambda: self._start_main(claimed, config, first), self.path)

    def _start_main(self, claimed: dict, config: Any, first: bool) -> None:
        if claimed["resume"] == "none" and first:
            moved = self._set_aside()
            if moved is not None:
                log(f"run.resume=none: the previous run's files in {self.path} moved to {moved}")
        record = self.read_record() or {"format": 1, "created": _now(), "code_version": code_version(),
                                        "starts": []}
        if first:  # a Trainer re-claiming a directory its caller opened is the same start
            start = {"time": _now(), "resume": claimed["resume"], "code_version": code_version(),
                     "world_size": get_info().world_size}
            record["starts"] = [*record.get("starts", []), start]
        if claimed["changed"]:
            record["starts"][-1]["changed"] = {k: [a, b] for k, a, b in claimed["changed"]}
        record["identity"] = claimed["identity"]
        atomic_write_text(self.record_path, json.dumps(record, indent=1, default=str) + "\n")
        if config is not None:
            save_config(config, self.config_path)

    def open(self, identity: Mapping[str, Any] | None = None, resume: str = "auto", config: Any = None
             ) -> RunDir:
        """:meth:`claim` then :meth:`start`, for a stage without a Trainer; use as ``with
        RunDir(path).open(identity, resume, cfg) as run:`` so the lock is released at the end."""
        self.claim(identity, resume)
        try:
            self.start(config)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Give up one claim; the lock is released when the last one is given up."""
        if self._holds == 0:
            return
        self._holds -= 1
        if self._holds == 0:
            self._lock.release()

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _entries(self) -> list[Path]:
        if not self.path.is_dir():
            return []
        return [p for p in self.path.iterdir() if p.name not in (LOCK_FILE, PREVIOUS_DIR)]

    def _set_aside(self) -> Path | None:
        entries = self._entries()
        if not entries:
            return None
        stamp = time.strftime("%Y%m%d-%H%M%S")
        dest, k = self.path / PREVIOUS_DIR / stamp, 1
        while dest.exists():
            dest, k = self.path / PREVIOUS_DIR / f"{stamp}-{k}", k + 1
        dest.mkdir(parents=True)
        for p in entries:
            os.replace(p, dest / p.name)
        return dest

    # ------------------------------------------------------------------ the record
    def read_record(self) -> dict | None:
        """``run.json`` as a dict (``None`` when absent)."""
        return self.read_record_of(self.path)

    @staticmethod
    def read_record_of(path: str | os.PathLike) -> dict | None:
        """The ``run.json`` of the run directory ``path`` (``None`` when absent; ``RunDirError`` when
        unreadable)."""
        file = Path(path) / RUN_FILE
        if not file.is_file():
            return None
        try:
            record = json.loads(file.read_bytes().decode("utf-8"))
        except (OSError, ValueError) as exc:
            raise RunDirError(f"{file} is unreadable ({exc}); restore it, or start afresh with "
                              "run.resume=none") from None
        if not isinstance(record, dict) or not isinstance(record.get("identity", {}), dict):
            raise RunDirError(f"{file} is not an mpq run record; restore it, or start afresh with "
                              "run.resume=none")
        return record

    def update_record(self, **fields: Any) -> None:
        """Set top-level fields of ``run.json`` (rank 0; e.g. ``progress``)."""
        if is_main():
            record = self.read_record() or {}
            record.update(fields)
            atomic_write_text(self.record_path, json.dumps(record, indent=1, default=str) + "\n")

    def producer_record(self) -> dict:
        """What an output of this run carries so that a consuming stage can check where it came from
        (:func:`check_producer`): the run directory, identity, code version and
        progress."""
        record = self.read_record() or {}
        return {"run_dir": str(self.path), "identity": record.get("identity", {}),
                "code_version": record.get("code_version"), "progress": record.get("progress")}

    # ------------------------------------------------------------------ files
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
    """Appends one JSON object per call to ``metrics.jsonl`` (rank 0); optional TensorBoard.

    Each record is one ``write`` of a whole line, flushed to the OS at once; :meth:`sync` (called at
    every checkpoint) also forces it to disk. A write that fails half-way (full disk) is cut back to
    the last whole line before the error is raised. Reading skips an unreadable line (a torn last line
    from a kill or a full disk) with a warning instead of failing."""

    def __init__(self, run_dir: RunDir | str | os.PathLike, tensorboard: bool = False):
        self.path = (run_dir.metrics_path if isinstance(run_dir, RunDir)
                     else Path(run_dir) / "metrics.jsonl")
        self._fd: int | None = None
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
            self._append((json.dumps(record, default=_json_default) + "\n").encode())
            if self._tb is not None:
                for k, v in record.items():
                    if k not in ("time", "step", "epoch") and isinstance(v, (int, float)):
                        self._tb.add_scalar(k, v, global_step=step if step is not None else epoch)
        return record

    def _append(self, data: bytes) -> None:
        try:
            if self._fd is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
                self._cut_torn_tail()
            pos = os.lseek(self._fd, 0, os.SEEK_END)
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(self._fd, view):]
            except OSError:
                os.ftruncate(self._fd, pos)  # keep whole lines only
                raise
        except OSError as exc:
            raise output_error(exc, self.path, "append to") or exc from exc

    def _cut_torn_tail(self) -> None:
        size = os.fstat(self._fd).st_size
        if size == 0:
            return
        with open(self.path, "rb") as fh:
            fh.seek(max(0, size - (1 << 20)))
            tail = fh.read()
        if tail.endswith(b"\n"):
            return
        keep = size - len(tail) + tail.rfind(b"\n") + 1
        warnings.warn(f"{self.path}: cut a torn last line ({size - keep} bytes) left by an interrupted "
                      "write", stacklevel=4)
        os.ftruncate(self._fd, keep)

    def sync(self) -> None:
        """Force the lines written so far to disk (rank 0)."""
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            except OSError as exc:
                raise output_error(exc, self.path, "sync") or exc from exc

    def read(self) -> list[dict]:
        """The records; unreadable lines are skipped with a warning naming them."""
        if not self.path.exists():
            return []
        records, bad = [], []
        for i, line in enumerate(self.path.read_bytes().decode("utf-8", "replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                rec = None
            if isinstance(rec, dict):
                records.append(rec)
            else:
                bad.append(i)
        if bad and is_main():
            lines = ", ".join(map(str, bad[:5])) + (" ..." if len(bad) > 5 else "")
            warnings.warn(f"{self.path}: skipped {len(bad)} unreadable line(s) (line {lines}), left by an "
                          "interrupted write", stacklevel=2)
        return records

    def truncate_after(self, step: int) -> None:
        """Drop records with ``step > step`` and unreadable lines (a resumed run re-logs what the
        checkpoint lost)."""
        if not is_main() or not self.path.exists():
            return
        self._close_file()
        kept = [r for r in self.read() if r.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def reset(self) -> None:
        if is_main() and self.path.exists():
            self._close_file()
            atomic_write_text(self.path, "")

    def _close_file(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def close(self) -> None:
        self._close_file()
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


def check_producer(source: Mapping[str, Any] | str | Path | None, identity: Mapping[str, Any], *, what: str,
                   fix: str = "", required: bool = True) -> dict | None:
    """Before a stage consumes another stage's output: check that the producing run had ``identity``.

    ``source`` is the producer's run directory (its ``run.json`` is read) or a record that travelled with
    the output (:meth:`RunDir.producer_record`, e.g. stored in a policy's meta). Differing keys raise
    :class:`RunDirError` listing them (old -> new) with ``fix`` (how to re-make the output); a producer
    that stopped before its last epoch gives a warning. Without a record: ``RunDirError`` when
    ``required``, else a warning. Returns the record."""
    record = source
    where = what
    if isinstance(source, (str, Path)):
        where = f"{what} in {source}"
        record = RunDir.read_record_of(source)
    if record is None:
        msg = f"the {where} carries no run record (run.json), so it cannot be told apart from another run's"
        if required:
            raise RunDirError(f"{msg}; {fix or 're-make it with this config'}")
        warnings.warn(msg + "; using it as is", stacklevel=2)
        return None
    diff = identity_diff(record.get("identity", {}), config_identity(dict(identity)))
    if diff:
        raise RunDirError(f"the {where} was made by another run: {len(diff)} key(s) differ (that run -> "
                          f"this config):\n{format_diff(diff)}\n{fix or 'Re-make it with this config.'}")
    progress = record.get("progress") or {}
    if progress and not progress.get("finished", False):
        warnings.warn(f"the {where} stopped early (epoch {progress.get('epochs_done')} of "
                      f"{progress.get('epochs')}); it is used as it is", stacklevel=2)
    return dict(record)

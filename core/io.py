"""Atomic file output: a kill or an error at any moment leaves the old file or the new one, never a
half-written one (a temporary file in the same directory, flushed to disk, then ``os.replace``).

Temporary files are named ``.<name>.<random>.mpq-tmp<suffix>`` and created with mode ``0o666`` less the
umask, like any file the process opens (so a team can read the results); one orphaned by a kill -9 is
removed by :func:`remove_orphaned_temps` when the run directory is next opened. A failure of the file
system (full disk, read-only, a file where a directory should be) raises
:class:`~core.errors.OutputError` naming the path and the cause.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from core.errors import OutputError

__all__ = ["atomic_path", "atomic_write_text", "atomic_write_json", "print_json", "output_error",
           "remove_orphaned_temps", "TMP_MARK"]

TMP_MARK = ".mpq-tmp"
# ours, plus the names older versions used (``.<stem>.<random>.tmp<suffix>``, ``.last.pt.<pid>.tmp``)
_TMP_RE = re.compile(r"^\..+(\.mpq-tmp|\.tmp)(\.[A-Za-z0-9_]+)?$")

_CAUSES = {
    errno.ENOSPC: "no space left on the device (the disk is full)",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EISDIR: "it is a directory",
}


def _blocking_file(path: Path) -> Path | None:
    """The first ancestor of ``path`` (or ``path`` itself) that exists and is not a directory."""
    for p in reversed([path, *path.parents]):
        if p.exists() and not p.is_dir():
            return p
        if not p.exists():
            return None
    return None


def output_error(exc: BaseException, path: str | os.PathLike, action: str = "write") -> OutputError | None:
    """An :class:`OutputError` saying why ``action`` on ``path`` failed, or ``None`` when ``exc`` is not a
    file-system fault. Errors without an errno (torch's ``unexpected pos ...`` when a checkpoint write
    hits a full disk) are attributed to the disk when it has no space left."""
    path = Path(path)
    code = getattr(exc, "errno", None)
    blocker = _blocking_file(path) if code in (errno.ENOTDIR, errno.EEXIST, None) else None
    if blocker is not None:
        cause = f"{blocker} is a file, not a directory"
        fix = "remove or rename that file, or write elsewhere (e.g. another run.out_dir)"
    elif code in _CAUSES:
        cause = _CAUSES[code]
        fix = ("free some space or write elsewhere" if code in (errno.ENOSPC, errno.EDQUOT)
               else "write elsewhere (e.g. another run.out_dir) or fix the permissions")
    elif isinstance(exc, OSError):
        cause, fix = exc.strerror or str(exc), "check the path"
    elif _disk_full(path):
        cause = f"no space left on the device (the disk is full; {type(exc).__name__}: {exc})"
        fix = "free some space or write elsewhere"
    else:
        return None
    return OutputError(f"cannot {action} {path}: {cause}; {fix}")


def _disk_full(path: Path) -> bool:
    for p in (path, *path.parents):
        if p.exists():
            try:
                return shutil.disk_usage(p).free < 1 << 20
            except OSError:
                return False
    return False


def _create_temp(path: Path) -> Path:
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TMP_MARK}{path.suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the umask applies
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(path))


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (same suffix, so writers that infer the format from it,
    e.g. ``savefig``, work); on success it is synced and moved onto ``path``, on error removed. An
    ``OSError`` on the way becomes an :class:`OutputError` naming ``path`` and the cause."""
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _create_temp(path)
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        err = output_error(exc, path)
        if err is None:
            raise
        raise err from exc
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike, data: Any, indent: int | None = 1) -> None:
    """Write ``data`` as JSON (no NaN/inf: they are not JSON) to ``path`` atomically; a value that
    cannot be serialised raises before anything is written."""
    atomic_write_text(path, json.dumps(data, indent=indent, allow_nan=False) + "\n")


def print_json(data: Any, path: str | os.PathLike | None = None) -> None:
    """Print ``data`` as indented JSON and, with ``path``, also write it there atomically (the perf
    scripts' ``--json FILE``)."""
    text = json.dumps(data, indent=1)
    print(text)
    if path:
        atomic_write_text(path, text + "\n")


def remove_orphaned_temps(directory: str | os.PathLike, skip: tuple[str, ...] = (".previous",)) -> list[Path]:
    """Delete the temporary files of interrupted atomic writes under ``directory`` (recursively, not
    into folders named in ``skip``); returns what was removed. Call it only while no other process
    writes there (mpq does so under the run directory's lock)."""
    removed = []
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames[:] = [d for d in dirnames if d not in skip]
        for name in filenames:
            if _TMP_RE.match(name):
                p = Path(dirpath) / name
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed

def read_json(path: str | os.PathLike, what: str, hint: str, error: type[Exception] | None = None) -> Any:
    """The JSON content of ``path``; a missing, unreadable or malformed file raises ``error`` (default
    :class:`~core.errors.DataError`) as ``"<what> <path> ...: <hint>"``, e.g.
    ``read_json(p, "policy file", "create it with `mpq edmips discretize`", PolicyError)``."""
    from core.errors import DataError

    error = error or DataError
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {str(path)!r} does not exist; {hint}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what} {str(path)!r} is not UTF-8 text ({exc}); {hint}") from None
    except OSError as exc:
        raise error(f"cannot read {what} {str(path)!r} ({exc}); {hint}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{what} {str(path)!r} is not valid JSON (line {exc.lineno}, column {exc.colno}: "
                    f"{exc.msg}); {hint}") from None

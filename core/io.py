"""Atomic file output: a kill or an error at any moment leaves the old file or the new one, never a
half-written one (a temporary file in the same directory, flushed to disk, then ``os.replace``)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (same suffix, so writers that infer the format from it,
    e.g. ``savefig``, work); on success it is synced and moved onto ``path``, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike, data: Any, indent: int | None = 1) -> None:
    """Write ``data`` as JSON (no NaN/inf: they are not JSON) to ``path`` atomically; a value that
    cannot be serialised raises before anything is written."""
    atomic_write_text(path, json.dumps(data, indent=indent, allow_nan=False) + "\n")


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
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"cannot read {what} {str(path)!r} ({exc}); {hint}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{what} {str(path)!r} is not valid JSON (line {exc.lineno}, column {exc.colno}: "
                    f"{exc.msg}); {hint}") from None

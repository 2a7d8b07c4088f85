"""The registry of *recomputers*: code that recomputes a table's deterministic cells with mpq's code.

A table row names its recomputer (``recompute: {name: ..., args: {...}}``); the checker calls
``RECOMPUTERS[name](ctx, **args)``, which returns ``{metric: value}`` for some of the row's cells.
A recomputer that cannot run here (a paper package or a reference file is missing) raises
:class:`RecomputeUnavailable`; the checker then reports its cells as ``not implemented`` with the reason.

This module is the protocol (context, registry, exception); the built-in recomputers live in
:mod:`benchmarks.recomputers`, whose :func:`~benchmarks.recomputers.load_recomputers` returns them merged
with the papers' own. A paper adds its own without editing the harness: its :class:`core.paper.Paper`
names a ``{"name": fn, ...}`` mapping (``recomputers=``; a paper's entry wins over a built-in of the same
name).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.schema import Row, Table, TableFile
from core.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent


class RecomputeUnavailable(Exception):
    """The recomputer cannot run in this checkout (the message says what is missing)."""


@dataclass
class RecomputeContext:
    """What a recomputer may look at besides its own args: the row, its table and file, and caches."""

    row: Row
    table: Table
    file: TableFile
    reference_dirs: list[Path] = field(default_factory=list)
    cache: dict[Any, Any] = field(default_factory=dict)

    def other_row(self, row_id: str) -> Row:
        """A row of the same table (``"row"``) or of another table of the same file (``"table/row"``)."""
        table_id, _, rid = row_id.rpartition("/")
        tables = [t for t in self.file.tables if t.id == table_id] if table_id else [self.table]
        for t in tables:
            for r in t.rows:
                if r.id == rid:
                    return r
        raise ConfigError(f"recompute: row {row_id!r} not found in {self.file.path} "
                          f"(use 'row' for the same table, 'table/row' for another)")

    def reference_file(self, name: str) -> Path:
        """Find a reference file (e.g. released indicators) in the reference directories."""
        for d in self.reference_dirs:
            if (d / name).is_file():
                return d / name
        searched = ", ".join(str(d) for d in self.reference_dirs) or "(none)"
        raise RecomputeUnavailable(f"reference file {name} not found (searched {searched}; "
                                   "pass --reference DIR or set MPQ_REFERENCE_DIR)")

    def repo_path(self, relative: str) -> Path:
        return REPO_ROOT / relative


Recomputer = Callable[..., dict[str, Any]]
RECOMPUTERS: dict[str, Recomputer] = {}


def register_recomputer(name: str) -> Callable[[Recomputer], Recomputer]:
    """Decorator: ``@register_recomputer("my_counts") def fn(ctx, **args) -> {metric: value}``."""

    def decorator(fn: Recomputer) -> Recomputer:
        RECOMPUTERS[name] = fn
        return fn

    return decorator


def default_reference_dirs(extra: list[str | Path] | None = None) -> list[Path]:
    """``extra`` (``--reference``), then ``$MPQ_REFERENCE_DIR``, then ``<repo>/../shared/reference``."""
    dirs = [Path(p) for p in (extra or [])]
    if os.environ.get("MPQ_REFERENCE_DIR"):
        dirs.append(Path(os.environ["MPQ_REFERENCE_DIR"]))
    dirs.append(REPO_ROOT.parent / "shared" / "reference")
    return dirs

"""``mpq bench check``: compare every transcribed cell with what mpq computes or what a run produced.

Status of a cell:

- ``match``: mpq's value is within the cell's tolerance (``compare: le``: at most the bound).
- ``MISMATCH``: it is not (the difference is shown); fails the exit code, unless the cell's ``note``
  predicts mpq's value: a noted cell carries ``predicted`` (the value the text should have printed, or
  the recomputed value of a truncated or ambiguous print), and a MISMATCH whose value is within the
  cell's tolerance of ``predicted`` is reported as explained by the note. A value that leaves the
  prediction fails, note or not (also when it matches the printed value).
- ``not run``: a trained / measured cell of an implemented row with no result yet (``needs`` says
  what a run takes: GPU, ImageNet, COCO, ...).
- ``not implemented``: the paper, method or recomputer is not in this repository (the reason is shown).
- ``ERROR``: a recomputer crashed (a bug), or the row's recomputer is missing while a registered paper
  failed to load (a broken plugin); fails the exit code.

Trained / measured cells are compared with the ``results.json`` files found (recursively) under
``--results``, each read and validated as a :class:`core.results.RunResult` (a malformed one is an
error naming the file). A file reproduces a row when its ``table_row`` is the row's full id
``<paper>/<table>/<row>`` or the ``table_row`` the row's config declares (the paper's trainer copies it
into results.json). The cell's metric is read from the record's ``metrics`` (``top1``, ``top5``, ``map``,
...; accuracies in percent). Several matching files (seeds) are averaged.
"""

from __future__ import annotations

import math
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from benchmarks.recompute import REPO_ROOT, RecomputeContext, RecomputeUnavailable, default_reference_dirs
from benchmarks.recomputers import load_recomputers
from benchmarks.schema import Cell, Row, Table, TableFile, load_tables
from core.errors import DataError, MpqError
from core.results import RunResult
from core.results import load_results as load_result

MATCH, MISMATCH, NOT_RUN, NOT_IMPLEMENTED, ERROR = "match", "MISMATCH", "not run", "not implemented", "ERROR"
STATUSES = (MATCH, MISMATCH, NOT_RUN, NOT_IMPLEMENTED, ERROR)


@dataclass
class CellResult:
    row: Row
    cell: Cell
    status: str
    mpq: Any = None
    detail: str = ""
    as_predicted: bool | None = None  # mpq's value vs the note's ``predicted`` (None: nothing compared)

    @property
    def explained(self) -> bool:
        """A MISMATCH with the printed value where mpq gives the value the cell's note predicts.

        Only a cell's own note (with its ``predicted`` value) explains its mismatch: a row's note is
        context (it may be about another cell).
        """
        return self.status == MISMATCH and self.as_predicted is True


@dataclass
class TableResult:
    file: TableFile
    table: Table
    cells: list[CellResult] = field(default_factory=list)


@dataclass
class CheckReport:
    tables: list[TableResult]
    results_files: list[Path] = field(default_factory=list)
    broken_papers: dict[str, str] = field(default_factory=dict)  # registered but failed to load

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in STATUSES}
        for t in self.tables:
            for c in t.cells:
                out[c.status] += 1
        return out

    @property
    def failures(self) -> list[CellResult]:
        """Cells that make the exit code non-zero: unexplained mismatches and errors."""
        return [c for t in self.tables for c in t.cells
                if c.status == ERROR or (c.status == MISMATCH and not c.explained)]

    @property
    def exit_code(self) -> int:
        return 1 if self.failures or self.broken_papers else 0


# ----------------------------------------------------------------------------- results.json
def load_results(root: str | Path | None) -> list[tuple[Path, RunResult]]:
    """Every ``results.json`` under ``root`` (recursively), validated; a malformed file raises DataError.
    Those of older runs a run directory set aside (``run.resume=none`` moves them to ``.previous/``) are
    not results of the run that owns the directory, and are skipped."""
    from core.engine.rundir import PREVIOUS_DIR

    if root is None:
        return []
    root = Path(root)
    if not root.exists():
        raise DataError(f"results directory {root} does not exist; "
                        "pass --results DIR holding results.json files")
    paths = [root] if root.is_file() else sorted(
        p for p in root.rglob("results.json") if PREVIOUS_DIR not in p.relative_to(root).parts)
    return [(p, load_result(p)) for p in paths]


def config_row_id(config: str | None) -> str | None:
    """The ``table_row`` a paper config declares for its runs, if any."""
    from core.config import read_yaml

    path = REPO_ROOT / config if config else None
    if path is None or not path.is_file():
        return None
    try:
        data = read_yaml(path)
    except MpqError:  # an unreadable config just declares no id
        return None
    rid = data.get("table_row")
    return rid if isinstance(rid, str) else None


def _reproduces(result: RunResult, key: str, config_id: str | None) -> bool:
    """A results.json reproduces a row when its ``table_row`` is the row's id or its config's."""
    return result.table_row is not None and result.table_row in (key, config_id)


# ----------------------------------------------------------------------------- comparison
def compare(cell: Cell, value: Any) -> tuple[bool, str]:
    """(within tolerance, human-readable difference)."""
    if isinstance(cell.value, list):
        if not isinstance(value, (list, tuple)):
            return False, f"expected a list, mpq gave {value!r}"
        if len(value) != len(cell.value):
            return False, f"length {len(value)} vs {len(cell.value)}"
        diff = [i for i, (a, b) in enumerate(zip(value, cell.value)) if a != b]
        return len(diff) <= cell.tolerance, f"{len(diff)} of {len(value)} positions differ" + (
            f" (first at index {diff[0]})" if diff else "")
    try:
        v = float(value)
    except (TypeError, ValueError):
        return False, f"mpq gave a non-number {value!r}"
    if math.isnan(v):
        return False, "mpq gave NaN"
    d = v - float(cell.value)
    if cell.compare == "le":
        return v <= cell.value + cell.tolerance, f"exceeds the bound by {d:+.6g}" if d > 0 else f"{d:+.6g}"
    return abs(d) <= cell.tolerance, f"{d:+.6g}"


def judge(row: Row, cell: Cell, value: Any, detail: str = "") -> CellResult:
    """The status of ``value`` (mpq's) against the printed value and, for a noted cell, its prediction."""
    ok, diff = compare(cell, value)
    status, why = (MATCH, "") if ok else (MISMATCH, diff)
    if cell.predicted is None:
        return CellResult(row, cell, status, value, _join(why, detail))
    as_predicted, pdiff = compare(replace(cell, value=cell.predicted), value)
    if as_predicted:
        return CellResult(row, cell, status, value, _join(why, detail), True)
    why = f"leaves the value its note predicts ({_short(cell.predicted)}): {pdiff}"
    return CellResult(row, cell, MISMATCH, value, _join(why, detail), False)


def _join(*parts: str) -> str:
    return ", ".join(p for p in parts if p)


def _short(value: Any) -> str:
    if isinstance(value, list):
        return f"[{','.join(str(v) for v in value[:6])}{',...' if len(value) > 6 else ''}]"
    return f"{value:.6g}"


class Checker:
    """Runs the check over loaded table files (recomputers are discovered once)."""

    def __init__(self, results: list[tuple[Path, RunResult]] | None = None,
                 reference_dirs: list[Path] | None = None) -> None:
        self.results = results or []
        self.reference_dirs = reference_dirs if reference_dirs is not None else default_reference_dirs()
        self.recomputers, self.broken_papers = load_recomputers()
        self.cache: dict[Any, Any] = {}

    def run(self, files: list[TableFile]) -> CheckReport:
        tables = []
        for f in files:
            for t in f.tables:
                tr = TableResult(f, t)
                for row in t.rows:
                    tr.cells.extend(self.check_row(f, t, row))
                tables.append(tr)
        return CheckReport(tables, [p for p, _ in self.results], dict(self.broken_papers))

    def _recompute(self, f: TableFile, t: Table, row: Row) -> tuple[dict | None, str | None, str]:
        """(values, status if unavailable/error, detail)."""
        spec = row.recompute or {}
        fn = self.recomputers.get(spec.get("name"))
        if fn is None:
            why = f"no recomputer {spec.get('name')!r} registered"
            if self.broken_papers:  # a broken plugin must not pass as "not implemented"
                return None, ERROR, f"{why}; paper(s) failed to load: {self.broken_papers}"
            return None, NOT_IMPLEMENTED, why
        ctx = RecomputeContext(row, t, f, self.reference_dirs, self.cache)
        try:
            return fn(ctx, **spec.get("args", {})), None, ""
        except RecomputeUnavailable as exc:
            return None, NOT_IMPLEMENTED, str(exc)
        except TypeError as exc:
            return None, ERROR, f"recomputer {spec.get('name')!r} rejected its args: {exc}"
        except MpqError as exc:
            return None, ERROR, f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # noqa: BLE001 - report a crashing recomputer as an ERROR cell
            tb = traceback.format_exception_only(type(exc), exc)[-1].strip()
            return None, ERROR, f"recomputer {spec.get('name')!r} crashed: {tb}"

    def check_row(self, f: TableFile, t: Table, row: Row) -> list[CellResult]:
        key = f.row_key(t, row)
        out: list[CellResult] = []
        recomputed: dict | None = None
        status_if_none, why = None, ""
        if any(c.kind == "deterministic" for c in row.cells) and row.recompute is not None:
            recomputed, status_if_none, why = self._recompute(f, t, row)
        config_id = config_row_id(row.config) if self.results and row.config else None
        runs = [r for _, r in self.results if _reproduces(r, key, config_id)]
        for cell in row.cells:
            if cell.kind == "deterministic":
                out.append(self._deterministic(row, cell, recomputed, status_if_none, why))
            else:
                out.append(self._trained(row, cell, runs))
        return out

    def _deterministic(self, row: Row, cell: Cell, values: dict | None, status: str | None,
                       why: str) -> CellResult:
        if row.recompute is None:
            who = f"{row.method} not in mpq" if row.method else "no recomputer (paper not in mpq)"
            return CellResult(row, cell, NOT_IMPLEMENTED, detail=row.missing or who)
        if values is None:
            return CellResult(row, cell, status or NOT_IMPLEMENTED, detail=why)
        if cell.metric not in values:
            return CellResult(row, cell, NOT_IMPLEMENTED,
                              detail=f"recomputer {row.recompute['name']!r} gives no {cell.metric!r}")
        return judge(row, cell, values[cell.metric])

    def _trained(self, row: Row, cell: Cell, runs: list[RunResult]) -> CellResult:
        got = [r.metrics[cell.metric] for r in runs if cell.metric in r.metrics]
        if got:
            return judge(row, cell, sum(got) / len(got), f"mean of {len(got)} runs" if len(got) > 1 else "")
        if not row.implemented:
            who = f"{row.method or 'method'} not in mpq"
            return CellResult(row, cell, NOT_IMPLEMENTED, detail=row.missing or who)
        if row.config and not (REPO_ROOT / row.config).is_file():
            return CellResult(row, cell, NOT_IMPLEMENTED, detail=f"config {row.config} not found")
        needs = ", ".join(row.needs) if row.needs else "a run"
        return CellResult(row, cell, NOT_RUN, detail=f"needs: {needs}")


def run_check(results_dir: str | Path | None = None, paper: str | None = None,
              reference_dirs: list[str | Path] | None = None, table_paths: list[str | Path] | None = None
              ) -> CheckReport:
    """Load the tables (optionally one paper's) and the results, and check every cell."""
    files = load_tables(table_paths, paper=paper)
    results = load_results(results_dir)
    checker = Checker(results, default_reference_dirs(reference_dirs))
    return checker.run(files)


__all__ = ["CellResult", "TableResult", "CheckReport", "Checker", "run_check", "load_results", "compare",
           "judge", "STATUSES", "MATCH", "MISMATCH", "NOT_RUN", "NOT_IMPLEMENTED", "ERROR"]

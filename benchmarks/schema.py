"""The papers' reported tables as data: the YAML schema, its loader and its validator.

One YAML file per paper under ``benchmarks/tables/``. A file holds the paper's tables; a table holds
rows; a row holds cells (one reported value each). The layout, with every key the validator knows::

    paper: edmips                 # short name; the package papers/<paper>/ when implemented
    title: "..."                  # the publication
    implemented: true             # default for the rows (false: the paper is not in this repository)
    needs: [GPU, ImageNet]        # default "what a trained row needs to run"
    tables:
      - id: table1                # unique in the file
        title: "Table 1. ..."
        source: {file: edmips-paper.md, table: "Table 1"}
        note: "..."               # optional; context: optional free-form mapping
        rows:
          - id: resnet18-edmips   # unique in the table; full id: edmips/table1/resnet18-edmips
            source: {row: "ResNet-18, EdMIPS column"}   # file/table inherited from the table
            kind: trained         # deterministic | trained | measured (a cell may override)
            method: EdMIPS        # optional: which method the row reports (comparison tables)
            values:
              top1: {value: 65.9, unit: "%", tolerance: 0.5}
            config: papers/edmips/configs/resnet18_imagenet.yaml   # the config that reproduces it
            implemented: false    # instead of config: not in this repository (say which paper)
            missing: "..."        # optional: what mpq lacks for the row (default "<method> not in mpq")
            needs: [GPU, ImageNet]
            recompute: {name: policy_avg_bits, args: {...}}  # deterministic cells: who recomputes them
            note: "..."           # context about the row (does NOT explain a cell's MISMATCH)
        # a noted cell: {value: 4.42e+6, ..., note: "Suspected erratum: ...", predicted: 4.42e+5}

A cell is ``{value, unit, tolerance}`` plus optional ``printed`` (the text exactly as printed when
the number needed reading, e.g. ``"4.32 x 10^2"``), ``compare`` (``eq``, default, or ``le``: the
reported value is an upper bound, e.g. a budget), ``kind``, ``note`` and ``predicted``. ``value`` is a
number or a list (a policy: ``tolerance`` then counts differing positions allowed, normally 0) and is
always what the publication prints. A cell's ``note`` explains how the printed value relates to what
mpq computes (a suspected erratum, a truncation, a reading of an ambiguous text, with the evidence) and
always comes with ``predicted``, the value the note predicts, of the same form as ``value``: for an
erratum the value the text should have printed, for a truncation or a reading the recomputed value.
``mpq bench check`` compares mpq's value with ``predicted`` (within the cell's ``tolerance``): a
MISMATCH with the printed value is then reported as explained by the note, and a value that leaves the
prediction fails the check like any mismatch. A remark that predicts no value belongs in the row's
``note``.

:func:`load_tables` reads and validates every file; a malformed file raises
:class:`core.errors.ConfigError` naming the file, the row and the key, and what is expected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from core.errors import ConfigError

TABLES_DIR = Path(__file__).resolve().parent / "tables"

KINDS = ("deterministic", "trained", "measured")
#: Metric names each kind accepts (a typo in a metric name is an error, not a silently unchecked cell).
METRICS: dict[str, frozenset[str]] = {
    "deterministic": frozenset({
        "params", "macs", "flops", "bops", "bitops", "avg_bits", "size_mb", "fp_size_mb",
        "compression_ratio", "w_bits", "a_bits", "policy_w", "policy_a", "layers", "blocks",
        "eta", "alpha", "average"}),
    "trained": frozenset({"top1", "top5", "top1_drop", "map", "tau"} | {f"set_{i}" for i in range(1, 11)}),
    "measured": frozenset({"seconds", "gpu_hours"}),
}
UNITS = frozenset({"%", "count", "MACs", "FLOPs", "BOPs", "BitOPs", "bits", "MB", "x", "s", "GPU-hours", "1"})
COMPARES = ("eq", "le")
NEEDS = frozenset({"GPU", "ImageNet", "COCO", "CIFAR-10", "original hardware"})

_FILE_KEYS = {"paper", "title", "implemented", "needs", "tables", "note"}
_TABLE_KEYS = {"id", "title", "source", "note", "context", "rows"}
_ROW_KEYS = {"id", "source", "kind", "method", "values", "config", "implemented", "needs", "recompute",
             "note", "context", "missing"}
_CELL_KEYS = {"value", "unit", "tolerance", "printed", "compare", "kind", "note", "predicted"}
_SOURCE_KEYS = {"file", "table", "row"}


@dataclass
class Cell:
    """One reported value: what the publication prints, in which unit, within which tolerance."""

    metric: str
    value: float | list
    unit: str
    tolerance: float
    kind: str
    compare: str = "eq"
    printed: str | None = None
    note: str | None = None
    predicted: float | list | None = None


@dataclass
class Row:
    id: str
    source: dict[str, str]
    kind: str
    cells: list[Cell]
    implemented: bool
    needs: list[str]
    config: str | None = None
    method: str | None = None
    recompute: dict[str, Any] | None = None
    note: str | None = None
    context: dict[str, Any] = field(default_factory=dict)
    missing: str | None = None


@dataclass
class Table:
    id: str
    title: str
    source: dict[str, str]
    rows: list[Row]
    note: str | None = None
    context: dict[str, Any] = field(default_factory=dict)


@dataclass
class TableFile:
    paper: str
    title: str
    path: Path
    tables: list[Table]
    implemented: bool = True
    note: str | None = None

    def row_key(self, table: Table, row: Row) -> str:
        return f"{self.paper}/{table.id}/{row.id}"


def _fail(where: str, message: str) -> ConfigError:
    return ConfigError(f"{where}: {message}")


def _check_keys(where: str, data: Any, allowed: set[str], required: set[str]) -> None:
    if not isinstance(data, dict):
        raise _fail(where, f"expected a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise _fail(where, f"unknown key(s) {unknown}; valid keys: {sorted(allowed)}")
    missing = sorted(required - set(data))
    if missing:
        raise _fail(where, f"missing required key(s) {missing}")


def _str(where: str, value: Any, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(where, f"'{key}' must be a non-empty string, got {value!r}")
    return value


def _needs(where: str, value: Any) -> list[str]:
    if not isinstance(value, list) or any(n not in NEEDS for n in value):
        raise _fail(where, f"'needs' must be a list drawn from {sorted(NEEDS)}, got {value!r}")
    return list(value)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _cell(where: str, metric: str, data: Any, row_kind: str) -> Cell:
    _check_keys(where, data, _CELL_KEYS, {"value", "unit", "tolerance"})
    kind = data.get("kind", row_kind)
    if kind not in KINDS:
        raise _fail(where, f"'kind' must be one of {list(KINDS)}, got {kind!r}")
    if metric not in METRICS[kind]:
        raise _fail(where, f"metric {metric!r} is not a {kind} metric; valid: {sorted(METRICS[kind])}")
    value = _value(where, data["value"], "value")
    unit = data["unit"]
    if unit not in UNITS:
        raise _fail(where, f"'unit' must be one of {sorted(UNITS)}, got {unit!r}")
    tol = data["tolerance"]
    if isinstance(tol, str):
        raise _fail(where, f"'tolerance' must be a number >= 0, got text {tol!r} "
                           "(write 0.005e+9, not 0.005e9)")
    if not _number(tol) or tol < 0:
        raise _fail(where, f"'tolerance' must be a number >= 0, got {tol!r}")
    compare = data.get("compare", "eq")
    if compare not in COMPARES:
        raise _fail(where, f"'compare' must be one of {list(COMPARES)}, got {compare!r}")
    printed = data.get("printed")
    if printed is not None and not isinstance(printed, str):
        raise _fail(where, f"'printed' must be a string (the text as printed), got {printed!r}")
    note = data.get("note")
    if note is not None:
        _str(where, note, "note")
    predicted = data.get("predicted")
    if note is not None and predicted is None:
        raise _fail(where, "a cell with a 'note' needs 'predicted': the value the note predicts (for an "
                           "erratum the value the text should have printed, for a truncation or a reading "
                           "the recomputed value); a remark that predicts no value belongs in the row's "
                           "'note'")
    if predicted is not None:
        if note is None:
            raise _fail(where, "'predicted' needs a 'note' saying why the printed value differs from it")
        predicted = _value(where, predicted, "predicted")
        if isinstance(predicted, list) != isinstance(value, list) or (
                isinstance(value, list) and len(predicted) != len(value)):
            form = f"a list of {len(value)} numbers" if isinstance(value, list) else "a number"
            raise _fail(where, f"'predicted' must have the form of 'value' ({form}), got {predicted!r}")
    return Cell(metric, value, unit, float(tol), kind, compare, printed, note, predicted)


def _value(where: str, value: Any, key: str) -> float | list:
    if isinstance(value, list):
        if not value or not all(_number(v) for v in value):
            raise _fail(where, f"a list '{key}' must be a non-empty list of numbers, got {value!r}")
    elif not _number(value):
        hint = " (YAML reads 6.21e9 as text: write 6.21e+9)" if isinstance(value, str) else ""
        raise _fail(where, f"'{key}' must be a number or a list of numbers, got {value!r}{hint}")
    return value


def _row(where: str, data: Any, table_source: dict[str, str], defaults: dict[str, Any]) -> Row:
    if isinstance(data, dict) and "id" in data:
        where = f"{where} (id {data['id']!r})"
    _check_keys(where, data, _ROW_KEYS, {"id", "source", "kind", "values"})
    rid = _str(where, data["id"], "id")
    _check_keys(f"{where}.source", data["source"], _SOURCE_KEYS, {"row"})
    source = {**table_source, **{k: str(v) for k, v in data["source"].items()}}
    kind = data["kind"]
    if kind not in KINDS:
        raise _fail(where, f"'kind' must be one of {list(KINDS)}, got {kind!r}")
    values = data["values"]
    if not isinstance(values, dict) or not values:
        raise _fail(where, "'values' must be a non-empty mapping metric -> {value, unit, tolerance}")
    cells = [_cell(f"{where}.values.{m}", m, c, kind) for m, c in values.items()]
    implemented = data.get("implemented", defaults["implemented"])
    if not isinstance(implemented, bool):
        raise _fail(where, f"'implemented' must be true or false, got {implemented!r}")
    config = data.get("config")
    if config is not None:
        config = _str(where, config, "config")
        if not config.startswith("papers/") or not config.endswith((".yaml", ".yml", ".py")):
            raise _fail(where, f"'config' must be a path under papers/<name>/configs/, got {config!r}")
    if data.get("implemented") is False and config is not None:
        raise _fail(where, "a row with 'implemented: false' cannot name a 'config'")
    recompute = data.get("recompute")
    if recompute is not None:
        _check_keys(f"{where}.recompute", recompute, {"name", "args"}, {"name"})
        _str(f"{where}.recompute", recompute["name"], "name")
        if not isinstance(recompute.get("args", {}), dict):
            raise _fail(f"{where}.recompute", "'args' must be a mapping")
    if any(c.kind == "deterministic" for c in cells) and recompute is None and implemented:
        raise _fail(where, "a deterministic cell needs 'recompute: {name: ...}' (the code that recomputes "
                           "it) or 'implemented: false'")
    needs = _needs(where, data.get("needs", defaults["needs"]))
    note = data.get("note")
    if note is not None:
        _str(where, note, "note")
    method = data.get("method")
    if method is not None:
        _str(where, method, "method")
    context = data.get("context", {})
    if not isinstance(context, dict):
        raise _fail(where, "'context' must be a mapping")
    missing = data.get("missing")
    if missing is not None:
        _str(where, missing, "missing")
        if implemented:
            raise _fail(where, "'missing' (what mpq lacks for the row) needs 'implemented: false'")
    return Row(rid, source, kind, cells, implemented, needs, config, method, recompute, note, context,
               missing)


def _table(where: str, data: Any, defaults: dict[str, Any]) -> Table:
    if isinstance(data, dict) and "id" in data:
        where = f"{where} (id {data['id']!r})"
    _check_keys(where, data, _TABLE_KEYS, {"id", "title", "source", "rows"})
    tid = _str(where, data["id"], "id")
    _check_keys(f"{where}.source", data["source"], _SOURCE_KEYS, {"file", "table"})
    source = {k: str(v) for k, v in data["source"].items()}
    rows_data = data["rows"]
    if not isinstance(rows_data, list) or not rows_data:
        raise _fail(where, "'rows' must be a non-empty list")
    rows = [_row(f"{where}.rows[{i}]", r, source, defaults) for i, r in enumerate(rows_data)]
    seen: set[str] = set()
    for r in rows:
        if r.id in seen:
            raise _fail(where, f"duplicate row id {r.id!r}")
        seen.add(r.id)
    note = data.get("note")
    if note is not None:
        _str(where, note, "note")
    return Table(tid, _str(where, data["title"], "title"), source, rows, note, data.get("context") or {})


def parse_table_file(path: Path, data: Any) -> TableFile:
    """Validate one parsed YAML document; ``path`` is used in messages."""
    where = str(path)
    _check_keys(where, data, _FILE_KEYS, {"paper", "title", "tables"})
    implemented = data.get("implemented", True)
    if not isinstance(implemented, bool):
        raise _fail(where, f"'implemented' must be true or false, got {implemented!r}")
    defaults = {"implemented": implemented, "needs": _needs(where, data.get("needs", []))}
    tables_data = data["tables"]
    if not isinstance(tables_data, list) or not tables_data:
        raise _fail(where, "'tables' must be a non-empty list")
    tables = [_table(f"{where}: tables[{i}]", t, defaults) for i, t in enumerate(tables_data)]
    ids = [t.id for t in tables]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise _fail(where, f"duplicate table id(s) {dup}")
    return TableFile(_str(where, data["paper"], "paper"), _str(where, data["title"], "title"), path, tables,
                     implemented, data.get("note"))


def load_table_file(path: str | Path) -> TableFile:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"table file {path} not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: malformed YAML: {exc}") from exc
    return parse_table_file(path, data)


def load_tables(paths: list[str | Path] | None = None, paper: str | None = None) -> list[TableFile]:
    """Load and validate every table file (default: all of ``benchmarks/tables/*.yaml``).

    ``paper`` keeps only that paper's file; an unknown name raises ``ConfigError`` listing the known ones.
    """
    files = [Path(p) for p in paths] if paths else sorted(TABLES_DIR.glob("*.yaml"))
    loaded = [load_table_file(p) for p in files]
    names = [f.paper for f in loaded]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"paper name(s) {dup} appear in more than one table file; one file per paper")
    if paper is not None:
        loaded = [f for f in loaded if f.paper == paper]
        if not loaded:
            raise ConfigError(f"no table file for paper {paper!r}; known papers: {sorted(names)}")
    return loaded

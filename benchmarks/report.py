"""Rendering of ``mpq bench check``: one side-by-side table per paper table, as text or markdown (the
cross-method benchmark's report is :mod:`benchmarks.quick_report`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.check import MISMATCH, STATUSES, CellResult, CheckReport
from benchmarks.schema import Cell
from core.io import atomic_write_text


def format_value(value: Any, cell: Cell | None = None, mpq: bool = False) -> str:
    """A reported value as printed (when transcribed) and mpq's value with a few more digits."""
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        head = ",".join(str(v) for v in value[:6])
        return f"[{head}{',...' if len(value) > 6 else ''}] ({len(value)})"
    if cell is not None and not mpq and cell.printed:
        return cell.printed.replace("\\times", "x").replace("{", "").replace("}", "").replace("\\", "")
    if isinstance(value, bool):
        return str(value)
    printed = (cell.printed or "").strip() if cell is not None else ""
    if mpq and printed.endswith("G"):
        return f"{float(value) / 1e9:.4f} G"
    if mpq and "10^" in printed:
        return f"{float(value):.4e}"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) < 1e15):
        return f"{int(value):,}"
    v = float(value)
    if abs(v) >= 1e6:
        return f"{v / 1e9:.4f} G" if abs(v) >= 1e9 else f"{v / 1e6:.4f} M"
    return f"{v:.6g}" if mpq else f"{v:g}"


def status_text(c: CellResult) -> str:
    text = c.status + (f" ({c.detail})" if c.detail else "")
    return text + (" [as noted]" if c.explained else "")


def _rows(report: CheckReport) -> list[tuple[str, list[list[str]], list[str]]]:
    """Per table: heading, body rows [row, metric, reported, mpq, status], notes to print below."""
    out = []
    for tr in report.tables:
        body, notes = [], []
        for c in tr.cells:
            unit = "" if c.cell.unit in ("count", "1", "x") else f" {c.cell.unit}"
            reported = format_value(c.cell.value, c.cell) + unit
            prefix = "<= " if c.cell.compare == "le" else ""
            body.append([c.row.id, c.cell.metric, prefix + reported,
                         format_value(c.mpq, c.cell, mpq=True) if c.mpq is not None else "", status_text(c)])
            if c.cell.note:
                predicted = format_value(c.cell.predicted, c.cell, mpq=True) + unit
                notes.append(f"{c.row.id}.{c.cell.metric}: note (predicts {predicted}): {c.cell.note}")
            elif c.status == MISMATCH:
                notes.append(f"{c.row.id}.{c.cell.metric}: NO NOTE: unexplained")
        src = tr.table.source
        heading = (f"{tr.file.paper} / {tr.table.id}: {tr.table.title} "
                   f"[{src.get('file', '?')}, {src.get('table', '?')}]")
        out.append((heading, body, notes))
    return out


def summary_line(report: CheckReport) -> str:
    counts = report.counts()
    parts = [f"{counts[s]} {s}" for s in STATUSES if counts[s] or s != "ERROR"]
    explained = sum(1 for t in report.tables for c in t.cells if c.explained)
    if counts[MISMATCH]:
        parts[1] += f" ({explained} as a note predicts)"
    verdict = "FAIL" if report.exit_code else "OK"
    return f"summary: {', '.join(parts)} -> {verdict}"


_HEAD = ["row", "metric", "reported", "mpq", "status"]


def render_text(report: CheckReport) -> str:
    lines = []
    for heading, body, notes in _rows(report):
        widths = [max(len(r[i]) for r in [_HEAD] + body) for i in range(4)]
        lines += ["", heading, "  ".join(h.ljust(w) for h, w in zip(_HEAD[:4], widths)) + "  status",
                  "-" * (sum(widths) + 8 + 30)]
        for r in body:
            lines.append("  ".join(v.ljust(w) for v, w in zip(r[:4], widths)) + "  " + r[4])
        lines += [f"  * {n}" for n in notes]
    if report.results_files:
        lines += ["", f"results.json files read: {len(report.results_files)}"]
    lines += ["", summary_line(report)]
    return "\n".join(lines).lstrip("\n") + "\n"


def _md(s: str) -> str:
    return s.replace("|", "\\|")


def render_markdown(report: CheckReport, title: str = "mpq bench check") -> str:
    lines = [f"# {title}", ""]
    for heading, body, notes in _rows(report):
        lines += [f"## {_md(heading)}", "", "| " + " | ".join(_HEAD) + " |", "|" + "---|" * len(_HEAD)]
        lines += ["| " + " | ".join(_md(v) for v in r) + " |" for r in body]
        if notes:
            lines += [""] + [f"- {_md(n)}" for n in notes]
        lines.append("")
    lines += [f"**{summary_line(report)}**", ""]
    return "\n".join(lines)


def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (no half-written report)."""
    atomic_write_text(path, text)

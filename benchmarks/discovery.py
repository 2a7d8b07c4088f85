"""How the harness finds papers: only through :func:`core.paper.discover_papers` (``mpq.papers``).

Each registered :class:`core.paper.Paper` contributes its search methods (``mpq bench run``), its
recomputers (``mpq bench check``) and its perf groups (``mpq bench perf``). A paper or a part that
fails to load is reported with the reason, keyed by what failed (the paper's entry point, or the
method's reference), so the commands can fail naming it. Nothing here names a paper.
"""

from __future__ import annotations

from typing import Any

from core.paper import discover_papers, load_method


def load_methods(names: list[str] | None = None) -> tuple[list[Any], dict[str, str]]:
    """The registered :class:`core.method.SearchMethod` objects, and ``{what: why unavailable}``.

    ``names`` keeps only those methods (an unknown name is reported as unavailable, listing the known
    ones). Without ``names`` every paper that failed to load and every method that failed to import is
    reported; with ``names`` only failures that could hide one of the requested methods are.
    """
    methods: dict[str, Any] = {}
    broken: dict[str, str] = {}
    for entry in discover_papers():
        if entry.paper is None:
            broken[f"paper {entry.name} ({entry.value})"] = entry.error or "failed to load"
            continue
        for ref in entry.paper.methods:
            try:
                method = load_method(ref)
            except Exception as exc:  # noqa: BLE001 - a broken method is reported, not fatal
                broken[f"method {ref} (paper {entry.name})"] = f"{type(exc).__name__}: {exc}"
                continue
            if method.name in methods:
                broken[f"method {ref} (paper {entry.name})"] = (
                    f"a method named {method.name!r} is already registered by {methods[method.name].paper}")
                continue
            methods[method.name] = method
    if not names:
        return [methods[n] for n in sorted(methods)], broken
    unknown = {n: f"no registered method {n!r} (known: {sorted(methods)})" for n in names if n not in methods}
    return [methods[n] for n in names if n in methods], {**unknown, **(broken if unknown else {})}


def load_recomputers() -> tuple[dict[str, Any], dict[str, str]]:
    """``({name: fn}, {paper: why unavailable})`` over every registered paper."""
    found: dict[str, Any] = {}
    broken: dict[str, str] = {}
    for entry in discover_papers():
        try:
            if entry.paper is None:
                raise RuntimeError(entry.error)
            found.update(entry.paper.load_recomputers())
        except Exception as exc:  # noqa: BLE001
            broken[entry.name] = str(exc) if entry.paper is None else f"{type(exc).__name__}: {exc}"
    return found, broken


def load_perf_groups() -> dict[str, Any]:
    """``{group: fn(smoke) -> list[dict]}`` of every paper, or ``{paper: "unavailable: why"}``."""
    groups: dict[str, Any] = {}
    for entry in discover_papers():
        try:
            if entry.paper is None:
                raise RuntimeError(entry.error)
            groups.update(entry.paper.load_perf())
        except Exception as exc:  # noqa: BLE001
            why = str(exc) if entry.paper is None else f"{type(exc).__name__}: {exc}"
            groups[entry.name] = f"unavailable: {why}"
    return groups

"""How the harness finds papers: only through the ``mpq.methods`` entry-point group.

A paper joins by declaring ``<name> = "papers.<name>.bench:METHOD"`` under ``mpq.methods`` in
pyproject.toml. Besides ``METHOD`` (a :class:`core.method.SearchMethod`), the same module may define:

- ``RECOMPUTERS``: ``{name: fn(ctx, **args) -> {metric: value}}`` for ``mpq bench check``;
- ``PERF``: ``{group: fn(smoke: bool) -> list[Measurement-like dict]}`` for ``mpq bench perf``.

Nothing here names a paper.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

GROUP = "mpq.methods"


@dataclass
class Discovered:
    """One entry point: its name, its bench module (or None) and why it failed to load (or None)."""

    name: str
    value: str
    module: Any | None
    error: str | None


def discover() -> list[Discovered]:
    """Every ``mpq.methods`` entry point, sorted by name; import errors are kept, not raised."""
    found = []
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        try:
            module = importlib.import_module(ep.module)
            found.append(Discovered(ep.name, ep.value, module, None))
        except Exception as exc:  # noqa: BLE001 - a broken paper must not break the harness
            found.append(Discovered(ep.name, ep.value, None, f"{type(exc).__name__}: {exc}"))
    return found


def load_methods(names: list[str] | None = None) -> tuple[list[Any], dict[str, str]]:
    """The registered :class:`SearchMethod` objects, and ``{name: why unavailable}`` for the others.

    ``names`` keeps only those entry points (an unknown name is reported as unavailable).
    """
    from core.method import SearchMethod

    methods, unavailable = [], {}
    by_name = {d.name: d for d in discover()}
    for name in names or sorted(by_name):
        d = by_name.get(name)
        if d is None:
            unavailable[name] = f"no entry point {name!r} in group {GROUP} (known: {sorted(by_name)})"
            continue
        if d.module is None:
            unavailable[name] = d.error or "import failed"
            continue
        attr = d.value.split(":", 1)[1] if ":" in d.value else "METHOD"
        method = getattr(d.module, attr, None)
        if not isinstance(method, SearchMethod):
            unavailable[name] = f"{d.value} is not a core.method.SearchMethod"
            continue
        methods.append(method)
    return methods, unavailable


def paper_attribute(attr: str) -> Iterator[tuple[str, Any]]:
    """``(entry-point name, value)`` for each paper bench module that defines ``attr``."""
    for d in discover():
        if d.module is not None and hasattr(d.module, attr):
            yield d.name, getattr(d.module, attr)

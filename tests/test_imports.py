"""The import structure of the repository: no cycle between modules, ``core`` never imports a paper or the
benchmark, a paper never imports another paper (or the benchmark), and every module imports on its own in
a fresh interpreter (whatever was imported before).

The graph is static (``ast``): EVERY import statement of a module counts, also one inside a function or an
``if TYPE_CHECKING:`` block, since a lazy import only hides a cycle until someone imports the other end
first. ``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to ``pkg``.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "papers", "benchmarks")


def module_files(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """``{dotted module name: file}`` of every ``.py`` file under ``root/<package>``."""
    out = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _owner(name: str, modules: dict[str, Path]) -> str | None:
    """``name`` itself or its nearest enclosing module of the repository."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom,
             modules: dict[str, Path]) -> set[str]:
    if isinstance(node, ast.Import):
        return {t for t in (_owner(a.name, modules) for a in node.names) if t}
    if node.level:  # relative import
        base = module if is_package else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            base = base.rpartition(".")[0]
        source = f"{base}.{node.module}" if node.module else base
    else:
        source = node.module or ""
    out = set()
    for alias in node.names:
        target = f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else _owner(source, modules)
        if target:
            out.add(target)
    return out


def import_graph(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    """``{module: modules of the repository it imports}`` (see the module docstring)."""
    modules = module_files(root, packages)
    graph = {}
    for name, path in modules.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                deps |= _targets(name, path.name == "__init__.py", node, modules)
        deps.discard(name)
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle ``[a, b, ..., a]`` of the graph, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if start in state:
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    """Edges against ``papers -> core`` and ``benchmarks -> papers, core``: core importing a paper or the
    benchmark, a paper importing another paper or the benchmark."""
    bad = []
    for src, deps in graph.items():
        top, _, rest = src.partition(".")
        for dst in deps:
            dtop, _, drest = dst.partition(".")
            paper, dpaper = rest.split(".")[0], drest.split(".")[0]
            if top == "core" and dtop in ("papers", "benchmarks"):
                bad.append(f"{src} -> {dst} (core imports {dtop})")
            elif top == "papers" and dtop == "benchmarks":
                bad.append(f"{src} -> {dst} (a paper imports the benchmark)")
            elif top == "papers" and dtop == "papers" and paper and dpaper and paper != dpaper:
                bad.append(f"{src} -> {dst} (paper {paper!r} imports paper {dpaper!r})")
    return sorted(bad)


def test_the_import_graph_has_no_cycle_and_points_one_way():
    graph = import_graph()
    assert {"core.nn.kinds", "papers.llt.search", "benchmarks.check"} <= set(graph)
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"
    assert layering_violations(graph) == []


def test_the_checks_see_lazy_and_type_checking_imports(tmp_path):
    pkg = tmp_path / "core"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from core.sub import b\n")
    (pkg / "sub" / "a.py").write_text("def f():\n    from core.sub import b\n")
    (pkg / "sub" / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                      "    from core.sub.a import f\nimport papers.x.y\n")
    (tmp_path / "papers" / "x").mkdir(parents=True)
    (tmp_path / "papers" / "z").mkdir(parents=True)
    (tmp_path / "papers" / "x" / "y.py").write_text("from ..z import w\n")
    (tmp_path / "papers" / "z" / "w.py").write_text("")
    graph = import_graph(tmp_path, ("core", "papers"))
    assert graph["core.sub.a"] == {"core.sub.b"} and graph["core.sub"] == {"core.sub.b"}
    assert find_cycle(graph) == ["core.sub.b", "core.sub.a", "core.sub.b"]
    assert layering_violations(graph) == ["core.sub.b -> papers.x.y (core imports papers)",
                                          "papers.x.y -> papers.z.w (paper 'x' imports paper 'z')"]


_FRESH_IMPORTS = """
import importlib, json, sys, traceback
failed = {}
for name in json.loads(sys.argv[1]):
    for key in [k for k in sys.modules if k.split(".")[0] in ("core", "papers", "benchmarks")]:
        del sys.modules[key]
    try:
        importlib.import_module(name)
    except Exception:
        failed[name] = traceback.format_exc(limit=-3)
print(json.dumps(failed))
"""


def test_every_module_imports_first_in_a_fresh_interpreter():
    """Each module is imported with no other module of the repository loaded (third-party packages stay
    loaded between modules, to keep this to seconds): a module that only works after another is caught."""
    names = sorted(module_files(ROOT))
    proc = subprocess.run([sys.executable, "-c", _FRESH_IMPORTS, json.dumps(names)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode:
        pytest.fail(f"the import run crashed:\n{proc.stderr[-4000:]}")
    failed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not failed, "\n".join(f"{k}:\n{v}" for k, v in failed.items())

"""The paper protocol: each paper package declares one :class:`Paper`, found through one entry point.

A paper joins mpq (its CLI group, its benchmark methods, its table recomputers, its perf groups, its
configs) with one object and one line of ``pyproject.toml``::

    # papers/mypaper/__init__.py
    from pathlib import Path
    from core.paper import Paper

    PAPER = Paper(
        name="mypaper", title="My Paper (Venue 2025)",
        cli="papers.mypaper.cli:register",            # register(subparsers) -> adds `mpq mypaper ...`
        config_schema="papers.mypaper.config:MyConfig",  # dataclass for `-c NAME` / `mpq config show`
        configs=Path(__file__).resolve().parent / "configs",
        methods=("papers.mypaper.bench:METHOD",),     # core.method.SearchMethod(s) for `mpq bench run`
        recomputers="papers.mypaper.recomputers:RECOMPUTERS",  # {name: fn(ctx, **args)} for `bench check`
        perf="papers.mypaper.perf:PERF",              # {group: fn(smoke) -> list[dict]} for `bench perf`
        smoke="papers.mypaper.cli:smoke",             # smoke(out_dir) -> results.json of a seconds-long run
    )

    # pyproject.toml
    [project.entry-points."mpq.papers"]
    mypaper = "papers.mypaper:PAPER"

Every reference is a ``"module:attribute"`` string imported only when it is used, so loading the
:class:`Paper` objects (``mpq --help``, ``mpq papers``) imports no training code. :func:`discover_papers`
keeps load errors instead of raising them: ``mpq papers`` lists them, the CLI shows the paper as
unavailable, ``mpq bench run`` fails naming it, and the tests parametrised over the registered papers
fail for it. Core never names a paper; this module only reads the entry points.

A recomputer ``fn(ctx, **args) -> {metric: value}`` receives the benchmark's context object: ``ctx.row``
(the table row), ``ctx.other_row(id)``, ``ctx.reference_file(name)`` (a released file, e.g. indicators;
raises the benchmark's "unavailable" error when absent) and ``ctx.cache`` (a dict shared by one check).
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, fields
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from core.errors import ConfigError

__all__ = ["GROUP", "Paper", "PaperEntry", "resolve", "load_method", "discover_papers", "get_paper"]

GROUP = "mpq.papers"
_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def resolve(ref: str) -> Any:
    """Import ``"package.module:attr"`` (``attr`` may be dotted) and return the attribute."""
    module_name, _, attr = ref.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class Paper:
    """One paper's registration; see the module docstring for an example."""

    name: str
    title: str
    cli: str
    config_schema: str
    configs: Path | None = None
    methods: tuple[str, ...] = ()
    recomputers: str | None = None
    perf: str | None = None
    smoke: str | None = None

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"Paper name {self.name!r}: use lower-case letters, digits and '_'")
        if isinstance(self.methods, str):
            raise ValueError(f"Paper {self.name!r}: methods is a tuple of references, not one string")
        refs = [self.cli, self.config_schema, *self.methods, self.recomputers, self.perf, self.smoke]
        bad = [r for r in refs if r is not None and not (isinstance(r, str) and _REF.match(r))]
        if bad:
            raise ValueError(f"Paper {self.name!r}: references must be 'module:attribute' strings, got {bad}")
        if self.configs is not None:
            object.__setattr__(self, "configs", Path(self.configs))

    # ------------------------------------------------------------------ lazily resolved parts
    def register_cli(self, subparsers: Any) -> Any:
        """Add ``mpq <name> ...`` (the paper's ``register(subparsers)``, which must add that name)."""
        parser = resolve(self.cli)(subparsers)
        if self.name not in subparsers.choices:
            raise ValueError(f"{self.cli} did not add a sub-command named {self.name!r}")
        return parser

    def schema(self) -> type:
        return resolve(self.config_schema)

    def load_methods(self) -> list:
        """The paper's :class:`core.method.SearchMethod` objects (a wrong type raises TypeError)."""
        return [load_method(ref) for ref in self.methods]

    def load_recomputers(self) -> dict:
        return _mapping(self.recomputers, "RECOMPUTERS = {name: fn(ctx, **args)}")

    def load_perf(self) -> dict:
        return _mapping(self.perf, "PERF = {group: fn(smoke) -> list[dict]}")

    def run_smoke(self, out_dir: str | Path) -> Path:
        """Run the paper's whole pipeline on a tiny setting (seconds, CPU) into ``out_dir``; returns its
        ``results.json`` (the registered-paper tests validate it against :mod:`core.results`)."""
        if self.smoke is None:
            raise ValueError(f"paper {self.name!r} declares no smoke run")
        return Path(resolve(self.smoke)(Path(out_dir)))

    # ------------------------------------------------------------------ configs
    def config_names(self) -> list[str]:
        """The packaged configs (``configs/*.yaml``, without the ``_``-prefixed bases they inherit)."""
        if self.configs is None or not self.configs.is_dir():
            return []
        return sorted(p.stem for p in self.configs.glob("*.yaml") if not p.name.startswith("_"))

    def config_path(self, name: str) -> Path:
        """``name`` as a YAML path when such a file exists, else the packaged ``configs/<name>.yaml``."""
        path = Path(name).expanduser()
        if path.is_file():
            return path
        if self.configs is not None:
            packaged = self.configs / (name if name.endswith((".yaml", ".yml")) else f"{name}.yaml")
            if packaged.is_file():
                return packaged
        known = ", ".join(self.config_names()) or "(none)"
        raise ConfigError(f"config {name!r} not found: neither a file nor a packaged {self.name} config; "
                          f"packaged: {known}")

    def load_config(self, name: str | None, overrides: list[str] | None = None) -> Any:
        """The validated config of ``-c name`` (None: the schema's defaults) plus ``key=value`` overrides.

        ``run.out_dir`` defaults to ``runs/<paper>/<config name>`` (the packaged name, or the YAML file's
        stem), so two configs never share a run directory; the file itself (not a ``_base_`` it
        inherits) or an override may set another. Without ``-c`` the schema's default applies."""
        from core.config import load_config

        schema = self.schema()
        path = self.config_path(name) if name else None
        defaults = None
        if path is not None and "run" in {f.name for f in fields(schema)}:
            defaults = {"run": {"out_dir": f"runs/{self.name}/{path.stem}"}}
        return load_config(schema, path, overrides, defaults=defaults)

    def check(self) -> dict[str, Any]:
        """Resolve every part and validate every packaged config (what ``mpq papers`` prints):
        ``{"methods": [names], "configs": n, "recomputers": [names], "perf": [groups], "errors": [...]}``."""
        out: dict[str, Any] = {"methods": [], "configs": 0, "recomputers": [], "perf": [], "errors": []}

        def attempt(what: str, fn: Any) -> Any:
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 - collect every problem of the paper
                out["errors"].append(f"{what}: {type(exc).__name__}: {exc}")
                return None

        for ref in self.methods:
            method = attempt(f"method {ref}", lambda ref=ref: load_method(ref))
            if method is not None:
                out["methods"].append(method.name)
        out["recomputers"] = sorted(attempt("recomputers", self.load_recomputers) or {})
        out["perf"] = sorted(attempt("perf", self.load_perf) or {})
        if attempt("config schema", self.schema) is not None:
            for name in self.config_names():
                if attempt(f"config {name}", lambda name=name: self.load_config(name)) is not None:
                    out["configs"] += 1
        return out

    def add_config_arguments(self, parser: Any, required: bool = False) -> Any:
        """``-c/--config NAME|PATH`` and ``KEY=VALUE`` overrides on a paper's sub-command."""
        names = ", ".join(self.config_names()[:6])
        parser.add_argument("-c", "--config", required=required, default=None, metavar="NAME|PATH",
                            help=f"a packaged config name ({names}, ...; `mpq config list {self.name}`) "
                                 "or a YAML file")
        parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                            help="config overrides, e.g. run.out_dir=runs/x data.root=/data/imagenet")
        parser.set_defaults(overrides_anywhere=True)  # core.cli.main: before or after -c
        return parser


def load_method(ref: str) -> Any:
    """The :class:`core.method.SearchMethod` at ``ref`` (TypeError for another type)."""
    from core.method import SearchMethod

    method = resolve(ref)
    if not isinstance(method, SearchMethod):
        raise TypeError(f"{ref} is a {type(method).__name__}, not a core.method.SearchMethod")
    return method


def _mapping(ref: str | None, shape: str) -> dict:
    if ref is None:
        return {}
    value = resolve(ref)
    if not isinstance(value, dict):
        raise TypeError(f"{ref} is a {type(value).__name__}; expected {shape}")
    return value


@dataclass
class PaperEntry:
    """One ``mpq.papers`` entry point: the loaded :class:`Paper`, or why it did not load."""

    name: str
    value: str
    paper: Paper | None
    error: str | None


def discover_papers() -> list[PaperEntry]:
    """Every ``mpq.papers`` entry point, sorted by name; load errors are kept, never raised."""
    found = []
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        try:
            paper = ep.load()
            if not isinstance(paper, Paper):
                raise TypeError(f"{ep.value} is a {type(paper).__name__}, not a core.paper.Paper")
            if paper.name != ep.name:
                raise ValueError(f"entry point {ep.name!r} loads the paper named {paper.name!r}; "
                                 "make the two names equal")
            found.append(PaperEntry(ep.name, ep.value, paper, None))
        except Exception as exc:  # noqa: BLE001 - a broken plugin is reported, not fatal for the others
            found.append(PaperEntry(ep.name, ep.value, None, f"{type(exc).__name__}: {exc}"))
    return found


def get_paper(name: str) -> Paper:
    """The registered paper ``name``; ConfigError naming the known ones, or why it did not load."""
    entries = {e.name: e for e in discover_papers()}
    entry = entries.get(name)
    if entry is None:
        raise ConfigError(f"unknown paper {name!r}; registered: {', '.join(entries) or '(none)'} "
                          f"(entry-point group {GROUP})")
    if entry.paper is None:
        raise ConfigError(f"paper {name!r} ({entry.value}) failed to load: {entry.error}")
    return entry.paper

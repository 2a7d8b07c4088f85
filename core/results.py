"""The results record every paper's final trainer writes (``results.json``) and ``mpq bench check`` reads.

One typed record, versioned by ``schema_version``, written through :func:`write_results` and read
through :func:`load_results` (both validate it with the same code as configs, so an unknown key, a
missing field or a wrong type is an error naming the key)::

    {"schema_version": 1, "paper": "edmips", "method": "edmips", "table_row": "table1/...",
     "model": "edmips_resnet18", "dataset": "imagenet",
     "counts": {"convention": "edmips", "scope": "searchable", "params": ..., "macs": ...,
                "macs_all": ..., "bops": ..., "avg_bits": ..., "size_mb": ...},
     "metrics": {"top1": 65.9, "top5": 86.4, "loss": 1.4},     # percent; detection: {"map": ...}
     "wall_time_s": {"search": ..., "train": ...}, "device": "cuda (NVIDIA H200)", "world_size": 8,
     "seed": 0, "code_version": "0.1.0+1a2b3c4", "policy": {...BitPolicy...}, "config": {...},
     "extra": {...paper-specific fields...}}

Counts name their convention (a :mod:`core.bops` convention) and their scope: ``macs``, ``bops`` and
``avg_bits`` sum over the layers the convention keeps inside the budget (``searchable``: first conv
and last fc out for edmips / limpq / bpnas / basq; ``all``: every conv/linear layer, e.g. ``exact``);
``macs_all`` always covers every conv/linear layer. ``params`` are the weights and biases of every
conv/linear layer (BatchNorm excluded); ``size_mb`` is the weight storage of every conv/linear layer at
its bits (2^20 bytes, biases excluded). MACs are multiply-accumulates of one input image.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
from pathlib import Path
from typing import Any, Literal

from core.errors import ConfigError, DataError

__all__ = ["SCHEMA_VERSION", "Counts", "RunResult", "counts_from_report", "run_result", "write_results",
           "load_results", "validate_results", "code_version", "describe_device"]

SCHEMA_VERSION = 1
PERCENT_METRICS = ("top1", "top5", "map")
CODE_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+(\+[0-9a-f]{7,40})?$")


@dataclasses.dataclass
class Counts:
    """The evaluated model's counts under one ``core.bops`` convention (module docstring)."""

    convention: str
    scope: Literal["searchable", "all"]
    params: int
    macs: float
    macs_all: float
    bops: float
    avg_bits: float
    size_mb: float


@dataclasses.dataclass
class RunResult:
    """One finished run (module docstring). ``policy``: ``BitPolicy.to_dict()`` (None: a float model);
    ``config``: the resolved config; ``extra``: paper-specific values, documented by the paper."""

    paper: str
    method: str
    model: str
    dataset: str
    counts: Counts
    metrics: dict[str, float]
    wall_time_s: dict[str, float]
    device: str
    world_size: int
    seed: int
    code_version: str
    table_row: str | None = None
    policy: dict | None = None
    config: dict | None = None
    extra: dict = dataclasses.field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION


def counts_from_report(report: Any) -> Counts:
    """:class:`Counts` of a :class:`core.bops.BopsReport`."""
    scope = "all" if all(r.counted for r in report.rows) else "searchable"
    return Counts(convention=report.convention, scope=scope, params=int(report.params),
                  macs=float(report.macs), macs_all=float(report.macs_all), bops=float(report.bops),
                  avg_bits=float(report.avg_bits), size_mb=float(report.size_mb()))


def code_version() -> str:
    """``<package version>+<short git revision>`` (PEP 440 local version), or the version alone outside
    a git checkout."""
    import core

    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=5, check=False)
        sha = rev.stdout.strip() if rev.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{core.__version__}+{sha}" if sha else core.__version__


def describe_device(device: Any) -> str:
    """``cpu`` or ``cuda:0 (<GPU name>)``."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def run_result(cfg: Any, info: Any, *, paper: str, method: str, report: Any, metrics: dict[str, float],
               wall_time_s: dict[str, float], policy: Any = None, extra: dict | None = None) -> RunResult:
    """The record of a run of ``cfg`` (a :class:`core.config.ExperimentConfig`) in the process ``info``
    (a :class:`core.engine.DistInfo`), counted by ``report`` (a ``BopsReport``)."""
    from core.config import config_to_dict

    return RunResult(
        paper=paper, method=method, table_row=cfg.table_row, model=cfg.model.name, dataset=cfg.data.name,
        counts=counts_from_report(report), metrics={k: float(v) for k, v in metrics.items()},
        wall_time_s={k: float(v) for k, v in wall_time_s.items()}, device=describe_device(info.device),
        world_size=int(info.world_size), seed=int(cfg.run.seed), code_version=code_version(),
        policy=policy.to_dict() if policy is not None else None, config=config_to_dict(cfg),
        extra=dict(extra or {}))


def validate_results(data: Any, source: str = "results") -> RunResult:
    """Build a :class:`RunResult` from parsed JSON, checking every key, type and range; ``DataError``
    naming ``source`` and the problem otherwise."""
    from core.config import build_config

    if not isinstance(data, dict):
        raise DataError(f"{source}: expected a JSON object, got {type(data).__name__}")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise DataError(f"{source}: schema_version {version!r} is not {SCHEMA_VERSION}; it was not written "
                        "by this version of mpq's results writer (re-run the final stage to rewrite it)")
    try:
        result = build_config(RunResult, data)
    except ConfigError as exc:
        raise DataError(f"{source}: not a valid mpq results record: {exc}") from None
    problems = []
    if not result.metrics:
        problems.append("metrics is empty")
    problems += [f"metrics.{k}={v} is outside [0, 100]" for k, v in result.metrics.items()
                 if k in PERCENT_METRICS and not 0.0 <= v <= 100.0]
    problems += [f"wall_time_s.{k}={v} is negative" for k, v in result.wall_time_s.items() if v < 0]
    if not CODE_VERSION_RE.match(result.code_version):
        problems.append(f"code_version {result.code_version!r} is not VERSION[+GITREV]")
    if result.world_size < 1:
        problems.append(f"world_size={result.world_size}")
    c = result.counts
    if min(c.params, c.macs, c.macs_all, c.bops, c.size_mb) < 0 or c.macs > c.macs_all * (1 + 1e-9):
        problems.append(f"counts are inconsistent: {dataclasses.asdict(c)}")
    if problems:
        raise DataError(f"{source}: not a valid mpq results record: {'; '.join(problems)}")
    return result


def write_results(path: str | os.PathLike, result: RunResult) -> Path:
    """Validate ``result`` and write it as JSON atomically on rank 0 (other ranks write nothing)."""
    from core.engine.dist import is_main
    from core.io import atomic_write_json

    data = dataclasses.asdict(result)
    validate_results(data, f"results for {path}")
    if is_main():
        atomic_write_json(path, data)
    return Path(path)


def load_results(path: str | os.PathLike) -> RunResult:
    """Read and validate a ``results.json``."""
    from core.io import read_json

    data = read_json(path, "results file", "results.json is written by a paper's final stage "
                                           "(e.g. `mpq edmips train`, `mpq llt finetune`)")
    return validate_results(data, str(path))

"""Built-in recomputers: params / MACs / BOPs / average bits / sizes / policies with mpq's own code.

Each takes the :class:`~benchmarks.recompute.RecomputeContext` and the row's ``recompute.args`` and
returns ``{metric: value}``; :func:`load_recomputers` returns them merged with the papers' own. Counting
always goes through :func:`core.bops.count` under the named convention; the *searchable* layers of a
model are those the convention keeps inside the budget (first conv and last linear out for edmips /
limpq / bpnas / basq), in module order.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path
from statistics import fmean
from typing import Any

import yaml

from benchmarks.discovery import paper_attribute
from benchmarks.recompute import (
    RECOMPUTERS,
    RecomputeContext,
    Recomputer,
    RecomputeUnavailable,
    register_recomputer,
)
from core.errors import ConfigError


def load_recomputers() -> dict[str, Recomputer]:
    """The built-ins (registered by importing this module) plus every paper's ``RECOMPUTERS`` (discovered
    through the ``mpq.methods`` entry points; a paper's entry wins over a built-in of the same name)."""
    merged = dict(RECOMPUTERS)
    for _paper, extra in paper_attribute("RECOMPUTERS"):
        if isinstance(extra, dict):
            merged.update(extra)
    return merged


def _build(ctx: RecomputeContext, model: str, num_classes: int | None = None, **model_kwargs: Any):
    from core.models import build_model

    key = ("model", model, num_classes, tuple(sorted(model_kwargs.items())))
    if key not in ctx.cache:
        kwargs = {} if num_classes is None else {"num_classes": num_classes}
        ctx.cache[key] = build_model(model, **kwargs, **model_kwargs)
    return ctx.cache[key]


def _report(ctx: RecomputeContext, model: str, input_size: list[int], convention: str, policy=None,
            num_classes: int | None = None, model_kwargs: dict | None = None):
    from core.bops import count

    net = _build(ctx, model, num_classes, **(model_kwargs or {}))
    if policy is not None:
        return count(net, tuple(input_size), policy=policy, convention=convention)
    kw = tuple(sorted((model_kwargs or {}).items()))
    key = ("report", model, tuple(input_size), convention, num_classes, kw)
    if key not in ctx.cache:
        ctx.cache[key] = count(net, tuple(input_size), convention=convention)
    return ctx.cache[key]


def searchable_names(ctx: RecomputeContext, model: str, input_size: list[int], convention: str,
                     model_kwargs: dict | None = None) -> list[str]:
    """Layers inside the convention's budget (module order)."""
    rows = _report(ctx, model, input_size, convention, model_kwargs=model_kwargs).rows
    return [r.name for r in rows if r.counted]


def _in_modules(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@register_recomputer("module_counts")
def module_counts(ctx: RecomputeContext, model: str, input_size: list[int], modules: list[str] | None = None,
                  convention: str = "exact", num_classes: int | None = None) -> dict[str, Any]:
    """Weight elements (``params``: weights only, as BP-NAS counts) and MACs (= ``flops``) of the conv /
    linear layers under ``modules`` (name prefixes; default: the whole model, every layer)."""
    rows = _report(ctx, model, input_size, convention, num_classes=num_classes).rows
    if modules:
        picked = [r for r in rows if _in_modules(r.name, modules)]
        if not picked:
            raise ConfigError(f"recompute module_counts: no conv/linear layer of {model} under {modules}")
    else:
        picked = rows
    macs = sum(r.macs for r in picked)
    return {"params": sum(r.weight_numel for r in picked), "macs": macs, "flops": macs}


@register_recomputer("searchable_layers")
def searchable_layers(ctx: RecomputeContext, model: str, input_size: list[int] = (3, 224, 224),
                      convention: str = "edmips", model_kwargs: dict | None = None) -> dict[str, Any]:
    """Number of layers inside the convention's budget (EdMIPS: the quantized layers)."""
    return {"layers": len(searchable_names(ctx, model, list(input_size), convention, model_kwargs))}


@register_recomputer("policy_avg_bits")
def policy_avg_bits(ctx: RecomputeContext, model: str, input_size: list[int], convention: str,
                    w_candidates: list[int], a_candidates: list[int], w_index: list[int],
                    a_index: list[int]) -> dict[str, Any]:
    """Average bits sqrt(BOPs / MACs) of a configuration published as indices into the candidates."""
    from core.policy import BitPolicy

    names = searchable_names(ctx, model, input_size, convention)
    policy = BitPolicy.from_indices(names, w_index, a_index, w_candidates, a_candidates)
    report = _report(ctx, model, input_size, convention, policy)
    return {"avg_bits": report.avg_bits, "bops": report.bops}


@register_recomputer("block_policy_avg_bits")
def block_policy_avg_bits(ctx: RecomputeContext, model: str, input_size: list[int], convention: str,
                          policy_row: str, blocks: list[str]) -> dict[str, Any]:
    """Average bits of a per-block configuration (each block's bits apply to all its conv layers),
    the bits read from the ``w_bits`` / ``a_bits`` cells of ``policy_row`` in the same table."""
    from core.policy import BitPolicy

    cells = {c.metric: c.value for c in ctx.other_row(policy_row).cells}
    w, a = cells.get("w_bits"), cells.get("a_bits")
    if not isinstance(w, list) or not isinstance(a, list) or not len(w) == len(a) == len(blocks):
        raise ConfigError(f"recompute block_policy_avg_bits: row {policy_row!r} needs w_bits and a_bits "
                          f"lists of {len(blocks)} entries (one per block)")
    rows = _report(ctx, model, input_size, convention).rows
    layers = {}
    for block, wb, ab in zip(blocks, w, a):
        names = [r.name for r in rows if _in_modules(r.name, [block])]
        if not names:
            raise ConfigError(f"recompute block_policy_avg_bits: {model} has no conv/linear under {block!r}")
        layers.update({n: (int(wb), int(ab)) for n in names})
    report = _report(ctx, model, input_size, convention, BitPolicy(layers))
    return {"avg_bits": report.avg_bits, "bops": report.bops}


@register_recomputer("uniform_bitops")
def uniform_bitops(ctx: RecomputeContext, model: str, input_size: list[int], convention: str, w_bits: int,
                   a_bits: int, first_last_bits: int | None = None, exclude: list[str] | None = None
                   ) -> dict[str, Any]:
    """BitOPs of a uniform ``W{w_bits}A{a_bits}`` model over the convention's searchable layers, minus
    the layers whose name contains one of ``exclude``, plus the first and last layers at
    ``first_last_bits`` (both operands) when given."""
    rows = _report(ctx, model, input_size, convention).rows
    total = 0.0
    for r in rows:
        if exclude and any(e in r.name for e in exclude):
            continue
        if r.counted:
            total += r.macs * w_bits * a_bits
        elif r.role in ("first", "last") and first_last_bits is not None:
            total += r.macs * first_last_bits * first_last_bits
    return {"bitops": total, "bops": total}


def _policy_lists(ctx: RecomputeContext, policy_row: str) -> tuple[list[int], list[int]]:
    cells = {c.metric: c.value for c in ctx.other_row(policy_row).cells}
    if not isinstance(cells.get("policy_w"), list) or not isinstance(cells.get("policy_a"), list):
        raise ConfigError(f"row {policy_row!r} needs policy_w and policy_a lists")
    return [int(b) for b in cells["policy_w"]], [int(b) for b in cells["policy_a"]]


@register_recomputer("llt_policy_size")
def llt_policy_size(ctx: RecomputeContext, policy_row: str, model: str = "resnet50",
                    input_size: list[int] = (3, 224, 224)) -> dict[str, Any]:
    """Weight size (MB = 2^20 bytes) of a published LLT policy: first conv and fc at 8 bits, every
    searchable layer at its weight bits; the float size and the compression ratio."""
    from core.policy import BitPolicy

    w, a = _policy_lists(ctx, policy_row)
    names = searchable_names(ctx, model, list(input_size), "limpq")
    if len(names) != len(w):
        raise ConfigError(f"policy row {policy_row!r} has {len(w)} layers, {model} has {len(names)} "
                          "searchable layers")
    report = _report(ctx, model, list(input_size), "limpq", BitPolicy(dict(zip(names, zip(w, a)))))
    return {"size_mb": report.size_mb(), "fp_size_mb": report.size_mb(32),
            "compression_ratio": report.compression_ratio, "bitops": report.bops}


@register_recomputer("llt_ilp_policy")
def llt_ilp_policy(ctx: RecomputeContext, model: str, indicators: str, bits: list[int], bitops_w: int,
                   bitops_a: int, compression: float, alpha: float,
                   input_size: list[int] = (3, 224, 224)) -> dict[str, Any]:
    """Re-derive LLT's published policy: papers.llt's ILP on the released indicators."""
    try:
        ilp = importlib.import_module("papers.llt.ilp")
        ind_mod = importlib.import_module("papers.llt.indicators")
    except ImportError as exc:
        raise RecomputeUnavailable(f"papers.llt is not importable ({exc})") from exc
    import numpy as np

    path = ctx.reference_file(indicators)
    ind = ind_mod.ImportanceIndicators.load(path)
    names = ind.names_for_model()
    rows = {r.name: r for r in _report(ctx, model, list(input_size), "limpq").rows}
    missing = [n for n in names if n not in rows]
    if missing:
        raise ConfigError(f"indicator layers {missing[:3]} are not layers of {model}")
    fixed = sum(r.weight_numel for n, r in rows.items() if n not in set(names))
    costs = ilp.LayerCosts(names=tuple(names), macs=np.array([rows[n].macs for n in names], dtype=np.float64),
                           numel=np.array([rows[n].weight_numel for n in names], dtype=np.float64),
                           fixed_numel=int(fixed))
    start = time.perf_counter()
    sol = ilp.solve_ilp(ind.table("weight", bits), ind.table("act", bits), costs, alpha=alpha,
                        w_candidates=bits, a_candidates=bits,
                        bitops_budget=ilp.uniform_bitops_budget(costs, bitops_w, bitops_a),
                        size_budget=ilp.size_budget_bits(costs, compression))
    return {"policy_w": sol.w_bits, "policy_a": sol.a_bits, "seconds": time.perf_counter() - start}


def load_yaml_with_base(path: Path, depth: int = 0) -> dict:
    if depth > 10:
        raise ConfigError(f"{path}: _base_ chain deeper than 10 files")
    data = yaml.safe_load(path.read_text()) or {}
    base = data.pop("_base_", None)
    if base is None:
        return data
    merged: dict = {}
    for b in base if isinstance(base, list) else [base]:
        _deep_update(merged, load_yaml_with_base((path.parent / b).resolve(), depth + 1))
    _deep_update(merged, data)
    return merged


def _deep_update(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_update(dst[k], v)
        else:
            dst[k] = v


@register_recomputer("config_value")
def config_value(ctx: RecomputeContext, config: str, key: str) -> dict[str, Any]:
    """A hyper-parameter as the paper's config file sets it (``key`` dotted, ``_base_`` followed)."""
    path = ctx.repo_path(config)
    if not path.is_file():
        raise RecomputeUnavailable(f"config {config} not found")
    node: Any = load_yaml_with_base(path)
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise RecomputeUnavailable(f"config {config} has no key {key!r}")
        node = node[part]
    return {c.metric: node for c in ctx.row.cells}


@register_recomputer("mean_of_cells")
def mean_of_cells(ctx: RecomputeContext, row: str, metrics: list[str]) -> dict[str, Any]:
    """Arithmetic check: the mean of other printed cells (e.g. a k-fold average)."""
    cells = {c.metric: c.value for c in ctx.other_row(row).cells}
    absent = [m for m in metrics if m not in cells]
    if absent:
        raise ConfigError(f"recompute mean_of_cells: row {row!r} has no cell(s) {absent}")
    return {"average": fmean(float(cells[m]) for m in metrics)}


@register_recomputer("stage_depth")
def stage_depth(ctx: RecomputeContext, model: str, stage: str) -> dict[str, Any]:
    """Number of blocks in one stage (an ``nn.Sequential`` attribute) of a model."""
    net = _build(ctx, model)
    seq = getattr(net, stage, None)
    if seq is None:
        raise ConfigError(f"recompute stage_depth: {model} has no attribute {stage!r}")
    return {"blocks": len(seq)}

"""Built-in recomputers: params / MACs / BOPs / average bits / sizes / policies with mpq's own code.

Each takes the :class:`~benchmarks.recompute.RecomputeContext` and the row's ``recompute.args`` and
returns ``{metric: value}``; :func:`load_recomputers` returns them merged with the papers' own. Counting
always goes through :func:`core.bops.count` under the named convention; the *searchable* layers of a
model are those the convention keeps inside the budget (first conv and last linear out for edmips /
limpq / bpnas / basq), in module order.
"""

from __future__ import annotations

from statistics import fmean
from typing import Any

from benchmarks import discovery
from benchmarks.recompute import (
    RECOMPUTERS,
    RecomputeContext,
    Recomputer,
    RecomputeUnavailable,
    register_recomputer,
)
from core.config import read_yaml
from core.errors import ConfigError


def load_recomputers() -> tuple[dict[str, Recomputer], dict[str, str]]:
    """The built-ins (registered by importing this module) plus every registered paper's recomputers (a
    paper's entry wins over a built-in of the same name), and ``{paper: why}`` for the papers whose
    recomputers could not be loaded."""
    papers, broken = discovery.load_recomputers()
    return {**RECOMPUTERS, **papers}, broken


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
def searchable_layers(ctx: RecomputeContext, model: str, convention: str,
                      input_size: list[int] = (3, 224, 224),
                      model_kwargs: dict | None = None) -> dict[str, Any]:
    """Number of layers inside the convention's budget (e.g. the layers a search quantizes)."""
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


@register_recomputer("config_value")
def config_value(ctx: RecomputeContext, config: str, key: str) -> dict[str, Any]:
    """A hyper-parameter as the paper's config file sets it (``key`` dotted, ``_base_`` followed)."""
    path = ctx.repo_path(config)
    if not path.is_file():
        raise RecomputeUnavailable(f"config {config} not found")
    node: Any = read_yaml(path)
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

"""Per-layer MACs and weight counts for the ILP, from ``core.bops`` (``limpq``, ``limpq_int`` or ``exact``).

The official search counts every conv with a hook that computes the output size by true division
(``limpq``) and then truncates the output area ``H_out * W_out`` to an integer (``limpq_int``: the
official counting exactly; a stride-2 layer of ResNet-50 counts ``int(28.5 * 28.5) = 812`` positions
where ``limpq`` keeps 812.25); the ``exact`` convention floors each size (what the forward pass really
computes). The searchable layers are those named in the indicators; every other conv/linear layer (the
first conv and fc for the official models) is fixed at 8-bit weights and outside the BitOPs budget.
"""

from __future__ import annotations

import math

import numpy as np
import torch.nn as nn

from core.bops import count
from core.errors import PolicyError
from papers.llt.ilp import LayerCosts

MAC_CONVENTIONS = ("limpq", "limpq_int", "exact")


def layer_costs(model: nn.Module, names: list[str], input_size: tuple[int, int, int] = (3, 224, 224),
                convention: str = "limpq") -> LayerCosts:
    """MACs (under ``convention``) and weight elements of the searchable ``names``, model order kept as
    given; the rest of the conv/linear weights become ``fixed_numel``."""
    if convention not in MAC_CONVENTIONS:
        raise PolicyError(f"MAC convention {convention!r} is not one of {MAC_CONVENTIONS}")
    report = count(model, input_size, convention="limpq" if convention == "limpq_int" else convention)
    rows = {r.name: r for r in report.rows}
    unknown = [n for n in names if n not in rows]
    if unknown:
        raise PolicyError(f"indicator layer(s) {unknown[:5]} are not conv/linear layers of the model "
                          f"(its layers: {list(rows)[:6]}...); indicators and --model must match")
    not_run = [n for n in names if rows[n].calls == 0]
    if not_run:
        raise PolicyError(f"layer(s) {not_run[:5]} never ran in the forward pass; they cannot be searched")
    searchable = set(names)
    uncovered = [r.name for r in report.rows
                 if r.kind != "matmul" and not r.role and r.name not in searchable]
    if uncovered:
        more = " ..." if len(uncovered) > 8 else ""
        raise PolicyError(f"the indicators cover {len(names)} of the model's {len(names) + len(uncovered)} "
                          "searchable layers (every conv/linear layer but the first and the last); missing: "
                          f"{', '.join(uncovered[:8])}{more}. They would stay unsearched at 8 bits: the "
                          "indicators and --model must match")
    macs = {r.name: _truncated_macs(r) if convention == "limpq_int" else float(r.macs) for r in report.rows}
    return LayerCosts(
        names=tuple(names),
        macs=np.array([macs[n] for n in names], dtype=np.float64),
        numel=np.array([rows[n].weight_numel for n in names], dtype=np.float64),
        fixed_numel=int(sum(r.weight_numel for r in report.rows if r.name not in searchable)),
        fixed_macs=float(sum(macs[r.name] for r in report.rows if r.name not in searchable)),
        convention=convention)


def _truncated_macs(row) -> float:
    """The official hook's MACs: weight elements times ``int(H_out * W_out)`` of the true-division sizes
    (per call; a linear layer's ``MACs / weights`` is its number of calls and stays as it is)."""
    per_weight = row.macs / row.weight_numel if row.weight_numel else 0.0
    return float(row.weight_numel * math.floor(per_weight + 1e-9))

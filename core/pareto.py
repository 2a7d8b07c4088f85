"""Pareto (non-dominated) set extraction, e.g. accuracy vs BOPs over searched policies.

A point ``a`` dominates ``b`` when ``a`` is at least as good as ``b`` in every objective and strictly
better in at least one. :func:`pareto_front` returns the points no other point dominates; equal points
do not dominate each other, so ties are all kept.

>>> pareto_front([(1.0, 60.0), (2.0, 70.0), (2.0, 65.0), (3.0, 70.0)], maximize=(False, True))
[0, 1]
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["pareto_front"]


def pareto_front(points: Sequence[Sequence[float]], maximize: Sequence[bool] | None = None) -> list[int]:
    """Indices (in input order) of the non-dominated ``points``; ``maximize[k]`` says whether objective
    ``k`` is better larger (default: every objective is minimised)."""
    rows = [tuple(float(v) for v in p) for p in points]
    if not rows:
        return []
    dims = len(rows[0])
    if any(len(r) != dims for r in rows):
        raise ValueError("pareto_front: every point needs the same number of objectives")
    signs = [(-1.0 if m else 1.0) for m in (maximize if maximize is not None else [False] * dims)]
    if len(signs) != dims:
        raise ValueError(f"pareto_front: maximize has {len(signs)} entries for {dims} objectives")
    costs = [tuple(s * v for s, v in zip(signs, r)) for r in rows]  # every objective minimised

    def dominates(a: tuple, b: tuple) -> bool:
        return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))

    return [i for i, c in enumerate(costs) if not any(dominates(o, c) for o in costs)]

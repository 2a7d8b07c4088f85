"""BASQ's table recomputers for ``mpq bench check`` (registered through ``papers.basq.PAPER``).

- ``basq_fold_average``: supplementary Table 2's Average column from its ten printed folds, with the
  mean BASQ reports (Alg. 1 part 3, line 10; :func:`papers.basq.report.fold_average`);
- ``basq_bitops``: Table 5's BitOPs of BASQ's own network (``basq_resnet18``: the 16 3x3 convs, the
  flexconn shortcuts have no weights) at uniform ``bits``, counted by ``core.bops`` under ``basq``.
"""

from __future__ import annotations

from typing import Any

from core.errors import ConfigError


def basq_fold_average(ctx: Any, row: str, metrics: list[str]) -> dict[str, Any]:
    """``{"average": mean of the cells metrics of row}``."""
    from papers.basq.report import fold_average

    cells = {c.metric: c.value for c in ctx.other_row(row).cells}
    absent = [m for m in metrics if m not in cells]
    if absent:
        raise ConfigError(f"recompute basq_fold_average: row {row!r} has no cell(s) {absent}")
    return {"average": fold_average([float(cells[m]) for m in metrics])}


def basq_bitops(ctx: Any, model: str, bits: int, input_size: list[int] = (3, 224, 224),
                num_classes: int = 1000, kwargs: dict | None = None) -> dict[str, Any]:
    """``{"bitops": ...}`` of ``model`` (a ``papers.basq.models`` network) quantized by BASQ at ``bits``."""
    from core.bops import count
    from core.nn import quantize_model
    from papers.basq.layers import LAMBDAS
    from papers.basq.models import basq_spec, build_network

    key = ("basq", model, bits, tuple(input_size), tuple(sorted((kwargs or {}).items())))
    if key not in ctx.cache:
        net = build_network(model, num_classes, **(kwargs or {}))
        quantize_model(net, basq_spec(int(bits), lambdas=LAMBDAS[:1]))
        ctx.cache[key] = count(net, tuple(input_size), convention="basq").bops
    return {"bitops": ctx.cache[key]}


RECOMPUTERS = {"basq_fold_average": basq_fold_average, "basq_bitops": basq_bitops}

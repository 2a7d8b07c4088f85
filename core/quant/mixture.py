"""A fused activation mixture for EdMIPS's searchable layers (eq. 12).

``hwgq_mixture(x, gates, steps, levels)`` returns ``sum_j gates_j * HWGQ_j(x)`` and computes both
gradients (to ``x`` and to ``gates``) in one backward that only keeps ``x`` and ``gates``: no
per-candidate activation tensor is stored, so memory does not grow with the candidates.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _hwgq_value_and_mask(x: torch.Tensor, step: float, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    if levels <= 0:  # full precision candidate: ReLU
        return torch.relu(x), x > 0
    clip = step * levels
    value = torch.round(torch.clamp(x, 0.0, clip) / step) * step
    return value, (x > 0) & (x < clip)


class _HWGQMixture(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, gates: torch.Tensor, steps: tuple, levels: tuple) -> torch.Tensor:
        ctx.save_for_backward(x, gates)
        ctx.steps, ctx.levels = steps, levels
        out = torch.zeros_like(x)
        for j, (step, lev) in enumerate(zip(steps, levels)):
            value, _ = _hwgq_value_and_mask(x, step, lev)
            out.add_(value * gates[j].to(x.dtype))
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, gates = ctx.saved_tensors
        need_x, need_g = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_x = torch.zeros_like(x) if need_x else None
        grad_g = torch.zeros_like(gates) if need_g else None
        for j, (step, lev) in enumerate(zip(ctx.steps, ctx.levels)):
            value, mask = _hwgq_value_and_mask(x, step, lev)
            if need_x:
                grad_x.add_(torch.where(mask, grad, 0.0) * gates[j].to(x.dtype))
            if need_g:
                grad_g[j] = (grad * value).sum()
        return grad_x, grad_g, None, None


def hwgq_mixture(
    x: torch.Tensor, gates: torch.Tensor, steps: Sequence[float], levels: Sequence[int]
) -> torch.Tensor:
    """EdMIPS eq. (12) for HWGQ candidates: ``sum_j gates_j * HWGQ(x; steps_j, levels_j)``.

    ``levels_j = 2^b_j - 1``; a candidate with ``levels_j == 0`` is full precision (ReLU).
    Gradients: ``dx = grad * sum_j gates_j 1[0 < x < clip_j]``, ``dgates_j = sum(grad * HWGQ_j(x))``.
    """
    return _HWGQMixture.apply(x, gates, tuple(float(s) for s in steps), tuple(int(v) for v in levels))

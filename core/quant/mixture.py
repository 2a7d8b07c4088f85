"""Fused EdMIPS quantizers (eq. 12 and 16): each an autograd function over two pure kernels.

- ``hwgq_mixture(x, gates, steps, levels)``: ``sum_j gates_j HWGQ_j(x)`` (eq. 12); one HWGQ quantizer is
  the case of one candidate with ``gates=None``.
- ``gaussian_mixture(w, gates, coefs, bits)``: ``sum_i gates_i Q_i(w)`` on one shared weight (eq. 16), the
  std of ``w`` and the candidates' steps computed once (in float64, then cast); one Gaussian quantizer is
  the case of one candidate with ``gates=None``.

Both save only their inputs (and three scalars per weight candidate) for the backward and recompute the rest
there, so memory does not grow with the candidates. The forward and backward math are the pure functions of
:mod:`core.quant.functional` (``*_forward`` / ``*_backward``); with :func:`core.quant.set_compiled` each
is one ``torch.compile``d kernel. Writing the backward by hand rather than letting AOTAutograd derive it
matters on CPU: AOTAutograd's partitioner saves the straight-through masks as ``bool`` tensors, and the
inductor CPU kernels of torch 2.14 store ``bool`` outputs more than 10x slower than ``float`` ones (measured
here for 131k elements: 1.5 ms with a ``bool`` output, 0.13 ms with a ``float`` one), which made a compiled
HWGQ step slower than the eager one. Likewise the compiled CPU Gaussian kernels clamp an int32 level index
instead of the value (``functional._level_index``, the same bits): inductor's NaN-propagating float min / max
took 40-60 % of each weight candidate's time.
The autograd references (``functional.hwgq_quant``, ``hwgq_mixture_sum``, ``gaussian_midrise``,
``gaussian_composite``) define the intended values and gradients; tests compare both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from core.quant import functional as F
from core.quant.base import is_compiled, kernel


def _kernel(fn: Callable) -> Callable:
    """The kernel with EdMIPS's fixed steps and coefficients compiled in as constants (see ``kernel``)."""
    return kernel(fn, float_constants=True)


class _HWGQMixture(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, gates: torch.Tensor | None, steps: tuple,
                levels: tuple) -> torch.Tensor:
        gates = x.new_ones(1) if gates is None else gates.to(x.dtype)
        ctx.save_for_backward(x, gates)
        ctx.steps, ctx.levels = steps, levels
        return _kernel(F.hwgq_mixture_forward)(x, gates, steps, levels)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, gates = ctx.saved_tensors
        need_g = bool(ctx.needs_input_grad[1])
        grad_x, grad_g = _kernel(F.hwgq_mixture_backward)(grad, x, gates, ctx.steps, ctx.levels, need_g)
        return (grad_x if ctx.needs_input_grad[0] else None), grad_g, None, None


def _use_level_index(w: torch.Tensor, steps: torch.Tensor, clip_bound: str) -> bool:
    """Whether the Gaussian kernels take the integer level index (``functional._level_index``): the same
    values, faster in inductor's CPU kernels. Only on the compiled CPU path (eagerly it is one more op per
    candidate; on a GPU the check below would make the host wait for the device at every call, and nothing
    was measured there: the float math stays),
    with the grid clip bound (the float64 bound is not a level: ``"float64"`` clamps the value), and where
    every ``|w| / step`` fits (a zero or tiny step, e.g. a constant weight, falls back to the float math,
    NaN and all)."""
    if not (is_compiled() and w.device.type == "cpu" and clip_bound == "grid"):
        return False
    return bool(steps[:, 2].max() < F.INDEX_LIMIT)


class _GaussianMixture(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w: torch.Tensor, gates: torch.Tensor | None, coefs: tuple, bits: tuple,
                clip_bound: str) -> torch.Tensor:
        ctx.single = gates is None  # one candidate of gate 1
        gates = w.new_ones(1) if gates is None else gates.to(w.dtype)
        steps = _kernel(F.gaussian_steps)(w, coefs, bits, clip_bound)
        index = _use_level_index(w, steps, clip_bound)
        out = kernel(F.gaussian_mixture_forward)(w, gates, steps, bits, index)
        ctx.save_for_backward(w, gates, steps)
        ctx.bits, ctx.index = bits, index
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        w, gates, steps = ctx.saved_tensors
        if ctx.single:  # one candidate of gate 1: the identity STE passes the gradient through
            return grad, None, None, None, None
        grad_w, grad_g = kernel(F.gaussian_mixture_backward)(grad, w, gates, steps, ctx.bits, ctx.index)
        return (grad_w if ctx.needs_input_grad[0] else None), grad_g, None, None, None


def hwgq_mixture(x: torch.Tensor, gates: torch.Tensor | None, steps: Sequence[float],
                 levels: Sequence[int]) -> torch.Tensor:
    """EdMIPS eq. (12) for HWGQ candidates: ``sum_j gates_j * HWGQ(x; steps_j, levels_j)``.

    ``levels_j = 2^b_j - 1``; a candidate with ``levels_j == 0`` is full precision (ReLU).
    Gradients: ``dx = grad * sum_j gates_j 1[0 < x < clip_j]``, ``dgates_j = sum(grad * HWGQ_j(x))``.
    ``gates=None``: one candidate with weight 1 (a plain HWGQ quantizer).
    """
    return _HWGQMixture.apply(x, gates, tuple(float(s) for s in steps),
                              tuple(int(v) for v in levels))


def gaussian_mixture(w: torch.Tensor, gates: torch.Tensor | None, coefs: Sequence[float],
                     bits: Sequence[int], clip_bound: str = "grid") -> torch.Tensor:
    """EdMIPS eq. (16) with Gaussian mid-rise candidates on one shared ``w``: ``sum_i gates_i Q_i(w)``.

    ``Q_i`` has step ``coefs_i * std(w)`` (``bits_i >= 32``: the float weight) and the clip bound of
    ``clip_bound`` (:func:`core.quant.functional.gaussian_step`). Gradients:
    ``dw = grad * sum_i gates_i`` (identity STE of every candidate), ``dgates_i = sum(grad * Q_i(w))``.
    ``gates=None``: one candidate with weight 1 (a plain Gaussian quantizer).
    """
    return _GaussianMixture.apply(w, gates, tuple(float(c) for c in coefs),
                                  tuple(int(b) for b in bits), clip_bound)

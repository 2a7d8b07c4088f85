"""Gaussian-optimal mid-rise uniform quantization of weights (EdMIPS's weight quantizer).

``step = c_w[b] * std(W)`` where ``c_w[b]`` is the Lloyd-Max optimal uniform step for unit-variance
Gaussian inputs: the minimum-MSE ``2^b``-level mid-rise uniform quantizer on N(0, 1). That criterion
reproduces the published 1-4 bit values of the official EdMIPS code (1.5958, 0.9957, 0.5860, 0.3352), so
5-8 bits use values derived the same way (``tests`` re-derive them).
"""

from __future__ import annotations

import torch

from core.errors import ConfigError
from core.quant import functional as F
from core.quant.base import FULL_PRECISION, Quantizer, merge_constants, register_quantizer
from core.quant.grid import IntegerGrid, check_bits, require_tensor
from core.quant.mixture import gaussian_mixture

GAUSSIAN_COEFS: dict[int, float] = {
    1: 1.596, 2: 0.996, 3: 0.586, 4: 0.336,  # published (official EdMIPS code)
    5: 0.1881, 6: 0.1041, 7: 0.0569, 8: 0.0308,  # derived: Lloyd-Max uniform step for N(0, 1)
}
GAUSSIAN_CLIP_BOUNDS = ("grid", "float64")


@register_quantizer("gaussian")
class GaussianQuantizer(Quantizer):
    """Per-tensor symmetric mid-rise uniform weight quantizer, ``step = c_w[b] * std(W)`` (EdMIPS).

    ``q = (round(W / step + 0.5) - 0.5) * step`` clamped to ``+-(2^b / 2 - 0.5) * step``; the std is
    unbiased and not differentiated; the gradient is the identity (no clip mask); the step is built in
    float64 (as officially). ``coefs={bits: c}`` adds or overrides constants. ``clip_bound``: ``"grid"``
    (default: the clip bound is the grid's top level, so integer export is exact) or ``"float64"`` (the
    official code's bound, built in float64: bit for bit the official quantizer; see
    :func:`core.quant.functional.gaussian_step`).
    """

    def __init__(self, bits: int, role: str = "weight", coefs: dict[int, float] | None = None,
                 clip_bound: str = "grid") -> None:
        super().__init__(FULL_PRECISION, role)
        if clip_bound not in GAUSSIAN_CLIP_BOUNDS:
            raise ConfigError(f"gaussian clip_bound must be one of {GAUSSIAN_CLIP_BOUNDS}, "
                              f"got {clip_bound!r}")
        self.clip_bound = clip_bound
        self.coefs = merge_constants(GAUSSIAN_COEFS, coefs, "gaussian")
        self.supported_bits = (*sorted(self.coefs), FULL_PRECISION)
        self.bits = bits

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return gaussian_mixture(x, None, (self.coefs[self.bits],), (self.bits,), self.clip_bound)

    def grid(self, x: torch.Tensor | None = None) -> IntegerGrid:
        """Mid-rise levels ``(k - 0.5) step`` are the odd integers ``[-(2^b - 1), 2^b - 1]`` at half the step
        (one bit wider than ``b``); the step is the forward's own (``functional.gaussian_step``).

        Exact, except with ``clip_bound="float64"`` where the bound casts to a float one ulp away from
        ``(2^b - 1) * step / 2`` (about a quarter of tensors at 2-8 bits): the clipped weights then lie
        one ulp off the top / bottom level, and the grid says so (``exact=False``)."""
        check_bits(self.bits, self.name)
        w = require_tensor(x, self.name)
        step, bound = F.gaussian_step(self.coefs[self.bits], F.weight_std(w), self.bits,
                                       self.clip_bound)
        top = 2**self.bits - 1
        exact = bool(bound == step * (top / 2))
        note = "" if exact else ("the clip bound, built in float64 as in the official EdMIPS code, is one "
                                 "float32 ulp off the top level: clipped weights differ by that ulp")
        return IntegerGrid(step / 2, -top, top, odd_only=True, exact=exact, note=note)

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.clip_bound == "grid" else f", clip_bound={self.clip_bound}")

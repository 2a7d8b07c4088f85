"""Gaussian-optimal mid-rise uniform quantization of weights (EdMIPS's weight quantizer).

``step = c_w[b] * std(W)`` where ``c_w[b]`` is the Lloyd-Max optimal uniform step for unit-variance
Gaussian inputs: the minimum-MSE ``2^b``-level mid-rise uniform quantizer on N(0, 1). That criterion
reproduces the published 1-4 bit values of the official EdMIPS code (1.5958, 0.9957, 0.5860, 0.3352), so
5-8 bits use values derived the same way (``tests`` re-derive them).
"""

from __future__ import annotations

import torch

from core.quant import functional as F
from core.quant.base import FULL_PRECISION, Quantizer, merge_constants, register_quantizer
from core.quant.grid import IntegerGrid, check_bits, require_tensor
from core.quant.mixture import gaussian_mixture

GAUSSIAN_COEFS: dict[int, float] = {
    1: 1.596, 2: 0.996, 3: 0.586, 4: 0.336,  # published (official EdMIPS code)
    5: 0.1881, 6: 0.1041, 7: 0.0569, 8: 0.0308,  # derived: Lloyd-Max uniform step for N(0, 1)
}


@register_quantizer("gaussian")
class GaussianQuantizer(Quantizer):
    """Per-tensor symmetric mid-rise uniform weight quantizer, ``step = c_w[b] * std(W)`` (EdMIPS).

    ``q = (round(W / step + 0.5) - 0.5) * step`` clamped to ``+-(2^b / 2 - 0.5) * step``; the std is
    unbiased and not differentiated; the gradient is the identity (no clip mask).
    ``coefs={bits: c}`` adds or overrides constants.
    """

    def __init__(self, bits: int, role: str = "weight", coefs: dict[int, float] | None = None) -> None:
        super().__init__(FULL_PRECISION, role)
        self.coefs = merge_constants(GAUSSIAN_COEFS, coefs, "gaussian")
        self.supported_bits = (*sorted(self.coefs), FULL_PRECISION)
        self.bits = bits

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return gaussian_mixture(x, None, (self.coefs[self.bits],), (self.bits,))

    def grid(self, x: torch.Tensor | None = None) -> IntegerGrid:
        """Mid-rise levels ``(k - 0.5) step`` are the odd integers ``[-(2^b - 1), 2^b - 1]`` at half the step
        (one bit wider than ``b``); the step is the forward's own (``functional.gaussian_step``); exact."""
        check_bits(self.bits, self.name)
        w = require_tensor(x, self.name)
        step = F.gaussian_step(self.coefs[self.bits], F.weight_std(w))
        return IntegerGrid(step / 2, -(2**self.bits - 1), 2**self.bits - 1, odd_only=True)

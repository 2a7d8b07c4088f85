"""EdMIPS's quantizers: HWGQ for activations, Gaussian-optimal mid-rise uniform for weights.

Constants are the Lloyd-Max optimal uniform steps for unit-variance inputs used by the official
EdMIPS code (see shared reference notes). For weights, the same optimisation (minimum MSE of a
``2^b``-level mid-rise uniform quantizer on N(0, 1)) reproduces the published 1-4 bit values
(1.5958, 0.9957, 0.5860, 0.3352), so 5-8 bits use values derived the same way (``tests`` re-derive
them). HWGQ's published values could not be re-derived from a stated criterion, so only 1-4 bits
are supported unless ``steps`` supplies others.
"""

from __future__ import annotations

import torch

from core.errors import ConfigError
from core.quant import functional as F
from core.quant.base import FULL_PRECISION, Quantizer, register_quantizer
from core.quant.grid import IntegerGrid, check_bits, require_tensor
from core.quant.mixture import gaussian_mixture, hwgq_mixture

HWGQ_STEPS: dict[int, float] = {1: 0.799, 2: 0.538, 3: 0.3217, 4: 0.185}
GAUSSIAN_COEFS: dict[int, float] = {
    1: 1.596, 2: 0.996, 3: 0.586, 4: 0.336,  # published (official EdMIPS code)
    5: 0.1881, 6: 0.1041, 7: 0.0569, 8: 0.0308,  # derived: Lloyd-Max uniform step for N(0, 1)
}


def _merge(table: dict[int, float], extra: dict[int, float] | None, name: str) -> dict[int, float]:
    merged = dict(table)
    for b, v in (extra or {}).items():
        if not 1 <= int(b) <= 8 or float(v) <= 0:
            raise ConfigError(f"{name}: custom constants need bits in 1..8 and positive values, got {b}: {v}")
        merged[int(b)] = float(v)
    return merged


@register_quantizer("hwgq")
class HWGQQuantizer(Quantizer):
    """Half-wave Gaussian quantizer (Cai et al., 2017) as used by EdMIPS for activations.

    ``y = round(clamp(x, 0, c_a[b] (2^b - 1)) / c_a[b]) * c_a[b]`` with the fixed step ``c_a[b]``
    (inputs assumed unit-variance BN outputs); gradient 1 on ``(0, clip)``, 0 elsewhere.
    32 bits: a ReLU. ``steps={bits: step}`` adds or overrides constants.
    """

    def __init__(self, bits: int, role: str = "activation", steps: dict[int, float] | None = None) -> None:
        super().__init__(FULL_PRECISION, role)
        self.steps = _merge(HWGQ_STEPS, steps, "hwgq")
        self.supported_bits = (*sorted(self.steps), FULL_PRECISION)
        self.bits = bits

    def full_precision(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return hwgq_mixture(x, None, (self.steps[self.bits],), (2**self.bits - 1,))

    def grid(self, x: torch.Tensor | None = None) -> IntegerGrid:
        """The fixed step ``c_a[b]`` (as float32), integers ``[0, 2^b - 1]``; exact."""
        check_bits(self.bits, self.name)
        return IntegerGrid(torch.tensor(self.steps[self.bits], dtype=torch.float32), 0, 2**self.bits - 1)


@register_quantizer("gaussian")
class GaussianQuantizer(Quantizer):
    """EdMIPS's weight quantizer: per-tensor symmetric mid-rise uniform, ``step = c_w[b] * std(W)``.

    ``q = (round(W / step + 0.5) - 0.5) * step`` clamped to ``+-(2^b / 2 - 0.5) * step``; the std is
    unbiased and not differentiated; the gradient is the identity (no clip mask).
    ``coefs={bits: c}`` adds or overrides constants.
    """

    def __init__(self, bits: int, role: str = "weight", coefs: dict[int, float] | None = None) -> None:
        super().__init__(FULL_PRECISION, role)
        self.coefs = _merge(GAUSSIAN_COEFS, coefs, "gaussian")
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

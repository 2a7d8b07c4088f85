"""BASQ's clip quantizer: the PACT-style activation quantizer each branch of a searchable block owns.

``y = round(clamp(x, 0, a) / d) * d`` with a learned clip ``a`` (init 6.0, the official value); at 1 bit
the levels are ``{0, a}`` (supplementary Sec. 5: "only two values, zero and the clip value").

``step="paper"`` (default): ``d = a / (2^b - 1)`` and PACT's gradients (core's ``pact``): ``dy/dx = 1`` on
``(0, a)``, ``dy/da = 1`` where ``x >= a`` (PACT eq. 3; no rounding-error term).

``step="official"`` (HanByulKim/BASQ, ``QuantNbit``): ``d = a * fl32(1 - fl32(1 - 1/(2^b - 1)))`` - the
official code keeps ``1 - 1/(2^b - 1)`` in a float32 parameter and multiplies ``a`` by one minus it, so
``d`` lies slightly below ``a / (2^b - 1)`` and exact half-steps can round differently; and ``dy/da = 1``
only where ``x > a`` (strict). Below ``1/255`` the official code uses ``a / 255``; at or above 1, ``a``.
"""

from __future__ import annotations

import numpy as np
import torch

from core.errors import ConfigError
from core.quant import FULL_PRECISION, kernel
from core.quant import functional as F
from core.quant.base import register_quantizer
from core.quant.grid import IntegerGrid, check_bits
from core.quant.uniform import PACTQuantizer

CLIP_STEPS = ("paper", "official")


def official_step_fraction(bits: int) -> float:
    """``d / a`` of the official code at ``bits``: ``fl32(1 - fl32(1 - 1/(2^b - 1)))``, with its two
    special cases (``>= 1``: 1; ``<= 1/255``: 1/255). Exactly representable in float32."""
    levels = 2**bits - 1
    kept = np.float32(1.0 - 1.0 / levels)  # the official float32 parameter `bin`
    fraction = float(np.float32(1.0) - kept)
    if fraction >= 1:
        return 1.0
    if fraction <= 1 / 255:
        return 1 / 255
    return fraction


def _official_step(alpha: torch.Tensor, bits: int) -> torch.Tensor:
    return alpha * official_step_fraction(bits)


def official_clip_quant(x: torch.Tensor, alpha: torch.Tensor, fraction: float) -> torch.Tensor:
    """The official ``QuantNbit``: ``round(clamp(x, 0, a) / d) * d`` with ``d = a * fraction``;
    gradient 1 to ``x`` on ``(0, a)``, to ``a`` the sum of the gradient where ``x > a``."""
    a = alpha.detach()
    with torch.no_grad():
        d = a * fraction
        q = torch.round(torch.minimum(torch.relu(x), a) / d) * d
    inside = (x > 0) & (x < a)
    return q + torch.where(inside, x - x.detach(), 0.0) + torch.where(x > a, alpha - a, 0.0)


@register_quantizer("basq_clip")
class ClipQuantizer(PACTQuantizer):
    """The branch clip quantizer of the module docstring (``.alpha``: the clip value ``a``).

    Args:
        bits: 1..8 (32: identity).
        alpha_init: initial clip (official 6.0).
        step: ``"paper"`` (``a / (2^b - 1)``) or ``"official"`` (float32 step of the official code).
    """

    def __init__(self, bits: int, role: str = "activation", alpha_init: float = 6.0,
                 step: str = "paper") -> None:
        if step not in CLIP_STEPS:
            raise ConfigError(f"basq_clip step must be one of {list(CLIP_STEPS)}, got {step!r}")
        super().__init__(bits, role, alpha_init=alpha_init, rounding_grad=False)
        self.step = step

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantize_with(x, self.alpha)

    def quantize_with(self, x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """The quantizer's math with the clip ``alpha`` (a scalar, or a tensor broadcasting against ``x``,
        e.g. one clip per sample)."""
        if self.bits >= FULL_PRECISION:
            return x
        levels = 2**self.bits - 1
        if not torch.is_grad_enabled():  # evaluation: the same values without the gradient terms
            step = alpha / levels if self.step == "paper" else _official_step(alpha, self.bits)
            return torch.round(torch.minimum(torch.relu(x), alpha) / step) * step
        if self.step == "paper":
            return kernel(F.pact_quant)(x, alpha, levels, False)
        return kernel(official_clip_quant)(x, alpha, official_step_fraction(self.bits))

    def grid(self, x: torch.Tensor | None = None) -> IntegerGrid:
        """The integer grid (``core.export``): step ``d`` of the rule in use, integers ``[0, 2^b - 1]``."""
        if self.step == "paper":
            return super().grid(x)
        check_bits(self.bits, self.name)
        return IntegerGrid(self.alpha.detach() * official_step_fraction(self.bits), 0, 2**self.bits - 1)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, role={self.role}, step={self.step}"

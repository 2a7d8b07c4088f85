"""Uniform quantizers with a clip: PACT (learned clip) and DoReFa (fixed range)."""

from __future__ import annotations

import torch
from torch import nn

from core.quant import functional as F
from core.quant.base import FULL_PRECISION, Quantizer, kernel, register_quantizer
from core.quant.grid import IntegerGrid, check_bits, require_tensor


@register_quantizer("pact")
class PACTQuantizer(Quantizer):
    """PACT (Choi et al., 2018): ``clamp(x, 0, alpha)``, then uniform levels of step ``alpha / (2^b - 1)``.

    ``alpha`` (``.alpha``, a scalar parameter, init ``alpha_init``) is learned; give it its own
    optimizer param group to set its L2 decay (PACT regularises alpha; BASQ uses one decay per
    branch). Gradient to ``x``: 1 on ``(0, alpha)``. Gradient to ``alpha``: 1 where ``x >= alpha``
    (PACT eq. 3, whose STE treats rounding as identity). ``rounding_grad=True`` also passes the
    rounding error inside the range, ``(round(y/s) - y/s) / (2^b - 1)`` (LSQ-style).
    32 bits: identity (not quantized, not clipped).
    """

    def __init__(
        self, bits: int, role: str = "activation", alpha_init: float = 10.0, rounding_grad: bool = False
    ) -> None:
        super().__init__(FULL_PRECISION, role)
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))
        self.rounding_grad = bool(rounding_grad)
        self.bits = bits

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return kernel(F.pact_quant)(x, self.alpha, 2**self.bits - 1, self.rounding_grad)

    def grid(self, x: torch.Tensor | None = None) -> IntegerGrid:
        """Step ``alpha / (2^b - 1)`` (computed as the forward does), integers ``[0, 2^b - 1]``; exact."""
        check_bits(self.bits, self.name)
        levels = 2**self.bits - 1
        return IntegerGrid(self.alpha.detach() / levels, 0, levels)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rounding_grad={self.rounding_grad}"


@register_quantizer("dorefa")
class DoReFaQuantizer(Quantizer):
    """DoReFa-Net (Zhou et al., 2016).

    ``role="weight"``: ``2 quantize_k(tanh(w) / (2 max|tanh(w)|) + 1/2) - 1`` (eq. 9), levels in
    ``[-1, 1]``; at 1 bit ``sign(w) * E|w|`` (eq. 7). ``role="activation"``: clip to ``[0, 1]``, then
    ``quantize_k``. ``quantize_k(r) = round((2^k - 1) r) / (2^k - 1)`` with a straight-through
    gradient.
    """

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        levels = 2**self.bits - 1
        if self.role == "weight":
            if self.bits == 1:
                return kernel(F.dorefa_weight_binary)(x)
            return kernel(F.dorefa_weight)(x, levels)
        return kernel(F.dorefa_activation)(x, levels)

    def grid(self, x: torch.Tensor | None = None) -> IntegerGrid:
        """Not exact for k >= 2. Activations: integers ``[0, 2^k - 1]`` at step ``1 / (2^k - 1)``. Weights
        (eq. 9): ``2 k / (2^k - 1) - 1`` are the odd integers ``[-(2^k - 1), 2^k - 1]`` at the same step (a
        container one bit wider); 1 bit (eq. 7): ``+-1`` at step ``E|w|`` (exact). The levels are the same
        in real arithmetic, but ``1 / (2^k - 1)`` has no exact float32 value: the forward multiplies and
        divides by ``2^k - 1`` where QDQ divides and multiplies by the rounded step, so level values differ
        by up to an ulp and inputs within an ulp of a rounding boundary can pick the neighbouring level."""
        check_bits(self.bits, self.name)
        if self.role == "weight" and self.bits == 1:
            return IntegerGrid(require_tensor(x, self.name).abs().mean(), -1, 1, odd_only=True)
        levels = 2**self.bits - 1
        step = torch.tensor(1.0 / levels, dtype=torch.float32)
        note = f"1/{levels} is not a float32 number: levels and rounding boundaries differ by up to 1 ulp"
        weight = self.role == "weight"
        return IntegerGrid(step, -levels if weight else 0, levels, exact=levels == 1, odd_only=weight,
                           note="" if levels == 1 else note)

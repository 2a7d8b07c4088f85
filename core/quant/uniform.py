"""Uniform quantizers with a clip: PACT (learned clip) and DoReFa (fixed range)."""

from __future__ import annotations

import torch
from torch import nn

from core.quant import functional as F
from core.quant.base import FULL_PRECISION, Quantizer, kernel, register_quantizer


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

"""Binary (sign) weights, BASQ's 1-bit weights."""

from __future__ import annotations

import torch

from core.quant import functional as F
from core.quant.base import FULL_PRECISION, Quantizer, kernel, register_quantizer
from core.quant.grid import IntegerGrid, check_bits, require_tensor


@register_quantizer("sign")
class SignQuantizer(Quantizer):
    """``sign(W)`` (``+1`` at 0), optionally times the mean ``|W|`` of each output channel.

    ``per_channel_scale=True``: scale ``mean|W|`` over all dims but ``ch_axis`` (XNOR-Net's alpha),
    computed without gradient. Gradient: straight-through where ``|W| <= 1``, 0 elsewhere
    (hardtanh STE). Supports 1 bit (and 32: identity).
    """

    supported_bits = (1, FULL_PRECISION)

    def __init__(
        self, bits: int = 1, role: str = "weight", per_channel_scale: bool = False, ch_axis: int = 0
    ) -> None:
        super().__init__(bits, role)
        self.per_channel_scale = bool(per_channel_scale)
        self.ch_axis = int(ch_axis)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        scale = None
        if self.per_channel_scale:
            axis = self.ch_axis % x.dim()
            dims = [d for d in range(x.dim()) if d != axis]
            scale = x.detach().abs().mean(dim=dims, keepdim=True)
        return kernel(F.sign_quant)(x, scale)

    def grid(self, x: torch.Tensor | None = None) -> IntegerGrid:
        """Integers ``+-1`` at step 1, or per channel at step ``mean|W|``; exact."""
        check_bits(self.bits, self.name)
        if not self.per_channel_scale:
            return IntegerGrid(torch.tensor(1.0), -1, 1, odd_only=True)
        x = require_tensor(x, self.name)
        axis = self.ch_axis % x.dim()
        scale = x.abs().mean(dim=[d for d in range(x.dim()) if d != axis])
        return IntegerGrid(scale, -1, 1, axis=axis, odd_only=True)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, per_channel_scale={self.per_channel_scale}"

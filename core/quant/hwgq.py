"""Half-wave Gaussian quantization (HWGQ, Cai et al., CVPR 2017) of activations.

A uniform quantizer on ``[0, step (2^b - 1)]`` with a FIXED step per bit-width, chosen for unit-variance
(batch-normalised) inputs. The constants for 1-4 bits are those of the official EdMIPS code (see shared
reference notes); they could not be re-derived from a stated criterion, so only 1-4 bits are supported
unless ``steps`` supplies others.
"""

from __future__ import annotations

import torch

from core.quant.base import FULL_PRECISION, Quantizer, merge_constants, register_quantizer
from core.quant.grid import IntegerGrid, check_bits
from core.quant.mixture import hwgq_mixture

HWGQ_STEPS: dict[int, float] = {1: 0.799, 2: 0.538, 3: 0.3217, 4: 0.185}


@register_quantizer("hwgq")
class HWGQQuantizer(Quantizer):
    """Half-wave Gaussian quantizer (Cai et al., 2017), EdMIPS's activation quantizer.

    ``y = round(clamp(x, 0, c_a[b] (2^b - 1)) / c_a[b]) * c_a[b]`` with the fixed step ``c_a[b]``
    (inputs assumed unit-variance BN outputs); gradient 1 on ``(0, clip)``, 0 elsewhere.
    32 bits: a ReLU. ``steps={bits: step}`` adds or overrides constants.
    """

    def __init__(self, bits: int, role: str = "activation", steps: dict[int, float] | None = None) -> None:
        super().__init__(FULL_PRECISION, role)
        self.steps = merge_constants(HWGQ_STEPS, steps, "hwgq")
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

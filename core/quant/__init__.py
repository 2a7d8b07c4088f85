"""Fake quantizers with straight-through gradients, created by name from one registry.

>>> from core.quant import create_quantizer
>>> q = create_quantizer("hwgq", bits=2)
>>> q(torch.tensor([0.26, 0.30, 5.0])).tolist()  # doctest: +SKIP
[0.0, 0.538, 1.614]

Names: ``lsq``, ``pact``, ``dorefa``, ``hwgq``, ``gaussian``, ``sign``, ``scale_clip``. ``bits = 32``
means not quantized. :func:`set_compiled` switches every quantizer's math to ``torch.compile``d kernels.
``quantizer.grid(x)`` states its levels as integers (:class:`IntegerGrid`), which ONNX export writes as QDQ.
"""

from core.quant import functional
from core.quant.base import (
    FULL_PRECISION,
    QUANTIZERS,
    Quantizer,
    create_quantizer,
    is_compiled,
    kernel,
    register_quantizer,
    set_compiled,
)
from core.quant.binary import SignQuantizer
from core.quant.functional import lsq_fake_quant
from core.quant.gaussian import GAUSSIAN_COEFS, GaussianQuantizer
from core.quant.grid import IntegerGrid
from core.quant.hwgq import HWGQ_STEPS, HWGQQuantizer
from core.quant.lsq import LSQQuantizer
from core.quant.mixture import gaussian_mixture, hwgq_mixture
from core.quant.scale_clip import ScaleClipQuantizer
from core.quant.uniform import DoReFaQuantizer, PACTQuantizer

__all__ = [
    "FULL_PRECISION",
    "GAUSSIAN_COEFS",
    "HWGQ_STEPS",
    "QUANTIZERS",
    "DoReFaQuantizer",
    "GaussianQuantizer",
    "HWGQQuantizer",
    "IntegerGrid",
    "LSQQuantizer",
    "PACTQuantizer",
    "Quantizer",
    "ScaleClipQuantizer",
    "SignQuantizer",
    "create_quantizer",
    "functional",
    "gaussian_mixture",
    "hwgq_mixture",
    "is_compiled",
    "kernel",
    "lsq_fake_quant",
    "register_quantizer",
    "set_compiled",
]

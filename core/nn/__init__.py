"""Quantized (fixed-bit), searchable (EdMIPS composite) and switchable-bit layers, and model swapping.

>>> import torchvision
>>> from core.nn import QuantSpec, quantize_model
>>> model = torchvision.models.resnet18()
>>> names = quantize_model(model, QuantSpec(mode="mixed"))  # EdMIPS: first conv and fc stay float
>>> len(names)
19
"""

from core.nn.convert import (
    QUANT_LAYERS,
    QuantSpec,
    arch_parameters,
    freeze_full_precision_quantizers,
    quantizable_layers,
    quantize_model,
    weight_parameters,
)
from core.nn.gates import gumbel_softmax
from core.nn.losses import distillation_loss
from core.nn.mixed import SAMPLING_MODES, MixedConv2d, MixedLinear, sample_gates
from core.nn.qlayers import QConv2d, QLinear, build_quantizer
from core.nn.switchable import (
    SwitchableBatchNorm2d,
    apply_bits,
    bit_context,
    current_bits,
    set_bits,
    switchable_bn_links,
)

__all__ = [
    "distillation_loss",
    "gumbel_softmax",
    "QUANT_LAYERS",
    "SAMPLING_MODES",
    "MixedConv2d",
    "MixedLinear",
    "QConv2d",
    "QLinear",
    "QuantSpec",
    "SwitchableBatchNorm2d",
    "apply_bits",
    "arch_parameters",
    "bit_context",
    "build_quantizer",
    "current_bits",
    "freeze_full_precision_quantizers",
    "quantizable_layers",
    "quantize_model",
    "sample_gates",
    "set_bits",
    "switchable_bn_links",
    "weight_parameters",
]

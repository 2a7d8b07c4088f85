"""Quantized (fixed-bit), searchable (composite convolution) and switchable-bit layers, the registry of
layer kinds, and model swapping.

>>> import torchvision
>>> from core.nn import QuantSpec, quantize_model
>>> model = torchvision.models.resnet18()
>>> names = quantize_model(model, QuantSpec(kind="composite"))  # EdMIPS: first conv and fc stay float
>>> len(names)
19

A paper adds a layer kind with :func:`register_layer_kind` (see :mod:`core.nn.kinds`).
"""

# Importing the layer modules registers core's kinds (fixed, switchable, composite).
from core.nn.composite import SAMPLING_MODES, CompositeConv2d, CompositeLinear, sample_gates
from core.nn.convert import (
    arch_parameters,
    freeze_full_precision_quantizers,
    quantizable_layers,
    quantize_model,
    weight_parameters,
)
from core.nn.gates import gumbel_softmax
from core.nn.kinds import (
    LAYER_KINDS,
    KindContext,
    LayerKind,
    QuantSpec,
    following_batchnorms,
    get_layer_kind,
    list_layer_kinds,
    quantized_layer_types,
    register_layer_kind,
    replace_module,
)
from core.nn.losses import distillation_loss
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
    "LAYER_KINDS",
    "distillation_loss",
    "gumbel_softmax",
    "SAMPLING_MODES",
    "CompositeConv2d",
    "CompositeLinear",
    "KindContext",
    "LayerKind",
    "QConv2d",
    "QLinear",
    "QuantSpec",
    "SwitchableBatchNorm2d",
    "apply_bits",
    "arch_parameters",
    "bit_context",
    "build_quantizer",
    "current_bits",
    "following_batchnorms",
    "freeze_full_precision_quantizers",
    "get_layer_kind",
    "list_layer_kinds",
    "quantizable_layers",
    "quantize_model",
    "quantized_layer_types",
    "register_layer_kind",
    "replace_module",
    "sample_gates",
    "set_bits",
    "switchable_bn_links",
    "weight_parameters",
]

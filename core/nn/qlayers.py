"""Fixed-bit quantized layers: ``QConv2d`` and ``QLinear``, and the ``fixed`` layer kind.

Both subclass the float module (so counting and init code see a conv / linear) and quantize the
weight with ``weight_quantizer`` and the layer INPUT with ``act_quantizer``.
"""

from __future__ import annotations

import inspect
from typing import Any, TypeVar

import torch
from torch import nn
from torch.nn import functional as F

from core.nn.kinds import KindContext, QuantSpec, register_layer_kind
from core.quant import create_quantizer
from core.quant.base import QUANTIZERS, Quantizer


def build_quantizer(
    name: str, bits: int, role: str, options: dict[str, Any] | None, channels: int
) -> Quantizer:
    """``create_quantizer`` with the layer's defaults filled in: ``role`` and, for per-channel
    quantizers, ``channels`` (output channels for weights, input channels for activations)."""
    opts = dict(options or {})
    opts.setdefault("role", role)
    if opts.get("per_channel") and "channels" not in opts:
        opts["channels"] = channels
    return create_quantizer(name, bits, **opts)


def accepts_option(name: str, option: str) -> bool:
    """Whether the quantizer registered as ``name`` takes the keyword ``option``."""
    cls = QUANTIZERS.get(name)
    return cls is not None and option in inspect.signature(cls.__init__).parameters


class _QuantizedMixin:
    """Shared bits accessors of the fixed-bit layers."""

    weight_quantizer: Quantizer
    act_quantizer: Quantizer
    bit_frozen: bool

    @property
    def w_bits(self) -> int:
        return self.weight_quantizer.bits

    @w_bits.setter
    def w_bits(self, value: int) -> None:
        self.weight_quantizer.bits = value

    @property
    def a_bits(self) -> int:
        return self.act_quantizer.bits

    @a_bits.setter
    def a_bits(self, value: int) -> None:
        self.act_quantizer.bits = value

    def quantized_weight(self) -> torch.Tensor:
        """The fake-quantized weight used by the forward pass."""
        return self.weight_quantizer(self.weight)


class QConv2d(_QuantizedMixin, nn.Conv2d):
    """``nn.Conv2d`` computing ``conv(a_quant(x), w_quant(W)) + bias`` at fixed ``(w_bits, a_bits)``.

    ``w_quant`` / ``a_quant`` name registered quantizers; ``w_options`` / ``a_options`` are passed to
    them. ``bit_frozen=True`` keeps :func:`core.nn.set_bits` from switching this layer (used for a
    first / last layer held at 8 bits).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: Any = None,
        dtype: Any = None,
        *,
        w_bits: int = 4,
        a_bits: int = 4,
        w_quant: str = "lsq",
        a_quant: str = "lsq",
        w_options: dict[str, Any] | None = None,
        a_options: dict[str, Any] | None = None,
        bit_frozen: bool = False,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
            padding_mode, device, dtype,
        )
        self.weight_quantizer = build_quantizer(w_quant, w_bits, "weight", w_options, out_channels)
        self.act_quantizer = build_quantizer(a_quant, a_bits, "activation", a_options, in_channels)
        self.bit_frozen = bit_frozen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.act_quantizer(x), self.weight_quantizer(self.weight), self.bias)

    @classmethod
    def from_float(cls, module: nn.Conv2d, **spec: Any) -> QConv2d:
        """A ``QConv2d`` with ``module``'s geometry, weight and bias; ``spec`` = the keyword options."""
        new = layer_like(cls, module, **spec)
        copy_float_params(module, new)
        return new


class QLinear(_QuantizedMixin, nn.Linear):
    """``nn.Linear`` computing ``a_quant(x) @ w_quant(W).T + bias``; options as :class:`QConv2d`."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: Any = None,
        dtype: Any = None,
        *,
        w_bits: int = 4,
        a_bits: int = 4,
        w_quant: str = "lsq",
        a_quant: str = "lsq",
        w_options: dict[str, Any] | None = None,
        a_options: dict[str, Any] | None = None,
        bit_frozen: bool = False,
    ) -> None:
        super().__init__(in_features, out_features, bias, device, dtype)
        self.weight_quantizer = build_quantizer(w_quant, w_bits, "weight", w_options, out_features)
        self.act_quantizer = build_quantizer(a_quant, a_bits, "activation", a_options, in_features)
        self.bit_frozen = bit_frozen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.act_quantizer(x), self.weight_quantizer(self.weight), self.bias)

    @classmethod
    def from_float(cls, module: nn.Linear, **spec: Any) -> QLinear:
        """A ``QLinear`` with ``module``'s shape, weight and bias; ``spec`` = the keyword options."""
        new = layer_like(cls, module, **spec)
        copy_float_params(module, new)
        return new


L = TypeVar("L", bound=nn.Module)


def layer_like(cls: type[L], module: nn.Conv2d | nn.Linear, **options: Any) -> L:
    """A new ``cls`` (a ``Conv2d`` or ``Linear`` subclass) with ``module``'s geometry, device and dtype;
    ``options`` are ``cls``'s keyword options. Its parameters are fresh: :func:`copy_float_params` copies
    ``module``'s."""
    factory = {"device": module.weight.device, "dtype": module.weight.dtype}
    if isinstance(module, nn.Conv2d):
        return cls(module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                   module.dilation, module.groups, module.bias is not None, module.padding_mode,
                   **factory, **options)
    return cls(module.in_features, module.out_features, module.bias is not None, **factory, **options)


@torch.no_grad()
def copy_float_params(src: nn.Module, dst: nn.Module) -> None:
    """Copy ``weight`` and ``bias`` of a float conv / linear into its quantized replacement."""
    dst.weight.copy_(src.weight)
    if src.bias is not None:
        dst.bias.copy_(src.bias)


@register_layer_kind("fixed", layers=(QConv2d, QLinear))
def fixed_layer(module: nn.Module, spec: QuantSpec, name: str, ctx: KindContext) -> QConv2d | QLinear:
    """QConv2d / QLinear at ``spec.w_bits`` / ``spec.a_bits`` (bits then set per layer by a policy)."""
    cls = QConv2d if isinstance(module, nn.Conv2d) else QLinear
    return cls.from_float(module, w_bits=spec.w_bits, a_bits=spec.a_bits, w_quant=spec.w_quant,
                          a_quant=spec.a_quant, w_options=dict(spec.w_options),
                          a_options=dict(spec.a_options))

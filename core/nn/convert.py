"""``quantize_model``: swap the ``nn.Conv2d`` / ``nn.Linear`` modules of any model (torchvision, timm,
core) for the layers of a registered layer kind (:mod:`core.nn.kinds`), by walking ``named_modules``
(no tracing).
"""

from __future__ import annotations

import warnings
from typing import Any

from torch import nn

from core.errors import ConfigError
from core.nn.kinds import KindContext, QuantSpec, get_layer_kind, quantized_layer_types, replace_module
from core.nn.qlayers import QConv2d, QLinear, accepts_option
from core.quant import FULL_PRECISION, Quantizer


def _is_float_layer(m: nn.Module) -> bool:
    return type(m) in (nn.Conv2d, nn.Linear)


def _candidates(name: str, m: nn.Module, spec: QuantSpec, quantized: tuple[type[nn.Module], ...]
                ) -> list[tuple[str, nn.Module]]:
    """Conv/linear layers to consider, in order; errors on layers that cannot be swapped safely."""
    if isinstance(m, quantized):
        raise ConfigError(f"layer {name!r} is already a {type(m).__name__}: the model is already quantized")
    if _is_float_layer(m):
        return [(name, m)]
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        msg = (f"layer {name!r} is a {type(m).__name__}, a subclass of {type(m).__mro__[1].__name__} whose "
               "forward may differ; it cannot be swapped faithfully")
        if spec.strict:
            raise ConfigError(msg + " (pass strict=False to leave it in float)")
        warnings.warn(msg + "; left in float", stacklevel=3)
    return []


def _edge_layer(m: nn.Module, spec: QuantSpec, edge: str, is_first: bool) -> nn.Module:
    """A first / last layer held at 8 bits (``w8``: input not quantized; ``w8a8``), whatever the kind."""
    cls = QConv2d if isinstance(m, nn.Conv2d) else QLinear
    a_opts: dict[str, Any] = {}
    if is_first and accepts_option(spec.edge_a_quant, "signed"):
        a_opts["signed"] = True
    a_bits = 8 if edge == "w8a8" else 32
    layer = cls.from_float(m, w_bits=8, a_bits=a_bits, w_quant=spec.edge_w_quant, a_quant=spec.edge_a_quant,
                           a_options=a_opts, bit_frozen=True)
    freeze_full_precision_quantizers(layer)  # a `w8` input quantizer is never used
    return layer


def freeze_full_precision_quantizers(model: nn.Module) -> int:
    """Stop gradients to the parameters of quantizers at 32 bits (pass-through): they take no part in
    the forward, and DDP rejects trainable parameters that receive no gradient. Returns how many
    quantizers were frozen. Call it again after changing bits (e.g. after applying a policy)."""
    frozen = 0
    for mod in model.modules():
        if isinstance(mod, Quantizer) and mod.bits >= FULL_PRECISION:
            mod.requires_grad_(False)
            frozen += 1
    return frozen


def quantize_model(model: nn.Module, spec: QuantSpec) -> list[str]:
    """Swap ``model``'s ``nn.Conv2d`` / ``nn.Linear`` layers in place for layers of the kind ``spec.kind``.

    Each layer is built by the kind's builder, then the kind's post-pass (if any) runs once on the
    model. Returns the ordered names of the quantizable layers (those searched or switched); a first /
    last layer kept float or frozen at 8 bits is not among them.
    """
    if not isinstance(spec, QuantSpec):
        raise ConfigError(f"quantize_model needs a QuantSpec, got {type(spec).__name__}")
    kind = get_layer_kind(spec.kind)
    all_modules = list(model.named_modules())
    quantized = quantized_layer_types()
    layers = [item for name, m in all_modules for item in _candidates(name, m, spec, quantized)]
    if not layers:
        raise ConfigError(f"{type(model).__name__} has no nn.Conv2d / nn.Linear layer to quantize")
    ctx = KindContext(model, kind.resolve_options(spec.options), all_modules, layers[0][0], layers[-1][0])
    for name, m in layers:
        edge = spec.first if name == ctx.first else spec.last if name == ctx.last else None
        if edge == "float":
            continue
        if edge in ("w8", "w8a8"):
            replace_module(model, name, _edge_layer(m, spec, edge, name == ctx.first))
            continue
        new = kind.build(m, spec, name, ctx)
        if not isinstance(new, kind.layers):
            declared = [c.__name__ for c in kind.layers]
            raise ConfigError(f"layer kind {kind.name!r} built a {type(new).__name__} for {name!r}; it "
                              f"declares the layer classes {declared}")
        replace_module(model, name, new)
        ctx.names.append(name)
    if kind.post is not None:
        kind.post(model, spec, ctx)
    return list(ctx.names)


def quantizable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every layer of a registered kind that is not ``bit_frozen``, in module order:
    the layers a search or a policy sets."""
    types = quantized_layer_types()
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, types) and not getattr(m, "bit_frozen", False)]


def arch_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The architecture parameters of ``model`` in module order: the attributes each module lists in its
    ``arch_parameter_names`` (e.g. ``alpha_w``, ``alpha_a`` of a composite layer), each parameter once."""
    params: dict[int, nn.Parameter] = {}
    for m in model.modules():
        for attr in getattr(type(m), "arch_parameter_names", ()):
            p = getattr(m, attr)
            params.setdefault(id(p), p)
    return list(params.values())


def weight_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter that is not an architecture parameter (weights, BN, quantizer steps/clips)."""
    arch = {id(p) for p in arch_parameters(model)}
    return [p for p in model.parameters() if id(p) not in arch]

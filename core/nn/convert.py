"""``quantize_model``: swap the ``nn.Conv2d`` / ``nn.Linear`` modules of any model (torchvision, timm,
core) for fixed, searchable or switchable quantized layers, by walking ``named_modules`` (no tracing).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from core.errors import ConfigError
from core.nn.mixed import DEFAULT_A_CANDIDATES, DEFAULT_W_CANDIDATES, MixedConv2d, MixedLinear
from core.nn.qlayers import QConv2d, QLinear, accepts_option
from core.nn.switchable import SwitchableBatchNorm2d, _sync_bns
from core.quant import FULL_PRECISION, Quantizer

MODES = ("fixed", "mixed", "switchable")
EDGE_OPTIONS = ("float", "w8", "w8a8", "quantize")
QUANT_LAYERS = (QConv2d, QLinear, MixedConv2d, MixedLinear)


@dataclass
class QuantSpec:
    """How to quantize a model.

    mode: ``fixed`` (QConv2d/QLinear at ``w_bits``/``a_bits``), ``mixed`` (EdMIPS MixedConv2d/
        MixedLinear over ``w_candidates``/``a_candidates``) or ``switchable`` (QConv2d/QLinear whose
        quantizers hold per-bit parameters when they can, e.g. LSQ ``candidate_bits``; starts at
        ``w_bits``/``a_bits``).
    w_quant / a_quant: registered quantizer names; ``None``: ``gaussian``/``hwgq`` for ``mixed``,
        ``lsq`` otherwise.
    first / last: the first and last conv/linear in ``named_modules`` order: ``float`` (kept),
        ``w8`` (8-bit weights, input not quantized: LLT's first conv), ``w8a8`` (8-bit weights and
        input), or ``quantize`` (treated like every other layer and returned as quantizable).
        ``w8``/``w8a8`` use ``edge_w_quant``/``edge_a_quant``; the first layer's input quantizer is
        made signed when it has a ``signed`` option (normalised images are signed).
    switchable_bn: in ``switchable`` mode, a ``BatchNorm2d`` right after a quantizable conv in
        ``named_modules`` order (and of matching width) becomes a :class:`SwitchableBatchNorm2d`
        over ``w_candidates``.
    strict: a module that subclasses Conv2d/Linear without being one (its forward may differ) is an
        error; ``strict=False`` leaves it float with a warning.
    """

    mode: str = "fixed"
    w_quant: str | None = None
    a_quant: str | None = None
    w_bits: int = 4
    a_bits: int = 4
    w_candidates: list[int] = field(default_factory=lambda: list(DEFAULT_W_CANDIDATES))
    a_candidates: list[int] = field(default_factory=lambda: list(DEFAULT_A_CANDIDATES))
    w_options: dict[str, Any] = field(default_factory=dict)
    a_options: dict[str, Any] = field(default_factory=dict)
    share_weight: bool = True
    first: str = "float"
    last: str = "float"
    switchable_bn: bool = False
    edge_w_quant: str = "lsq"
    edge_a_quant: str = "lsq"
    strict: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"QuantSpec.mode must be one of {list(MODES)}, got {self.mode!r}")
        for key in ("first", "last"):
            if getattr(self, key) not in EDGE_OPTIONS:
                value = getattr(self, key)
                raise ConfigError(f"QuantSpec.{key} must be one of {list(EDGE_OPTIONS)}, got {value!r}")
        self.w_quant = self.w_quant or ("gaussian" if self.mode == "mixed" else "lsq")
        self.a_quant = self.a_quant or ("hwgq" if self.mode == "mixed" else "lsq")


def _is_float_layer(m: nn.Module) -> bool:
    return type(m) in (nn.Conv2d, nn.Linear)


def _candidates(name: str, m: nn.Module, spec: QuantSpec) -> list[tuple[str, nn.Module]]:
    """Conv/linear layers to consider, in order; errors on layers that cannot be swapped safely."""
    if isinstance(m, QUANT_LAYERS):
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


def _options(spec: QuantSpec, role: str) -> dict[str, Any]:
    name, opts, cands = (spec.w_quant, spec.w_options, spec.w_candidates) if role == "weight" else \
        (spec.a_quant, spec.a_options, spec.a_candidates)
    opts = dict(opts)
    if spec.mode == "switchable" and accepts_option(name, "candidate_bits"):
        opts.setdefault("candidate_bits", list(cands))
    return opts


def _build(m: nn.Module, spec: QuantSpec, edge: str | None, is_first: bool) -> nn.Module:
    cls_fixed = QConv2d if isinstance(m, nn.Conv2d) else QLinear
    if edge in ("w8", "w8a8"):
        a_opts: dict[str, Any] = {}
        if is_first and accepts_option(spec.edge_a_quant, "signed"):
            a_opts["signed"] = True
        a_bits = 8 if edge == "w8a8" else 32
        layer = cls_fixed.from_float(m, w_bits=8, a_bits=a_bits, w_quant=spec.edge_w_quant,
                                     a_quant=spec.edge_a_quant, a_options=a_opts, bit_frozen=True)
        freeze_full_precision_quantizers(layer)  # a `w8` input quantizer is never used
        return layer
    if spec.mode == "mixed":
        cls_mixed = MixedConv2d if isinstance(m, nn.Conv2d) else MixedLinear
        return cls_mixed.from_float(m, w_candidates=spec.w_candidates, a_candidates=spec.a_candidates,
                                    w_quant=spec.w_quant, a_quant=spec.a_quant,
                                    w_options=dict(spec.w_options), a_options=dict(spec.a_options),
                                    share_weight=spec.share_weight)
    return cls_fixed.from_float(m, w_bits=spec.w_bits, a_bits=spec.a_bits, w_quant=spec.w_quant,
                                a_quant=spec.a_quant, w_options=_options(spec, "weight"),
                                a_options=_options(spec, "activation"))


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


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def quantize_model(model: nn.Module, spec: QuantSpec) -> list[str]:
    """Swap ``model``'s ``nn.Conv2d`` / ``nn.Linear`` layers in place according to ``spec``.

    Returns the ordered names of the quantizable layers (those searched or switched); a first /
    last layer kept float or frozen at 8 bits is not among them.
    """
    if not isinstance(spec, QuantSpec):
        raise ConfigError(f"quantize_model needs a QuantSpec, got {type(spec).__name__}")
    all_modules = list(model.named_modules())
    layers = [item for name, m in all_modules for item in _candidates(name, m, spec)]
    if not layers:
        raise ConfigError(f"{type(model).__name__} has no nn.Conv2d / nn.Linear layer to quantize")
    first_name, last_name = layers[0][0], layers[-1][0]
    names: list[str] = []
    for name, m in layers:
        edge = spec.first if name == first_name else spec.last if name == last_name else None
        if edge == "float":
            continue
        _replace(model, name, _build(m, spec, None if edge == "quantize" else edge, name == first_name))
        if edge in (None, "quantize"):
            names.append(name)
    if spec.mode == "switchable" and spec.switchable_bn:
        _swap_bns(model, all_modules, set(names), spec)
    return names


def _swap_bns(model: nn.Module, all_modules: list[tuple[str, nn.Module]], names: set[str],
              spec: QuantSpec) -> None:
    # ``all_modules`` is the pre-swap order: a conv's children (none for float convs) do not interleave
    for (prev_name, prev), (name, m) in zip(all_modules, all_modules[1:]):
        if prev_name in names and type(m) is nn.BatchNorm2d and isinstance(prev, nn.Conv2d) \
                and m.num_features == prev.out_channels:
            _replace(model, name, SwitchableBatchNorm2d.from_float(m, spec.w_candidates))
    _sync_bns(model)


def quantizable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every searchable / switchable quantized layer (not ``bit_frozen``), in order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QUANT_LAYERS) and not m.bit_frozen]


def arch_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The architecture logits ``alpha_w``, ``alpha_a`` of every searchable layer, in module order."""
    params: list[nn.Parameter] = []
    for m in model.modules():
        if isinstance(m, (MixedConv2d, MixedLinear)):
            params += [m.alpha_w, m.alpha_a]
    return params


def weight_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter that is not an architecture parameter (weights, BN, quantizer steps/clips)."""
    arch = {id(p) for p in arch_parameters(model)}
    return [p for p in model.parameters() if id(p) not in arch]

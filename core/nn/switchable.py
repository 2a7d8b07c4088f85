"""Switchable-bit support (LLT, OneMPS): the ``switchable`` layer kind, per-bit BatchNorm and whole-model
bit setters.

A :class:`SwitchableBatchNorm2d` holds one ``BatchNorm2d`` per bit-width. It is keyed by the WEIGHT
bit-width of the quantized layer it follows: the nearest preceding :class:`QConv2d` /
:class:`QLinear` in ``model.named_modules()`` order (``quantize_model`` only creates one right after
its convolution, as in ``conv -> bn``). :func:`set_bits`, :func:`apply_bits` and :func:`bit_context`
switch the layers' quantizers and then every switchable BN to its layer's ``w_bits``, as LLT switches
a layer's BN with the layer's bit-width.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from core.errors import ConfigError, PolicyError
from core.nn.kinds import KindContext, QuantSpec, following_batchnorms, register_layer_kind, replace_module
from core.nn.qlayers import QConv2d, QLinear, accepts_option

BitMap = Mapping[str, tuple[int, int]]


class SwitchableBatchNorm2d(nn.Module):
    """One ``BatchNorm2d`` per bit-width in ``bits``; ``.bits`` selects the active one.

    The per-bit modules live in ``.bns`` (a ``ModuleDict`` keyed by ``str(bits)``), so code that
    looks for ``nn.BatchNorm2d`` (e.g. BN re-calibration) finds them all.
    """

    def __init__(self, num_features: int, bits: Sequence[int], eps: float = 1e-5,
                 momentum: float | None = 0.1, affine: bool = True, track_running_stats: bool = True,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        self.bit_list = [int(b) for b in bits]
        if not self.bit_list or len(set(self.bit_list)) != len(self.bit_list):
            raise ConfigError(f"SwitchableBatchNorm2d needs distinct bit-widths, got {list(bits)}")
        self.num_features = num_features
        self.bns = nn.ModuleDict({
            str(b): nn.BatchNorm2d(num_features, eps, momentum, affine, track_running_stats, device, dtype)
            for b in self.bit_list
        })
        self._bits = self.bit_list[0]

    @property
    def bits(self) -> int:
        return self._bits

    @bits.setter
    def bits(self, value: int) -> None:
        if int(value) not in self.bit_list:
            raise ConfigError(
                f"SwitchableBatchNorm2d has no BatchNorm for {value} bits; it has {self.bit_list}"
            )
        self._bits = int(value)

    def set_bits(self, bits: int) -> None:
        self.bits = bits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bns[str(self._bits)](x)

    @classmethod
    def from_float(cls, bn: nn.BatchNorm2d, bits: Sequence[int]) -> SwitchableBatchNorm2d:
        """Every per-bit BN starts as a copy of ``bn`` (affine parameters and running statistics)."""
        new = cls(bn.num_features, bits, bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
                  device=bn.weight.device if bn.affine else None)
        for sub in new.bns.values():
            sub.load_state_dict(bn.state_dict())
        return new

    def extra_repr(self) -> str:
        return f"{self.num_features}, bits={self.bit_list}, active={self._bits}"


def _swap_bns(model: nn.Module, spec: QuantSpec, ctx: KindContext) -> None:
    """Post-pass of ``switchable``: with ``switchable_bn``, the BN after each quantizable conv becomes a
    :class:`SwitchableBatchNorm2d` over ``w_candidates``, set to its conv's weight bits."""
    if ctx.options["switchable_bn"]:
        for bn_name, bn, _ in following_batchnorms(ctx):
            replace_module(model, bn_name, SwitchableBatchNorm2d.from_float(bn, spec.w_candidates))
        _sync_bns(model)


@register_layer_kind("switchable", layers=(QConv2d, QLinear), options={"switchable_bn": False},
                     post=_swap_bns)
def switchable_layer(module: nn.Module, spec: QuantSpec, name: str, ctx: KindContext) -> QConv2d | QLinear:
    """QConv2d / QLinear starting at ``spec.w_bits``/``a_bits`` whose quantizers keep per-bit state over
    ``w_candidates``/``a_candidates`` when they take ``candidate_bits`` (LSQ: one step per bit-width)."""
    opts = {}
    for role, quant, options, cands in (("w", spec.w_quant, spec.w_options, spec.w_candidates),
                                        ("a", spec.a_quant, spec.a_options, spec.a_candidates)):
        opts[role] = dict(options)
        if accepts_option(quant, "candidate_bits"):
            opts[role].setdefault("candidate_bits", list(cands))
    cls = QConv2d if isinstance(module, nn.Conv2d) else QLinear
    return cls.from_float(module, w_bits=spec.w_bits, a_bits=spec.a_bits, w_quant=spec.w_quant,
                          a_quant=spec.a_quant, w_options=opts["w"], a_options=opts["a"])


def _fixed_layers(model: nn.Module) -> Iterator[tuple[str, QConv2d | QLinear]]:
    for name, m in model.named_modules():
        if isinstance(m, (QConv2d, QLinear)):
            yield name, m


def switchable_bn_links(model: nn.Module) -> dict[str, str]:
    """``{bn_name: layer_name}``: each switchable BN and the quantized layer it follows."""
    links, last = {}, None
    for name, m in model.named_modules():
        if isinstance(m, (QConv2d, QLinear)):
            last = name
        elif isinstance(m, SwitchableBatchNorm2d) and last is not None:
            links[name] = last
    return links


def _sync_bns(model: nn.Module) -> None:
    modules = dict(model.named_modules())
    for bn_name, layer_name in switchable_bn_links(model).items():
        modules[bn_name].bits = modules[layer_name].w_bits


def set_bits(model: nn.Module, w_bits: int, a_bits: int) -> None:
    """Set every switchable (not ``bit_frozen``) QConv2d / QLinear to ``(w_bits, a_bits)``, then the BNs.

    Searchable composite layers have no single bit-width and are left alone.
    """
    for _, m in _fixed_layers(model):
        if not m.bit_frozen:
            m.w_bits, m.a_bits = w_bits, a_bits
    _sync_bns(model)


def apply_bits(model: nn.Module, bits: BitMap) -> None:
    """Set the named quantized layers to their ``(w_bits, a_bits)``; then sync the switchable BNs.

    Raises :class:`PolicyError` for a name that is not a quantized layer or unsupported bits.
    """
    modules = dict(model.named_modules())
    for name, (w, a) in bits.items():
        m = modules.get(name)
        if not isinstance(m, (QConv2d, QLinear)):
            kind = "no such module" if m is None else f"a {type(m).__name__}, not QConv2d/QLinear"
            raise PolicyError(f"cannot set bits of layer {name!r}: {kind}; was the model quantized?")
        try:
            m.w_bits, m.a_bits = int(w), int(a)
        except ConfigError as exc:
            raise PolicyError(f"layer {name!r}: {exc}") from exc
    _sync_bns(model)


def current_bits(model: nn.Module) -> dict[str, tuple[int, int]]:
    """``{name: (w_bits, a_bits)}`` of every quantized fixed/switchable layer (frozen ones included)."""
    return {name: (m.w_bits, m.a_bits) for name, m in _fixed_layers(model)}


@contextmanager
def bit_context(model: nn.Module, w_bits: int | None = None, a_bits: int | None = None,
                bits: BitMap | None = None) -> Iterator[nn.Module]:
    """Temporarily run ``model`` at uniform ``(w_bits, a_bits)`` and/or the per-layer ``bits``;
    every layer's and BN's previous bit-width is restored on exit (also on an exception)."""
    saved = current_bits(model)
    try:
        if w_bits is not None or a_bits is not None:
            if w_bits is None or a_bits is None:
                raise ConfigError("bit_context needs both w_bits and a_bits (or neither)")
            set_bits(model, w_bits, a_bits)
        if bits:
            apply_bits(model, bits)
        yield model
    finally:
        modules = dict(model.named_modules())
        for name, (w, a) in saved.items():
            modules[name].w_bits, modules[name].a_bits = w, a
        _sync_bns(model)

"""Dispatcher-level audit of the counting pass: no multiply-accumulate work goes uncounted silently.

Module hooks see the Conv2d/Linear modules that are *called*; they miss a weight used through
``F.linear`` in a parent's forward, a weight built at run time (timm's ``CondConv2d`` mixes expert
weights with a matmul), and parameter-free matrix products (attention). So while the counter's
forward pass runs (meta or real, see ``core.bops.trace``), :class:`OpAudit`, a
``TorchDispatchMode``, sees every aten op below the Python layer and counts the MACs of each
multiply-accumulate op with the formulas of ``torch.utils.flop_counter`` (the ones
``FlopCounterMode`` uses; its FLOPs are 2 x MACs), plus formulas for the ops it lacks (CPU SDPA,
``mv``, ``dot``, ``addbmm``). Each such op is attributed:

- to the counted Conv2d/Linear whose forward (or whose weight's ``F.linear``/``F.conv2d`` call,
  see ``trace``) is running: its MACs must equal what the counter's rule gives that layer;
- else, when an operand does not depend on the input (a parameter, a buffer or anything computed
  from them only), to *weight-carrying work outside the counted layers*: always an error;
- else (every operand depends on the input: ``q @ k^T``, ``attn @ v``, SDPA) to an
  *activation x activation matmul* of the innermost module running, which the convention's
  ``matmuls`` rule counts, lists outside the totals or refuses.

Whether a tensor depends on the input is followed op by op: the input is marked, and an op's
outputs are marked when any tensor argument is (so ``x + pos_embed`` depends on the input, while
``pos_embed.flatten()`` does not).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

aten = torch.ops.aten
_DEPENDS = "_mpq_depends_on_input"  #: attribute set on tensors computed from the input
_SOURCES = "_mpq_sources"  #: attribute naming the parameters/buffers an input-free tensor comes from


def _registry_macs(packet) -> Any:
    formula = flop_registry[packet]
    return lambda *args, out_val=None, **kwargs: formula(*args, out_val=out_val, **kwargs) // 2


def _mv_macs(matrix, vector, *args, out_val=None, **kwargs) -> int:
    return matrix.shape[0] * matrix.shape[1]


def _addmv_macs(bias, matrix, vector, *args, out_val=None, **kwargs) -> int:
    return _mv_macs(matrix, vector)


def _dot_macs(a, b, *args, out_val=None, **kwargs) -> int:
    return a.shape[0]


def _addbmm_macs(bias, a, b, *args, out_val=None, **kwargs) -> int:
    n, m, k = a.shape
    return n * m * k * b.shape[-1]


_SDPA_FORMULA = _registry_macs(aten._scaled_dot_product_flash_attention)

#: aten op -> (MACs formula, positions of the multiplied operands, kind). Kinds: conv, matmul.
MAC_OPS: dict[Any, tuple[Any, tuple[int, ...], str]] = {
    **{p: (_registry_macs(p), (0, 1), "conv") for p in (
        aten.convolution, aten._convolution, aten.convolution_overrideable, aten.cudnn_convolution,
        aten._slow_conv2d_forward)},
    aten.mm: (_registry_macs(aten.mm), (0, 1), "matmul"),
    aten.bmm: (_registry_macs(aten.bmm), (0, 1), "matmul"),
    aten.addmm: (_registry_macs(aten.addmm), (1, 2), "matmul"),
    aten.baddbmm: (_registry_macs(aten.baddbmm), (1, 2), "matmul"),
    aten._scaled_mm: (_registry_macs(aten._scaled_mm), (0, 1), "matmul"),
    aten._int_mm: (_registry_macs(aten.mm), (0, 1), "matmul"),
    aten.mv: (_mv_macs, (0, 1), "matmul"),
    aten.addmv: (_addmv_macs, (1, 2), "matmul"),
    aten.dot: (_dot_macs, (0, 1), "matmul"),
    aten.vdot: (_dot_macs, (0, 1), "matmul"),
    aten.addbmm: (_addbmm_macs, (1, 2), "matmul"),
    **{p: (_registry_macs(p), (0, 1, 2), "matmul") for p in (
        aten._scaled_dot_product_flash_attention, aten._scaled_dot_product_efficient_attention,
        aten._scaled_dot_product_cudnn_attention, aten._flash_attention_forward,
        aten._efficient_attention_forward)},
    # FlopCounterMode has no formula for these SDPA kernels (it counts them as 0); same math as flash.
    aten._scaled_dot_product_flash_attention_for_cpu: (_SDPA_FORMULA, (0, 1, 2), "matmul"),
    aten._scaled_dot_product_fused_attention_overrideable: (_SDPA_FORMULA, (0, 1, 2), "matmul"),
}


@dataclass
class OpRecord:
    """MACs of one kind of op in one module, summed over its calls."""

    module: str
    module_type: str
    op: str
    macs: int = 0
    calls: int = 0
    in_shape: list[int] | None = None
    out_shape: list[int] | None = None
    sources: list[str] = field(default_factory=list)  #: parameters/buffers among the operands


@dataclass
class Context:
    """What is running: the module stack (names, types) and the counted layers active in it."""

    modules: list[tuple[str, str]] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)

    def innermost(self) -> tuple[str, str]:
        return self.modules[-1] if self.modules else ("", "")


def _tensors(args: tuple, kwargs: dict) -> Iterator[torch.Tensor]:
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, (list, tuple)):
            yield from (v for v in value if isinstance(v, torch.Tensor))


def _mark(out: Any, attr: str, value: Any) -> None:
    if isinstance(out, torch.Tensor):
        setattr(out, attr, value)
    elif isinstance(out, (list, tuple)):
        for t in out:
            if isinstance(t, torch.Tensor):
                setattr(t, attr, value)


def mark_input(x: torch.Tensor) -> torch.Tensor:
    setattr(x, _DEPENDS, True)
    return x


def clear_marks(tensors) -> None:
    """Remove the audit's attributes (a real pass may have marked a parameter updated in place)."""
    for t in tensors:
        t.__dict__.pop(_DEPENDS, None)
        t.__dict__.pop(_SOURCES, None)


class OpAudit(TorchDispatchMode):
    """Attribute the MACs of every multiply-accumulate aten op (see the module docstring).

    ``sources``: ``id(tensor) -> name`` of the model's parameters and buffers as the pass sees them.
    Results: ``layer_macs`` (counted layer -> MACs), ``matmuls`` (activation x activation products)
    and ``outside`` (weight-carrying work outside the counted layers), the last two keyed by
    ``(module, op)``.
    """

    def __init__(self, context: Context, sources: dict[int, str]) -> None:
        super().__init__()
        self.context = context
        self.sources = sources
        self.layer_macs: dict[str, int] = {}
        self.matmuls: dict[tuple[str, str], OpRecord] = {}
        self.outside: dict[tuple[str, str], OpRecord] = {}

    def _names(self, t: torch.Tensor) -> tuple[str, ...]:
        name = self.sources.get(id(t))
        return (name,) if name is not None else getattr(t, _SOURCES, ())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = list(_tensors(args, kwargs))
        if any(getattr(t, _DEPENDS, False) for t in inputs):
            _mark(out, _DEPENDS, True)
        elif inputs:
            names = tuple(dict.fromkeys(n for t in inputs for n in self._names(t)))
            if names:
                _mark(out, _SOURCES, names)
        spec = MAC_OPS.get(func._overloadpacket)
        if spec is not None:
            self._record(func, spec, args, kwargs, out)
        return out

    def _record(self, func, spec, args: tuple, kwargs: dict, out: Any) -> None:
        formula, operands, kind = spec
        macs = int(formula(*args, out_val=out, **kwargs))
        if self.context.layers:
            layer = self.context.layers[-1]
            self.layer_macs[layer] = self.layer_macs.get(layer, 0) + macs
            return
        tensors = [args[i] for i in operands if i < len(args) and isinstance(args[i], torch.Tensor)]
        free = [t for t in tensors if not getattr(t, _DEPENDS, False)]
        module, module_type = self.context.innermost()
        op = func._overloadpacket.__name__
        table = self.outside if free or kind == "conv" else self.matmuls
        record = table.get((module, op))
        if record is None:
            first = out[0] if isinstance(out, (list, tuple)) else out
            record = table[(module, op)] = OpRecord(
                module, module_type, op, in_shape=list(tensors[0].shape) if tensors else None,
                out_shape=list(first.shape) if isinstance(first, torch.Tensor) else None)
        record.macs += macs
        record.calls += 1
        for name in (n for t in free for n in self._names(t)):
            if name not in record.sources:
                record.sources.append(name)

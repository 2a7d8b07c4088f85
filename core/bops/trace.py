"""One forward pass at batch size 1 that records what the counter and its audit need.

Recorded: the (input, output) shapes of every call of each counted Conv2d/Linear, the order the
calls finished in, and (``core.bops.audit``) the MACs of every multiply-accumulate op, attributed
to a counted layer, to an activation x activation matmul or to weight-carrying work outside the
counted layers.

``mode="meta"`` runs the model's own ``forward`` with every parameter, buffer and the input
replaced by data-free meta tensors (``torch.func.functional_call``): the same hooks fire with the
same shapes, nothing is computed, and the model's real tensors are never touched, so counting a
float ResNet-50 takes tens of milliseconds even with the audit on (a real forward: 0.3-0.7 s).
``mode="real"`` runs a real forward in eval mode under ``torch.no_grad``, then restores the
model's state_dict and training mode (a quantizer may initialise its step sizes on its first batch).
In the meta pass the quantized and searchable layers of ``core.nn`` (given as ``shape_only``) run
their float base class's forward: by contract they compute one convolution / linear map of the
same geometry, so the shapes are identical, while their quantizers would need data (``.item()``,
step initialisation) and have only slow Python meta kernels. ``mode="auto"`` tries ``meta`` and
falls back to ``real`` when the meta pass fails (a data-dependent branch, a tensor created on
another device); both passes run the same hooks and audit.

A weight used outside its module's forward is still attributed to its layer when the use is
exactly that layer's map: ``F.linear(x, linear.weight, ...)`` (torchvision's Swin calls its
``qkv``/``proj`` this way) and ``F.conv2d(x, conv.weight, ...)`` with the module's stride,
padding, dilation and groups (and zero padding mode). Any other use is left to the audit, which reports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MethodType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.modules.utils import _pair
from torch.overrides import TorchFunctionMode

from core.bops.audit import Context, OpAudit, OpRecord, clear_marks, mark_input
from core.errors import ConfigError

Shape = tuple[int, ...]
TRACE_MODES = ("auto", "meta", "real")


@dataclass
class Trace:
    """What one pass saw; ``mode`` is the pass that ran (``meta`` or ``real``)."""

    mode: str
    calls: dict[str, list[tuple[Shape, Shape]]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    layer_macs: dict[str, int] = field(default_factory=dict)
    matmuls: list[OpRecord] = field(default_factory=list)
    outside: list[OpRecord] = field(default_factory=list)


class _Recorder:
    """Module hooks: the module stack for the audit, and the shapes of the counted layers' calls."""

    def __init__(self, model: nn.Module, layers: list[tuple[str, nn.Module]]) -> None:
        self.modules = list(model.named_modules())
        self.layer_names = {n for n, _ in layers}
        self.context = Context()
        self.calls: dict[str, list[tuple[Shape, Shape]]] = {}
        self.order: list[str] = []

    def record(self, name: str, x: Any, output: Any) -> None:
        if not isinstance(x, torch.Tensor) or not isinstance(output, torch.Tensor):
            raise ConfigError(f"layer {name!r} was called with a non-tensor input or output")
        self.calls.setdefault(name, []).append((tuple(x.shape), tuple(output.shape)))
        self.order.append(name)

    def _pre(self, name: str, module: nn.Module):
        is_layer = name in self.layer_names
        entry = (name, type(module).__name__)

        def hook(_module: nn.Module, _inputs: tuple) -> None:
            self.context.modules.append(entry)
            if is_layer:
                self.context.layers.append(name)
        return hook

    def _post(self, name: str):
        is_layer = name in self.layer_names

        def hook(_module: nn.Module, inputs: tuple, output: Any) -> None:
            self.context.modules.pop()
            if is_layer:
                self.context.layers.pop()
                self.record(name, inputs[0] if inputs else None, output)
        return hook

    def run(self, fn) -> None:
        self.calls, self.order = {}, []
        self.context.modules.clear()
        self.context.layers.clear()
        handles = []
        try:
            for name, m in self.modules:
                handles.append(m.register_forward_pre_hook(self._pre(name, m)))
                handles.append(m.register_forward_hook(self._post(name)))
            fn()
        finally:
            for h in handles:
                h.remove()


def _device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return torch.device("cpu"), torch.float32


# Normalisations and element-wise activations keep their input's shape; many of their meta kernels
# are slow Python decompositions (about 5 ms per BatchNorm call, most of a ResNet-50 meta pass),
# so on a meta input they return an empty tensor of the same shape straight away.
_SHAPE_PRESERVING = frozenset({
    F.batch_norm, torch.batch_norm, F.layer_norm, torch.layer_norm, F.group_norm, torch.group_norm,
    F.instance_norm, torch.instance_norm, F.relu, torch.relu, torch.relu_, F.relu6, F.hardtanh,
    F.leaky_relu, F.elu, F.gelu, F.silu, F.hardswish, F.hardsigmoid, torch.sigmoid, torch.tanh,
    F.dropout,
})


def _same_geometry(conv: nn.Conv2d, args: tuple, kwargs: dict) -> bool:
    """``F.conv2d(x, w, b, stride, padding, dilation, groups)`` computes ``conv``'s own map."""
    names = ("stride", "padding", "dilation", "groups")
    values = dict(zip(names, args[3:]), **{k: v for k, v in kwargs.items() if k in names})
    padding = values.get("padding", 0)
    return (conv.padding_mode == "zeros" and _pair(values.get("stride", 1)) == conv.stride
            and _pair(values.get("dilation", 1)) == conv.dilation and values.get("groups", 1) == conv.groups
            and (padding if isinstance(padding, str) else _pair(padding)) == conv.padding)


class _FunctionLevel(TorchFunctionMode):
    """Functional uses of a counted layer's weight (see the module docstring) and, on meta
    tensors, the shape-only shortcut for normalisations and activations."""

    def __init__(self, recorder: _Recorder, owners: dict[int, tuple[str, nn.Module]]) -> None:
        super().__init__()
        self.recorder = recorder
        self.owners = owners

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _SHAPE_PRESERVING and args and isinstance(args[0], torch.Tensor) and args[0].is_meta:
            return torch.empty_like(args[0])
        if func is F.linear or func is torch.conv2d:
            weight = args[1] if len(args) > 1 else kwargs.get("weight")
            owner = self.owners.get(id(weight))
            layers = self.recorder.context.layers
            if owner is not None and (not layers or layers[-1] != owner[0]) and (
                    isinstance(owner[1], nn.Linear) if func is F.linear
                    else isinstance(owner[1], nn.Conv2d) and _same_geometry(owner[1], args, kwargs)):
                layers.append(owner[0])
                try:
                    out = func(*args, **kwargs)
                finally:
                    layers.pop()
                self.recorder.record(owner[0], args[0] if args else kwargs.get("input"), out)
                return out
        return func(*args, **kwargs)


def _audited(recorder: _Recorder, tensors: dict[str, torch.Tensor], layers: list[tuple[str, nn.Module]],
             forward, trace: Trace) -> None:
    """Run ``forward()`` under the hooks, the function-level mode and the dispatcher audit."""
    sources = {id(t): name for name, t in tensors.items()}
    owners = {id(tensors[f"{n}.weight"]): (n, m) for n, m in layers if f"{n}.weight" in tensors}
    audit = OpAudit(recorder.context, sources)

    def run() -> None:
        with torch.no_grad(), _FunctionLevel(recorder, owners), audit:
            forward()

    try:
        recorder.run(run)
    finally:
        clear_marks(tensors.values())
    trace.calls, trace.order = recorder.calls, recorder.order
    trace.layer_macs = audit.layer_macs
    trace.matmuls, trace.outside = list(audit.matmuls.values()), list(audit.outside.values())


def _meta_pass(model: nn.Module, recorder: _Recorder, layers, input_size: Shape, dtype: torch.dtype,
               shape_only: list[nn.Module]) -> Trace:
    tensors = {n: torch.empty_like(t, device="meta") for n, t in model.named_parameters()}
    tensors.update({n: torch.empty_like(t, device="meta") for n, t in model.named_buffers()})
    x = mark_input(torch.empty((1, *input_size), device="meta", dtype=dtype))
    saved = []
    for m in shape_only:
        base = nn.Conv2d if isinstance(m, nn.Conv2d) else nn.Linear
        saved.append((m, m.__dict__.get("forward")))
        m.forward = MethodType(base.forward, m)
    trace = Trace("meta")
    try:
        _audited(recorder, tensors, layers, lambda: functional_call(model, tensors, (x,), strict=False),
                 trace)
    finally:
        for m, previous in saved:
            del m.forward
            if previous is not None:
                m.forward = previous
    return trace


def _real_pass(model: nn.Module, recorder: _Recorder, layers, input_size: Shape, device: torch.device,
               dtype: torch.dtype) -> Trace:
    generator = torch.Generator(device="cpu").manual_seed(0)
    x = mark_input(torch.randn((1, *input_size), generator=generator).to(device=device, dtype=dtype))
    snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
    tensors = dict(model.named_parameters())
    tensors.update(model.named_buffers())
    trace = Trace("real")
    try:
        _audited(recorder, tensors, layers, lambda: model(x), trace)
    finally:
        model.load_state_dict(snapshot)
    return trace


def trace_model(model: nn.Module, layers: list[tuple[str, nn.Module]], input_size: Shape,
                mode: str = "auto", shape_only: list[nn.Module] | None = None) -> Trace:
    """Run one audited pass (``mode``: auto, meta or real) and return what it saw.

    ``shape_only``: Conv2d/Linear subclasses that run their base class's forward in a meta pass.
    """
    if mode not in TRACE_MODES:
        raise ConfigError(f"unknown trace mode {mode!r}; use one of {TRACE_MODES}")
    device, dtype = _device_dtype(model)
    recorder = _Recorder(model, layers)
    was_training = model.training
    model.eval()
    try:
        if mode in ("auto", "meta"):
            try:
                return _meta_pass(model, recorder, layers, input_size, dtype, shape_only or [])
            except ConfigError:
                raise
            except Exception as exc:  # noqa: BLE001 - anything a data-free forward cannot do
                if mode == "meta":
                    raise ConfigError(f"shape-only (meta) forward at input size {input_size} failed: "
                                      f"{type(exc).__name__}: {exc}; use trace='real'") from exc
        try:
            return _real_pass(model, recorder, layers, input_size, device, dtype)
        except ConfigError:
            raise
        except (RuntimeError, ValueError, IndexError, TypeError) as exc:
            raise ConfigError(f"forward pass at input size {input_size} failed: {exc}") from exc
    finally:
        model.train(was_training)

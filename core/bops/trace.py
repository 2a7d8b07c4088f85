"""One forward pass at batch size 1 that records the (input, output) shapes of chosen layers.

``mode="meta"`` runs the model's own ``forward`` with every parameter, buffer and the input
replaced by data-free meta tensors (``torch.func.functional_call``): the same hooks fire with the
same shapes, nothing is computed, and the model's real tensors are never touched, so counting a
float ResNet-50 takes about 50 ms even on a busy machine (a real forward: 0.3-0.7 s).
``mode="real"`` runs a real forward in eval mode under ``torch.no_grad``, then restores the
model's state_dict and training mode (a quantizer may initialise its step sizes on its first batch).
In the meta pass the quantized and searchable layers of ``core.nn`` (given as ``shape_only``) run
their float base class's forward: by contract they compute one convolution / linear map of the
same geometry, so the shapes are identical, while their quantizers would need data (``.item()``,
step initialisation) and have only slow Python meta kernels. ``mode="auto"`` tries ``meta`` and
falls back to ``real`` when the meta pass fails (a data-dependent branch, a tensor created on
another device).
"""

from __future__ import annotations

from types import MethodType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.overrides import TorchFunctionMode

from core.errors import ConfigError

Shape = tuple[int, ...]
TRACE_MODES = ("auto", "meta", "real")


class _Recorder:
    def __init__(self, layers: list[tuple[str, nn.Module]]) -> None:
        self.layers = layers
        self.calls: dict[str, list[tuple[Shape, Shape]]] = {}
        self.order: list[str] = []

    def hook_for(self, name: str):
        def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
            if not inputs or not isinstance(inputs[0], torch.Tensor) or not isinstance(output, torch.Tensor):
                raise ConfigError(f"layer {name!r} was called with a non-tensor input or output")
            self.calls.setdefault(name, []).append((tuple(inputs[0].shape), tuple(output.shape)))
            self.order.append(name)
        return hook

    def run(self, fn) -> None:
        self.calls, self.order = {}, []
        handles = [m.register_forward_hook(self.hook_for(n)) for n, m in self.layers]
        try:
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


class _MetaNormShortcut(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _SHAPE_PRESERVING and args and isinstance(args[0], torch.Tensor) and args[0].is_meta:
            return torch.empty_like(args[0])
        return func(*args, **kwargs)


def _meta_forward(model: nn.Module, input_size: Shape, dtype: torch.dtype,
                  shape_only: list[nn.Module]) -> None:
    tensors = {n: torch.empty_like(t, device="meta") for n, t in model.named_parameters()}
    tensors.update({n: torch.empty_like(t, device="meta") for n, t in model.named_buffers()})
    x = torch.empty((1, *input_size), device="meta", dtype=dtype)
    saved = []
    for m in shape_only:
        base = nn.Conv2d if isinstance(m, nn.Conv2d) else nn.Linear
        saved.append((m, m.__dict__.get("forward")))
        m.forward = MethodType(base.forward, m)
    try:
        with torch.no_grad(), _MetaNormShortcut():
            functional_call(model, tensors, (x,), strict=False)
    finally:
        for m, previous in saved:
            del m.forward
            if previous is not None:
                m.forward = previous


def _real_forward(model: nn.Module, input_size: Shape, device: torch.device, dtype: torch.dtype) -> None:
    generator = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn((1, *input_size), generator=generator).to(device=device, dtype=dtype)
    snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        with torch.no_grad():
            model(x)
    finally:
        model.load_state_dict(snapshot)


def trace_shapes(model: nn.Module, layers: list[tuple[str, nn.Module]], input_size: Shape,
                 mode: str = "auto", shape_only: list[nn.Module] | None = None
                 ) -> tuple[dict[str, list[tuple[Shape, Shape]]], list[str], str]:
    """Return ``{name: [(in_shape, out_shape) per call]}``, the call order and the mode that ran.

    ``shape_only``: Conv2d/Linear subclasses that run their base class's forward in a meta pass.
    """
    if mode not in TRACE_MODES:
        raise ConfigError(f"unknown trace mode {mode!r}; use one of {TRACE_MODES}")
    device, dtype = _device_dtype(model)
    recorder = _Recorder(layers)
    was_training = model.training
    model.eval()
    try:
        if mode in ("auto", "meta"):
            try:
                recorder.run(lambda: _meta_forward(model, input_size, dtype, shape_only or []))
                return recorder.calls, recorder.order, "meta"
            except ConfigError:
                raise
            except Exception as exc:  # noqa: BLE001 - anything a data-free forward cannot do
                if mode == "meta":
                    raise ConfigError(f"shape-only (meta) forward at input size {input_size} failed: "
                                      f"{type(exc).__name__}: {exc}; use trace='real'") from exc
        try:
            recorder.run(lambda: _real_forward(model, input_size, device, dtype))
        except ConfigError:
            raise
        except (RuntimeError, ValueError, IndexError, TypeError) as exc:
            raise ConfigError(f"forward pass at input size {input_size} failed: {exc}") from exc
        return recorder.calls, recorder.order, "real"
    finally:
        model.train(was_training)

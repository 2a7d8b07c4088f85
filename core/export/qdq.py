"""A fake-quantized PyTorch model as an ONNX QDQ graph, each layer at its own bit-width.

:func:`export_onnx` works in five steps:

1. **Reference pass.** The model runs once on the example input with the eager quantizer kernels (the
   reference the compiled ones are tested against), recording every active quantizer's (``bits < 32``)
   input and output.
2. **Grids.** Each quantizer states its integer grid (``quantizer.grid(x)``, :mod:`core.quant.grid`).
   Weights: the integers are read off the quantizer's own output and must dequantize back to it bit for
   bit (exact grids). Activations: the grid's QuantizeLinear -> DequantizeLinear must reproduce the
   quantizer's output on the example input. A grid that is not exact (DoReFa) is refused unless
   ``allow_inexact``; nothing is approximated silently.
3. **Graph.** torch's TorchScript ONNX exporter traces the model with every active quantizer replaced by
   a marker node (``mpq.export::Quant``, see :class:`_Marker`); the float graph (convolutions, BN,
   pooling, shortcuts, ...) is torch's own. That exporter stops at opset 20, so the graph is then
   converted to the requested opset with ``onnx.version_converter`` (int4 needs 21).
4. **QDQ.** Each marker is rewritten with the onnx helper API: a weight becomes an integer initializer
   (packed, two int4 per byte) with its scale (per-tensor or per-channel) and zero point feeding a
   DequantizeLinear; an activation becomes [Clip ->] QuantizeLinear -> DequantizeLinear (see
   :func:`_activation_nodes` for when the clip is there and why it is sometimes ``Max -> Min``).
5. **Check and write.** Metadata (mpq version, policy, per-layer grids) go into ``metadata_props``;
   ``onnx.checker`` (with shape inference) validates; the file is written atomically (``core.io``).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import core
from core.errors import ExportError
from core.export.elements import MIN_OPSET, ElementType, element_type_for
from core.io import atomic_path
from core.quant.base import FULL_PRECISION, Quantizer, is_compiled, set_compiled
from core.quant.grid import IntegerGrid

DEFAULT_OPSET = 21
TORCHSCRIPT_MAX_OPSET = 20  # torch.onnx's TorchScript exporter
MARKER_DOMAIN = "mpq.export"
INPUT_NAME = "input"


@dataclass
class QuantizedTensor:
    """One active quantizer as exported. ``role``: ``weight`` (integer initializer + DequantizeLinear) or
    ``activation`` ([Clip ->] QuantizeLinear -> DequantizeLinear). ``clip``: the float bounds of the clip
    in front of a per-tensor QuantizeLinear (see :attr:`clipped`), else ``None``. ``max_error``: the largest
    ``|QDQ - PyTorch|`` on the weights / example activations (0 for an exact grid)."""

    name: str
    layer: str
    role: str
    quantizer: str
    bits: int
    grid: IntegerGrid
    element: ElementType
    numel: int = 0
    clip: tuple[float, float] | None = None
    max_error: float = 0.0
    calls: int = 1
    codes: torch.Tensor | None = field(default=None, repr=False)
    outputs: list[str] = field(default_factory=list)  # ONNX DequantizeLinear outputs, in call order

    @property
    def clipped(self) -> bool:
        """Whether a Clip to ``[qmin, qmax]`` precedes the QuantizeLinear (activations): where the container
        is wider than the grid, and for every signed container but int8 (see :func:`_activation_nodes`)."""
        wider = self.element.qmin < self.grid.qmin or self.element.qmax > self.grid.qmax
        return self.role == "activation" and (wider or (self.grid.signed and self.element.name != "int8"))

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "role": self.role, "quantizer": self.quantizer, "bits": self.bits,
                "element_type": self.element.name, "qmin": self.grid.qmin, "qmax": self.grid.qmax,
                "zero_point": self.grid.zero_point, "per_channel_axis": self.grid.axis,
                "exact": self.grid.exact, "clip": list(self.clip) if self.clip else None,
                "numel": self.numel, "max_error": self.max_error}


@dataclass
class ExportResult:
    """What :func:`export_onnx` built: the ONNX model, one record per exported quantizer, the opset,
    the path written (``None`` when not written) and the PyTorch output on the example input."""

    model: Any
    tensors: list[QuantizedTensor]
    opset: int
    path: Path | None = None
    reference: torch.Tensor | None = None

    @property
    def weights(self) -> list[QuantizedTensor]:
        return [t for t in self.tensors if t.role == "weight"]

    @property
    def activations(self) -> list[QuantizedTensor]:
        return [t for t in self.tensors if t.role == "activation"]


def require_onnx() -> None:
    """Raise a clear error when the optional ``onnx`` package is missing."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ExportError("ONNX export needs the onnx package: pip install 'mpq[export]'") from None


# ----------------------------------------------------------------------------- markers
class _Marker(torch.autograd.Function):
    """In the TorchScript ONNX trace, one ``mpq.export::Quant(index)`` node typed like its input, which step
    4 rewrites into QDQ nodes. Its value is the quantizer's output recorded by the reference pass (running
    the quantizer inside the trace would nest its own autograd functions, which the tracer rejects)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, index: int, value: Callable[[], torch.Tensor]) -> torch.Tensor:
        return value()

    @staticmethod
    def symbolic(g, x, index: int, value: Callable[[], torch.Tensor]):
        out = g.op(f"{MARKER_DOMAIN}::Quant", x, index_i=index)
        out.setType(x.type())
        return out


class _Marked(nn.Module):
    """Stands in for a quantizer during the trace: replays its recorded outputs in call order."""

    def __init__(self, index: int, outputs: list[torch.Tensor]) -> None:
        super().__init__()
        self.index, self.outputs, self.calls = index, outputs, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.outputs[self.calls % len(self.outputs)]
        self.calls += 1
        return _Marker.apply(x, self.index, y.clone)


@contextlib.contextmanager
def eager_quantizers() -> Iterator[None]:
    """The eager kernels (the reference) for the duration of the block."""
    was = is_compiled()
    set_compiled(False)
    try:
        yield
    finally:
        set_compiled(was)


def active_quantizers(model: nn.Module) -> list[tuple[str, Quantizer]]:
    """``(module name, quantizer)`` of every quantizer below 32 bits, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, Quantizer) and m.bits < FULL_PRECISION]


def _refuse_search_layers(model: nn.Module) -> None:
    from core.policy import is_mixed_layer

    for name, m in model.named_modules():
        if is_mixed_layer(m):
            raise ExportError(f"layer {name!r} is a searchable {type(m).__name__} (a weighted sum of "
                              "candidate bit-widths, not one grid): export the final model trained with a "
                              "policy")


# ----------------------------------------------------------------------------- grids
def _label(name: str, kind: str, bits: int) -> str:
    return f"quantizer {kind!r} at {bits} bits ({name})"


def _record(name: str, q: Quantizer, calls: list[tuple[torch.Tensor, torch.Tensor]], opset: int,
            ) -> QuantizedTensor:
    label = _label(name, q.name or type(q).__name__, q.bits)
    layer = name.rpartition(".")[0]
    if q.role == "weight":
        if any(x.data_ptr() != calls[0][0].data_ptr() for x, _ in calls):
            raise ExportError(f"{label} quantizes {len(calls)} different tensors in one forward pass; a "
                              "weight quantizer must quantize one weight")
        x, y = calls[0]
        grid = q.grid(x)
    else:
        try:
            grid = q.grid()
        except ExportError as exc:
            raise ExportError(f"{label} on activations: QDQ needs a grid fixed at export time "
                              f"({exc})") from None
        if grid.odd_only:
            raise ExportError(f"{label} quantizes activations to odd integers only "
                              f"({grid.qmin}..{grid.qmax}): QuantizeLinear rounds to every integer, so it "
                              "has no QDQ form")
    scale = grid.scale
    if not bool(torch.isfinite(scale).all()) or not bool((scale > 0).all()):
        raise ExportError(f"{label}: its scale must be finite and positive, got "
                          f"{scale.flatten()[:4].tolist()}")
    element = element_type_for(grid.qmin, grid.qmax, opset, label)
    rec = QuantizedTensor(name, layer, q.role, q.name or type(q).__name__, q.bits, grid, element,
                          calls=len(calls))
    if q.role == "weight":
        rec.codes = grid.codes(y, f"{label}, weight {tuple(x.shape)}")
        rec.numel = y.numel()
        rec.max_error = float((grid.dequantize(rec.codes) - y.float()).abs().max())
        return rec
    for x, y in calls:
        fq = grid.fake_quant(x)
        if grid.exact and not torch.equal(fq, y.float()):
            bad = int((fq != y).sum())
            raise ExportError(f"{label}: its stated grid does not reproduce its output on the example input "
                              f"({bad} of {y.numel()} values differ)")
        rec.max_error = max(rec.max_error, float((fq - y.float()).abs().max()))
    if rec.clipped and grid.axis is None:
        rec.clip = tuple(float(v) for v in _bounds(grid))
    return rec


def _bounds(grid: IntegerGrid) -> tuple[torch.Tensor, torch.Tensor]:
    """The float values of ``qmin`` and ``qmax`` (per channel for a per-channel grid): the Clip bounds."""
    return tuple(grid.dequantize(torch.full(grid.scale.shape, float(q))) for q in (grid.qmin, grid.qmax))


def _collect(model: nn.Module, example: torch.Tensor, opset: int, allow_inexact: bool
             ) -> tuple[list[QuantizedTensor], torch.Tensor, dict[str, list[torch.Tensor]], dict[str, int]]:
    """Step 1 and 2: run the reference pass on ``model`` (a copy) and build the records (module order)."""
    active = active_quantizers(model)
    calls: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {n: [] for n, _ in active}
    ranks: dict[str, int] = {}
    handles = []
    for name, q in active:
        def hook(_m, args, out, name=name):
            calls[name].append((args[0].detach(), out.detach()))
            ranks[name] = args[0].dim()
        handles.append(q.register_forward_hook(hook))
    try:
        with torch.no_grad(), eager_quantizers():
            reference = model(example)
    finally:
        for h in handles:
            h.remove()
    if not isinstance(reference, torch.Tensor):
        raise ExportError(f"{type(model).__name__} returns a {type(reference).__name__}; export needs a "
                          "model whose forward returns one tensor")
    records = [_record(name, q, calls[name], opset) for name, q in active if calls[name]]
    inexact = [r for r in records if not r.grid.exact]
    if inexact and not allow_inexact:
        names = sorted({r.quantizer for r in inexact})
        where = ", ".join(f"{r.layer or r.name} ({r.role})" for r in inexact[:4])
        more = f" and {len(inexact) - 4} more" if len(inexact) > 4 else ""
        raise ExportError(f"quantizer {', '.join(map(repr, names))} has no exact QDQ form "
                          f"({inexact[0].grid.note}); layers: {where}{more}. Pass allow_inexact=True "
                          "(mpq export --allow-inexact) to export it anyway; the report then lists each "
                          "layer's largest difference")
    outputs = {name: [y for _, y in calls[name]] for name in calls}
    return records, reference, outputs, ranks


# ----------------------------------------------------------------------------- torch -> onnx
def _check_unchanged(model: nn.Module, work: nn.Module) -> None:
    """The reference pass must not change any parameter or buffer (e.g. LSQ steps initialised from the
    example input because the model was never trained or loaded)."""
    after = work.state_dict()
    for key, value in model.state_dict().items():
        if not torch.equal(value, after[key]):
            raise ExportError(f"running the model changed {key!r} (an LSQ step initialised from the example "
                              "input?): load the trained weights before exporting")


def _torch_export(marked: nn.Module, active: list[str], outputs: dict[str, list[torch.Tensor]],
                  example: torch.Tensor, opset: int) -> Any:
    """Step 3: the TorchScript ONNX export of ``marked`` (changed in place: the named quantizers are
    replaced by markers replaying their ``outputs``)."""
    import onnx
    from onnx import version_converter

    for index, name in enumerate(active):
        parent_name, _, attr = name.rpartition(".")
        parent = marked.get_submodule(parent_name) if parent_name else marked
        setattr(parent, attr, _Marked(index, outputs[name]))
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad(), eager_quantizers():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice, tracer warnings
            torch.onnx.export(marked, (example,), buf, dynamo=False,
                              opset_version=min(opset, TORCHSCRIPT_MAX_OPSET), input_names=[INPUT_NAME],
                              output_names=["output"],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, "output": {0: "batch"}},
                              do_constant_folding=True)
    except Exception as exc:  # noqa: BLE001 - tracing or symbolic errors come in many types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ExportError(f"torch's ONNX exporter could not trace {type(marked).__name__}: "
                          f"{type(exc).__name__}: {first}") from None
    proto = onnx.load_from_string(buf.getvalue())
    if opset > TORCHSCRIPT_MAX_OPSET:
        proto = version_converter.convert_version(proto, opset)
    return proto


def _initializer(name: str, array: np.ndarray) -> Any:
    from onnx import numpy_helper

    return numpy_helper.from_array(array, name)


def _qparams(graph: Any, prefix: str, rec: QuantizedTensor) -> tuple[str, str]:
    """Scale (float32) and zero point (the container type) initializers of ``rec``'s grid."""
    scale = rec.grid.scale.detach().cpu().numpy().astype(np.float32)
    zero = np.full(scale.shape, rec.grid.zero_point)
    graph.initializer.extend([_initializer(f"{prefix}_scale", scale),
                              rec.element.tensor(f"{prefix}_zero_point", zero)])
    return f"{prefix}_scale", f"{prefix}_zero_point"


def _axis(rec: QuantizedTensor) -> dict[str, int]:
    return {"axis": rec.grid.axis} if rec.grid.axis is not None else {}


def _weight_nodes(graph: Any, node: Any, rec: QuantizedTensor, constant: str, occurrence: int) -> list[Any]:
    """Integer initializer, scale and zero point (once per weight), and a DequantizeLinear per use."""
    from onnx import helper

    prefix = f"{constant}_quantized"
    if occurrence == 0:
        graph.initializer.append(rec.element.tensor(prefix, rec.codes.detach().cpu().numpy()))
        _qparams(graph, prefix, rec)
    suffix = f"_{occurrence}" if occurrence else ""
    return [helper.make_node("DequantizeLinear", [prefix, f"{prefix}_scale", f"{prefix}_zero_point"],
                             [node.output[0]], name=f"{prefix}/DequantizeLinear{suffix}", **_axis(rec))]


def _activation_nodes(graph: Any, node: Any, rec: QuantizedTensor, rank: int, occurrence: int) -> list[Any]:
    """[Clip ->] QuantizeLinear -> DequantizeLinear. The clip to the grid's ``[qmin, qmax]`` (in float, so
    QuantizeLinear rounds exactly the clipped value) is a ``Clip`` for 8-bit containers and ``Max -> Min``
    otherwise (and per channel, where Clip's bounds must be scalars), because two onnxruntime graph
    optimizations mishandle other zero-point types (verified with onnxruntime 1.32.0): the Clip ->
    QuantizeLinear fusion fails to load a model with a sub-byte zero point, and the Relu -> QuantizeLinear
    fusion drops the Relu before any zero point that is not int8 / uint8, wrong for signed types. A signed
    container other than int8 therefore always gets the clip, even where it clips nothing, so no Relu
    feeds its QuantizeLinear directly."""
    from onnx import helper

    prefix = f"{rec.layer or rec.name}.input" + (f"_{occurrence}" if occurrence else "")
    x = node.input[0]
    nodes = []
    if rec.clipped:
        bounds = _bounds(rec.grid)
        if rec.grid.axis is None and rec.element.bits == 8:
            low, high = (b.cpu().numpy().astype(np.float32) for b in bounds)
            graph.initializer.extend([_initializer(f"{prefix}_clip_min", low),
                                      _initializer(f"{prefix}_clip_max", high)])
            nodes.append(helper.make_node("Clip", [x, f"{prefix}_clip_min", f"{prefix}_clip_max"],
                                          [f"{prefix}_clipped"], name=f"{prefix}/Clip"))
        else:  # per-channel bounds (Clip takes scalars only), or a container other than int8 / uint8
            shape = [1] * rank
            if rec.grid.axis is not None:
                shape[rec.grid.axis % rank] = -1
            low, high = (b.reshape(shape).cpu().numpy().astype(np.float32) for b in bounds)
            graph.initializer.extend([_initializer(f"{prefix}_clip_min", low),
                                      _initializer(f"{prefix}_clip_max", high)])
            nodes += [helper.make_node("Max", [x, f"{prefix}_clip_min"], [f"{prefix}_low"],
                                       name=f"{prefix}/Max"),
                      helper.make_node("Min", [f"{prefix}_low", f"{prefix}_clip_max"], [f"{prefix}_clipped"],
                                       name=f"{prefix}/Min")]
        x = f"{prefix}_clipped"
    scale, zero = _qparams(graph, prefix, rec)
    nodes += [helper.make_node("QuantizeLinear", [x, scale, zero], [f"{prefix}_quantized"],
                               name=f"{prefix}/QuantizeLinear", **_axis(rec)),
              helper.make_node("DequantizeLinear", [f"{prefix}_quantized", scale, zero], [node.output[0]],
                               name=f"{prefix}/DequantizeLinear", **_axis(rec))]
    return nodes


def _rewrite(proto: Any, records: dict[int, QuantizedTensor] | None, ranks: dict[str, int]) -> None:
    """Step 4: every marker becomes QDQ nodes (``records=None``: an Identity, for the float baseline)."""
    from onnx import helper

    graph = proto.graph
    constants = {t.name for t in graph.initializer}
    identity_of = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity"}
    nodes, seen = [], {}
    for node in graph.node:
        if node.domain != MARKER_DOMAIN:
            nodes.append(node)
            continue
        index = next(a.i for a in node.attribute if a.name == "index")
        if records is None:
            nodes.append(helper.make_node("Identity", [node.input[0]], [node.output[0]], name=node.name))
            continue
        rec = records[index]
        occurrence = seen[index] = seen.get(index, -1) + 1
        if rec.role == "weight":
            source = node.input[0]
            while source not in constants and source in identity_of:
                source = identity_of[source]
            if source not in constants:
                raise ExportError(f"{_label(rec.name, rec.quantizer, rec.bits)}: the weight it quantizes "
                                  "is computed in the graph, not a stored parameter; only parameters can be "
                                  "stored as integers")
            nodes += _weight_nodes(graph, node, rec, source, occurrence)
        else:
            nodes += _activation_nodes(graph, node, rec, ranks[rec.name], occurrence)
        rec.outputs.append(node.output[0])
    del graph.node[:]
    graph.node.extend(nodes)
    _prune(graph)
    kept = [o for o in proto.opset_import if o.domain != MARKER_DOMAIN]
    del proto.opset_import[:]
    proto.opset_import.extend(kept)


def _prune(graph: Any) -> None:
    """Drop nodes whose outputs nothing reads, and initializers no node reads (the float weights replaced
    by integers), until nothing changes."""
    outputs = {o.name for o in graph.output}
    while True:
        used = {i for n in graph.node for i in n.input} | outputs
        keep = [n for n in graph.node if any(o in used for o in n.output)]
        if len(keep) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(keep)
    used = {i for n in graph.node for i in n.input} | outputs
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


# ----------------------------------------------------------------------------- entry point
def export_onnx(model: nn.Module, example: torch.Tensor, path: str | os.PathLike | None = None, *,
                opset: int = DEFAULT_OPSET, allow_inexact: bool = False, quantized: bool = True,
                policy: Any = None, metadata: dict[str, str] | None = None) -> ExportResult:
    """Export ``model`` (eval mode; a copy is traced) as an ONNX QDQ graph; write it to ``path`` if given.

    ``example``: an input batch on the model's device (the batch dimension is exported as dynamic).
    ``opset``: >= 13; int4/int16 containers need 21, int2 needs 25 (below 21, 2-4 bit grids use 8-bit
    containers plus a Clip). ``quantized=False``: the float baseline (quantizers removed). ``policy``: a
    :class:`core.policy.BitPolicy` recorded in the metadata. Raises :class:`ExportError` (nothing written)
    when a quantizer has no exact grid, the graph cannot be traced, or the result fails ``onnx.checker``.
    """
    require_onnx()
    import onnx

    if not MIN_OPSET <= opset <= onnx.defs.onnx_opset_version():
        raise ExportError(f"opset {opset} is outside {MIN_OPSET}..{onnx.defs.onnx_opset_version()} "
                          "(per-channel QDQ needs 13; int4 needs 21)")
    _refuse_search_layers(model)
    work = copy.deepcopy(model).eval()
    records, reference, outputs, ranks = _collect(work, example, opset, allow_inexact)
    _check_unchanged(model, work)
    proto = _torch_export(work, [r.name for r in records], outputs, example, opset)
    _rewrite(proto, dict(enumerate(records)) if quantized else None, ranks)
    props = {"mpq.version": core.__version__,
             "mpq.quantized_tensors": json.dumps([r.to_dict() for r in records] if quantized else [])}
    if policy is not None:
        props["mpq.policy"] = json.dumps(policy.to_dict() if hasattr(policy, "to_dict") else policy)
    props.update(metadata or {})
    onnx.helper.set_model_props(proto, props)
    proto.producer_name, proto.producer_version = "mpq", core.__version__
    proto.graph.name = type(model).__name__
    if proto.ByteSize() >= 2**31:
        raise ExportError(f"the exported model is {proto.ByteSize() / 2**30:.1f} GiB, over protobuf's 2 GiB "
                          "limit (external data files are not supported by mpq export)")
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:  # noqa: BLE001 - onnx raises ValidationError / InferenceError
        raise ExportError(f"the exported graph fails onnx.checker: {exc}") from None
    result = ExportResult(proto, records if quantized else [], opset, reference=reference)
    if path is not None:
        result.path = write_model(proto, path)
    return result


def write_model(proto: Any, path: str | os.PathLike) -> Path:
    """Serialise ``proto`` to ``path`` atomically (nothing is left behind on failure)."""
    data = proto.SerializeToString()
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path

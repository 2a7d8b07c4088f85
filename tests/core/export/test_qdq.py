"""ONNX QDQ export: parity with onnxruntime per (quantizer, bit-width), element types, Clip bounds, opsets,
metadata, and the refusals (inexact or missing grids, search layers, untrained steps)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx", reason="ONNX export needs the [export] extra (onnx)")
pytest.importorskip("onnxruntime", reason="parity needs the [export] extra (onnxruntime)")

from onnx import numpy_helper  # noqa: E402

from core.errors import ExportError  # noqa: E402
from core.export import ELEMENT_TYPES, element_type_for, export_onnx  # noqa: E402
from core.export.check import compare_onnxruntime, run_onnxruntime  # noqa: E402
from core.nn import QConv2d, QuantSpec, quantize_model  # noqa: E402
from core.policy import BitPolicy  # noqa: E402
from core.quant import QUANTIZERS, Quantizer, create_quantizer  # noqa: E402
from core.quant.grid import IntegerGrid  # noqa: E402

ULPS = 16  # observed: at most 4 ulp of the outputs' scale on these nets (convolution summation order)
REFUSED_ACTIVATIONS = {"gaussian", "sign"}  # odd-only levels: no QuantizeLinear form
INEXACT = {"dorefa"}  # 1/(2^b - 1) has no float32 value (b >= 2)
OPTIONS = {"pact": {"alpha_init": 3.0}}


class Bank(nn.Module):
    """One QConv2d per bit-width, all fed by the graph input (so every activation quantizer sees the same
    floats in both runtimes), each followed by BN and a spatial mean; output: the features side by side."""

    def __init__(self, name: str, role: str, bits: list[int], options: dict | None = None) -> None:
        super().__init__()
        opts = {**OPTIONS.get(name, {}), **(options or {})}
        w_opts, a_opts = (opts, {}) if role == "weight" else ({}, opts)
        self.bits = bits
        self.convs = nn.ModuleList(
            QConv2d(3, 4, 3, padding=1, bias=role == "weight", w_quant=name if role == "weight" else "lsq",
                    a_quant=name if role == "activation" else "lsq", w_options=w_opts, a_options=a_opts,
                    w_bits=b if role == "weight" else 32, a_bits=b if role == "activation" else 32)
            for b in bits)
        self.bns = nn.ModuleList(nn.BatchNorm2d(4) for _ in bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([bn(conv(x)).mean((2, 3)) for conv, bn in zip(self.convs, self.bns)], 1)


def _trained(model: nn.Module, size=(3, 8, 8)) -> nn.Module:
    model.train()
    with torch.no_grad():
        for _ in range(3):  # LSQ steps initialise from the first batch, BN statistics move
            model(torch.randn(16, *size) * 1.5)
    return model.eval()


def _supported(name: str, role: str, options: dict | None) -> list[int]:
    opts = {**OPTIONS.get(name, {}), **(options or {})}
    if opts.get("per_channel"):
        opts["channels"] = 4
    return [b for b in create_quantizer(name, 32, role=role, **opts).supported_bits if b < 32]


CASES = [(name, role, None) for name in sorted(QUANTIZERS) for role in ("weight", "activation")] + [
    ("lsq", "weight", {"per_channel": True}), ("lsq", "weight", {"symmetric": True}),
    ("lsq", "activation", {"signed": True}), ("lsq", "activation", {"per_channel": True}),
    ("sign", "weight", {"per_channel_scale": True})]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: "-".join([c[0], c[1], *(c[2] or {})]))
def exported(request, tmp_path_factory):
    """(name, role, bank, result or the ExportError) for one quantizer configuration, all its bit-widths."""
    torch.manual_seed(0)
    name, role, options = request.param
    bank = _trained(Bank(name, role, _supported(name, role, options), options))
    path = tmp_path_factory.mktemp("qdq") / "bank.onnx"
    example = torch.randn(2, 3, 8, 8) * 1.5
    try:
        result = export_onnx(bank, example, path, allow_inexact=name in INEXACT)
    except ExportError as exc:
        return name, role, bank, exc
    return name, role, bank, result


def test_parity_per_quantizer_and_bit_width(exported):
    """onnxruntime's CPU output equals PyTorch's within a few ulps, every bit-width (branch) separately."""
    name, role, bank, result = exported
    if role == "activation" and name in REFUSED_ACTIVATIONS:
        assert isinstance(result, ExportError) and f"quantizer {name!r}" in str(result)
        assert "odd integers" in str(result) or "fixed at export time" in str(result)
        return
    assert not isinstance(result, ExportError), result
    inputs = torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 1.5
    report = compare_onnxruntime(bank, result, inputs)
    assert report.unexplained_flips == 0 and report.max_ulps_clean <= ULPS, report.summary()
    if name in INEXACT:  # DoReFa: an input within an ulp of a rounding boundary may pick the other level
        return
    assert report.flipped_codes == 0, report.summary()  # both runtimes quantize the same input floats
    ours = run_onnxruntime(result.model, inputs).reshape(32, -1, 4)
    with torch.no_grad():
        ref = bank(inputs).numpy().reshape(32, -1, 4)
    for i, bits in enumerate(bank.bits):
        ulp = np.spacing(np.abs(ref[:, i]).max())
        assert np.abs(ours[:, i] - ref[:, i]).max() <= ULPS * ulp, (name, role, bits)
        assert np.array_equal(ours[:, i].argmax(1), ref[:, i].argmax(1)), (name, role, bits)


def test_element_types_and_clip_bounds_per_bit_width(exported):
    name, role, bank, result = exported
    if isinstance(result, ExportError):
        return
    graph = result.model.graph
    inits = {t.name: t for t in graph.initializer}
    nodes = list(graph.node)
    producer = {n.output[0]: n for n in nodes}
    assert len(result.tensors) == len(bank.bits) and [t.bits for t in result.tensors] == bank.bits
    for t in result.tensors:
        g = t.grid
        assert t.element == element_type_for(g.qmin, g.qmax, 21)
        expected = {4: range(2, 5), 8: range(5, 9)}
        if not g.odd_only and g.qmin >= -(2 ** (t.bits - 1)) and t.bits > 1:  # standard b-bit grids
            assert t.bits in expected[t.element.bits]
            assert t.element.signed == (g.qmin < 0)
        if role == "weight":
            (dq,) = [n for n in nodes if n.op_type == "DequantizeLinear" and n.output[0] == t.outputs[0]]
            stored = inits[dq.input[0]]
            assert stored.data_type == t.element.onnx_type  # integers, not floats
            values = numpy_helper.to_array(stored).astype(np.int64)
            assert g.qmin <= values.min() and values.max() <= g.qmax
            assert np.array_equal(values, t.codes.numpy())
            assert any(a.name == "axis" and a.i == g.axis for a in dq.attribute) == (g.axis is not None)
            assert numpy_helper.to_array(inits[dq.input[1]]).shape == tuple(g.scale.shape)
        else:
            dq = producer[t.outputs[0]]
            q = producer[dq.input[0]]
            assert (dq.op_type, q.op_type) == ("DequantizeLinear", "QuantizeLinear")
            assert inits[q.input[2]].data_type == t.element.onnx_type
            clip = producer.get(q.input[0])
            clipped = clip is not None and clip.op_type in ("Clip", "Min")
            wider = t.element.qmax > g.qmax or t.element.qmin < g.qmin
            assert clipped == t.clipped == (wider or (g.signed and t.element.name != "int8"))
            if clipped:  # Clip for 8-bit containers, Max -> Min otherwise (onnxruntime's fusions)
                assert clip.op_type == ("Clip" if t.element.bits == 8 and g.axis is None else "Min")
            if clipped:  # bounds: the float values of qmin and qmax (Clip, or Max -> Min)
                if clip.op_type == "Clip":
                    lo, hi = (numpy_helper.to_array(inits[clip.input[i]]) for i in (1, 2))
                else:
                    lo = numpy_helper.to_array(inits[producer[clip.input[0]].input[1]])
                    hi = numpy_helper.to_array(inits[clip.input[1]])
                scale = g.scale.reshape(-1).numpy()
                assert np.array_equal(lo.reshape(-1), (np.float32(g.qmin) * scale).reshape(-1))
                assert np.array_equal(hi.reshape(-1), (np.float32(g.qmax) * scale).reshape(-1))
    if role == "weight":  # the float weights are gone, replaced by the integers
        assert not {f"convs.{i}.weight" for i in range(len(bank.bits))} & set(inits)


def test_exported_file_validates_and_records_version_and_policy(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    names = quantize_model(model, QuantSpec(first="w8", last="w8a8"))
    policy = BitPolicy({n: (3, 5) for n in names}, {"method": "test"})
    policy.apply(model)
    _trained(model)
    path = tmp_path / "m.onnx"
    result = export_onnx(model, torch.randn(2, 3, 8, 8), path, policy=policy)
    loaded = onnx.load(path)
    onnx.checker.check_model(loaded, full_check=True)
    props = {p.key: p.value for p in loaded.metadata_props}
    import json

    import core

    assert props["mpq.version"] == core.__version__
    assert BitPolicy.from_dict(json.loads(props["mpq.policy"])) == policy
    tensors = json.loads(props["mpq.quantized_tensors"])
    assert {(t["layer"], t["role"], t["bits"], t["element_type"]) for t in tensors} == {
        ("0", "weight", 8, "int8"), ("3", "weight", 3, "int4"), ("3", "activation", 5, "uint8"),
            ("6", "weight", 8, "int8"), ("6", "activation", 8, "uint8")}
    assert loaded.opset_import[0].version == 21 and result.opset == 21
    report = compare_onnxruntime(model, result, torch.randn(16, 3, 8, 8))
    assert report.ok(ULPS), report.summary()


@pytest.mark.parametrize(("opset", "weight_type", "act_type", "clipped"),
                         [(20, "int8", "uint8", True), (21, "int4", "uint4", True),
                          (25, "int2", "uint2", False)])
def test_opset_picks_the_containers(opset, weight_type, act_type, clipped):
    """Below 21 sub-byte grids use 8-bit containers plus a Clip; opset 25 has int2 for +-1 and 2 bits."""
    torch.manual_seed(0)
    layer = QConv2d(3, 4, 3, w_quant="sign", a_quant="lsq", w_bits=1, a_bits=2)
    model = _trained(nn.Sequential(layer, nn.Flatten()))
    result = export_onnx(model, torch.randn(2, 3, 8, 8), opset=opset)
    w, a = result.weights[0], result.activations[0]
    assert (w.element.name, a.element.name, a.clipped) == (weight_type, act_type, clipped)
    assert result.model.opset_import[0].version == opset
    assert compare_onnxruntime(model, result, torch.randn(8, 3, 8, 8)).ok(ULPS)


def test_element_type_table():
    assert element_type_for(0, 3, 21).name == "uint4" and element_type_for(-8, 7, 21).name == "int4"
    assert element_type_for(0, 31, 21).name == "uint8" and element_type_for(-15, 15, 21).name == "int8"
    assert element_type_for(-255, 255, 21).name == "int16" and element_type_for(-1, 1, 21).name == "int4"
    assert element_type_for(-1, 1, 25).name == "int2" and element_type_for(0, 15, 20).name == "uint8"
    with pytest.raises(ExportError, match="int16 needs opset >= 21"):
        element_type_for(-255, 255, 20)


@pytest.mark.parametrize("element", ELEMENT_TYPES, ids=lambda e: e.name)
def test_integers_are_stored_packed_and_read_back(element):
    """Sub-byte integers packed as ONNX stores them (two int4 / four int2 per byte), any length."""
    values = np.random.default_rng(0).integers(element.qmin, element.qmax + 1, size=(3, 7))
    tensor = element.tensor("w", values)
    assert tensor.data_type == element.onnx_type
    assert len(tensor.raw_data) == -(-values.size * element.bits // 8)
    assert np.array_equal(numpy_helper.to_array(tensor).astype(np.int64), values)
    with pytest.raises(ExportError, match="outside"):
        element.tensor("w", np.array([element.qmax + 1]))


def test_inexact_grid_fails_naming_the_quantizer_and_writes_nothing(tmp_path):
    model = _trained(nn.Sequential(QConv2d(3, 4, 3, w_quant="dorefa", a_quant="lsq", w_bits=3, a_bits=32),
                                   nn.Flatten()))
    path = tmp_path / "m.onnx"
    with pytest.raises(ExportError, match="quantizer 'dorefa' has no exact QDQ form.*allow-inexact"):
        export_onnx(model, torch.randn(2, 3, 8, 8), path)
    assert list(tmp_path.iterdir()) == []


class _NoGrid(Quantizer):
    name = "halving"

    def quantize(self, x):
        return torch.round(x * 4) / 4 * 0.5


class _WrongGrid(_NoGrid):
    name = "mislabelled"

    def grid(self, x=None):
        return IntegerGrid(torch.tensor(0.25), -8, 7)  # the values are multiples of 0.125


@pytest.mark.parametrize(("cls", "message"), [(_NoGrid, "'halving'.*states no integer grid"),
                                              (_WrongGrid, "'mislabelled'.*not on the stated grid")])
def test_quantizer_without_a_true_grid_fails_with_its_name(cls, message):
    layer = QConv2d(3, 4, 3, w_bits=32, a_bits=32)
    layer.weight_quantizer = cls(4, role="weight")
    with pytest.raises(ExportError, match=message):
        export_onnx(nn.Sequential(layer, nn.Flatten()).eval(), torch.randn(2, 3, 8, 8))


def test_search_layers_and_untrained_steps_are_refused():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 3), nn.Flatten())
    quantize_model(model, QuantSpec(kind="composite"))
    with pytest.raises(ExportError, match="'1' is a searchable"):
        export_onnx(model, torch.randn(2, 3, 8, 8))
    untrained = nn.Sequential(QConv2d(3, 4, 3, w_bits=4, a_bits=4), nn.Flatten()).eval()
    with pytest.raises(ExportError, match="LSQ step initialised from the example"):
        export_onnx(untrained, torch.randn(2, 3, 8, 8))
    assert not bool(untrained[0].weight_quantizer.initialized.any())  # the caller's model is untouched


class _Twice(nn.Module):
    """One layer called twice, the second time on a ReLU output, with signed int4 activations: onnxruntime
    1.32 would drop that ReLU if it fed the QuantizeLinear directly (int4 zero point)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = QConv2d(4, 4, 3, padding=1, bias=True, w_bits=3, a_bits=4, a_options={"signed": True})

    def forward(self, x):
        return self.conv(torch.relu(self.conv(x))).mean((2, 3))


def test_a_layer_called_twice_stores_its_weights_once_and_keeps_the_relu():
    torch.manual_seed(0)
    model = _trained(_Twice(), size=(4, 8, 8))
    result = export_onnx(model, torch.randn(2, 4, 8, 8))
    names = [t.name for t in result.model.graph.initializer]
    assert names.count("conv.weight_quantized") == 1 and len(names) == len(set(names))
    assert [len(t.outputs) for t in result.tensors] == [2, 2] and result.tensors[0].calls == 2
    assert compare_onnxruntime(model, result, torch.randn(16, 4, 8, 8)).ok(ULPS)


def test_opset_out_of_range():
    with pytest.raises(ExportError, match="opset 11 is outside"):
        export_onnx(nn.Linear(2, 2), torch.randn(1, 2), opset=11)


def test_float_baseline_has_no_qdq_and_same_outputs():
    torch.manual_seed(0)
    model = _trained(nn.Sequential(QConv2d(3, 4, 3, w_bits=4, a_bits=4), nn.Flatten()))
    result = export_onnx(model, torch.randn(2, 3, 8, 8), quantized=False)
    ops = {n.op_type for n in result.model.graph.node}
    assert not ops & {"QuantizeLinear", "DequantizeLinear"} and result.tensors == []

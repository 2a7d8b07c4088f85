"""``mpq export --report``: per-layer bits and element types, sizes on disk, onnxruntime CPU latency.

Sizes: the exported file (sub-byte integers packed, two int4 or four int2 per byte, as ONNX stores them),
the same file with every sub-byte container widened to one byte ("int8"), and the float ONNX model (same
graph, float weights, no QDQ). The physical limit of the weights is ``sum_l b_l |W_l| / (32 sum_l |W_l|)``
over every conv / linear weight (``b_l = 32`` for a float layer); the file adds scales, zero points,
biases, BatchNorm and the graph itself, so the report also gives the limit of the whole file (the weights
at exactly ``b_l`` bits, everything else as in the exported file) and how close the file comes to it.

Latency is informational: on the CPU provider a QDQ graph mostly dequantizes and runs float kernels; real
speed comes from backends that fuse QDQ into integer kernels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from core.export.qdq import INPUT_NAME, ExportResult
from core.timing import median_time


@dataclass
class SizeReport:
    packed_bytes: int
    int8_bytes: int
    float_bytes: int
    weights: int  # sum_l |W_l| over every conv / linear weight
    weight_bits: int  # sum_l b_l |W_l| (b_l = 32 for float weights)
    scale_bytes: int  # scales and zero points of the quantized weights and activations

    @property
    def ratio(self) -> float:
        """Packed file / float file."""
        return self.packed_bytes / self.float_bytes

    @property
    def weight_limit(self) -> float:
        """``sum_l b_l |W_l| / (32 sum_l |W_l|)``."""
        return self.weight_bits / (32 * self.weights)

    @property
    def file_limit(self) -> float:
        """The smallest file with every weight at exactly ``b_l`` bits (the rest as exported) / float file."""
        rest = self.float_bytes - 4 * self.weights  # biases, BatchNorm, graph, names: the same in both files
        return (self.weight_bits / 8 + rest + self.scale_bytes) / self.float_bytes

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio, "weight_limit": self.weight_limit,
                "file_limit": self.file_limit}


def size_report(model: nn.Module, result: ExportResult, float_bytes: int) -> SizeReport:
    """Sizes of ``result`` (its serialised model) against the float model's ``float_bytes``."""
    packed = result.model.ByteSize()
    weights = {t.layer: t for t in result.weights}
    total = bits = 0
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            n = m.weight.numel()
            total += n
            bits += n * (weights[name].bits if name in weights else 32)
    int8 = packed + sum(t.numel - (t.numel * t.element.bits + 7) // 8
                        for t in result.weights if t.element.bits < 8)
    scales = sum(t.grid.scale.numel() * (4 + max(1, t.element.bits // 8)) for t in result.tensors)
    return SizeReport(packed, int8, float_bytes, total, bits, scales)


def latency(model: Any, example: torch.Tensor, runs: int = 20) -> float:
    """Median onnxruntime CPU time (s) of one run on ``example`` (after one warm-up run)."""
    from core.export.check import onnxruntime_session

    session = onnxruntime_session(model)
    feed = {INPUT_NAME: example.detach().cpu().numpy()}
    return median_time(lambda: session.run(None, feed), runs)


@dataclass
class ExportReport:
    layers: list[dict[str, Any]]
    sizes: SizeReport
    latency_s: float | None = None
    float_latency_s: float | None = None
    parity: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {"layers": self.layers, "sizes": self.sizes.to_dict(), "latency_s": self.latency_s,
                "float_latency_s": self.float_latency_s,
                "parity": self.parity.to_dict() if self.parity is not None else None}

    def table(self) -> str:
        head = ("layer", "tensor", "quantizer", "bits", "type", "integers", "clip", "exact",
                "max |QDQ-torch|")
        rows = [(r["layer"], r["role"], r["quantizer"], str(r["bits"]), r["element_type"],
                 f"[{r['qmin']}, {r['qmax']}]" + (f" axis {r['per_channel_axis']}" if r["per_channel_axis"]
                                                   is not None else ""),
                 "yes" if r["clipped"] else "-", "yes" if r["exact"] else "NO", f"{r['max_error']:.3g}")
                for r in self.layers]
        widths = [max(len(x[i]) for x in [head, *rows]) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in [head, *rows]]
        s = self.sizes
        mb = 1e6
        lines += ["",
                  f"size on disk: {s.packed_bytes / mb:.3f} MB packed (int4 two per byte), "
                  f"{s.int8_bytes / mb:.3f} MB with 8-bit containers, {s.float_bytes / mb:.3f} MB float32",
                  f"packed / float32: {s.ratio:.4f}; physical limit of the weights sum b|W| / (32 sum |W|) = "
                  f"{s.weight_limit:.4f}; of the whole file (scales, biases, BN, graph as exported) "
                  f"{s.file_limit:.4f}: the file is {s.ratio / s.file_limit:.3f}x its limit"]
        if self.latency_s is not None and self.float_latency_s is not None:
            lines.append(f"onnxruntime CPU latency (informational; QDQ runs as dequantize + float kernels "
                         f"here): {self.latency_s * 1e3:.2f} ms vs {self.float_latency_s * 1e3:.2f} ms float "
                         f"({self.latency_s / self.float_latency_s:.2f}x)")
        if self.parity is not None:
            lines.append(f"parity with PyTorch on random inputs: {self.parity.summary()}")
        return "\n".join(lines)


def build_report(model: nn.Module, result: ExportResult, float_model: Any, example: torch.Tensor,
                 runs: int = 20, parity_inputs: torch.Tensor | None = None) -> ExportReport:
    """The report of an export: ``float_model`` is the float baseline (``export_onnx(..., quantized=False)
    .model``); ``runs``: latency repetitions (0 skips latency); ``parity_inputs``: also compare outputs."""
    layers = [{**t.to_dict(), "clipped": t.clipped} for t in result.tensors]
    sizes = size_report(model, result, float_model.ByteSize())
    report = ExportReport(layers, sizes)
    if runs > 0:
        report.latency_s = latency(result.model, example, runs)
        report.float_latency_s = latency(float_model, example, runs)
    if parity_inputs is not None:
        from core.export.check import compare_onnxruntime

        report.parity = compare_onnxruntime(model, result, parity_inputs)
    return report

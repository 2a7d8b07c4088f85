"""Parity of an exported model with the PyTorch fake-quant model, run with onnxruntime on the CPU.

Two runtimes agree only up to float rounding: convolutions sum in different orders, so a tensor feeding a
quantizer can differ by an ulp or so, and where it lies that close to a rounding boundary the two pick
neighbouring levels. :func:`compare_onnxruntime` therefore checks three things:

- every activation integer onnxruntime computes equals PyTorch's, except where PyTorch's input lies within
  ``tie_tolerance`` (in units of the step) of a rounding boundary ("flips", counted). Per input, only the
  first quantizer (in execution order) with a flip is examined: later layers see different inputs, so
  their flips are consequences. A first flip that is not at a tie is ``unexplained``: a real mismatch;
- on the samples without a flip, the outputs agree within a few ulps of the outputs' scale
  (``max_ulps_clean``, with ``ulp = spacing(max |PyTorch output|)``);
- the argmax agrees on every sample (except where the top two PyTorch outputs are closer than the
  observed difference, counted as ``argmax_ties``).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from core.errors import ExportError
from core.export.qdq import INPUT_NAME, ExportResult, eager_quantizers


@dataclass
class ParityReport:
    samples: int
    logits_scale: float
    max_abs_diff: float
    max_ulps: float
    max_ulps_clean: float
    samples_with_flips: int
    flipped_codes: int
    total_codes: int
    unexplained_flips: int
    argmax_ties: int  # inputs whose top two outputs are closer than the difference: argmax not compared
    argmax_agreement: float

    def ok(self, ulps: float = 16) -> bool:
        """No unexplained difference, argmax agrees everywhere, flip-free samples within ``ulps``."""
        return self.unexplained_flips == 0 and self.argmax_agreement == 1.0 and self.max_ulps_clean <= ulps

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        clean = self.samples - self.samples_with_flips
        ties = "yes" if self.unexplained_flips == 0 else f"no, {self.unexplained_flips} not"
        return (f"{self.samples} inputs: max |onnxruntime - PyTorch| {self.max_abs_diff:.3g} "
                f"({self.max_ulps:.0f} ulp of {self.logits_scale:.3g}); on the {clean} inputs without a "
                f"flipped activation {self.max_ulps_clean:.0f} ulp; flipped activation integers "
                f"{self.flipped_codes} of {self.total_codes} (first flips all at a rounding tie: {ties}); "
                f"argmax agreement {100 * self.argmax_agreement:.1f}%"
                + (f" ({self.argmax_ties} near-ties of the top two left out)" if self.argmax_ties else ""))


def onnxruntime_session(model: Any, optimize: bool = True) -> Any:
    """A CPU ``onnxruntime.InferenceSession`` for a ModelProto, bytes or path."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError("running the exported model needs onnxruntime: pip install 'mpq[export]'") from None
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run_onnxruntime(model: Any, inputs: torch.Tensor, optimize: bool = True) -> np.ndarray:
    """The first output of ``model`` (ModelProto, bytes or path) run on ``inputs`` with onnxruntime (CPU)."""
    return onnxruntime_session(model, optimize).run(None, {INPUT_NAME: inputs.detach().cpu().numpy()})[0]


def compare_onnxruntime(model: nn.Module, result: ExportResult, inputs: torch.Tensor,
                        tie_tolerance: float = 1e-3, optimize: bool = True) -> ParityReport:
    """Run ``result.model`` with onnxruntime (CPU) and ``model`` (the exported PyTorch model, eval mode)
    on ``inputs``; see the module notes for what is compared."""
    from onnx import TensorProto, helper

    activations = [r for r in result.activations if r.outputs]
    proto = copy.deepcopy(result.model)
    for rec in activations:  # expose every dequantized activation
        proto.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                                  for n in rec.outputs)
    outs = onnxruntime_session(proto, optimize).run(None, {INPUT_NAME: inputs.detach().cpu().numpy()})
    logits, dq = outs[0], dict(zip((n for r in activations for n in r.outputs), outs[1:]))

    modules = dict(model.named_modules())
    calls: list[tuple[Any, torch.Tensor, torch.Tensor]] = []  # (record, input, output), execution order
    handles = [modules[r.name].register_forward_hook(
        lambda _m, a, out, r=r: calls.append((r, a[0].detach().cpu(), out.detach().cpu())))
        for r in activations]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), eager_quantizers():
            reference = model(inputs).detach().cpu().numpy()
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()

    n = len(inputs)
    flipped_samples = torch.zeros(n, dtype=torch.bool)
    flipped = total = unexplained = 0
    occurrence: dict[str, int] = {}
    for rec, x, y in calls:
        i = occurrence[rec.name] = occurrence.get(rec.name, -1) + 1
        grid = rec.grid
        ours, theirs = (torch.round(grid.steps(v)) for v in (y, torch.from_numpy(dq[rec.outputs[i]])))
        diff = (ours != theirs).reshape(n, -1)
        t = grid.steps(x).reshape(n, -1)
        off_tie = diff & ((t - torch.floor(t) - 0.5).abs() >= tie_tolerance)
        unexplained += int(off_tie[~flipped_samples].sum())  # first flips only
        flipped += int(diff.sum())
        total += diff.numel()
        flipped_samples |= diff.any(1)
    flipped_samples = flipped_samples.numpy()
    scale = float(np.abs(reference).max())
    ulp = float(np.spacing(np.float32(scale))) if scale > 0 else float(np.finfo(np.float32).tiny)
    per_sample = np.abs(logits - reference).reshape(n, -1).max(1)
    clean = per_sample[~flipped_samples]
    flat_ref = reference.reshape(n, -1)
    agree = logits.reshape(n, -1).argmax(1) == flat_ref.argmax(1)
    top2 = np.sort(flat_ref, axis=1)[:, -2:] if flat_ref.shape[1] > 1 else np.zeros((n, 2))
    decisive = top2[:, 1] - top2[:, 0] > per_sample  # a maximum that the observed difference cannot move
    return ParityReport(
        samples=n, logits_scale=scale, max_abs_diff=float(per_sample.max()),
        max_ulps=float(per_sample.max() / ulp),
        max_ulps_clean=float(clean.max() / ulp) if clean.size else 0.0,
        samples_with_flips=int(flipped_samples.sum()), flipped_codes=flipped, total_codes=total,
        unexplained_flips=unexplained, argmax_ties=int((~decisive).sum()),
        argmax_agreement=float(agree[decisive].mean()) if decisive.any() else 1.0)

"""Integer grids: the levels of a quantizer written as ``(q - zero_point) * scale`` with integer ``q``.

Every quantizer states its grid with ``quantizer.grid(x)`` (``x``: the tensor it quantizes, needed where
the scale depends on it, e.g. EdMIPS's ``c_w[b] * std(W)``). ONNX export (:mod:`core.export`) writes the
grid as QuantizeLinear / DequantizeLinear; the grid is also a readable statement of what the fake
quantizer computes.

>>> g = IntegerGrid(scale=torch.tensor(0.5), qmin=0, qmax=3)
>>> g.fake_quant(torch.tensor([-1.0, 0.26, 0.8, 9.0])).tolist()
[0.0, 0.5, 1.0, 1.5]

``exact=True`` promises more than the same real-valued levels: DequantizeLinear's float32 arithmetic,
``float(q - zero_point) * scale``, reproduces the quantizer's float32 output bit for bit, and
QuantizeLinear's ``round(x / scale)`` picks the same level for every input. ``exact=False`` (DoReFa):
the same levels in real arithmetic, but float32 rounding differs (``note`` says how).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.errors import ExportError


@dataclass(frozen=True)
class IntegerGrid:
    """``y = (q - zero_point) * scale``, integer ``q`` in ``[qmin, qmax]``.

    ``scale``: float32, 0-d (per-tensor) or 1-d with one entry per channel along ``axis``
    (per-channel). ``qmin`` / ``qmax``: the integer range the quantizer uses, which sets the ONNX
    element type (the smallest signed / unsigned type holding it) and, where that type is wider, a Clip.
    ``odd_only``: the levels are the odd integers of the range only (mid-rise grids, ``+-1``), so a
    QuantizeLinear (round to the nearest integer) cannot compute them at run time: such a grid can
    store constant weights but not quantize activations.
    """

    scale: torch.Tensor
    qmin: int
    qmax: int
    zero_point: int = 0
    axis: int | None = None
    exact: bool = True
    odd_only: bool = False
    note: str = ""

    def __post_init__(self) -> None:
        scale = self.scale.detach().to(torch.float32)
        if self.axis is None and scale.dim() != 0:
            raise ExportError(f"a per-tensor grid needs a 0-d scale, got shape {tuple(scale.shape)}")
        if self.axis is not None and scale.dim() != 1:
            raise ExportError(f"a per-channel grid needs a 1-d scale, got shape {tuple(scale.shape)}")
        if not self.qmin < self.qmax or not self.qmin <= self.zero_point <= self.qmax:
            raise ExportError(f"bad integer grid: qmin={self.qmin}, qmax={self.qmax}, "
                              f"zero_point={self.zero_point}")
        object.__setattr__(self, "scale", scale)

    @property
    def signed(self) -> bool:
        """Whether the integers can be negative (a signed element type)."""
        return self.qmin < 0

    @property
    def per_channel(self) -> bool:
        return self.axis is not None

    def _broadcast(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale.to(x.device)
        if self.axis is None:
            return scale
        shape = [1] * x.dim()
        shape[self.axis % x.dim()] = -1
        return scale.reshape(shape)

    def steps(self, x: torch.Tensor) -> torch.Tensor:
        """``x / scale + zero_point`` in float32: ``x`` in units of the step (what QuantizeLinear rounds)."""
        return x.to(torch.float32) / self._broadcast(x) + self.zero_point

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """The integers QuantizeLinear (after a Clip to ``[qmin, qmax]``) produces: ``clamp(round(x /
        scale) + zero_point, qmin, qmax)``, round half to even; float32 tensor of integers. Not defined for
        an ``odd_only`` grid (whose quantizer does not round to the nearest integer)."""
        if self.odd_only:
            raise ExportError("an odd-only (mid-rise) grid has no QuantizeLinear form: round(x / scale) "
                              "would also give the even integers")
        return torch.clamp(torch.round(self.steps(x)), self.qmin, self.qmax)

    def dequantize(self, q: torch.Tensor) -> torch.Tensor:
        """DequantizeLinear in float32: ``(q - zero_point) * scale``."""
        return (q.to(torch.float32) - self.zero_point) * self._broadcast(q)

    def fake_quant(self, x: torch.Tensor) -> torch.Tensor:
        """``dequantize(quantize(x))``: what a QuantizeLinear -> DequantizeLinear pair computes."""
        return self.dequantize(self.quantize(x))

    def codes(self, values: torch.Tensor, what: str = "tensor") -> torch.Tensor:
        """The integers of ``values``, which must lie on the grid (a quantizer's output), as int64.

        Raises :class:`ExportError` naming ``what`` when a value is off the grid or out of range, or,
        for an exact grid, when dequantizing the integers does not give back ``values`` bit for bit.
        """
        values = values.detach().to(torch.float32)
        ratio = self.steps(values)
        q = torch.round(ratio)
        off = float((ratio - q).abs().max()) if values.numel() else 0.0
        if off > 1e-3:
            raise ExportError(f"{what}: values are not on the stated grid (up to {off:.3g} of a step away "
                              "from the nearest level)")
        low, high = (int(q.min()), int(q.max())) if values.numel() else (self.qmin, self.qmax)
        if low < self.qmin or high > self.qmax:
            raise ExportError(f"{what}: integers span [{low}, {high}], outside the stated range "
                              f"[{self.qmin}, {self.qmax}]")
        if self.odd_only and bool((torch.remainder(q - self.zero_point, 2) != 1).any()):
            raise ExportError(f"{what}: the grid is stated odd-only but some integers are even")
        if self.exact and not torch.equal(self.dequantize(q), values):
            diff = float((self.dequantize(q) - values).abs().max())
            raise ExportError(f"{what}: the grid is stated exact but (q - zero_point) * scale differs from "
                              f"the quantizer's output by up to {diff:.3g}")
        return q.to(torch.int64)


def check_bits(bits: int, name: str) -> None:
    """Raise when a quantizer at ``bits`` (32: full precision) is asked for a grid."""
    if bits >= 32:
        raise ExportError(f"quantizer {name!r} is at 32 bits (full precision): it has no integer grid")


def require_tensor(x: torch.Tensor | None, name: str) -> torch.Tensor:
    """``x``, or an error saying that this quantizer's scale depends on the tensor it quantizes."""
    if x is None:
        raise ExportError(f"quantizer {name!r}: its scale depends on the tensor it quantizes; "
                          "call grid(x) with that tensor")
    return x.detach()

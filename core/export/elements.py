"""ONNX integer element types (containers) for integer grids, and the opsets that accept them.

QuantizeLinear / DequantizeLinear take int8/uint8 from opset 10 (per-channel scales from 13), int4/uint4
and int16/uint16 from opset 21, int2/uint2 from opset 25. A grid goes into the smallest container that
holds its integer range ``[qmin, qmax]`` (unsigned when ``qmin >= 0``); where the container is wider than
the range, the exporter adds a Clip to the range in front of QuantizeLinear. Bit-widths with no type of
their own (3, 5, 6, 7) therefore use the next wider container plus a Clip; mid-rise grids (EdMIPS's
Gaussian, DoReFa weights), whose ``b``-bit levels are odd integers in ``[-(2^b - 1), 2^b - 1]``, need a
container one bit wider than ``b``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.errors import ExportError

MIN_OPSET = 13  # per-channel (axis) DequantizeLinear


@dataclass(frozen=True)
class ElementType:
    """One ONNX integer type: ``name`` as in ``onnx.TensorProto`` (lower case), its width and signedness,
    and the first opset whose QuantizeLinear / DequantizeLinear accept it."""

    name: str
    bits: int
    signed: bool
    min_opset: int

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @property
    def onnx_type(self) -> int:
        from onnx import TensorProto

        return getattr(TensorProto, self.name.upper())

    @property
    def numpy_dtype(self) -> np.dtype:
        """The numpy dtype ``onnx.numpy_helper.from_array`` packs into this type (ml_dtypes for < 8 bits)."""
        if self.bits < 8:
            import ml_dtypes

            return np.dtype(getattr(ml_dtypes, self.name))
        return np.dtype(self.name)

    def holds(self, qmin: int, qmax: int) -> bool:
        return self.qmin <= qmin and qmax <= self.qmax


ELEMENT_TYPES: tuple[ElementType, ...] = (
    ElementType("uint2", 2, False, 25), ElementType("int2", 2, True, 25),
    ElementType("uint4", 4, False, 21), ElementType("int4", 4, True, 21),
    ElementType("uint8", 8, False, 10), ElementType("int8", 8, True, 10),
    ElementType("uint16", 16, False, 21), ElementType("int16", 16, True, 21),
)


def element_type_for(qmin: int, qmax: int, opset: int, what: str = "grid") -> ElementType:
    """The smallest container for integers ``[qmin, qmax]`` at ``opset`` (unsigned when ``qmin >= 0``)."""
    for element in ELEMENT_TYPES:
        if element.min_opset <= opset and element.signed == (qmin < 0) and element.holds(qmin, qmax):
            return element
    wider = next((e for e in ELEMENT_TYPES if e.signed == (qmin < 0) and e.holds(qmin, qmax)), None)
    hint = f"; {wider.name} needs opset >= {wider.min_opset}" if wider else ""
    raise ExportError(f"{what}: no ONNX integer type at opset {opset} holds [{qmin}, {qmax}]{hint}")

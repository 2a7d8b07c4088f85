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
from typing import Any

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

    def tensor(self, name: str, values: np.ndarray) -> Any:
        """An ONNX initializer of this type holding the integers ``values``. Sub-byte types are packed as
        ONNX stores them: 8 / ``bits`` values per byte, the first in the lowest bits."""
        from onnx import helper, numpy_helper

        values = np.asarray(values, dtype=np.int64)
        if values.size and (values.min() < self.qmin or values.max() > self.qmax):
            raise ExportError(f"{name}: integers outside {self.name}'s [{self.qmin}, {self.qmax}]")
        if self.bits >= 8:
            return numpy_helper.from_array(values.astype(np.dtype(self.name)), name)
        per_byte = 8 // self.bits
        flat = np.zeros(-(-values.size // per_byte) * per_byte, dtype=np.uint8)
        flat[:values.size] = values.reshape(-1) & ((1 << self.bits) - 1)
        lanes = flat.reshape(-1, per_byte).astype(np.uint8)
        packed = np.zeros(len(lanes), dtype=np.uint8)
        for i in range(per_byte):
            packed |= lanes[:, i] << (i * self.bits)
        return helper.make_tensor(name, self.onnx_type, list(values.shape), packed.tobytes(), raw=True)

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

"""Export a trained quantized model to ONNX QDQ (``mpq export``), with a report and a parity check."""

from core.export.elements import ELEMENT_TYPES, ElementType, element_type_for
from core.export.qdq import DEFAULT_OPSET, ExportResult, QuantizedTensor, export_onnx, write_model

__all__ = ["DEFAULT_OPSET", "ELEMENT_TYPES", "ElementType", "ExportResult", "QuantizedTensor",
           "element_type_for", "export_onnx", "write_model"]

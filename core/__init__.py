"""mpq core: quantizers, quantized/searchable layers, bit policies, BOPs counting, data and the engine.

Knows nothing of any paper. See docs/core_api.md for the contracts.
"""

__version__ = "0.1.0"

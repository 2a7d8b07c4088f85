"""Quantizer base class, the name registry and the compiled-path switch.

A quantizer is an ``nn.Module`` mapping a tensor to its fake-quantized value (same shape, same
dtype) with a straight-through gradient. ``bits`` is settable at run time (LLT and OneMPS switch
bits every step); ``bits == 32`` means "not quantized": :meth:`Quantizer.full_precision` runs
instead (identity, except HWGQ where it is a ReLU).

Every quantizer keeps its math in pure functions (``core.quant.functional``) called through
:func:`kernel`. With :func:`set_compiled` ``(True)`` those calls go to ``torch.compile``d versions of
the same functions (compiled lazily, once per function); the eager functions are the reference and
the fallback when compilation fails.
"""

from __future__ import annotations

import abc
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from core.errors import ConfigError, ExportError

if TYPE_CHECKING:
    from core.quant.grid import IntegerGrid

FULL_PRECISION = 32
DEFAULT_BITS: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8, FULL_PRECISION)
ROLES = ("weight", "activation")

QUANTIZERS: dict[str, type[Quantizer]] = {}

_COMPILED = False
_BACKEND = "inductor"
_COMPILED_FNS: dict[tuple[Callable, str, bool], Callable] = {}
_FAILED: set[Callable] = set()


def register_quantizer(name: str) -> Callable[[type[Quantizer]], type[Quantizer]]:
    """Class decorator adding a :class:`Quantizer` subclass to ``QUANTIZERS`` under ``name``."""

    def deco(cls: type[Quantizer]) -> type[Quantizer]:
        if name in QUANTIZERS and QUANTIZERS[name] is not cls:
            raise ConfigError(f"quantizer name {name!r} is already registered by {QUANTIZERS[name]!r}")
        QUANTIZERS[name] = cls
        cls.name = name
        return cls

    return deco


def create_quantizer(name: str, bits: int, **options: Any) -> Quantizer:
    """Build the quantizer registered as ``name`` at ``bits`` bits.

    Unknown names or options raise :class:`~core.errors.ConfigError` listing the valid ones.
    """
    if name not in QUANTIZERS:
        raise ConfigError(f"unknown quantizer {name!r}; registered quantizers: {sorted(QUANTIZERS)}")
    cls = QUANTIZERS[name]
    try:
        return cls(bits, **options)
    except TypeError as exc:
        raise ConfigError(f"bad options for quantizer {name!r}: {options} ({exc})") from exc


def merge_constants(table: dict[int, float], extra: dict[int, float] | None, name: str) -> dict[int, float]:
    """``table`` with ``extra`` ``{bits: value}`` added or overriding (bits in 1..8, values > 0): the
    per-bit constants of the fixed-step quantizers (``hwgq`` steps, ``gaussian`` coefficients)."""
    merged = dict(table)
    for b, v in (extra or {}).items():
        if not 1 <= int(b) <= 8 or float(v) <= 0:
            raise ConfigError(f"{name}: custom constants need bits in 1..8 and positive values, got {b}: {v}")
        merged[int(b)] = float(v)
    return merged


def set_compiled(enabled: bool, backend: str = "inductor") -> None:
    """Switch every quantizer's math to its ``torch.compile``d version (``True``) or eager (``False``).

    Compilation happens lazily on the first call of each function (and input signature) and is
    cached. Worth it for long runs (the fused inductor kernel is several times faster on CPU);
    leave it off where compile time dominates (tests, short jobs: the first inductor compile takes
    10 s to minutes on a small CPU). Default: off. ``backend`` is passed to ``torch.compile``
    (``"aot_eager"`` traces through dynamo and AOTAutograd without code generation; useful to check
    the traced graphs quickly).
    """
    global _COMPILED, _BACKEND
    _COMPILED = bool(enabled)
    _BACKEND = backend


def is_compiled() -> bool:
    """Whether the compiled path is on (see :func:`set_compiled`)."""
    return _COMPILED


def kernel(fn: Callable, float_constants: bool = False) -> Callable:
    """``fn`` itself (eager path) or its compiled version when the compiled path is on.

    ``float_constants``: compile Python float arguments in as constants (one graph per distinct value)
    instead of passing them as graph inputs. Worth it where the floats are a few fixed constants (EdMIPS's
    HWGQ steps and Gaussian coefficients: 1.6x faster kernels on CPU, where inductor otherwise reloads and
    converts them per vector); wrong where a float differs per layer (LSQ's gradient scale), which would
    compile once per layer.
    """
    if not _COMPILED or fn in _FAILED:
        return fn
    key = (fn, _BACKEND, float_constants)
    compiled = _COMPILED_FNS.get(key)
    if compiled is None:
        _raise_recompile_limit()
        # dynamic=True: one graph serves every tensor shape (each layer's weight has its own shape),
        # so a network compiles each function once per distinct constant (bits, fixed step), not once
        # per layer; otherwise dynamo's recompile limit (8) is hit and the rest runs eagerly.
        compiled = _guarded(fn, torch.compile(fn, backend=_BACKEND, dynamic=True), float_constants)
        _COMPILED_FNS[key] = compiled
    return compiled


RECOMPILE_LIMIT = 64


def _raise_recompile_limit() -> None:
    """Allow up to ``RECOMPILE_LIMIT`` graphs per function (e.g. 8 weight-bit candidates x 2 roles)."""
    import torch._dynamo

    cfg = torch._dynamo.config
    for key in ("recompile_limit", "cache_size_limit"):  # the name changed across torch releases
        if hasattr(cfg, key) and getattr(cfg, key) < RECOMPILE_LIMIT:
            setattr(cfg, key, RECOMPILE_LIMIT)


def _guarded(fn: Callable, compiled: Callable, float_constants: bool = False) -> Callable:
    """Call ``compiled``; if compiling fails, warn once and use the eager ``fn`` from then on.
    ``float_constants``: trace with dynamo's ``specialize_float`` (see :func:`kernel`)."""
    import torch._dynamo

    config = torch._dynamo.config.patch(specialize_float=float_constants)

    def call(*args: Any, **kwargs: Any) -> Any:
        if fn in _FAILED:
            return fn(*args, **kwargs)
        try:
            with config:
                return compiled(*args, **kwargs)
        except Exception as exc:  # compile errors come in many types (dynamo, inductor, C++ toolchain)
            _FAILED.add(fn)
            warnings.warn(
                f"torch.compile of {fn.__name__} failed ({type(exc).__name__}: {exc}); "
                "using the eager version",
                RuntimeWarning,
                stacklevel=2,
            )
            return fn(*args, **kwargs)

    call.__name__ = f"compiled_{fn.__name__}"
    return call


class Quantizer(nn.Module, metaclass=abc.ABCMeta):
    """Base class: a fake quantizer with a settable bit-width and a straight-through gradient.

    Subclasses implement :meth:`quantize` (``bits < 32``) and may override :meth:`full_precision`
    and ``supported_bits``. ``role`` is ``"weight"`` or ``"activation"``; layers pass it so a
    quantizer can pick its convention (e.g. LSQ signed for weights, unsigned for activations).
    """

    name: str = ""
    supported_bits: tuple[int, ...] = DEFAULT_BITS

    def __init__(self, bits: int, role: str = "activation") -> None:
        super().__init__()
        if role not in ROLES:
            raise ConfigError(f"quantizer role must be one of {ROLES}, got {role!r}")
        self.role = role
        self._bits = FULL_PRECISION
        self.bits = bits

    @property
    def bits(self) -> int:
        return self._bits

    @bits.setter
    def bits(self, value: int) -> None:
        value = int(value)
        self.check_bits(value)
        self._bits = value

    def check_bits(self, bits: int) -> None:
        """Raise :class:`ConfigError` when ``bits`` is not supported by this quantizer."""
        if bits not in self.supported_bits:
            raise ConfigError(
                f"{self.name or type(self).__name__} quantizer does not support {bits} bits; "
                f"supported: {list(self.supported_bits)}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._bits >= FULL_PRECISION:
            return self.full_precision(x)
        return self.quantize(x)

    def full_precision(self, x: torch.Tensor) -> torch.Tensor:
        """The ``bits == 32`` behaviour: identity."""
        return x

    @abc.abstractmethod
    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """The fake-quantized ``x`` at ``self.bits`` (< 32)."""

    def grid(self, x: torch.Tensor | None = None) -> IntegerGrid:
        """The integer grid of :meth:`quantize` at ``self.bits`` (see :mod:`core.quant.grid`); ``x`` is the
        tensor being quantized, needed where the scale depends on it. Quantizers without one raise."""
        raise ExportError(f"quantizer {self.name or type(self).__name__!r} ({type(self).__name__}) states no "
                          "integer grid, so it cannot be written as ONNX QuantizeLinear/DequantizeLinear")

    def extra_repr(self) -> str:
        return f"bits={self._bits}, role={self.role}"

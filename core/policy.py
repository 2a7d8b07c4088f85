"""Bit policies: an ordered mapping from module name to ``(w_bits, a_bits)``.

Module names are those of ``model.named_modules()``, so a policy is readable and portable between
methods: a search writes one, any final trainer and the BOPs counter read it. The file format is::

    {"layers": [{"name": "layer1.0.conv1", "w_bits": 4, "a_bits": 2}, ...],   # model order
     "meta": {"method": "edmips", "budget": ..., ...}}                           # free metadata

Every loading path validates and raises :class:`core.errors.PolicyError` naming the layer and the
problem: malformed JSON, wrong types, duplicated or unknown module names, layers the model
quantizes but the policy misses, and bit-widths the layer (or the caller) does not support.
"""

from __future__ import annotations

import difflib
import json
import numbers
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from torch import nn

from core.errors import PolicyError
from core.io import atomic_write_text, read_json

MAX_BITS = 32  #: 32 bits means "not quantized".
_ENTRY_KEYS = ("name", "w_bits", "a_bits")


def is_mixed_layer(module: nn.Module) -> bool:
    """A searchable (EdMIPS composite) layer: exposes candidates and ``pi_w``."""
    return hasattr(module, "w_candidates") and callable(getattr(module, "pi_w", None))


def is_quantized_layer(module: nn.Module) -> bool:
    """A layer with bit-widths: fixed (``.w_bits``/``.a_bits``) or searchable (candidates)."""
    return is_mixed_layer(module) or (hasattr(module, "w_bits") and hasattr(module, "a_bits"))


def policy_layer_names(model: nn.Module) -> list[str]:
    """The layers a policy for ``model`` covers, in model order.

    The quantized layers (fixed or searchable) when the model has any, except those frozen at
    their bits (``.bit_frozen``, e.g. a first conv held at 8 bits): the same names
    ``core.nn.quantize_model`` returns. For a float model (before quantization): every
    Conv2d/Linear.
    """
    modules = [(n, m) for n, m in model.named_modules() if n]
    if any(is_quantized_layer(m) for _, m in modules):
        return [n for n, m in modules if is_quantized_layer(m) and not getattr(m, "bit_frozen", False)]
    return [n for n, m in modules if isinstance(m, (nn.Conv2d, nn.Linear))]


def _layer_supported_bits(module: nn.Module, role: str) -> list[int] | None:
    """Bits the layer's own quantizer accepts (``core.quant`` quantizers list them), if known."""
    quantizer = getattr(module, "weight_quantizer" if role == "w" else "act_quantizer", None)
    supported = getattr(quantizer, "supported_bits", None)
    return sorted(supported) if supported else None


def _check_bits(value: Any, what: str, layer: str) -> int:
    """An integer bit-width in 1..32 (numpy integers, e.g. from an ILP solver, become ``int``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise PolicyError(f"layer {layer!r}: {what} must be an integer, got {value!r} "
                          f"({type(value).__name__})")
    value = int(value)
    if not 1 <= value <= MAX_BITS:
        raise PolicyError(f"layer {layer!r}: {what}={value} is unsupported (use 1..{MAX_BITS}; "
                          f"{MAX_BITS} means not quantized)")
    return value


class BitPolicy:
    """Ordered ``name -> (w_bits, a_bits)`` plus free ``meta`` (method, budget, BOPs, ...)."""

    def __init__(self, layers: Mapping[str, Sequence[int]] | Iterable[tuple[str, Sequence[int]]],
                 meta: Mapping[str, Any] | None = None) -> None:
        items = layers.items() if isinstance(layers, Mapping) else layers
        self.layers: dict[str, tuple[int, int]] = {}
        for name, bits in items:
            if not isinstance(name, str) or not name:
                raise PolicyError(f"layer names must be non-empty strings, got {name!r}")
            if name in self.layers:
                raise PolicyError(f"layer {name!r} appears twice in the policy")
            if isinstance(bits, str | bytes) or not isinstance(bits, Sequence) or len(bits) != 2:
                raise PolicyError(f"layer {name!r}: bits must be a (w_bits, a_bits) pair, got {bits!r}")
            self.layers[name] = (_check_bits(bits[0], "w_bits", name), _check_bits(bits[1], "a_bits", name))
        if meta is not None and not isinstance(meta, Mapping):
            raise PolicyError(f"policy meta must be a mapping, got {type(meta).__name__}")
        self.meta: dict[str, Any] = dict(meta or {})

    # ------------------------------------------------------------------ mapping protocol
    @property
    def names(self) -> list[str]:
        return list(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[str]:
        return iter(self.layers)

    def __contains__(self, name: object) -> bool:
        return name in self.layers

    def __getitem__(self, name: str) -> tuple[int, int]:
        try:
            return self.layers[name]
        except KeyError:
            raise PolicyError(f"layer {name!r} is not in the policy") from None

    def items(self) -> Iterable[tuple[str, tuple[int, int]]]:
        return self.layers.items()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BitPolicy):
            return NotImplemented
        return list(self.layers.items()) == list(other.layers.items()) and self.meta == other.meta

    def __repr__(self) -> str:
        return f"BitPolicy({len(self)} layers, meta={self.meta})"

    # ------------------------------------------------------------------ construction
    @classmethod
    def uniform(cls, model_or_names: nn.Module | Iterable[str], w_bits: int, a_bits: int,
                meta: Mapping[str, Any] | None = None) -> BitPolicy:
        """Every layer at ``(w_bits, a_bits)``; layers from :func:`policy_layer_names` for a model."""
        names = policy_layer_names(model_or_names) if isinstance(model_or_names, nn.Module) \
            else list(model_or_names)
        base = {"source": "uniform", "w_bits": w_bits, "a_bits": a_bits}
        return cls({n: (w_bits, a_bits) for n in names}, {**base, **(meta or {})})

    @classmethod
    def from_indices(cls, names: Sequence[str], w_idx: Sequence[int], a_idx: Sequence[int],
                     w_candidates: Sequence[int], a_candidates: Sequence[int],
                     meta: Mapping[str, Any] | None = None) -> BitPolicy:
        """Build from index lists into candidate bit-widths (the form EdMIPS publishes).

        ``w_bits[l] = w_candidates[w_idx[l]]`` and likewise for activations.
        """
        names = list(names)
        if not (len(names) == len(w_idx) == len(a_idx)):
            raise PolicyError(f"from_indices: {len(names)} names but {len(w_idx)} weight and "
                              f"{len(a_idx)} activation indices; they must be equally long")
        layers = {}
        for name, wi, ai in zip(names, w_idx, a_idx):
            for idx, cands, what in ((wi, w_candidates, "weight"), (ai, a_candidates, "activation")):
                if isinstance(idx, bool) or not isinstance(idx, int) or not 0 <= idx < len(cands):
                    raise PolicyError(f"layer {name!r}: {what} index {idx!r} is outside the "
                                      f"{len(cands)} candidates {list(cands)}")
            layers[name] = (w_candidates[wi], a_candidates[ai])
        return cls(layers, meta)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return {"layers": [{"name": n, "w_bits": w, "a_bits": a} for n, (w, a) in self.layers.items()],
                "meta": dict(self.meta)}

    @classmethod
    def from_dict(cls, data: Any, source: str = "policy") -> BitPolicy:
        """Parse the file format, raising ``PolicyError`` (prefixed with ``source``) on any problem."""
        if not isinstance(data, Mapping):
            raise PolicyError(f"{source}: expected a JSON object with 'layers' and 'meta', "
                              f"got {type(data).__name__}")
        extra = sorted(set(data) - {"layers", "meta"})
        if extra:
            raise PolicyError(f"{source}: unknown top-level key(s) {extra}; a policy has 'layers' and 'meta'")
        if "layers" not in data:
            raise PolicyError(f"{source}: missing 'layers' (a list of {{name, w_bits, a_bits}})")
        layers = data["layers"]
        if not isinstance(layers, list):
            raise PolicyError(f"{source}: 'layers' must be a list, got {type(layers).__name__}")
        pairs = []
        for i, entry in enumerate(layers):
            if not isinstance(entry, Mapping):
                raise PolicyError(f"{source}: layers[{i}] must be an object, got {type(entry).__name__}")
            label = entry.get("name", f"layers[{i}]")
            missing = [k for k in _ENTRY_KEYS if k not in entry]
            unknown = sorted(set(entry) - set(_ENTRY_KEYS))
            if missing or unknown:
                problem = f"missing {missing}" if missing else f"unknown key(s) {unknown}"
                raise PolicyError(f"{source}: layer {label!r}: {problem}; each entry has exactly "
                                  "name, w_bits, a_bits")
            pairs.append((entry["name"], (entry["w_bits"], entry["a_bits"])))
        meta = data.get("meta", {})
        if not isinstance(meta, Mapping):
            raise PolicyError(f"{source}: 'meta' must be an object, got {type(meta).__name__}")
        try:
            return cls(pairs, meta)
        except PolicyError as exc:
            raise PolicyError(f"{source}: {exc}") from None

    @classmethod
    def load(cls, path: str | os.PathLike, model: nn.Module | None = None,
             w_bits: Iterable[int] | None = None, a_bits: Iterable[int] | None = None) -> BitPolicy:
        """Read a policy file; with ``model`` also :meth:`validate` it against that model."""
        path = os.fspath(path)
        data = read_json(path, "policy file", "a policy is written by a search (e.g. `mpq <paper> search`) "
                                              "as {\"layers\": [{\"name\", \"w_bits\", \"a_bits\"}, ...]}",
                         PolicyError)
        policy = cls.from_dict(data, source=path)
        if model is not None:
            policy.validate(model, w_bits=w_bits, a_bits=a_bits)
        return policy

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically (temporary file in the same directory, then ``os.replace``)."""
        try:
            text = json.dumps(self.to_dict(), indent=2, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise PolicyError(f"policy meta is not JSON-serialisable: {exc}") from exc
        atomic_write_text(path, text + "\n")

    # ------------------------------------------------------------------ model checks
    def validate(self, model: nn.Module, w_bits: Iterable[int] | None = None,
                 a_bits: Iterable[int] | None = None, require_all: bool = True) -> None:
        """Check the policy against ``model``; raise ``PolicyError`` naming the first bad layer.

        - every name is a Conv2d/Linear (or quantized) module of ``model``;
        - with ``require_all``, no quantized layer of ``model`` is missing (a float model has none,
          so then only names and bits are checked);
        - bits are in ``w_bits`` / ``a_bits`` when given, and within a searchable layer's candidates.
        """
        modules = dict(model.named_modules())
        allowed_w = None if w_bits is None else sorted(set(w_bits))
        allowed_a = None if a_bits is None else sorted(set(a_bits))
        for name, (wb, ab) in self.layers.items():
            module = modules.get(name)
            if module is None:
                close = difflib.get_close_matches(name, list(modules), n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise PolicyError(f"layer {name!r} is not a module of {type(model).__name__}{hint}")
            if not (is_quantized_layer(module) or isinstance(module, (nn.Conv2d, nn.Linear))):
                raise PolicyError(f"layer {name!r} is a {type(module).__name__}, not a quantizable "
                                  "Conv2d/Linear layer")
            if allowed_w is not None and wb not in allowed_w:
                raise PolicyError(f"layer {name!r}: w_bits={wb} is not supported here (allowed {allowed_w})")
            if allowed_a is not None and ab not in allowed_a:
                raise PolicyError(f"layer {name!r}: a_bits={ab} is not supported here (allowed {allowed_a})")
            if is_mixed_layer(module):
                wc, ac = list(module.w_candidates), list(module.a_candidates)
                if wb not in wc or ab not in ac:
                    raise PolicyError(f"layer {name!r}: ({wb}, {ab}) is outside the searchable layer's "
                                      f"candidates w {wc}, a {ac}")
            elif is_quantized_layer(module):
                for role, bits in (("w", wb), ("a", ab)):
                    supported = _layer_supported_bits(module, role)
                    if supported is not None and bits not in supported:
                        raise PolicyError(f"layer {name!r}: {role}_bits={bits} is not supported by its "
                                          f"quantizer (supported: {supported})")
        if not require_all:
            return
        missing = [n for n in policy_layer_names(model) if n not in self.layers
                   and is_quantized_layer(modules[n])]
        if missing:
            shown = ", ".join(missing[:6]) + (f", ... ({len(missing) - 6} more)" if len(missing) > 6 else "")
            raise PolicyError(f"the policy misses {len(missing)} quantized layer(s) of "
                              f"{type(model).__name__}: {shown}")

    def apply(self, model: nn.Module, strict: bool = True) -> nn.Module:
        """Set ``.w_bits`` / ``.a_bits`` of each fixed quantized layer of ``model``.

        Validates everything first, so a bad policy changes nothing. ``strict``: every quantized
        layer of the model must be in the policy (``False`` leaves the others as they are, e.g. a
        first conv fixed at 8 bits). A searchable (mixed) layer cannot take fixed bits: discretise
        the search and rebuild with fixed layers instead.
        """
        self.validate(model, require_all=strict)
        modules = dict(model.named_modules())
        for name in self.layers:
            module = modules[name]
            if is_mixed_layer(module):
                raise PolicyError(f"layer {name!r} is a searchable {type(module).__name__}; a policy sets "
                                  "fixed bits, so build the model with fixed quantized layers "
                                  "(core.nn.quantize_model with a fixed spec) before applying it")
            if not is_quantized_layer(module):
                raise PolicyError(f"layer {name!r} is a float {type(module).__name__}; quantize the model "
                                  "first (core.nn.quantize_model), then apply the policy")
        for name, (wb, ab) in self.layers.items():
            modules[name].w_bits = wb
            modules[name].a_bits = ab
        try:  # switchable BatchNorms follow their layer's bits (LLT); an empty map only re-syncs them
            from core.nn import apply_bits
        except ImportError:
            return model
        apply_bits(model, {})
        return model

    # ------------------------------------------------------------------ display
    def table(self) -> str:
        """A plain-text table: index, layer name, weight and activation bits, then the metadata."""
        width = max([len("layer")] + [len(n) for n in self.layers])
        lines = [f"{'#':>3}  {'layer':<{width}}  {'W':>2}  {'A':>2}"]
        for i, (n, (w, a)) in enumerate(self.layers.items()):
            lines.append(f"{i:>3}  {n:<{width}}  {w:>2}  {a:>2}")
        if self.meta:
            lines.append("meta: " + ", ".join(f"{k}={v}" for k, v in self.meta.items()))
        return "\n".join(lines)

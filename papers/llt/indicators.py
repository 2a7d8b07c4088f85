"""LLT importance indicators: the file schema, its I/O, and extraction from a trained model.

The importance indicators of a layer are its LSQ step sizes, one per candidate bit-width, for its weight
quantizer and for its activation (input) quantizer (main paper Sec. 3; supplementary Sec. 2).
``indicators.json`` uses the schema of the official release (the ResNet-50 file in
``../shared/reference/limpq-resnet50-indicators.json``)::

    {"bits": [6, 5, 4, 3, 2],
     "layer_name": ["layer1.0.conv1", ...],              # searchable layers, model order
     "weight": {"layer1.0.conv1": {"6": s, "5": s, ...}, ...},
     "act":    {"layer1.0.conv1": {"6": s, ...}, ...},
     ...any other key (e.g. "source", "meta") is kept as metadata}

so indicators trained by the official code and by mpq are interchangeable. Layer names written by a
DDP-wrapped model start with ``module.``; :meth:`ImportanceIndicators.names_for_model` strips it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch.nn as nn

from core.errors import PolicyError
from core.io import atomic_write_json, read_json

DDP_PREFIX = "module."


@dataclass
class ImportanceIndicators:
    """Per-layer, per-bit learned step sizes (``weight`` and ``act``) of the searchable layers."""

    bits: list[int]
    layer_names: list[str]
    weight: dict[str, dict[int, float]]
    act: dict[str, dict[int, float]]
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ checks and views
    def validate(self) -> None:
        """Raise :class:`PolicyError` unless every layer has a finite, positive step for every bit."""
        if not self.bits or len(set(self.bits)) != len(self.bits):
            raise PolicyError(f"indicators: 'bits' must be a non-empty list of distinct ints, "
                              f"got {self.bits}")
        if not self.layer_names:
            raise PolicyError("indicators: 'layer_name' is empty; nothing to search")
        if len(set(self.layer_names)) != len(self.layer_names):
            raise PolicyError("indicators: 'layer_name' lists a layer twice")
        for kind, table in (("weight", self.weight), ("act", self.act)):
            missing = [n for n in self.layer_names if n not in table]
            if missing:
                raise PolicyError(f"indicators: '{kind}' has no entry for layer(s) {missing[:5]}; "
                                  "every name in 'layer_name' needs a weight and an act entry")
            for name in self.layer_names:
                row = table[name]
                absent = [b for b in self.bits if b not in row]
                if absent:
                    raise PolicyError(f"indicators: '{kind}' of layer {name!r} lacks bit(s) {absent} "
                                      f"(file bits: {self.bits})")
                bad = {b: row[b] for b in self.bits if not (math.isfinite(row[b]) and row[b] > 0)}
                if bad:
                    raise PolicyError(f"indicators: '{kind}' of layer {name!r} has step(s) {bad} (bit: "
                                      "step); a learned LSQ step is a finite number > 0")

    def table(self, kind: str, bits: list[int] | None = None) -> np.ndarray:
        """``(layers, bits)`` float64 array of the ``weight`` or ``act`` indicators (columns: ``bits``)."""
        if kind not in ("weight", "act"):
            raise ValueError(f"kind must be 'weight' or 'act', got {kind!r}")
        bits = list(self.bits if bits is None else bits)
        unknown = [b for b in bits if b not in self.bits]
        if unknown:
            raise PolicyError(f"bit-width(s) {unknown} have no indicators; the file holds bits {self.bits}")
        src = self.weight if kind == "weight" else self.act
        return np.array([[src[n][b] for b in bits] for n in self.layer_names], dtype=np.float64)

    def names_for_model(self) -> list[str]:
        """Layer names with a leading DDP ``module.`` removed (the names of the unwrapped model)."""
        return [n[len(DDP_PREFIX):] if n.startswith(DDP_PREFIX) else n for n in self.layer_names]

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict:
        out: dict = {k: v for k, v in self.meta.items() if k not in ("bits", "layer_name", "weight", "act")}
        out["bits"] = list(self.bits)
        out["layer_name"] = list(self.layer_names)
        out["weight"] = {n: {str(b): float(self.weight[n][b]) for b in self.bits} for n in self.layer_names}
        out["act"] = {n: {str(b): float(self.act[n][b]) for b in self.bits} for n in self.layer_names}
        return out

    @classmethod
    def from_dict(cls, data: dict, where: str = "indicators") -> ImportanceIndicators:
        if not isinstance(data, dict):
            raise PolicyError(f"{where}: expected a JSON object, got {type(data).__name__}")
        missing = [k for k in ("bits", "layer_name", "weight", "act") if k not in data]
        if missing:
            raise PolicyError(f"{where}: missing key(s) {missing}; expected 'bits', 'layer_name', 'weight', "
                              "'act' (the schema of the official LIMPQ indicators)")
        try:
            bits = [int(b) for b in data["bits"]]
            names = [str(n) for n in data["layer_name"]]
            tables = {kind: {str(n): {int(b): float(v) for b, v in row.items()}
                             for n, row in data[kind].items()} for kind in ("weight", "act")}
        except (TypeError, ValueError, AttributeError) as exc:
            raise PolicyError(f"{where}: malformed value ({exc}); bits are ints, steps are numbers keyed "
                              "by the bit as a string") from exc
        meta = {k: v for k, v in data.items() if k not in ("bits", "layer_name", "weight", "act")}
        return cls(bits=bits, layer_names=names, weight=tables["weight"], act=tables["act"], meta=meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ImportanceIndicators:
        data = read_json(path, "indicators file", "create one with `mpq llt indicators -c CONFIG` or pass "
                                                  "the official release converted to JSON", PolicyError)
        return cls.from_dict(data, where=f"indicators file {str(path)!r}")

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically (temporary file in the same folder, then ``os.replace``)."""
        atomic_write_json(Path(path), self.to_dict())


def extract_indicators(model: nn.Module, bits: list[int], layer_names: list[str] | None = None,
                       meta: dict | None = None) -> ImportanceIndicators:
    """Read the learned steps ``s_w[l][b]`` and ``s_a[l][b]`` of every searchable layer (the indicators).

    ``layer_names`` defaults to every layer whose weight and activation quantizers hold one step per
    candidate bit (``.step_for``); a DDP wrapper's ``module.`` prefix is dropped.
    """
    base = model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model
    if layer_names is None:
        layer_names = [name for name, mod in base.named_modules() if _has_per_bit_steps(mod)]
        if not layer_names:
            raise PolicyError("the model has no layer with per-bit LSQ steps; build it with "
                              "papers.llt.onetime.build_indicator_model (switchable LSQ quantizers)")
    weight: dict[str, dict[int, float]] = {}
    act: dict[str, dict[int, float]] = {}
    for name in layer_names:
        try:
            mod = base.get_submodule(name)
        except AttributeError as exc:
            raise PolicyError(f"layer {name!r} not found in the model") from exc
        if not _has_per_bit_steps(mod):
            raise PolicyError(f"layer {name!r} has no per-bit LSQ steps (not a searchable layer)")
        weight[name] = {b: _scalar_step(mod.weight_quantizer, b, name) for b in bits}
        act[name] = {b: _scalar_step(mod.act_quantizer, b, name) for b in bits}
    return ImportanceIndicators(bits=list(bits), layer_names=list(layer_names), weight=weight, act=act,
                                meta=dict(meta or {}))


def _scalar_step(quantizer: nn.Module, bits: int, name: str) -> float:
    step = quantizer.step_for(bits).detach()
    if step.numel() != 1:
        raise PolicyError(f"layer {name!r}: a per-channel step ({step.numel()} values) is no single "
                          "indicator; LLT uses per-tensor LSQ (per_channel=False)")
    return float(step.reshape(()).item())


def _has_per_bit_steps(mod: nn.Module) -> bool:
    wq, aq = getattr(mod, "weight_quantizer", None), getattr(mod, "act_quantizer", None)
    return (wq is not None and aq is not None and hasattr(wq, "step_for") and hasattr(aq, "step_for")
            and bool(getattr(wq, "candidate_bits", None)))

"""How a run directory tells ``mpq export`` to rebuild its final model: ``export.json``.

A paper's final trainer writes ``export.json`` next to its checkpoints (:func:`write_export_spec`); it
holds everything core needs, and nothing paper-specific::

    {"format": 1,
     "model": "edmips_resnet18", "model_kwargs": {}, "model_factory": null,
     "num_classes": 10, "input_size": [3, 32, 32],
     "quant": {"kind": "fixed", "w_quant": "gaussian", "a_quant": "hwgq", "first": "float", ...},
     "policy": {"layers": [...], "meta": {...}},
     "checkpoint": "checkpoints/last.pt",
     "meta": {"paper": "edmips", "row": "..."}}

The exporter rebuilds the model exactly as the trainers do: ``core.models.build_model(model, num_classes,
**model_kwargs)`` (or ``model_factory``, a ``"package.module:function"`` taking ``num_classes=`` and the
kwargs, for networks outside core's registry), then ``core.nn.quantize_model(model, QuantSpec(**quant))``,
then ``BitPolicy.apply`` (``quant`` and ``policy`` null: a float model), then loads ``checkpoint``
(relative to the file's folder) strictly through ``core.engine.load_checkpoint``. A ``model_factory`` may
also build the quantized network itself (e.g. a child assembled from a supernet): ``quant`` null and
``policy`` the bits it was built with (recorded in the ONNX metadata, not applied again).

A new paper follows the same contract: after its final training, call :func:`write_export_spec` with its
model name, the ``QuantSpec`` it quantized with, the policy and the checkpoint holding the final weights.
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.errors import CheckpointError, ConfigError, ExportError, MpqError
from core.io import atomic_path, atomic_write_json

SPEC_FILE = "export.json"
SPEC_FORMAT = 1


@dataclass
class ExportSpec:
    """The contents of ``export.json`` (see the module notes). ``checkpoint`` is relative to the
    directory of the file (absolute paths are kept as they are)."""

    model: str
    num_classes: int
    input_size: tuple[int, int, int]
    checkpoint: str
    quant: dict[str, Any] | None = None
    policy: dict[str, Any] | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    model_factory: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    format: int = SPEC_FORMAT

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["input_size"] = list(self.input_size)
        return data

    @classmethod
    def from_dict(cls, data: Any, source: str) -> ExportSpec:
        if not isinstance(data, dict):
            raise ExportError(f"{source}: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        missing = sorted(k for k in ("model", "num_classes", "input_size", "checkpoint") if k not in data)
        if unknown or missing:
            problem = f"unknown key(s) {unknown}" if unknown else f"missing {missing}"
            raise ExportError(f"{source}: {problem}; an export spec has {sorted(known)}")
        if data.get("format", SPEC_FORMAT) != SPEC_FORMAT:
            raise ExportError(f"{source}: format {data['format']} is not supported (this mpq reads "
                              f"{SPEC_FORMAT})")
        size = data["input_size"]
        if not (isinstance(size, list) and len(size) == 3
                and all(isinstance(v, int) and v > 0 for v in size)):
            raise ExportError(f"{source}: input_size must be [C, H, W] positive integers, got {size!r}")
        return cls(**{**data, "input_size": tuple(size)})


def write_export_spec(directory: str | os.PathLike, spec: ExportSpec) -> Path:
    """Write ``<directory>/export.json`` atomically; returns its path."""
    path = Path(directory) / SPEC_FILE
    atomic_write_json(path, spec.to_dict(), indent=2)
    return path


def save_weights(path: str | os.PathLike, model: nn.Module) -> Path:
    """Save ``{"model": state_dict}`` atomically: the final weights when they differ from the last training
    checkpoint (e.g. after BatchNorm re-estimation). Loads with ``core.engine.load_checkpoint``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save({"model": {k: v.detach().cpu() for k, v in model.state_dict().items()}}, tmp)
    return path


def find_export_spec(run_dir: str | os.PathLike) -> Path:
    """``run_dir/export.json``, or the one ``export.json`` one level below it (``train/``, ``finetune/``)."""
    path = Path(run_dir)
    if path.is_file():
        return path
    if not path.is_dir():
        raise ExportError(f"run directory {str(path)!r} does not exist")
    if (path / SPEC_FILE).is_file():
        return path / SPEC_FILE
    found = sorted(path.glob(f"*/{SPEC_FILE}"))
    if len(found) == 1:
        return found[0]
    if found:
        raise ExportError(f"{path} holds several final models ({', '.join(str(p) for p in found)}); "
                          "pass the one to export")
    raise ExportError(f"no {SPEC_FILE} in {path} or its sub-directories: it is written when a paper's final "
                      "training finishes (edmips train, llt finetune). For other runs use --model, --policy "
                      "and --checkpoint")


def load_export_spec(path: str | os.PathLike) -> ExportSpec:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"cannot read export spec {path}: {exc}") from None
    return ExportSpec.from_dict(data, str(path))


def _factory(spec: ExportSpec) -> Any:
    module_name, _, attr = (spec.model_factory or "").partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ExportError(f"model_factory {spec.model_factory!r} is not an importable "
                          f"'package.module:function' ({exc})") from None


def build_spec_model(spec: ExportSpec) -> tuple[nn.Module, Any]:
    """The quantized model of ``spec`` with the policy's bits, before its weights are loaded; and the
    :class:`~core.policy.BitPolicy` (``None`` for a float model)."""
    from core.models import build_model
    from core.nn import QuantSpec, quantize_model
    from core.policy import BitPolicy

    if spec.model_factory:
        try:
            model = _factory(spec)(num_classes=spec.num_classes, **spec.model_kwargs)
        except TypeError as exc:
            raise ConfigError(f"cannot build {spec.model_factory} with {spec.model_kwargs}: {exc}") from None
    else:
        model = build_model(spec.model, num_classes=spec.num_classes, **spec.model_kwargs)
    if spec.quant is None:
        if spec.policy is None:
            return model, None
        if not spec.model_factory:
            raise ExportError("the export spec has a policy but no quant section (how to quantize the model)")
        # a factory that builds the quantized network itself (e.g. a child assembled from a supernet):
        # the policy is the one it was built with, recorded, not applied again
        return model, BitPolicy.from_dict(spec.policy, source="export spec policy")
    try:
        quant = QuantSpec(**spec.quant)
    except TypeError as exc:
        raise ConfigError(f"bad quant section {spec.quant}: {exc}") from None
    quantize_model(model, quant)
    if spec.policy is None:
        raise ExportError("the export spec quantizes the model but has no policy (the bits of each layer)")
    policy = BitPolicy.from_dict(spec.policy, source="export spec policy")
    policy.apply(model)
    return model, policy


def _state_dict(state: Any, path: Path) -> dict[str, torch.Tensor]:
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not state \
            or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a training checkpoint ({{'model': state_dict, ...}}) or a "
                              "state_dict")
    if all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_weights(model: nn.Module, path: str | os.PathLike, what: str = "the model") -> None:
    """Load a checkpoint into ``model`` strictly; a key or shape mismatch is one :class:`CheckpointError`
    naming ``what`` (e.g. the model and policy it was built from)."""
    from core.engine import load_checkpoint

    path = Path(path)
    state = _state_dict(load_checkpoint(path), path)
    own = model.state_dict()
    problems = [f"missing {k}" for k in own if k not in state] + \
        [f"unexpected {k}" for k in state if k not in own] + \
        [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
         for k, v in own.items() if k in state and state[k].shape != v.shape]
    if problems:
        shown = "; ".join(problems[:4]) + (f"; ... ({len(problems) - 4} more)" if len(problems) > 4 else "")
        raise CheckpointError(f"checkpoint {path} does not match {what}: {shown}. Export a checkpoint with "
                              "the model, options and policy it was trained with")
    model.load_state_dict(state, strict=True)


def model_from_spec(spec: ExportSpec, base: str | os.PathLike = ".") -> tuple[nn.Module, Any]:
    """Build ``spec``'s model, load its checkpoint (relative to ``base``) and return ``(model, policy)``."""
    model, policy = build_spec_model(spec)
    checkpoint = Path(spec.checkpoint)
    if not checkpoint.is_absolute():
        checkpoint = Path(base) / checkpoint
    quant = spec.quant or {}
    what = f"{spec.model} " + (f"quantized with {quant.get('w_quant')}/{quant.get('a_quant')} at the "
                               "policy's bits" if quant else "(float)")
    load_weights(model, checkpoint, what)
    return model.eval(), policy


def model_from_run(run_dir: str | os.PathLike) -> tuple[nn.Module, Any, ExportSpec, Path]:
    """``(model, policy, spec, spec path)`` of the final model of a run directory."""
    path = find_export_spec(run_dir)
    spec = load_export_spec(path)
    try:
        model, policy = model_from_spec(spec, path.parent)
    except MpqError as exc:
        raise type(exc)(f"{path}: {exc}") from None
    return model, policy, spec, path

"""One name -> model registry: core's own models first, then torchvision, then timm.

``build_model(name, num_classes, pretrained=PATH)`` never downloads anything: ``pretrained`` is a
local checkpoint file holding a raw ``state_dict`` or ``{"model": state_dict}`` (also accepted:
``{"state_dict": ...}``, and a ``module.`` prefix left by DistributedDataParallel).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from core.errors import CheckpointError, ConfigError

ModelFactory = Callable[..., nn.Module]

#: core's own models: name -> factory(num_classes=..., **kwargs).
MODELS: dict[str, ModelFactory] = {}


def register_model(name: str | None = None, *, input_size: tuple[int, int, int] = (3, 224, 224)
                   ) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator adding a factory ``f(num_classes=..., **kwargs) -> nn.Module`` to :data:`MODELS`.

    ``input_size`` (C, H, W) is the model's natural input; it is kept as ``factory.input_size`` and
    used by the registry-wide smoke tests and as a hint for counting.
    """

    def decorator(factory: ModelFactory) -> ModelFactory:
        key = name or factory.__name__
        if key in MODELS and MODELS[key] is not factory:
            raise ConfigError(f"model name {key!r} is already registered by {MODELS[key].__module__}")
        factory.input_size = tuple(input_size)
        MODELS[key] = factory
        return factory

    return decorator


def init_weights(model: nn.Module, linear_std: float | None = None) -> None:
    """He (fan-out) normal conv weights, BatchNorm weight 1 / bias 0 and, with ``linear_std``,
    normal(0, linear_std) linear weights with zero bias, in module order (so a seed gives the same model)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0, linear_std)
            nn.init.zeros_(m.bias)


def _torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _timm_names() -> list[str]:
    try:
        import timm
    except ImportError:  # timm is a dependency, but a stripped install still gets core + torchvision
        return []
    return list(timm.list_models())


def list_models(source: str = "all") -> list[str]:
    """Names accepted by :func:`build_model`; ``source`` is ``core``, ``torchvision``, ``timm`` or ``all``."""
    if source == "core":
        return sorted(MODELS)
    if source == "torchvision":
        return _torchvision_names()
    if source == "timm":
        return _timm_names()
    if source == "all":
        return sorted(MODELS) + _torchvision_names() + _timm_names()
    raise ConfigError(f"unknown model source {source!r}; use core, torchvision, timm or all")


def _unknown_model(name: str) -> ConfigError:
    core, tv = sorted(MODELS), _torchvision_names()
    close = difflib.get_close_matches(name, core + tv + _timm_names(), n=6, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return ConfigError(
        f"unknown model {name!r}.{hint} core models: {', '.join(core)}; torchvision models such as "
        f"{', '.join(tv[:8])}, ...; any timm name (see timm.list_models())."
    )


def build_model(name: str, num_classes: int = 1000, pretrained: str | os.PathLike | None = None,
                **kwargs: Any) -> nn.Module:
    """Build ``name`` from core's registry, else torchvision, else timm (always without downloads).

    ``pretrained``: a local checkpoint path loaded strictly (see :func:`load_pretrained`).
    Raises ``ConfigError`` for an unknown name or bad keyword arguments and ``CheckpointError`` for
    a missing, unreadable or mismatched checkpoint.
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"model name must be a non-empty string, got {name!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    try:
        if name in MODELS:
            model = MODELS[name](num_classes=num_classes, **kwargs)
        elif name in _torchvision_names():
            import torchvision

            model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
        else:
            try:
                import timm
            except ImportError:
                timm = None
            if timm is None or not timm.is_model(name):
                raise _unknown_model(name)
            model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    except TypeError as exc:  # an unexpected keyword argument of the factory
        raise ConfigError(f"cannot build model {name!r} with options {kwargs}: {exc}") from exc
    if pretrained is not None:
        load_pretrained(model, pretrained)
    return model


def _extract_state_dict(obj: Any, path: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise CheckpointError(
            f"{path}: expected a state_dict (name -> tensor) or {{'model': state_dict}}; "
            f"got {type(obj).__name__}")
    state = dict(obj)
    if all(k.startswith("module.") for k in state):  # saved from a DistributedDataParallel wrapper
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _summarise(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_pretrained(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a local checkpoint into ``model`` strictly (``torch.load(weights_only=True)``).

    Missing or unexpected keys and shape mismatches raise ``CheckpointError`` naming them.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"pretrained checkpoint {path!r} does not exist (pretrained= takes a local "
                              "file path; nothing is downloaded)")
    from core.engine.checkpoint import safe_torch_load

    obj = safe_torch_load(path, map_location="cpu")
    state = _extract_state_dict(obj, path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_summarise(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_summarise(unexpected)}")
        raise CheckpointError(f"checkpoint {path!r} does not match {type(model).__name__}: "
                              + "; ".join(parts) + " (was it saved from the same model name and options?)")
    wrong = [f"{k} (checkpoint {tuple(state[k].shape)}, model {tuple(v.shape)})"
             for k, v in own.items() if tuple(state[k].shape) != tuple(v.shape)]
    if wrong:
        raise CheckpointError(f"checkpoint {path!r} has shape mismatches: {_summarise(wrong, 4)} "
                              "(check num_classes and the model options)")
    model.load_state_dict(state, strict=True)
    return model

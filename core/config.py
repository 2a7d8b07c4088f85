"""Typed YAML configs: nested dataclasses, ``_base_`` inheritance and ``a.b=value`` overrides.

A config is a (possibly nested) ``@dataclass``. :func:`load_config` reads a YAML file (which may say
``_base_: other.yaml`` or a list of such paths, relative to the file), merges command-line overrides
``key.sub=value`` (values parsed as YAML, so ``bits=[2,3,4]`` is a list and ``lr=0.1`` a float), and
builds the dataclass, validating every key and type on the way:

>>> from dataclasses import dataclass, field
>>> @dataclass
... class Demo:
...     optim: OptimConfig = field(default_factory=OptimConfig)
...     bits: list[int] = field(default_factory=lambda: [2, 4])
>>> load_config(Demo, None, ["optim.lr=0.05", "bits=[2,3]"]).optim.lr
0.05

Errors (:class:`~core.errors.ConfigError`) name the dotted key; an unknown key lists the valid ones.

Impossible values (``epochs=0``, ``lr=-1``, ``batch_size=0`` ...) are refused too: a schema may define
``validate(self)``, which :func:`build_config` calls on every (nested) section once the config is
built; it checks fields with :func:`require` / :func:`require_range`, and the error names the full
dotted key (``config key search.optim.lr: must be > 0, got -1.0``). Paper schemas reuse the helpers.
"""

from __future__ import annotations

import dataclasses
import operator
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from core.errors import ConfigError
from core.io import atomic_write_text

__all__ = [
    "ModelConfig", "DataConfig", "OptimConfig", "ScheduleConfig", "RunConfig", "ExperimentConfig",
    "load_config", "build_config", "config_to_dict", "config_to_yaml", "save_config", "parse_overrides",
    "read_yaml", "require", "require_range", "validate_config",
]

BASE_KEY = "_base_"


# --------------------------------------------------------------------------- value checks
class FieldError(ConfigError):
    """An impossible value of one field; :func:`validate_config` prefixes the section's path."""

    def __init__(self, key: str, message: str):
        super().__init__(f"config key {key}: {message}")
        self.key, self.message = key, message


def require(ok: bool, key: str, message: str) -> None:
    """In a schema's ``validate()``: raise for field ``key`` (relative to the section) unless ``ok``."""
    if not ok:
        raise FieldError(key, message)


def require_range(section: Any, names: str | list[str], *, gt: float | None = None, ge: float | None = None,
                  lt: float | None = None, le: float | None = None) -> None:
    """In a schema's ``validate()``: each field in ``names`` (``None`` values are allowed) must lie
    within the bounds; list/tuple values are checked item by item."""
    for name in [names] if isinstance(names, str) else names:
        value = getattr(section, name)
        for i, v in enumerate(value) if isinstance(value, (list, tuple)) else [(None, value)]:
            if v is None:
                continue
            key = name if i is None else f"{name}[{i}]"
            for bound, ok, word in ((gt, operator.gt, ">"), (ge, operator.ge, ">="), (lt, operator.lt, "<"),
                                    (le, operator.le, "<=")):
                if bound is not None:
                    require(ok(v, bound), key, f"must be {word} {bound:g}, got {v!r}")


def validate_config(cfg: Any, prefix: str = "") -> None:
    """Call ``validate()`` of ``cfg`` and of every nested config section; a :class:`FieldError` is
    re-raised with the dotted path of its section (``search.optim.lr``)."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        return
    for f in dataclasses.fields(cfg):
        validate_config(getattr(cfg, f.name), f"{prefix}{f.name}.")
    check = getattr(cfg, "validate", None)
    if callable(check):
        try:
            check()
        except FieldError as exc:
            raise ConfigError(f"config key {prefix}{exc.key}: {exc.message}") from None


# --------------------------------------------------------------------------- common sub-schemas
@dataclasses.dataclass
class ModelConfig:
    """The network, built by ``core.engine.build_model_from_config`` with ``core.models.build_model``.
    ``num_classes=None`` takes the dataset's; ``pretrained`` is a local weights file (nothing is ever
    downloaded); ``kwargs`` go to the model's constructor."""

    name: str = "digits_resnet"
    num_classes: int | None = None
    pretrained: str | None = None
    kwargs: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class DataConfig:
    """Dataset and loader. ``image_size=None`` means the dataset's default (``dataset_info``)."""

    name: str = "digits"
    root: str | None = None
    image_size: int | None = None
    resize_size: int | None = None  # imagenet val: Resize(resize_size) then CenterCrop(image_size)
    interpolation: Literal["bilinear", "bicubic", "nearest"] = "bilinear"
    augment: bool = True
    batch_size: int = 128  # global batch size (split across DDP ranks)
    val_batch_size: int | None = None
    workers: int = 4
    skip_corrupt: bool = False
    fast_decode: bool = True  # imagenet: torchvision.io decoding + tensor transforms (False: PIL reference)

    def validate(self) -> None:
        require_range(self, ["batch_size", "val_batch_size", "image_size", "resize_size"], ge=1)
        require_range(self, "workers", ge=0)


@dataclasses.dataclass
class OptimConfig:
    """Optimizer plus the per-step knobs of the default classification step."""

    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    label_smoothing: float = 0.0
    grad_clip: float | None = None  # None: no clipping
    grad_clip_mode: Literal["norm", "value"] = "norm"
    # no weight decay on 1-D parameters (BN, per-tensor quantizer steps) and biases, as timm's
    # create_optimizer does (used when the optimizer is built from a module; see core.engine.optim)
    no_decay_1d: bool = False

    def validate(self) -> None:
        require_range(self, ["lr", "grad_clip"], gt=0)
        require_range(self, "weight_decay", ge=0)
        require_range(self, ["momentum", "betas", "label_smoothing"], ge=0, lt=1)


@dataclasses.dataclass
class ScheduleConfig:
    """Learning-rate schedule; ``warmup_epochs`` of linear warm-up precede any of them."""

    name: Literal["step", "multistep", "cosine", "constant"] = "cosine"
    epochs: int = 90
    warmup_epochs: float = 0.0
    warmup_start_factor: float = 0.0  # lr factor at step 0 of the warm-up
    step_size: int = 30  # "step": lr * gamma ** (epoch // step_size)
    gamma: float = 0.1
    milestones: list[int] = dataclasses.field(default_factory=list)  # "multistep"
    min_lr: float = 0.0  # "cosine": final lr
    per_step: bool = True  # update every iteration (False: only at epoch boundaries)
    cooldown_epochs: float = 0.0  # "cosine": the last cooldown_epochs of `epochs` stay at min_lr
    warmup_prefix: bool = True  # "cosine" starts after the warm-up (False: at 0; the warm-up overrides it)

    def validate(self) -> None:
        require_range(self, ["epochs", "step_size"], ge=1)
        require_range(self, ["warmup_epochs", "warmup_start_factor", "min_lr", "milestones"], ge=0)
        require_range(self, "gamma", gt=0)


@dataclasses.dataclass
class RunConfig:
    """Where and how a run executes. ``resume``: ``auto`` (continue the run recorded in out_dir, if it is
    the same run), ``none`` (start afresh; the old run's files move to ``out_dir/.previous/``),
    ``force`` (continue although identity keys changed; the change is recorded in run.json), or a
    checkpoint path (see :mod:`core.engine.identity` and ``docs/core_api.md``)."""

    out_dir: str = "runs/default"
    seed: int = 0
    device: str = "auto"
    resume: str = "auto"
    deterministic: bool = False
    compile: bool = False
    log_every: int = 50
    eval_every: int = 1
    keep_checkpoints: int | None = None  # per-epoch checkpoints kept (None: all); last.pt always
    tensorboard: bool = False
    sync_bn: bool = False  # DDP: BatchNorm statistics over the global batch (all ranks)
    dist_timeout_s: float = 1800.0  # DDP: how long a collective waits for a stalled rank

    def validate(self) -> None:
        require_range(self, ["log_every", "eval_every"], ge=1)
        require_range(self, "keep_checkpoints", ge=0)
        require_range(self, "dist_timeout_s", gt=0)
        require(bool(self.out_dir), "out_dir", "must not be empty")


@dataclasses.dataclass
class ExperimentConfig:
    """The sections every paper's config shares. A paper's schema subclasses it, re-declares a section
    to change its defaults, and adds its own stages; ``mpq config show PAPER -c NAME`` prints the result.
    ``table_row``: id of the paper's table row the config reproduces (copied into ``results.json``)."""

    table_row: str | None = None
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)


# --------------------------------------------------------------------------- YAML reading
def read_yaml(path: str | os.PathLike, _seen: tuple[Path, ...] = (), defaults: dict | None = None) -> dict:
    """Read a YAML mapping, resolving ``_base_`` (str or list, relative to the file) recursively.
    ``defaults`` go over the ``_base_`` files and under the file's own keys (e.g. a ``run.out_dir``
    named after this file, which a base's own ``run.out_dir`` must not replace)."""
    path = Path(path).expanduser().resolve()
    if path in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path))
        raise ConfigError(f"circular _base_ inheritance: {chain}")
    if not path.is_file():
        where = f" (inherited by {_seen[-1]})" if _seen else ""
        raise ConfigError(f"config file not found: {path}{where}")
    try:
        data = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text ({exc}); save the config as UTF-8") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"malformed YAML in {path}: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level of a config must be a mapping, got {type(data).__name__}")
    bases = data.pop(BASE_KEY, None)
    if bases is None:
        return _deep_merge(defaults or {}, data)
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: _base_ must be a path or a list of paths, got {bases!r}")
    merged: dict = {}
    for base in bases:
        merged = _deep_merge(merged, read_yaml(path.parent / base, (*_seen, path)))
    return _deep_merge(_deep_merge(merged, defaults or {}), data)


def _deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_overrides(overrides: list[str] | None) -> dict:
    """``["a.b=1", "c=[2,3]"]`` -> ``{"a": {"b": 1}, "c": [2, 3]}`` (values parsed as YAML)."""
    out: dict = {}
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"malformed override {item!r}: expected key=value, e.g. optim.lr=0.1")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML: {exc}") from None
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = value
    return out


# --------------------------------------------------------------------------- typed construction
def load_config(schema_cls: type, path: str | os.PathLike | None = None,
                overrides: list[str] | None = None, defaults: dict | None = None) -> Any:
    """Read ``path`` (optional), apply ``overrides`` and build a validated ``schema_cls`` instance;
    ``defaults`` (with a ``path``) replace values of its ``_base_`` files, not its own (:func:`read_yaml`)."""
    data = read_yaml(path, defaults=defaults) if path else {}
    data = _deep_merge(data, parse_overrides(overrides))
    return build_config(schema_cls, data)


def build_config(schema_cls: type, data: dict, prefix: str = "") -> Any:
    """Build a dataclass from a plain mapping, validating keys and types (used by load_config)."""
    if not dataclasses.is_dataclass(schema_cls):
        raise TypeError(f"{schema_cls!r} is not a dataclass")
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping of "
                          f"{schema_cls.__name__} fields, got {_show(data)}")
    hints = typing.get_type_hints(schema_cls)
    fields = {f.name: f for f in dataclasses.fields(schema_cls) if f.init}
    for key in data:
        if key not in fields:
            valid = ", ".join(fields) or "(none)"
            raise ConfigError(f"unknown config key {prefix}{key!s}: valid keys"
                              f"{' under ' + prefix.rstrip('.') if prefix else ''} are: {valid}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            value = data[name]
            default = _field_default(f)
            if isinstance(value, dict) and dataclasses.is_dataclass(default):
                # a partial section overrides the parent schema's default for it, key by key
                # (e.g. `search.schedule.epochs=5` keeps the schedule name the schema set)
                value = _deep_merge(config_to_dict(default), value)
            kwargs[name] = _coerce(value, hints[name], f"{prefix}{name}")
        elif dataclasses.is_dataclass(hints[name]) and f.default is dataclasses.MISSING \
                and f.default_factory is dataclasses.MISSING:
            kwargs[name] = build_config(hints[name], {}, f"{prefix}{name}.")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required config key {prefix}{name} "
                              f"({_type_name(hints[name])}); set it in the YAML or as {prefix}{name}=...")
    cfg = schema_cls(**kwargs)
    if not prefix:
        validate_config(cfg)
    return cfg


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"config key {key}: expected {_type_name(tp)}, got {_show(value)}")
    if origin is Literal:
        if value in args and not (isinstance(value, bool) and not any(isinstance(a, bool) for a in args)):
            return value
        raise ConfigError(f"config key {key}: expected one of {list(args)}, got {_show(value)}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return build_config(tp, value, f"{key}.") if isinstance(value, dict) else _type_error(key, tp, value)
    if origin in (list, tuple, set, frozenset) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            _type_error(key, tp, value)
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise ConfigError(f"config key {key}: expected {_type_name(tp)} ({len(args)} items), "
                                  f"got {_show(value)}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return (origin or tp)(items)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            _type_error(key, tp, value)
        if not args:
            return dict(value)
        return {_coerce(k, args[0], f"{key}.<key>"): _coerce(v, args[1], f"{key}.{k}")
                for k, v in value.items()}
    if tp is bool:
        return value if isinstance(value, bool) else _type_error(key, tp, value)
    if tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return value if ok else _type_error(key, tp, value)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        return _type_error(key, tp, value)
    if tp is str:
        return value if isinstance(value, str) else _type_error(key, tp, value)
    if tp is Path:
        return Path(value) if isinstance(value, (str, Path)) else _type_error(key, tp, value)
    if isinstance(tp, type):
        return value if isinstance(value, tp) else _type_error(key, tp, value)
    raise TypeError(f"config key {key}: unsupported annotation {tp!r} in the schema")


def _type_error(key: str, tp: Any, value: Any) -> Any:
    raise ConfigError(f"config key {key}: expected {_type_name(tp)}, got {_show(value)}")


def _show(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _type_name(tp: Any) -> str:
    if dataclasses.is_dataclass(tp):
        return f"a mapping ({tp.__name__})"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


# --------------------------------------------------------------------------- output
def config_to_dict(cfg: Any) -> Any:
    """A dataclass (or nested containers) as plain YAML/JSON types (tuples -> lists, Paths -> str)."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, dict):
        return {str(k): config_to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple, set, frozenset)):
        return [config_to_dict(v) for v in cfg]
    if isinstance(cfg, os.PathLike):
        return os.fspath(cfg)
    return cfg


class _Dumper(yaml.SafeDumper):
    """Block-style mappings, but lists of scalars on one line (``bits: [2, 3, 4]``)."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(not isinstance(v, (dict, list)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def config_to_yaml(cfg: Any) -> str:
    """``cfg`` (a dataclass or mapping) as YAML text, keys in schema order (``mpq config show``)."""
    return yaml.dump(config_to_dict(cfg), Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def save_config(cfg: Any, path: str | os.PathLike) -> None:
    """Write ``cfg`` as YAML atomically (temporary file in the same directory, then ``os.replace``)."""
    atomic_write_text(path, config_to_yaml(cfg))

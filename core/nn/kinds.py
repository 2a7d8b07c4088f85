"""Layer kinds: how :func:`core.nn.quantize_model` turns a float ``nn.Conv2d`` / ``nn.Linear`` into a
quantized one, by name, from one registry (as quantizers are created by name).

Core registers ``fixed`` (:class:`~core.nn.QConv2d` / :class:`~core.nn.QLinear` at fixed bits),
``switchable`` (the same layers with per-bit quantizer state, optional per-bit BatchNorm) and
``composite`` (the searchable composite convolution, :class:`~core.nn.CompositeConv2d`). A paper adds its
own kind without editing core::

    from core.nn import register_layer_kind

    @register_layer_kind("my_kind", layers=(MyConv2d, MyLinear), options={"pairs": [[4, 4]]},
                         post=my_post_pass)
    def build_my_layer(module, spec, name, ctx):
        return MyConv2d.from_float(module, pairs=ctx.options["pairs"], ...)

    quantize_model(model, QuantSpec(kind="my_kind", options={"pairs": [[2, 4], [4, 4]]}))

- the builder ``build(module, spec, name, ctx) -> nn.Module`` is called once per quantizable float layer
  (``name`` as in ``model.named_modules()``), in module order; it returns the replacement;
- ``layers``: the module classes the builder creates; :func:`~core.nn.quantizable_layers` returns the
  modules of these classes (not ``bit_frozen``), and ``quantize_model`` refuses a model that has them;
- ``options``: the kind's own options and their defaults; a spec's ``options`` may override them, an
  unknown option is a :class:`~core.errors.ConfigError`; the builder reads them resolved in ``ctx.options``;
- ``w_quant`` / ``a_quant``: the quantizers used when the spec names none;
- ``post(model, spec, ctx)``: an optional model-level pass run once after every layer is swapped
  (``ctx.names`` is then complete): swap the BatchNorms after the layers, group layers by block and
  attach shared selection parameters, ...

A module (layer or anything a post-pass attaches) that holds architecture parameters lists their
attribute names in a class attribute ``arch_parameter_names``; :func:`~core.nn.arch_parameters` collects
them (each parameter once, also when a module is shared by several layers).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from core.errors import ConfigError

EDGE_OPTIONS = ("float", "w8", "w8a8", "quantize")
#: EdMIPS's decoupled search space (eq. 17), the default candidates of a spec.
DEFAULT_W_CANDIDATES = (1, 2, 3, 4)
DEFAULT_A_CANDIDATES = (2, 3, 4)


@dataclass
class QuantSpec:
    """How to quantize a model.

    kind: a registered layer kind (:func:`list_layer_kinds`); core's are ``fixed`` (QConv2d/QLinear at
        ``w_bits``/``a_bits``), ``switchable`` (QConv2d/QLinear whose quantizers hold per-bit parameters
        when they can, e.g. LSQ ``candidate_bits`` over ``w_candidates``/``a_candidates``; starts at
        ``w_bits``/``a_bits``) and ``composite`` (CompositeConv2d/CompositeLinear searching over
        ``w_candidates``/``a_candidates``).
    w_quant / a_quant: registered quantizer names; ``None``: the kind's default (``lsq`` for ``fixed``
        and ``switchable``, ``gaussian``/``hwgq`` for ``composite``).
    w_options / a_options: keyword options of the weight / input quantizers.
    options: the kind's own options (defaults filled in from its registration): ``switchable``:
        ``switchable_bn`` (False; True: a ``BatchNorm2d`` right after a quantizable conv in
        ``named_modules`` order, of matching width, becomes a :class:`SwitchableBatchNorm2d` over
        ``w_candidates``); ``composite``: ``share_weight`` (True: eq. 16; False: eq. 15) and
        ``alpha_init`` (0.01).
    first / last: the first and last conv/linear in ``named_modules`` order: ``float`` (kept),
        ``w8`` (8-bit weights, input not quantized: LLT's first conv), ``w8a8`` (8-bit weights and
        input), or ``quantize`` (built by the kind like every other layer and returned as quantizable).
        ``w8``/``w8a8`` are fixed QConv2d/QLinear with ``edge_w_quant``/``edge_a_quant``, whatever the
        kind; the first layer's input quantizer is made signed when it has a ``signed`` option
        (normalised images are signed).
    strict: a module that subclasses Conv2d/Linear without being one (its forward may differ) is an
        error; ``strict=False`` leaves it float with a warning.
    """

    kind: str = "fixed"
    w_quant: str | None = None
    a_quant: str | None = None
    w_bits: int = 4
    a_bits: int = 4
    w_candidates: list[int] = field(default_factory=lambda: list(DEFAULT_W_CANDIDATES))
    a_candidates: list[int] = field(default_factory=lambda: list(DEFAULT_A_CANDIDATES))
    w_options: dict[str, Any] = field(default_factory=dict)
    a_options: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    first: str = "float"
    last: str = "float"
    edge_w_quant: str = "lsq"
    edge_a_quant: str = "lsq"
    strict: bool = True

    def __post_init__(self) -> None:
        kind = get_layer_kind(self.kind)
        for key in ("first", "last"):
            if getattr(self, key) not in EDGE_OPTIONS:
                value = getattr(self, key)
                raise ConfigError(f"QuantSpec.{key} must be one of {list(EDGE_OPTIONS)}, got {value!r}")
        kind.resolve_options(self.options)
        self.w_quant = self.w_quant or kind.w_quant
        self.a_quant = self.a_quant or kind.a_quant


@dataclass
class KindContext:
    """What a kind's builder and post-pass see of one :func:`~core.nn.quantize_model` call.

    model: the model being converted (layers before the current one are already swapped).
    options: the kind's options, the spec's ``options`` over the kind's defaults.
    modules: ``model.named_modules()`` as it was before any swap (a float layer's neighbours, e.g. the
        BatchNorm that follows it, can be found here).
    names: the quantizable layers built so far, in order (complete in the post-pass).
    first / last: the names of the model's first and last conv/linear (whatever ``spec.first``/``last``).
    shared: scratch space shared by every builder call and the post-pass of this conversion (e.g. one
        selection module per block, created by the first layer of the block).
    """

    model: nn.Module
    options: dict[str, Any]
    modules: list[tuple[str, nn.Module]]
    first: str
    last: str
    names: list[str] = field(default_factory=list)
    shared: dict[str, Any] = field(default_factory=dict)


LayerBuilder = Callable[[nn.Module, QuantSpec, str, KindContext], nn.Module]
PostPass = Callable[[nn.Module, QuantSpec, KindContext], None]


@dataclass(frozen=True)
class LayerKind:
    """A registered layer kind (see the module docstring)."""

    name: str
    build: LayerBuilder
    layers: tuple[type[nn.Module], ...]
    options: Mapping[str, Any]
    w_quant: str
    a_quant: str
    post: PostPass | None = None

    def resolve_options(self, given: Mapping[str, Any] | None) -> dict[str, Any]:
        """The kind's defaults updated by ``given``; an unknown option raises ``ConfigError``."""
        given = dict(given or {})
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            valid = sorted(self.options) or "none"
            raise ConfigError(f"unknown option(s) {unknown} for layer kind {self.name!r}; valid: {valid}")
        return {**_copy_defaults(self.options), **given}

    @property
    def summary(self) -> str:
        """The first line of the builder's docstring."""
        return (self.build.__doc__ or "").strip().split("\n")[0]


def _copy_defaults(options: Mapping[str, Any]) -> dict[str, Any]:
    # list / dict defaults are copied so that a builder mutating its options cannot change the kind
    return {k: (type(v)(v) if isinstance(v, (list, dict, set)) else v) for k, v in options.items()}


LAYER_KINDS: dict[str, LayerKind] = {}


def register_layer_kind(name: str, *, layers: tuple[type[nn.Module], ...],
                        options: Mapping[str, Any] | None = None, w_quant: str = "lsq", a_quant: str = "lsq",
                        post: PostPass | None = None) -> Callable[[LayerBuilder], LayerBuilder]:
    """Decorator registering ``build(module, spec, name, ctx) -> nn.Module`` as the layer kind ``name``.

    ``layers``: the classes the builder creates; ``options``: the kind's options with their defaults;
    ``w_quant``/``a_quant``: default quantizer names; ``post(model, spec, ctx)``: optional model-level
    pass after every layer is swapped. Returns the builder unchanged. Registering a name twice with
    another builder raises ``ConfigError``.
    """
    if not isinstance(layers, tuple) or not layers or not all(isinstance(c, type) and issubclass(c, nn.Module)
                                                              for c in layers):
        raise ConfigError(f"layer kind {name!r}: layers must be a non-empty tuple of nn.Module classes")

    def decorator(build: LayerBuilder) -> LayerBuilder:
        old = LAYER_KINDS.get(name)
        if old is not None and old.build is not build:
            raise ConfigError(f"layer kind {name!r} is already registered by "
                              f"{old.build.__module__}.{old.build.__qualname__}")
        LAYER_KINDS[name] = LayerKind(name, build, layers, dict(options or {}), w_quant, a_quant, post)
        return build

    return decorator


def get_layer_kind(name: str) -> LayerKind:
    """The registered kind ``name``; an unknown name raises ``ConfigError`` listing the registered ones."""
    if name not in LAYER_KINDS:
        raise ConfigError(f"unknown layer kind {name!r}; registered layer kinds: {list_layer_kinds()} "
                          "(a paper's kind is registered when its package is imported)")
    return LAYER_KINDS[name]


def list_layer_kinds() -> list[str]:
    """Names of the registered layer kinds, sorted."""
    return sorted(LAYER_KINDS)


def quantized_layer_types() -> tuple[type[nn.Module], ...]:
    """Every class a registered kind creates (without duplicates, in registration order)."""
    return tuple(dict.fromkeys(c for k in LAYER_KINDS.values() for c in k.layers))


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` in place of the submodule ``name`` of ``model``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def following_batchnorms(ctx: KindContext) -> list[tuple[str, nn.BatchNorm2d, str]]:
    """``(bn_name, bn, layer_name)``: each ``nn.BatchNorm2d`` that directly follows a quantizable conv of
    ``ctx.names`` in the pre-swap ``named_modules`` order and has the conv's output width (``conv -> bn``)."""
    names = set(ctx.names)
    out = []
    for (prev_name, prev), (name, m) in zip(ctx.modules, ctx.modules[1:]):
        if prev_name in names and type(m) is nn.BatchNorm2d and isinstance(prev, nn.Conv2d) \
                and m.num_features == prev.out_channels:
            out.append((name, m, prev_name))
    return out

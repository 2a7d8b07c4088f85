"""The OneMPS supernet: the ``onemps`` layer kind (``SupernetConv2d`` / ``SupernetLinear``) and
conditional BatchNorm.

Per searchable layer k (abstract and slides):

- weight bit options B^w and activation bit options B^x, each option with its own quantizer (LSQ: a
  learned step per option) and, for weights, its OWN float kernel ``w_i`` (not shared across options:
  ``.weight`` is option 0, ``.extra_weights[i - 1]`` option i);
- gates ``z^w ~ GumbelSoftmax(f_theta(eta)_k^w)``, ``z^x ~ GumbelSoftmax(f_theta(eta)_k^x)`` from the
  probability model shared by every layer (:mod:`papers.onemps.probability`);
- the layer computes ``conv(sum_j z^x_j A_j(x), sum_i z^w_i Q_i(w_i))``.

Gate modes (``ProbabilityModel.mode``): ``gumbel_hard`` (OneMPS, VIMPS): a straight-through one-hot sample,
so the forward runs ONE path, the activation quantizer and kernel of the sampled options; the gradient
of every gate is the straight-through one of the one-hot sum, ``<dL/dW, Q_i(w_i)>`` and
``<dL/dx_q, A_j(x)>``, computed for the unselected options in the backward pass only
(:class:`_StraightThroughSelect`, nothing extra is stored); ``gumbel_soft`` (DNAS: the Concrete
relaxation, every path mixed) and ``softmax`` (the EdMIPS proxy: pi itself, no sampling) mix every option.
In ``eval()`` a layer runs the most probable options at the model's current eta; :func:`pin_architecture`
fixes every layer to given options (a child network).

Conditional BatchNorm (:class:`ConditionalBatchNorm2d`): the BN that follows a supernet conv keeps one
``BatchNorm2d`` per weight-bit option (default), per activation-bit option or per pair (kind option
``conditional_bn``); the layer selects it with the option it runs (the argmax of soft gates).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from core.errors import ConfigError
from core.nn import (
    KindContext,
    QuantSpec,
    following_batchnorms,
    register_layer_kind,
    replace_module,
)
from core.nn.qlayers import build_quantizer, copy_float_params, layer_like
from core.quant import FULL_PRECISION, LSQQuantizer, kernel
from papers.onemps.probability import ProbabilityModel, build_probability_model, sample_gates

KIND = "onemps"
CONDITIONAL_BN = ("weight", "activation", "pair", "none")


class ConditionalBatchNorm2d(nn.Module):
    """One ``BatchNorm2d`` per key (``bns[str(key)]``); ``active`` is set by the supernet layer before it."""

    def __init__(self, bn: nn.BatchNorm2d, keys: int) -> None:
        super().__init__()
        self.num_features = bn.num_features
        self.bns = nn.ModuleList()
        for _ in range(keys):
            sub = nn.BatchNorm2d(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
                                 device=bn.weight.device if bn.affine else None)
            sub.load_state_dict(bn.state_dict())
            self.bns.append(sub)
        self.active = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bns[self.active](x)

    def extra_repr(self) -> str:
        return f"{self.num_features}, keys={len(self.bns)}, active={self.active}"


class _StraightThroughSelect(torch.autograd.Function):
    """Forward: ``y = Q_s(v_s)`` of the selected option ``s`` (already computed, its graph kept). Backward:
    ``dL/dy`` unchanged to ``y`` and, for every option ``i``, ``dL/dz_i = <dL/dy, Q_i(v_i)>``, the
    straight-through gate gradient of ``sum_i z_i Q_i(v_i)`` at a one-hot ``z``. ``Q_i(v_i)`` of the
    unselected options is computed here under ``no_grad`` (values only), so the forward pass runs one path
    and stores nothing more; the unselected kernels and quantizers get no gradient from the data term, as
    in the one-hot sum. ``values``: one tensor per option (the option kernels), or one shared by all
    (the layer input)."""

    @staticmethod
    def forward(ctx: Any, y: torch.Tensor, z: torch.Tensor, index: int, quantizers: Sequence[nn.Module],
                *values: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(y, *values)
        ctx.index, ctx.quantizers = index, quantizers
        return y.view_as(y)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        y, *values = ctx.saved_tensors
        flat = grad.reshape(-1)
        with torch.no_grad():
            dz = torch.stack([torch.dot(flat, y.reshape(-1)) if i == ctx.index
                              else quantized_dot(q, values[i % len(values)], flat)
                              for i, q in enumerate(ctx.quantizers)])
        return (grad, dz.to(grad.dtype), None, None) + (None,) * len(values)


def _lsq_value_dot(grad: torch.Tensor, x: torch.Tensor, step: torch.Tensor, qn: int, qp: int) -> torch.Tensor:
    """``<grad, clamp(round(x / s), Q_n, Q_p) * s>``: LSQ's value (``lsq_fake_quant`` without the tensors
    that carry its surrogate gradients) dotted with ``grad``, one fused pass when compiled."""
    return torch.dot(grad, (torch.clamp(torch.round(x.reshape(-1) / step), qn, qp) * step))


def quantized_dot(quantizer: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``<grad, quantizer(x)>`` (flattened), the gate gradient of an unselected option. A per-tensor LSQ
    quantizer whose step is initialised goes through :func:`_lsq_value_dot` (via ``core.quant.kernel``, so
    ``run.compile`` fuses it); any other quantizer is simply called."""
    if isinstance(quantizer, LSQQuantizer) and not quantizer.per_channel and quantizer.bits < FULL_PRECISION:
        slot = quantizer.candidate_bits.index(quantizer.bits) if quantizer.candidate_bits else 0
        # LSQ's own record of the steps it has used is checked first: reading the buffer is a
        # device-to-host copy, which would stall a GPU twice per layer and step
        if slot in getattr(quantizer, "_ready", ()) or bool(quantizer.initialized[slot]):
            qn, qp = quantizer.qrange(quantizer.bits)
            return kernel(_lsq_value_dot)(grad, x, quantizer.step_for(quantizer.bits), qn, qp)
    return torch.dot(grad, quantizer(x).reshape(-1))


class _SupernetMixin:
    """What ``SupernetConv2d`` and ``SupernetLinear`` share (see the module docstring)."""

    weight: nn.Parameter
    bias: nn.Parameter | None
    training: bool

    def _init_supernet(self, out_channels: int, in_channels: int, w_candidates: Sequence[int],
                       a_candidates: Sequence[int], w_quant: str, a_quant: str, w_options: dict | None,
                       a_options: dict | None, index: int) -> None:
        self.w_candidates = [int(b) for b in w_candidates]
        self.a_candidates = [int(b) for b in a_candidates]
        for role, cands in (("w", self.w_candidates), ("a", self.a_candidates)):
            if not cands or len(set(cands)) != len(cands):
                raise ConfigError(f"{role}_candidates must be a non-empty list of distinct bits, got {cands}")
        self.w_quantizers = nn.ModuleList(
            build_quantizer(w_quant, b, "weight", w_options, out_channels) for b in self.w_candidates)
        self.a_quantizers = nn.ModuleList(
            build_quantizer(a_quant, b, "activation", a_options, in_channels) for b in self.a_candidates)
        # one kernel per weight-bit option (not shared): .weight is option 0, extra_weights[i - 1] option i
        self.extra_weights = nn.ParameterList(nn.Parameter(self.weight.detach().clone())
                                              for _ in self.w_candidates[1:])
        self.index = int(index)  # position among the model's searchable layers (its logits in f_theta)
        self.bit_model: ProbabilityModel | None = None  # set by the kind's post-pass (shared module)
        self.bn_key = "weight"
        self._bn: list[ConditionalBatchNorm2d] = []  # the BN after this layer (not a submodule)
        self.pinned: tuple[int, int] | None = None
        self.last_gates: tuple[torch.Tensor, torch.Tensor] | None = None
        self.last_choice: tuple[int, int] | None = None
        self.bit_frozen = False

    # -- weights -------------------------------------------------------------------------------
    def option_weight(self, i: int) -> torch.Tensor:
        """The float kernel of weight-bit option ``i``."""
        return self.weight if i == 0 else self.extra_weights[i - 1]

    def option_weights(self) -> list[torch.Tensor]:
        return [self.option_weight(i) for i in range(len(self.w_candidates))]

    def _copy_from_float(self, module: nn.Module) -> None:
        copy_float_params(module, self)
        with torch.no_grad():
            for w in self.extra_weights:
                w.copy_(module.weight)

    # -- probabilities (also what core.bops and core.policy read of a searchable layer) ----------
    def logits(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.bit_model is None:
            raise ConfigError("this supernet layer has no probability model; build it with "
                              "quantize_model(model, QuantSpec(kind='onemps', ...))")
        return self.bit_model.layer_logits(self.index)

    def pi_w(self) -> torch.Tensor:
        """pi^w_k at the probability model's current eta."""
        return self.logits()[0].softmax(0)

    def pi_a(self) -> torch.Tensor:
        return self.logits()[1].softmax(0)

    def expected_w_bits(self) -> torch.Tensor:
        return torch.dot(self.pi_w(), torch.tensor(self.w_candidates, dtype=self.weight.dtype,
                                                   device=self.weight.device))

    def expected_a_bits(self) -> torch.Tensor:
        return torch.dot(self.pi_a(), torch.tensor(self.a_candidates, dtype=self.weight.dtype,
                                                   device=self.weight.device))

    # -- forward -------------------------------------------------------------------------------
    def _gates(self) -> tuple[torch.Tensor | None, torch.Tensor | None, int, int]:
        """``(z^w, z^x, i, j)``: gates (None: run option i / j alone) and the options run (or argmax)."""
        if self.pinned is not None:
            return None, None, *self.pinned
        step = self.bit_model.step_gates(self.index) if self.training and self.bit_model is not None else None
        if step is not None:  # a training step: the gates ProbabilityModel.begin_step sampled
            (zw, za), (i, j) = step
            self.last_gates = (zw, za)
            return zw, za, i, j
        lw, la = self.logits()
        if not self.training:
            return None, None, int(lw.argmax()), int(la.argmax())
        zw, za = (sample_gates(logits, self.bit_model.mode, self.bit_model.tau) for logits in (lw, la))
        self.last_gates = (zw, za)
        return zw, za, int(zw.detach().argmax()), int(za.detach().argmax())

    def _select_bn(self, i: int, j: int) -> None:
        if self._bn:
            key = {"weight": i, "activation": j, "pair": i * len(self.a_candidates) + j}[self.bn_key]
            self._bn[0].active = key

    def _quantized_input(self, x: torch.Tensor, za: torch.Tensor | None, j: int, hard: bool) -> torch.Tensor:
        if za is None:
            return self.a_quantizers[j](x)
        if hard:
            return _StraightThroughSelect.apply(self.a_quantizers[j](x), za, j, list(self.a_quantizers), x)
        return sum(za[k] * q(x) for k, q in enumerate(self.a_quantizers))

    def _quantized_weight(self, zw: torch.Tensor | None, i: int, hard: bool) -> torch.Tensor:
        if zw is None:
            return self.w_quantizers[i](self.option_weight(i))
        if hard:
            return _StraightThroughSelect.apply(self.w_quantizers[i](self.option_weight(i)), zw, i,
                                                list(self.w_quantizers), *self.option_weights())
        return sum(zw[k] * q(self.option_weight(k)) for k, q in enumerate(self.w_quantizers))

    def _inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        zw, za, i, j = self._gates()
        self.last_choice = (i, j)
        self._select_bn(i, j)
        hard = self.bit_model is not None and self.bit_model.mode == "gumbel_hard"
        return self._quantized_input(x, za, j, hard), self._quantized_weight(zw, i, hard)

    def _supernet_repr(self) -> str:
        return (f", w_candidates={self.w_candidates}, a_candidates={self.a_candidates}, index={self.index}"
                + (f", pinned={self.pinned}" if self.pinned is not None else ""))


class SupernetConv2d(_SupernetMixin, nn.Conv2d):
    """OneMPS supernet convolution (module docstring); ``from_float`` copies the float kernel into every
    weight option."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1,
                 padding: Any = 0, dilation: Any = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", device: Any = None, dtype: Any = None, *,
                 w_candidates: Sequence[int] = (2, 4, 8), a_candidates: Sequence[int] = (2, 4, 8),
                 w_quant: str = "lsq", a_quant: str = "lsq", w_options: dict | None = None,
                 a_options: dict | None = None, index: int = 0) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)
        self._init_supernet(out_channels, in_channels, w_candidates, a_candidates, w_quant, a_quant,
                            w_options, a_options, index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, w = self._inputs(x)
        return self._conv_forward(x, w, self.bias)

    @classmethod
    def from_float(cls, module: nn.Conv2d, **spec: Any) -> SupernetConv2d:
        new = layer_like(cls, module, **spec)
        new._copy_from_float(module)
        return new

    def extra_repr(self) -> str:
        return super().extra_repr() + self._supernet_repr()


class SupernetLinear(_SupernetMixin, nn.Linear):
    """OneMPS supernet linear layer; options as :class:`SupernetConv2d`."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device: Any = None,
                 dtype: Any = None, *, w_candidates: Sequence[int] = (2, 4, 8),
                 a_candidates: Sequence[int] = (2, 4, 8), w_quant: str = "lsq", a_quant: str = "lsq",
                 w_options: dict | None = None, a_options: dict | None = None, index: int = 0) -> None:
        super().__init__(in_features, out_features, bias, device, dtype)
        self._init_supernet(out_features, in_features, w_candidates, a_candidates, w_quant, a_quant,
                            w_options, a_options, index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, w = self._inputs(x)
        return F.linear(x, w, self.bias)

    @classmethod
    def from_float(cls, module: nn.Linear, **spec: Any) -> SupernetLinear:
        new = layer_like(cls, module, **spec)
        new._copy_from_float(module)
        return new

    def extra_repr(self) -> str:
        return super().extra_repr() + self._supernet_repr()


SUPERNET_LAYERS = (SupernetConv2d, SupernetLinear)
KIND_OPTIONS: dict[str, Any] = {
    "probability_model": "mlp",  # mlp (f_theta, OneMPS) | direct (per-layer logits: VIMPS and its cases)
    "mlp_depth": 2,
    "mlp_width": 64,
    "eta_range": [0.01, 10.0],  # [eta0, eta1] of f_theta's input normalisation
    "gates": "gumbel_soft",  # gumbel_hard | gumbel_soft | softmax (the trainer sets its configuration's)
    "tau": 1.0,
    "conditional_bn": "weight",  # weight | activation | pair | none
    "signed_inputs": [],  # layers whose input can be negative: signed activation quantizers
}


def _attach(model: nn.Module, spec: QuantSpec, ctx: KindContext) -> None:
    """Post-pass: ONE probability model for every layer, and the conditional BatchNorms after the
    convolutions."""
    opts = ctx.options
    if opts["conditional_bn"] not in CONDITIONAL_BN:
        raise ConfigError(f"unknown conditional_bn {opts['conditional_bn']!r}; "
                          f"choose one of {list(CONDITIONAL_BN)}")
    layers = [model.get_submodule(n) for n in ctx.names]
    sizes = [(len(m.w_candidates), len(m.a_candidates)) for m in layers]
    bit_model = build_probability_model(opts["probability_model"], sizes, opts["eta_range"],
                                        int(opts["mlp_depth"]), int(opts["mlp_width"]))
    bit_model.set_gates(opts["gates"], float(opts["tau"]))
    param = layers[0].weight
    bit_model.to(device=param.device, dtype=param.dtype)
    # a submodule of the first layer only; the others hold a plain reference. (A module registered under
    # several names would be listed once by parameters(), but torch.func.functional_call, which the BOPs
    # counter's meta pass uses, restores such a module's tensors wrongly.)
    layers[0].bit_model = bit_model
    for m in layers:
        if m is not layers[0]:
            object.__setattr__(m, "bit_model", bit_model)
        m.bn_key = opts["conditional_bn"]
    if opts["conditional_bn"] == "none":
        return
    for bn_name, bn, layer_name in following_batchnorms(ctx):
        layer = model.get_submodule(layer_name)
        keys = {"weight": len(layer.w_candidates), "activation": len(layer.a_candidates),
                "pair": len(layer.w_candidates) * len(layer.a_candidates)}[opts["conditional_bn"]]
        cbn = ConditionalBatchNorm2d(bn, keys)
        replace_module(model, bn_name, cbn)
        layer._bn = [cbn]


@register_layer_kind(KIND, layers=SUPERNET_LAYERS, options=KIND_OPTIONS, w_quant="lsq", a_quant="lsq",
                     post=_attach)
def supernet_layer(module: nn.Module, spec: QuantSpec, name: str, ctx: KindContext
                   ) -> SupernetConv2d | SupernetLinear:
    """OneMPS supernet conv / linear: one kernel and quantizer per bit option, gates from f_theta(eta)."""
    a_options = dict(spec.a_options)
    if name in ctx.options["signed_inputs"]:
        a_options["signed"] = True
    cls = SupernetConv2d if isinstance(module, nn.Conv2d) else SupernetLinear
    return cls.from_float(module, w_candidates=spec.w_candidates, a_candidates=spec.a_candidates,
                          w_quant=spec.w_quant, a_quant=spec.a_quant, w_options=dict(spec.w_options),
                          a_options=a_options, index=len(ctx.names))


# ---------------------------------------------------------------------------- model-level helpers
def supernet_layers(model: nn.Module) -> list[tuple[str, SupernetConv2d | SupernetLinear]]:
    """The supernet layers of ``model`` in model order (their ``index`` order)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, SUPERNET_LAYERS)]


def probability_model(model: nn.Module) -> ProbabilityModel:
    """The probability model the supernet layers of ``model`` share."""
    for m in model.modules():
        if isinstance(m, ProbabilityModel):
            return m
    raise ConfigError(f"{type(model).__name__} has no OneMPS probability model; is it a supernet?")


def pin_architecture(model: nn.Module, choice: dict[str, tuple[int, int]] | None) -> None:
    """Fix every supernet layer to the option indices ``choice[name] = (i, j)`` (a child network), or
    release them (``None``)."""
    for name, m in supernet_layers(model):
        if choice is None:
            m.pinned = None
            continue
        if name not in choice:
            raise ConfigError(f"the architecture has no options for supernet layer {name!r}")
        i, j = choice[name]
        if not (0 <= i < len(m.w_candidates) and 0 <= j < len(m.a_candidates)):
            raise ConfigError(f"layer {name!r}: option indices {(i, j)} out of range")
        m.pinned = (int(i), int(j))


def most_probable(model: nn.Module, eta: float) -> dict[str, tuple[int, int]]:
    """``argmax pi_theta(eta)`` per layer and role: ``{name: (i, j)}`` option indices."""
    bit_model = probability_model(model)
    with torch.no_grad():
        logits = bit_model.logits(eta)
    return {name: (int(logits[m.index][0].argmax()), int(logits[m.index][1].argmax()))
            for name, m in supernet_layers(model)}


def choice_bits(model: nn.Module, choice: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    """Option indices -> ``{name: (w_bits, a_bits)}``."""
    layers = dict(supernet_layers(model))
    return {n: (layers[n].w_candidates[i], layers[n].a_candidates[j]) for n, (i, j) in choice.items()}

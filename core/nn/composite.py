"""Composite convolution (EdMIPS, Cai & Vasconcelos, CVPR 2020, eq. 10-16): ``CompositeConv2d``,
``CompositeLinear`` and the ``composite`` layer kind.

One layer holds architecture logits ``alpha_w`` (weight bits) and ``alpha_a`` (activation bits),
decoupled search spaces (default w {1, 2, 3, 4}, a {2, 3, 4}). Its forward is ONE convolution
(eq. 14) of the activation mixture (eq. 12) with the composite weight (eq. 16, or eq. 15 with
unshared weights), so the step cost stays nearly flat as candidates are added.

Gates: ``softmax`` (EdMIPS, default), ``gumbel_soft`` / ``gumbel_hard`` (``core.nn.gates.gumbel_softmax``
with temperature ``tau``; hard = straight-through one-hot), ``single_path`` (one candidate sampled per
forward with probability pi; the one-hot gate carries a straight-through gradient to pi, so
``d loss / d pi_i`` is the loss's sensitivity to candidate ``i``). In ``eval()`` the stochastic
modes are deterministic: ``gumbel_soft`` uses pi, ``gumbel_hard`` / ``single_path`` the argmax.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from core.errors import ConfigError
from core.nn.gates import gumbel_softmax
from core.nn.kinds import (
    DEFAULT_A_CANDIDATES,
    DEFAULT_W_CANDIDATES,
    KindContext,
    QuantSpec,
    register_layer_kind,
)
from core.nn.qlayers import build_quantizer, copy_float_params, layer_like
from core.quant.gaussian import GaussianQuantizer
from core.quant.hwgq import HWGQQuantizer
from core.quant.mixture import gaussian_mixture, hwgq_mixture

SAMPLING_MODES = ("softmax", "gumbel_soft", "gumbel_hard", "single_path")


def sample_gates(alpha: torch.Tensor, mode: str, tau: float, training: bool) -> torch.Tensor:
    """Mixture weights over candidates from the logits ``alpha`` under a sampling ``mode``."""
    pi = torch.softmax(alpha, dim=0)
    if mode == "softmax" or (mode == "gumbel_soft" and not training):
        return pi
    if not training:
        return F.one_hot(pi.argmax(), pi.numel()).to(pi.dtype)
    if mode in ("gumbel_soft", "gumbel_hard"):
        return gumbel_softmax(alpha, tau=tau, hard=mode == "gumbel_hard", dim=0)
    index = torch.multinomial(pi.detach(), 1)[0]
    one_hot = F.one_hot(index, pi.numel()).to(pi.dtype)
    return one_hot + pi - pi.detach()


class _CompositeMixin:
    """The search machinery shared by :class:`CompositeConv2d` and :class:`CompositeLinear`."""

    weight: nn.Parameter
    arch_parameter_names = ("alpha_w", "alpha_a")  # collected by core.nn.arch_parameters

    def _init_composite(
        self,
        out_channels: int,
        in_channels: int,
        w_candidates: Sequence[int],
        a_candidates: Sequence[int],
        w_quant: str,
        a_quant: str,
        w_options: dict[str, Any] | None,
        a_options: dict[str, Any] | None,
        share_weight: bool,
        alpha_init: float,
    ) -> None:
        self.w_candidates = [int(b) for b in w_candidates]
        self.a_candidates = [int(b) for b in a_candidates]
        for kind, cands in (("w", self.w_candidates), ("a", self.a_candidates)):
            if not cands or len(set(cands)) != len(cands):
                raise ConfigError(f"{kind}_candidates must be a non-empty list of distinct bits, got {cands}")
        dev, dt = self.weight.device, self.weight.dtype
        init = float(alpha_init)
        self.alpha_w = nn.Parameter(torch.full((len(self.w_candidates),), init, device=dev, dtype=dt))
        self.alpha_a = nn.Parameter(torch.full((len(self.a_candidates),), init, device=dev, dtype=dt))
        # the candidate bits as tensors (eq. 13), moved with the module; not part of the state dict
        self.register_buffer("w_bits_vector", torch.tensor(self.w_candidates, device=dev, dtype=dt),
                             persistent=False)
        self.register_buffer("a_bits_vector", torch.tensor(self.a_candidates, device=dev, dtype=dt),
                             persistent=False)
        self.w_quantizers = nn.ModuleList(
            build_quantizer(w_quant, b, "weight", w_options, out_channels) for b in self.w_candidates
        )
        self.a_quantizers = nn.ModuleList(
            build_quantizer(a_quant, b, "activation", a_options, in_channels) for b in self.a_candidates
        )
        self.share_weight = bool(share_weight)
        if not self.share_weight and len(self.w_candidates) > 1:
            # eq. (15): candidate 0 uses .weight, candidates 1.. use extra_weights[i - 1]
            n_extra = len(self.w_candidates) - 1
            extra = self.weight.detach().unsqueeze(0).repeat(n_extra, *[1] * self.weight.dim())
            self.extra_weights = nn.Parameter(extra)
        self.sampling = "softmax"
        self.tau = 1.0
        self.macs: float | None = None
        self.bit_frozen = False

    # -- probabilities and expectations (eq. 11, 13) ------------------------------------------
    def pi_w(self) -> torch.Tensor:
        """``softmax(alpha_w)`` (eq. 11), the probability of each weight bit-width."""
        return torch.softmax(self.alpha_w, dim=0)

    def pi_a(self) -> torch.Tensor:
        """``softmax(alpha_a)`` (eq. 11), the probability of each activation bit-width."""
        return torch.softmax(self.alpha_a, dim=0)

    def expected_w_bits(self) -> torch.Tensor:
        """``E[b_w] = sum_i pi_i^w b_i`` (eq. 13), differentiable w.r.t. ``alpha_w``."""
        return torch.dot(self.pi_w(), self.w_bits_vector.to(self.alpha_w.dtype))

    def expected_a_bits(self) -> torch.Tensor:
        """``E[b_a] = sum_j pi_j^a b_j`` (eq. 13), differentiable w.r.t. ``alpha_a``."""
        return torch.dot(self.pi_a(), self.a_bits_vector.to(self.alpha_a.dtype))

    # -- sampling hooks -----------------------------------------------------------------------
    def set_sampling(self, mode: str, tau: float = 1.0) -> None:
        """Choose how the mixture gates are drawn: one of ``SAMPLING_MODES``; ``tau`` for Gumbel."""
        if mode not in SAMPLING_MODES:
            raise ConfigError(f"unknown sampling mode {mode!r}; valid: {list(SAMPLING_MODES)}")
        if tau <= 0:
            raise ConfigError(f"sampling temperature tau must be > 0, got {tau}")
        self.sampling, self.tau = mode, float(tau)

    def gates_w(self) -> torch.Tensor:
        return sample_gates(self.alpha_w, self.sampling, self.tau, self.training)

    def gates_a(self) -> torch.Tensor:
        return sample_gates(self.alpha_a, self.sampling, self.tau, self.training)

    def discretize(self, rule: str = "argmax") -> tuple[int, int]:
        """The final ``(w_bits, a_bits)``: argmax of each logit vector, independently (EdMIPS)."""
        if rule != "argmax":
            raise ConfigError(f"unknown discretize rule {rule!r}; valid: ['argmax']")
        return self.w_candidates[int(self.alpha_w.argmax())], self.a_candidates[int(self.alpha_a.argmax())]

    # -- eq. (12), (15), (16) -----------------------------------------------------------------
    def candidate_weight(self, i: int) -> torch.Tensor:
        """The float weight of candidate ``i`` (shared ``.weight``, or its own for eq. 15)."""
        if self.share_weight or i == 0:
            return self.weight
        return self.extra_weights[i - 1]

    def composite_weight(self, gates: torch.Tensor | None = None) -> torch.Tensor:
        """``W_bar = sum_i g_i Q_i(W_i)``: eq. (16) with shared ``W``, eq. (15) with unshared weights."""
        gates = self.gates_w() if gates is None else gates
        quants = list(self.w_quantizers)
        if (self.share_weight and all(type(q) is GaussianQuantizer for q in quants)
                and len({q.clip_bound for q in quants}) == 1):
            coefs = tuple(q.coefs.get(q.bits, 0.0) for q in quants)
            bits = tuple(q.bits for q in quants)
            return gaussian_mixture(self.weight, gates, coefs, bits, quants[0].clip_bound)  # one fused kernel
        out = None
        for i, quant in enumerate(quants):
            term = gates[i] * quant(self.candidate_weight(i))
            out = term if out is None else out + term
        return out

    def activation_mixture(self, x: torch.Tensor, gates: torch.Tensor | None = None) -> torch.Tensor:
        """``x_bar = sum_j g_j a_j(x)`` (eq. 12). HWGQ candidates use one fused autograd function."""
        gates = self.gates_a() if gates is None else gates
        quants = list(self.a_quantizers)
        if all(type(q) is HWGQQuantizer for q in quants):
            steps = tuple(q.steps.get(q.bits, 0.0) for q in quants)
            levels = tuple(2**q.bits - 1 if q.bits < 32 else 0 for q in quants)
            return hwgq_mixture(x, gates, steps, levels)  # one fused function
        out = None
        for j, quant in enumerate(quants):
            term = gates[j] * quant(x)
            out = term if out is None else out + term
        return out

    def _copy_from_float(self, module: nn.Module) -> None:
        """Weight and bias of ``module``; with unshared weights (eq. 15) every candidate starts from it."""
        copy_float_params(module, self)
        if not self.share_weight and hasattr(self, "extra_weights"):
            with torch.no_grad():
                self.extra_weights.copy_(module.weight.unsqueeze(0).expand_as(self.extra_weights))

    def _composite_repr(self) -> str:
        return f", w_candidates={self.w_candidates}, a_candidates={self.a_candidates}, " \
            f"share_weight={self.share_weight}, sampling={self.sampling}"


_COMPOSITE_DEFAULTS: dict[str, Any] = dict(
    w_candidates=DEFAULT_W_CANDIDATES, a_candidates=DEFAULT_A_CANDIDATES, w_quant="gaussian",
    a_quant="hwgq", w_options=None, a_options=None, share_weight=True, alpha_init=0.01,
)


def _composite_kwargs(spec: dict[str, Any]) -> dict[str, Any]:
    unknown = set(spec) - set(_COMPOSITE_DEFAULTS)
    if unknown:
        raise ConfigError(f"unknown composite-layer options {sorted(unknown)}; "
                          f"valid: {sorted(_COMPOSITE_DEFAULTS)}")
    return {**_COMPOSITE_DEFAULTS, **spec}


class CompositeConv2d(_CompositeMixin, nn.Conv2d):
    """EdMIPS composite convolution: ``conv(sum_j pi_j a_j(x), sum_i pi_i Q_i(W))`` (eq. 14).

    Keyword options (after the ``nn.Conv2d`` arguments): ``w_candidates``, ``a_candidates``,
    ``w_quant`` (default ``"gaussian"``), ``a_quant`` (default ``"hwgq"``), ``w_options``,
    ``a_options``, ``share_weight`` (default True: eq. 16; False: eq. 15), ``alpha_init`` (0.01).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1,
                 padding: Any = 0, dilation: Any = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", device: Any = None, dtype: Any = None, **spec: Any) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)
        self._init_composite(out_channels, in_channels, **_composite_kwargs(spec))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.activation_mixture(x), self.composite_weight(), self.bias)

    @classmethod
    def from_float(cls, module: nn.Conv2d, **spec: Any) -> CompositeConv2d:
        """A ``CompositeConv2d`` with ``module``'s geometry, weight and bias (copied to every candidate)."""
        new = layer_like(cls, module, **spec)
        new._copy_from_float(module)
        return new

    def extra_repr(self) -> str:
        return super().extra_repr() + self._composite_repr()


class CompositeLinear(_CompositeMixin, nn.Linear):
    """EdMIPS composite linear layer: ``linear(sum_j pi_j a_j(x), sum_i pi_i Q_i(W))``; options as
    :class:`CompositeConv2d`."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device: Any = None,
                 dtype: Any = None, **spec: Any) -> None:
        super().__init__(in_features, out_features, bias, device, dtype)
        self._init_composite(out_features, in_features, **_composite_kwargs(spec))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.activation_mixture(x), self.composite_weight(), self.bias)

    @classmethod
    def from_float(cls, module: nn.Linear, **spec: Any) -> CompositeLinear:
        """A ``CompositeLinear`` with ``module``'s shape, weight and bias (copied to every candidate)."""
        new = layer_like(cls, module, **spec)
        new._copy_from_float(module)
        return new

    def extra_repr(self) -> str:
        return super().extra_repr() + self._composite_repr()


@register_layer_kind("composite", layers=(CompositeConv2d, CompositeLinear),
                     options={"share_weight": True, "alpha_init": 0.01}, w_quant="gaussian", a_quant="hwgq")
def composite_layer(module: nn.Module, spec: QuantSpec, name: str, ctx: KindContext
                    ) -> CompositeConv2d | CompositeLinear:
    """CompositeConv2d / CompositeLinear searching ``w_candidates`` x ``a_candidates`` (EdMIPS eq. 14-16)."""
    cls = CompositeConv2d if isinstance(module, nn.Conv2d) else CompositeLinear
    return cls.from_float(module, w_candidates=spec.w_candidates, a_candidates=spec.a_candidates,
                          w_quant=spec.w_quant, a_quant=spec.a_quant, w_options=dict(spec.w_options),
                          a_options=dict(spec.a_options), share_weight=ctx.options["share_weight"],
                          alpha_init=ctx.options["alpha_init"])

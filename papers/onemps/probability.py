"""The bit-width probability model f_theta(eta) (slide "Bit width probability model") and VIMPS's logits.

Both map a hardware penalty eta to one logit vector per searchable layer for its weight bits and one for
its activation bits; ``pi_theta(eta) = softmax(f_theta(eta))`` per vector (slide: pi_theta(eta) =
Softmax(f_theta(eta))). The weight and activation choices of a layer are independent, so the pair
distribution of a layer is ``pi_{k,(i,j)} = pi^w_{k,i} pi^x_{k,j}``.

- :class:`BitWidthModel` (OneMPS): a small MLP of the normalised penalty
  ``t(eta) = (log eta - log eta0) / (log eta1 - log eta0)`` (``[eta0, eta1]`` -> ``[0, 1]``, log scale:
  the useful penalties span orders of magnitude), ``depth`` hidden ReLU layers of ``width`` units
  and one linear output of ``sum_k (|B^w| + |B^x|)`` logits.
- :class:`DirectLogits` (VIMPS, and the DNAS / EdMIPS-proxy configurations): one learned logit vector per
  layer and role, independent of eta (one search per fixed eta).

The model is one module shared by every supernet layer (:mod:`papers.onemps.supernet`); besides its
parameters it carries the run-time state the layers read: the current ``eta``, the gate ``mode`` and
temperature ``tau``, and the logits of the current training step (:meth:`ProbabilityModel.begin_step`).
Its parameters are plain tensors used with ``torch.addmm`` (no ``nn.Linear``), so the BOPs counter never
mistakes the MLP for a layer of the network.

Also here: the distributions p(eta) a training step draws eta from (:func:`sample_eta`) and the sweep of
the Pareto stage (:func:`sweep_etas`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from core.errors import ConfigError
from core.nn import gumbel_softmax

GATE_MODES = ("gumbel_hard", "gumbel_soft", "softmax")
ETA_DISTRIBUTIONS = ("uniform", "log_uniform", "fixed")
SWEEP_SPACINGS = ("linear", "log")


def check_eta_range(eta0: float, eta1: float) -> None:
    if not (0 < eta0 < eta1 and math.isfinite(eta1)):
        raise ConfigError(f"the hardware-penalty range needs 0 < eta0 < eta1, got [{eta0}, {eta1}]")


def normalise_eta(eta: torch.Tensor | float, eta0: float, eta1: float) -> torch.Tensor:
    """``t = (log eta - log eta0) / (log eta1 - log eta0)``: ``[eta0, eta1]`` -> ``[0, 1]``."""
    eta = torch.as_tensor(eta, dtype=torch.float32)
    lo, hi = math.log(eta0), math.log(eta1)
    return (torch.log(eta.clamp_min(1e-30)) - lo) / (hi - lo)


def sample_eta(eta0: float, eta1: float, distribution: str, generator: torch.Generator | None = None,
               fixed: float | None = None) -> float:
    """One eta ~ p(eta): ``uniform`` on [eta0, eta1], ``log_uniform`` (uniform in log eta), or ``fixed``."""
    if distribution == "fixed":
        if fixed is None:
            raise ConfigError("the fixed eta distribution needs a value (search.eta)")
        return float(fixed)
    check_eta_range(eta0, eta1)
    u = float(torch.rand((), generator=generator))
    if distribution == "uniform":
        return eta0 + u * (eta1 - eta0)
    if distribution == "log_uniform":
        return math.exp(math.log(eta0) + u * (math.log(eta1) - math.log(eta0)))
    raise ConfigError(f"unknown eta distribution {distribution!r}; choose one of {list(ETA_DISTRIBUTIONS)}")


def sweep_etas(eta0: float, eta1: float, points: int, spacing: str = "linear") -> list[float]:
    """``points`` penalties from eta0 to eta1, equally spaced (``linear``, the abstract's sweep) or
    equally spaced in log eta (``log``)."""
    check_eta_range(eta0, eta1)
    if points < 2:
        raise ConfigError(f"a sweep needs at least 2 points, got {points}")
    if spacing not in SWEEP_SPACINGS:
        raise ConfigError(f"unknown sweep spacing {spacing!r}; choose one of {list(SWEEP_SPACINGS)}")
    if spacing == "linear":
        return [eta0 + (eta1 - eta0) * i / (points - 1) for i in range(points)]
    return [math.exp(math.log(eta0) + (math.log(eta1) - math.log(eta0)) * i / (points - 1))
            for i in range(points)]


def sample_gates(logits: torch.Tensor, mode: str, tau: float) -> torch.Tensor:
    """Training-time gates over the options (last dim of ``logits``): ``softmax`` (pi itself, the EdMIPS
    proxy), or a Gumbel-softmax sample (``core.nn.gumbel_softmax``), relaxed (``gumbel_soft``) or
    straight-through one-hot (``gumbel_hard``)."""
    if mode == "softmax":
        return logits.softmax(-1)
    return gumbel_softmax(logits, tau=tau, hard=mode == "gumbel_hard", dim=-1)


def group_by_shape(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> list[list[int]]:
    """Indices of the layers whose (weight, activation) vectors have equal sizes, group by group (one
    group when every layer has the same candidates): their math runs batched, one op per group."""
    groups: dict[tuple[int, int], list[int]] = {}
    for k, (w, a) in enumerate(pairs):
        groups.setdefault((w.shape[-1], a.shape[-1]), []).append(k)
    return list(groups.values())


class _Dense(nn.Module):
    """``x @ weight.T + bias`` with plain parameters (architecture parameters of the supernet)."""

    arch_parameter_names = ("weight", "bias")

    def __init__(self, n_in: int, n_out: int, std: float | None = None) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(n_in)
        w = torch.empty(n_out, n_in)
        if std is None:
            nn.init.uniform_(w, -bound, bound)
        else:
            nn.init.normal_(w, 0.0, std)
        self.weight = nn.Parameter(w)
        self.bias = nn.Parameter(torch.zeros(n_out) if std is not None else torch.empty(n_out).uniform_(
            -bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x, self.weight.t())


class ProbabilityModel(nn.Module):
    """Base: per-layer logits of eta, plus the run-time gate state the supernet layers read.

    ``sizes``: ``(|B^w_k|, |B^x_k|)`` per searchable layer, in model order. Subclasses implement
    :meth:`raw_logits` (``(E,)`` etas -> ``(E, sum_k |B^w_k| + |B^x_k|)``).
    """

    def __init__(self, sizes: Sequence[tuple[int, int]]) -> None:
        super().__init__()
        self.sizes = [(int(w), int(a)) for w, a in sizes]
        if not self.sizes:
            raise ConfigError("a probability model needs at least one searchable layer")
        self.eta = 1.0  # the penalty of an ad hoc forward (eval / a forward outside a training step)
        self.mode = "gumbel_soft"
        self.tau = 1.0
        self._step: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self._gates: list | None = None

    @property
    def num_logits(self) -> int:
        return sum(w + a for w, a in self.sizes)

    def raw_logits(self, etas: torch.Tensor) -> torch.Tensor:
        """``(len(etas), num_logits)`` logits before the per-layer split: defined by each model
        (:class:`BitWidthModel`: f_theta; :class:`DirectLogits`: per-layer vectors, alike for every eta)."""
        raise NotImplementedError(f"{type(self).__name__} must define raw_logits()")

    def logits(self, eta: float | torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``f_theta(eta)`` split per layer: ``[(logits over B^w_k, logits over B^x_k), ...]``."""
        p = next(self.parameters())
        raw = self.raw_logits(torch.as_tensor(eta, dtype=p.dtype, device=p.device).reshape(1))[0]
        out, at = [], 0
        for w, a in self.sizes:
            out.append((raw[at:at + w], raw[at + w:at + w + a]))
            at += w + a
        return out

    def probabilities(self, eta: float | torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``pi_theta(eta) = softmax(f_theta(eta))`` per layer and role."""
        return [(lw.softmax(0), la.softmax(0)) for lw, la in self.logits(eta)]

    # ------------------------------------------------------------------ run-time state
    def set_gates(self, mode: str, tau: float | None = None) -> None:
        if mode not in GATE_MODES:
            raise ConfigError(f"unknown gate mode {mode!r}; choose one of {list(GATE_MODES)}")
        if tau is not None and tau <= 0:
            raise ConfigError(f"the Gumbel-softmax temperature must be > 0, got {tau}")
        self.mode = mode
        if tau is not None:
            self.tau = float(tau)

    def begin_step(self, eta: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Compute ``f_theta(eta)`` once for a training step and sample every layer's gates from it (one
        Gumbel-softmax call per group of equally sized layers, one device-to-host copy of the chosen
        options); the layers use them until :meth:`end_step`. Returns the logits (their graph is shared
        by the gates and the loss)."""
        self.eta = float(eta)
        self._step = self.logits(eta)
        gates: list = [None] * len(self._step)
        for group in group_by_shape(self._step):
            for role in (0, 1):
                z = sample_gates(torch.stack([self._step[k][role] for k in group]), self.mode, self.tau)
                for row, k in enumerate(group):
                    gates[k] = (*(gates[k] or ()), z[row])
        chosen = torch.stack([torch.stack([zw.detach().argmax(), za.detach().argmax()]) for zw, za in gates])
        self._gates = [(g, tuple(c)) for g, c in zip(gates, chosen.tolist())]
        return self._step

    def end_step(self) -> None:
        self._step = self._gates = None

    def step_gates(self, index: int) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[int, int]] | None:
        """Layer ``index``'s sampled gates and chosen options in the current training step (None outside)."""
        return self._gates[index] if self._gates is not None else None

    def layer_logits(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``index``'s logits for the current step, or at ``self.eta`` outside a step."""
        step = self._step if self._step is not None else self.logits(self.eta)
        return step[index]

    def extra_repr(self) -> str:
        return f"layers={len(self.sizes)}, logits={self.num_logits}, mode={self.mode}, tau={self.tau:g}"


class BitWidthModel(ProbabilityModel):
    """f_theta: ``t(eta)`` -> ``depth`` x (linear, ReLU) of ``width`` units -> linear to every layer's logits.

    The output layer starts small (normal, std ``init_std``) so pi_theta(eta) starts nearly uniform for
    every eta while every parameter already receives a gradient.
    """

    def __init__(self, sizes: Sequence[tuple[int, int]], eta0: float, eta1: float, depth: int = 2,
                 width: int = 64, init_std: float = 0.01) -> None:
        super().__init__(sizes)
        check_eta_range(eta0, eta1)
        if depth < 0 or width < 1:
            raise ConfigError(f"f_theta needs depth >= 0 and width >= 1, got depth={depth}, width={width}")
        self.eta0, self.eta1 = float(eta0), float(eta1)
        self.eta = math.sqrt(self.eta0 * self.eta1)
        dims = [1] + [int(width)] * int(depth)
        self.hidden = nn.ModuleList(_Dense(a, b) for a, b in zip(dims, dims[1:]))
        self.out = _Dense(dims[-1], self.num_logits, std=init_std)

    def raw_logits(self, etas: torch.Tensor) -> torch.Tensor:
        h = normalise_eta(etas, self.eta0, self.eta1).to(etas).reshape(-1, 1)
        for layer in self.hidden:
            h = torch.relu(layer(h))
        return self.out(h)

    def extra_repr(self) -> str:
        return (f"eta_range=[{self.eta0:g}, {self.eta1:g}], depth={len(self.hidden)}, "
                f"width={self.out.weight.shape[1]}, " + super().extra_repr())


class _LayerLogits(nn.Module):
    arch_parameter_names = ("alpha_w", "alpha_a")

    def __init__(self, n_w: int, n_a: int) -> None:
        super().__init__()
        self.alpha_w = nn.Parameter(torch.zeros(n_w))
        self.alpha_a = nn.Parameter(torch.zeros(n_a))


class DirectLogits(ProbabilityModel):
    """VIMPS: one learned logit vector per layer and role (zeros: uniform pi), the same for every eta."""

    def __init__(self, sizes: Sequence[tuple[int, int]]) -> None:
        super().__init__(sizes)
        self.layers = nn.ModuleList(_LayerLogits(w, a) for w, a in self.sizes)

    def raw_logits(self, etas: torch.Tensor) -> torch.Tensor:
        flat = torch.cat([t for m in self.layers for t in (m.alpha_w, m.alpha_a)])
        return flat.unsqueeze(0).expand(etas.numel(), -1)


PROBABILITY_MODELS = ("mlp", "direct")


def build_probability_model(kind: str, sizes: Sequence[tuple[int, int]], eta_range: Sequence[float],
                            depth: int = 2, width: int = 64) -> ProbabilityModel:
    """``mlp`` (f_theta, OneMPS) or ``direct`` (per-layer logits, VIMPS)."""
    if kind == "mlp":
        return BitWidthModel(sizes, float(eta_range[0]), float(eta_range[1]), depth, width)
    if kind == "direct":
        return DirectLogits(sizes)
    raise ConfigError(f"unknown probability model {kind!r}; choose one of {list(PROBABILITY_MODELS)}")

"""The loss of the slide "One-shot Mixed Precision Search" and its special cases.

    L(D; w, theta) = -E_{eta ~ p(eta)} [ E_{z ~ q_pi(eta)} log p_w(D | z)
                                          + sum_k sum_b pi_{k,b}(eta) log p_{k,b}(eta)
                                          + lambda H(pi(eta)) ]
                     + mu sum_{i in B^w} sum_{j in B^w, j > i} ||w_i - w_j||_2

- ``b`` ranges over a layer's bit configurations, the pairs (b^w, b^x) (slide: "a set of all bit width
  configurations in a layer"); pi_{k,(i,j)} = pi^w_{k,i} pi^x_{k,j} (independent weight / activation logits);
- :func:`boltzmann_prior`: p_{k,b}(eta) = exp(-eta h_{k,b}) / sum_b' exp(-eta h_{k,b'}) (slide "Variational
  Inference approach (VIMPS)"), h_{k,b} the BOPs of layer k at b, :class:`HardwareCosts`;
- :func:`hardware_term`: sum_k sum_b pi_{k,b} log p_{k,b} = -eta sum_k E_pi[h_k] - sum_k log Z_k(eta): the
  slide's "eta sum_k E[b^w] E[b^x] MACs(k)" up to a constant (slide "Generalization to EdMIPS and DNAS");
- :func:`entropy`: H(pi) = sum_k H(pi_k) over the pairs;
- :func:`kernel_similarity`: sum over layers and weight-option pairs i < j of ||w_i - w_j||_2 (Frobenius);
- :func:`dnas_cost_factor`: DNAS's multiplicative hardware loss (Wu et al. 2018): the task loss times
  C(Cost(a)) = beta (log Cost(a))^gamma, Cost(a) = sum_k sum_b m_{k,b} Cost_{k,b} with the SAMPLED
  Gumbel-softmax masks m of the step and Cost in BOPs (not normalised).

The expectation over D is the mini-batch mean cross-entropy (the ELBO divided by the number of training
images N): eta and lambda here are the slide's values divided by N (dividing the prior term by N changes it
by a pi-independent constant only). The expectation over eta is one eta per step (:func:`sample_eta`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from core.errors import ConfigError
from core.quant import kernel
from papers.onemps.probability import group_by_shape

HARDWARE_LOSSES = ("boltzmann", "multiplicative")
Probs = Sequence[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class HardwareCosts:
    """h_{k,(i,j)} = MACs_k * b^w_i * b^x_j of every searchable layer (BOPs, ``raw``) and ``h`` = raw / the
    BOPs of the whole searchable network at its highest candidates, so that sum_k max_b h_{k,b} = 1 and one
    eta range serves any network (eta multiplies a fraction of the network's cost, whatever its size).

    MACs come from ``core.bops.count`` on the float network under ``convention`` (``exact``: the MACs a
    layer computes, floor output sizes).
    """

    names: list[str]
    macs: list[float]
    w_candidates: list[list[int]]
    a_candidates: list[list[int]]
    convention: str = "exact"
    raw: list[torch.Tensor] = field(init=False, repr=False)
    normaliser: float = field(init=False)

    def __post_init__(self) -> None:
        if not (len(self.names) == len(self.macs) == len(self.w_candidates) == len(self.a_candidates)):
            raise ConfigError("hardware costs: names, MACs and candidates differ in length")
        self.raw = [torch.tensor([[m * w * a for a in acands] for w in wcands], dtype=torch.float64)
                    for m, wcands, acands in zip(self.macs, self.w_candidates, self.a_candidates)]
        self.normaliser = float(sum(float(r.max()) for r in self.raw))
        if self.normaliser <= 0:
            raise ConfigError("hardware costs: the searchable layers have no MACs")

    def h(self, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
        """Normalised costs, one ``(|B^w_k|, |B^x_k|)`` tensor per layer."""
        return [(r / self.normaliser).to(device=device, dtype=dtype) for r in self.raw]

    def bops(self, choice: dict[str, tuple[int, int]]) -> float:
        """BOPs of a discrete architecture given as option indices ``{name: (i, j)}``."""
        return sum(float(r[choice[n]]) for n, r in zip(self.names, self.raw))

    def expected_bops(self, probs: Probs) -> float:
        """E_pi[BOPs] = sum_k pi^w_k^T H_k pi^x_k."""
        with torch.no_grad():
            return sum(float(pw.double() @ r @ pa.double()) for (pw, pa), r in zip(probs, self.raw))

    @property
    def macs_total(self) -> float:
        return float(sum(self.macs))

    def to_dict(self) -> dict:
        return {"convention": self.convention, "normaliser_bops": self.normaliser,
                "layers": [{"name": n, "macs": m, "w_candidates": w, "a_candidates": a}
                           for n, m, w, a in zip(self.names, self.macs, self.w_candidates,
                                                 self.a_candidates)]}

    @classmethod
    def from_dict(cls, data: dict) -> HardwareCosts:
        layers = data["layers"]
        return cls([x["name"] for x in layers], [float(x["macs"]) for x in layers],
                   [list(x["w_candidates"]) for x in layers], [list(x["a_candidates"]) for x in layers],
                   data.get("convention", "exact"))

    def save(self, path) -> None:
        from core.io import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")


# ---------------------------------------------------------------------------- the slide's terms
def _batched(probs: Probs, h: Sequence[torch.Tensor] | None = None
             ) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Per group of equally sized layers: the pair probabilities ``(G, |B^w|, |B^x|)`` and, with ``h``,
    the costs stacked alike (one op per group instead of one per layer)."""
    out = []
    for group in group_by_shape(probs):
        pw = torch.stack([probs[k][0] for k in group])
        pa = torch.stack([probs[k][1] for k in group])
        hk = torch.stack([h[k] for k in group]) if h is not None else None
        out.append((pw.unsqueeze(2) * pa.unsqueeze(1), hk))
    return out


def boltzmann_prior(h: torch.Tensor, eta: float) -> torch.Tensor:
    """p_b(eta) = softmax_b(-eta h_b) over every bit configuration b of one layer (all dims of ``h``)."""
    return torch.softmax(-eta * h.flatten(), 0).reshape(h.shape)


def hardware_term(probs: Probs, h: Sequence[torch.Tensor], eta: float) -> torch.Tensor:
    """sum_k sum_b pi_{k,b} log p_{k,b}(eta) (<= 0; the loss subtracts it)."""
    return sum((pi.flatten(1) * torch.log_softmax(-eta * hk.flatten(1), 1)).sum()
               for pi, hk in _batched(probs, h))


def entropy(probs: Probs) -> torch.Tensor:
    """H(pi) = -sum_k sum_b pi_{k,b} log pi_{k,b} over the pair distributions."""
    return sum(-(pi * torch.log(pi.clamp_min(1e-30))).sum() for pi, _ in _batched(probs))


def expected_cost(probs: Probs, h: Sequence[torch.Tensor]) -> torch.Tensor:
    """sum_k E_pi[h_k] = sum_k sum_{i,j} pi^w_{k,i} pi^x_{k,j} h_{k,(i,j)} (EdMIPS's E[b^w] E[b^x] MACs)."""
    return sum((pi * hk).sum() for pi, hk in _batched(probs, h))


def softmax_probabilities(logits: Sequence[tuple[torch.Tensor, torch.Tensor]]
                          ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """pi = softmax(logits) per layer and role, one softmax per group of equally sized layers."""
    probs: list = [None] * len(logits)
    for group in group_by_shape(logits):
        pw = torch.stack([logits[k][0] for k in group]).softmax(1)
        pa = torch.stack([logits[k][1] for k in group]).softmax(1)
        for row, k in enumerate(group):
            probs[k] = (pw[row], pa[row])
    return probs


def _pair_norm(a: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.sqrt((a - b).square().sum() + eps)


def _scaled_difference(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return (a - b) * c


class _PairwiseDistances(torch.autograd.Function):
    """sum_{i < j} sqrt(||w_i - w_j||^2 + eps) of one layer's kernels, with a hand-written backward
    (d/dw_i = sum_j (w_i - w_j) / norm_ij) and its element-wise work in functions that ``run.compile``
    fuses (``core.quant.kernel``): the kernels are the largest tensors of a small-input step."""

    @staticmethod
    def forward(ctx: Any, eps: float, *kernels: torch.Tensor) -> torch.Tensor:
        pairs = [(i, j) for i in range(len(kernels)) for j in range(i + 1, len(kernels))]
        norms = torch.stack([kernel(_pair_norm)(kernels[i], kernels[j], eps) for i, j in pairs])
        ctx.save_for_backward(norms, *kernels)
        ctx.pairs = pairs
        return norms.sum()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        norms, *kernels = ctx.saved_tensors
        grads: list[torch.Tensor | None] = [None] * len(kernels)
        for (i, j), norm in zip(ctx.pairs, norms):
            step = kernel(_scaled_difference)(kernels[i], kernels[j], grad / norm)
            grads[i] = step if grads[i] is None else grads[i].add_(step)
            grads[j] = -step if grads[j] is None else grads[j].sub_(step)
        return (None, *grads)


def kernel_similarity(weights: Sequence[Sequence[torch.Tensor]], eps: float = 1e-12) -> torch.Tensor:
    """sum over layers of sum_{i < j} ||w_i - w_j||_2 over the layer's weight-option kernels.

    The norm is taken as sqrt(sum of squares + eps): identical kernels (the start of training) then get a
    zero, not an undefined, gradient."""
    terms = [_PairwiseDistances.apply(eps, *ws) for ws in weights if len(ws) > 1]
    if not terms:
        return torch.zeros(())
    return torch.stack(terms).sum()


def dnas_cost_factor(gates: Sequence[tuple[torch.Tensor, torch.Tensor]], raw: Sequence[torch.Tensor],
                     beta: float, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(C(Cost(a)), Cost(a))``: beta (log Cost)^gamma with Cost = sum_k m^w_k^T Cost_k m^x_k in BOPs from
    the step's sampled gates ``m`` (DNAS, Wu et al. 2018). Cost must exceed 1 BOP (log > 0)."""
    cost = expected_cost(gates, [r.to(gates[0][0]) for r in raw])  # the sampled masks in place of pi
    log_cost = torch.log(cost)
    if float(log_cost.detach()) <= 0:
        raise ConfigError(f"DNAS's cost factor needs Cost(a) > 1 BOP, got {float(cost):.4g}")
    return beta * log_cost.pow(gamma), cost


@dataclass
class Objective:
    """The training loss of one configuration (see :data:`papers.onemps.config.PRESETS`).

    ``hardware``: ``boltzmann`` (the slide's prior term, OneMPS / VIMPS / EdMIPS proxy) or
    ``multiplicative`` (DNAS: task loss x beta (log Cost)^gamma, ``dnas_beta`` / ``dnas_gamma``);
    ``entropy_weight`` lambda (0 for DNAS and the EdMIPS proxy); ``kernel_weight`` mu.
    """

    costs: HardwareCosts
    hardware: str = "boltzmann"
    entropy_weight: float = 0.0
    kernel_weight: float = 0.0
    dnas_gamma: float = 1.0
    dnas_beta: float = 0.05

    def __post_init__(self) -> None:
        if self.hardware not in HARDWARE_LOSSES:
            raise ConfigError(f"unknown hardware loss {self.hardware!r}; "
                              f"choose one of {list(HARDWARE_LOSSES)}")
        self._h: list[torch.Tensor] | None = None

    def h(self, like: torch.Tensor) -> list[torch.Tensor]:
        if self._h is None or self._h[0].device != like.device or self._h[0].dtype != like.dtype:
            self._h = self.costs.h(like.device, like.dtype)
        return self._h

    def __call__(self, ce: torch.Tensor, logits: Sequence[tuple[torch.Tensor, torch.Tensor]], eta: float,
                 kernels: Sequence[Sequence[torch.Tensor]] | None = None,
                 gates: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(loss, terms)`` for one step: ``ce`` the mini-batch cross-entropy, ``logits`` f_theta(eta) per
        layer, ``kernels`` each layer's weight-option kernels (for mu), ``gates`` the step's sampled gates
        (for the multiplicative loss)."""
        probs = softmax_probabilities(logits)
        h = self.h(logits[0][0])
        terms: dict[str, torch.Tensor] = {"ce": ce.detach()}
        if self.hardware == "boltzmann":
            prior = hardware_term(probs, h, eta)
            loss = ce - prior
            terms["prior"] = prior.detach()
        else:
            if gates is None:
                raise ConfigError("the multiplicative (DNAS) hardware loss needs the step's sampled gates")
            factor, cost = dnas_cost_factor(gates, self.costs.raw, self.dnas_beta, self.dnas_gamma)
            loss = ce * factor
            terms["cost_factor"], terms["sampled_bops"] = factor.detach(), cost.detach()
        if self.entropy_weight:
            ent = entropy(probs)
            loss = loss - self.entropy_weight * ent
            terms["entropy"] = ent.detach()
        if self.kernel_weight and kernels is not None:
            ks = kernel_similarity(kernels)
            loss = loss + self.kernel_weight * ks
            terms["kernel_similarity"] = ks.detach()
        with torch.no_grad():
            terms["expected_cost"] = expected_cost(probs, h)
        terms["loss"] = loss.detach()
        return loss, terms

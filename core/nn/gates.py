"""Gumbel-softmax gates over discrete candidates (Jang et al. / Maddison et al., ICLR 2017).

``gumbel_softmax(logits, tau)`` draws ``softmax((logits + g) / tau)`` with ``g ~ Gumbel(0, 1)`` i.i.d.;
``hard=True`` returns the one-hot of its argmax in the forward pass and the soft sample's gradient in
the backward pass (straight-through), so the logits still receive a gradient. Lower ``tau`` makes the
soft sample closer to one-hot. The searchable layers (``core.nn.composite``) draw their ``gumbel_soft`` /
``gumbel_hard`` gates with it; a paper that samples sub-networks uses the same function.

>>> import torch
>>> g = gumbel_softmax(torch.zeros(4, requires_grad=True), tau=0.5, hard=True)
>>> sorted(g.tolist())
[0.0, 0.0, 0.0, 1.0]
"""

from __future__ import annotations

import torch

__all__ = ["gumbel_softmax"]


def gumbel_softmax(logits: torch.Tensor, tau: float = 1.0, hard: bool = False, dim: int = -1,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """One Gumbel-softmax sample over ``dim`` (module docstring); ``generator`` seeds the noise."""
    if tau <= 0:
        raise ValueError(f"gumbel_softmax: the temperature tau must be > 0, got {tau}")
    gumbels = -torch.empty_like(logits).exponential_(generator=generator).log()  # -log(Exp(1)) ~ Gumbel(0, 1)
    soft = ((logits + gumbels) / tau).softmax(dim)
    if not hard:
        return soft
    one_hot = torch.zeros_like(soft).scatter_(dim, soft.argmax(dim, keepdim=True), 1.0)
    return one_hot - soft.detach() + soft

"""Architecture discretisation rules of section 4.7, on plain probability vectors.

A rule maps the soft selector ``pi`` of one layer (weights or activations, eq. 11) to the index of the one
candidate kept (the binary selector ``o`` of eq. 4). The weights and the activations of a layer are
discretised independently, as in the official code.
"""

from __future__ import annotations

import torch

from core.errors import ConfigError

RULES = ("argmax", "multinomial")


def _check_pi(pi: torch.Tensor) -> torch.Tensor:
    pi = torch.as_tensor(pi, dtype=torch.float64).detach().cpu()
    if pi.dim() != 1 or pi.numel() == 0:
        raise ConfigError(f"a selector distribution must be a non-empty 1-D vector, got shape "
                          f"{tuple(pi.shape)}")
    if bool((pi < 0).any()) or not torch.isfinite(pi).all() or abs(float(pi.sum()) - 1.0) > 1e-4:
        raise ConfigError(f"pi must be a probability vector (non-negative, summing to 1), got {pi.tolist()}")
    return pi


def winner_take_all(pi: torch.Tensor) -> int:
    """Eq. 18: keep the branch of highest pi. Ties go to the first (lowest-bit) candidate."""
    pi = _check_pi(pi)
    return int(torch.argmax(pi).item())


def winner_take_all_alpha(alpha: torch.Tensor) -> int:
    """Eq. 18 on the architecture parameters themselves: ``argmax pi = argmax alpha`` (eq. 11's softmax is
    monotone), taken on the raw alphas as the official code does. The float32 softmax can round two alphas
    one ulp apart to equal probabilities (a tie that :func:`winner_take_all` gives to the first candidate);
    the alphas still order them. Exact ties go to the first candidate."""
    alpha = torch.as_tensor(alpha, dtype=torch.float64).detach().cpu()
    if alpha.dim() != 1 or alpha.numel() == 0 or not torch.isfinite(alpha).all():
        raise ConfigError(f"architecture parameters must be a non-empty finite 1-D vector, got "
                          f"{alpha.tolist()}")
    return int(torch.argmax(alpha).item())


def multinomial_counts(pi: torch.Tensor, trials: int,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Eq. 19: the counts O ~ Multinomial(n=trials, pi) of each candidate over ``trials`` draws."""
    pi = _check_pi(pi)
    if trials < 1:
        raise ConfigError(f"discretize.trials must be >= 1 (the n of eq. 19), got {trials}")
    draws = torch.multinomial(pi.float(), trials, replacement=True, generator=generator)
    return torch.bincount(draws, minlength=pi.numel())


def multinomial_select(pi: torch.Tensor, trials: int, generator: torch.Generator | None = None) -> int:
    """Eq. 19 with n trials: the candidate with the highest count among the ``trials`` draws.

    With ``trials=1`` this is one categorical sample; as ``trials`` grows the choice converges to
    :func:`winner_take_all` (section 4.7). Equal counts go to the candidate of higher pi (then the first).
    """
    pi = _check_pi(pi)
    counts = multinomial_counts(pi, trials, generator).to(torch.float64)
    best = counts.max()
    tied = torch.nonzero(counts == best).flatten()
    return int(tied[torch.argmax(pi[tied])].item())


def select(pi: torch.Tensor, rule: str = "argmax", trials: int = 1,
           generator: torch.Generator | None = None, alpha: torch.Tensor | None = None) -> int:
    """Dispatch to the rule named in the config (``discretize.rule``); ``argmax`` uses ``alpha`` (the
    logits of ``pi``) when given."""
    if rule == "argmax":
        return winner_take_all(pi) if alpha is None else winner_take_all_alpha(alpha)
    if rule == "multinomial":
        return multinomial_select(pi, trials, generator)
    raise ConfigError(f"unknown discretize.rule {rule!r}; choose one of {', '.join(RULES)}")

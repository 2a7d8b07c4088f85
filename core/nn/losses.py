"""Knowledge-distillation loss (Hinton et al., 2015) for papers that train a student from a teacher.

With temperature ``T``, ``p_t = softmax(teacher / T)`` and ``log p_s = log_softmax(student / T)``:

- ``form="soft_ce"`` (default): ``T^2 * mean_n [ -sum_c p_t log p_s ]`` (soft cross-entropy);
- ``form="kl"``: ``T^2 * mean_n [ sum_c p_t (log p_t - log p_s) ]`` = soft CE minus the teacher's
  entropy: the same gradient for the student, zero when the two distributions agree.

The ``T^2`` factor (``scale_t2=True``) keeps the gradient scale independent of ``T``. The teacher's
logits are detached: no gradient flows into the teacher.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

__all__ = ["distillation_loss"]


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                      form: Literal["soft_ce", "kl"] = "soft_ce", scale_t2: bool = True) -> torch.Tensor:
    """The distillation loss of the module docstring, averaged over the batch (dim 0; classes: dim 1)."""
    if temperature <= 0:
        raise ValueError(f"distillation_loss: the temperature must be > 0, got {temperature}")
    if form not in ("soft_ce", "kl"):
        raise ValueError(f"distillation_loss: form must be 'soft_ce' or 'kl', got {form!r}")
    log_ps = F.log_softmax(student_logits / temperature, dim=1)
    log_pt = F.log_softmax(teacher_logits.detach() / temperature, dim=1)
    pt = log_pt.exp()
    per_sample = -(pt * log_ps).sum(1) if form == "soft_ce" else (pt * (log_pt - log_ps)).sum(1)
    return per_sample.mean() * (temperature ** 2 if scale_t2 else 1.0)

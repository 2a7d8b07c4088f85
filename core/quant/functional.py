"""Pure fake-quantization functions (tensors and Python numbers in, tensor out).

They are the eager reference of every quantizer and what :func:`core.quant.base.kernel` compiles.
Straight-through estimators (STE) are written with the detach trick as ``q + (x - x.detach())``
(value exactly ``q``, gradient of ``x``), so outputs sit exactly on the quantization levels and
autograd (eager, or AOTAutograd under ``torch.compile``) derives the intended surrogate gradient.
"""

from __future__ import annotations

import torch


def lsq_fake_quant(x: torch.Tensor, step: torch.Tensor, qn: int, qp: int, grad_scale: float) -> torch.Tensor:
    """LSQ (Esser et al., ICLR 2020): ``y = clamp(round(x / s), qn, qp) * s``.

    Gradients (the same as torch's ``_fake_quantize_learnable_per_tensor_affine`` with zero point 0):
    ``dy/dx = 1`` where ``qn <= round(x/s) <= qp`` else 0; ``dy/ds = (round(x/s) - x/s)`` inside,
    ``qn`` / ``qp`` below / above the range, multiplied by ``grad_scale``. ``step`` broadcasts
    against ``x`` (a scalar, or shape ``(C, 1, 1, 1)`` etc. for per-channel).
    """
    with torch.no_grad():
        xs = x / step
        r = torch.round(xs)
        inside = (r >= qn) & (r <= qp)
        q = torch.clamp(r, qn, qp)
        dstep = torch.where(inside, q - xs, q)  # dy/ds before gradient scaling
        y = q * step
    # zero-valued terms that carry the surrogate gradients: the value stays exactly q * s
    s_zero = step * grad_scale
    s_zero = s_zero - s_zero.detach()
    return y + dstep * s_zero + torch.where(inside, x - x.detach(), 0.0)


def pact_quant(x: torch.Tensor, alpha: torch.Tensor, levels: int, rounding_grad: bool) -> torch.Tensor:
    """PACT (Choi et al., 2018) eq. (1)-(3): ``y = clamp(x, 0, alpha)``, ``q = round(y / s) * s``,
    ``s = alpha / levels`` with ``levels = 2^b - 1``.

    STE through the rounding: ``dq/dx = 1`` on ``(0, alpha)``. ``dq/dalpha = 1`` where ``x >= alpha``
    (eq. 3). With ``rounding_grad`` the step's share of the rounding error inside the range,
    ``(round(y/s) - y/s) / levels``, is added (what autograd gives when only ``round`` is
    straight-through; LSQ-like); without it the gradient is exactly eq. 3.
    """
    y = torch.where(x >= alpha, alpha, torch.relu(x))
    if rounding_grad:
        s = alpha / levels
        with torch.no_grad():
            ys = y / s
            r = torch.round(ys)
        return r * s + (y - y.detach()) - ys * (s - s.detach())
    with torch.no_grad():
        s = alpha / levels
        q = torch.round(y / s) * s
    return q + (y - y.detach())


def uniform_unit(x: torch.Tensor, levels: int) -> torch.Tensor:
    """DoReFa's ``quantize_k`` on ``[0, 1]``: ``round(x * levels) / levels`` with an STE."""
    return (torch.round(x * levels) / levels).detach() + (x - x.detach())


def dorefa_weight(w: torch.Tensor, levels: int) -> torch.Tensor:
    """DoReFa-Net eq. (9): ``2 * quantize_k(tanh(w) / (2 max|tanh(w)|) + 1/2) - 1``."""
    t = torch.tanh(w)
    t = t / (2 * t.abs().max()) + 0.5
    return 2 * uniform_unit(t, levels) - 1


def dorefa_weight_binary(w: torch.Tensor) -> torch.Tensor:
    """DoReFa-Net eq. (7), 1-bit weights: ``sign(w) * E|w|`` (E|w| not differentiated), STE."""
    scale = w.abs().mean().detach()
    return torch.where(w >= 0, scale, -scale).detach() + (w - w.detach())


def dorefa_activation(x: torch.Tensor, levels: int) -> torch.Tensor:
    """DoReFa-Net activations: clip to ``[0, 1]`` then ``quantize_k`` (gradient 0 outside [0, 1])."""
    return uniform_unit(torch.clamp(x, 0.0, 1.0), levels)


def hwgq_quant(x: torch.Tensor, step: float, levels: int) -> torch.Tensor:
    """HWGQ (EdMIPS activations): ``round(clamp(x, 0, step * levels) / step) * step``.

    Fixed step; gradient 1 on the open interval ``(0, step * levels)``, 0 elsewhere.
    """
    clip = step * levels
    with torch.no_grad():
        q = torch.round(torch.clamp(x, 0.0, clip) / step) * step
    inside = (x > 0) & (x < clip)
    return q + torch.where(inside, x - x.detach(), 0.0)


def gaussian_midrise(w: torch.Tensor, coef: float, bits: int) -> torch.Tensor:
    """EdMIPS weights: mid-rise uniform with ``step = coef * std(w)`` (unbiased std, no gradient).

    ``q = (round(w / step + 0.5) - 0.5) * step`` clamped to ``+-(2^b / 2 - 0.5) * step``;
    identity gradient (no clip mask).
    """
    with torch.no_grad():
        step = coef * w.std()
        bound = (2**bits / 2 - 0.5) * step
        q = torch.clamp((torch.round(w / step + 0.5) - 0.5) * step, -bound, bound)
    return q + (w - w.detach())


def sign_quant(w: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """Binary weights ``sign(w)`` (``+1`` at 0) times an optional (detached) scale.

    Gradient: straight-through clipped at ``|w| <= 1`` (BinaryConnect / XNOR-Net's hardtanh STE).
    """
    with torch.no_grad():
        b = torch.where(w >= 0, 1.0, -1.0).to(w.dtype)
        if scale is not None:
            b = b * scale
    return b + torch.where(w.abs() <= 1, w - w.detach(), 0.0)


def hwgq_mixture_sum(x: torch.Tensor, gates: torch.Tensor, steps: tuple[float, ...],
                     levels: tuple[int, ...]) -> torch.Tensor:
    """EdMIPS eq. (12) with HWGQ candidates, ``sum_j gates_j HWGQ_j(x)``, as ONE function so that the
    compiled path fuses every candidate into one kernel (the step cost then barely grows with the
    candidates, section 4.4). ``levels_j == 0`` is a full-precision (ReLU) candidate."""
    out = torch.zeros_like(x)
    for j, (step, lev) in enumerate(zip(steps, levels)):
        term = torch.relu(x) if lev <= 0 else hwgq_quant(x, step, lev)
        out = out + gates[j] * term
    return out


def gaussian_composite(w: torch.Tensor, gates: torch.Tensor, coefs: tuple[float, ...],
                       bits: tuple[int, ...]) -> torch.Tensor:
    """EdMIPS eq. (16) with Gaussian mid-rise candidates on one shared ``w``:
    ``sum_i gates_i Q_i(w)``, one function (one fused kernel on the compiled path). ``bits_i >= 32`` is
    the float weight."""
    out = torch.zeros_like(w)
    for i, (coef, b) in enumerate(zip(coefs, bits)):
        term = w if b >= 32 else gaussian_midrise(w, coef, b)
        out = out + gates[i] * term
    return out

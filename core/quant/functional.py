"""Pure fake-quantization functions (tensors and Python numbers in, tensor out).

They are the eager reference of every quantizer and what :func:`core.quant.base.kernel` compiles.
Straight-through estimators (STE) are written with the detach trick as ``q + (x - x.detach())``
(value exactly ``q``, gradient of ``x``), so outputs sit exactly on the quantization levels and
autograd (eager, or AOTAutograd under ``torch.compile``) derives the intended surrogate gradient.

EdMIPS's HWGQ and Gaussian quantizers (single and mixtures) run through the fused autograd functions of
:mod:`core.quant.mixture` instead, whose forward and backward are the pure ``*_forward`` / ``*_backward``
kernels at the end of this module; ``hwgq_quant``, ``gaussian_midrise``, ``hwgq_mixture_sum`` and
``gaussian_composite`` here are their autograd references (tests compare them).
"""

from __future__ import annotations

import torch


def lsq_fake_quant(x: torch.Tensor, step: torch.Tensor, qn: int, qp: int, grad_scale: float) -> torch.Tensor:
    """LSQ (Esser et al., ICLR 2020): ``y = round(clamp(x / s, qn, qp)) * s``.

    The paper's gradients (also the official LIMPQ quantizer's, which clamps ``x / s`` before rounding):
    with ``v = x / s``, the straight-through ``dy/dx = 1`` for ``qn < v < qp`` else 0, and ``dy/ds``
    (eq. 3 with ``qn = -Q_N``) is ``round(v) - v`` for ``qn < v < qp``, ``qn`` for ``v <= qn`` and ``qp``
    for ``v >= qp``, multiplied by ``grad_scale`` (the paper's ``g``). ``step`` broadcasts against ``x``
    (a scalar, or shape ``(C, 1, 1, 1)`` etc. for per-channel). :func:`lsq_fake_quant_native` is torch's
    variant.
    """
    with torch.no_grad():
        xs = x / step
        inside = (xs > qn) & (xs < qp)
        q = torch.round(torch.clamp(xs, qn, qp))
    return _lsq_surrogate(x, step, q, xs, inside, grad_scale)


def lsq_fake_quant_native(x: torch.Tensor, step: torch.Tensor, qn: int, qp: int, grad_scale: float
                          ) -> torch.Tensor:
    """LSQ with the gradients of torch's ``_fake_quantize_learnable_per_tensor_affine`` (zero point 0).

    The same values as :func:`lsq_fake_quant`, but "inside" is decided after rounding,
    ``qn <= round(x/s) <= qp``: in the half-step bands just outside the range (``qp <= x/s < qp + 1/2``,
    ``qn - 1/2 < x/s <= qn``) it passes gradient 1 to ``x`` and ``round(x/s) - x/s`` to the step where the
    paper passes 0 and ``qp`` / ``qn``.
    """
    with torch.no_grad():
        xs = x / step
        r = torch.round(xs)
        inside = (r >= qn) & (r <= qp)
        q = torch.clamp(r, qn, qp)
    return _lsq_surrogate(x, step, q, xs, inside, grad_scale)


def _lsq_surrogate(x: torch.Tensor, step: torch.Tensor, q: torch.Tensor, xs: torch.Tensor,
                   inside: torch.Tensor, grad_scale: float) -> torch.Tensor:
    """``q * s`` carrying the LSQ surrogate gradients: ``dy/ds = (q - x/s)`` inside, ``q`` (the clamp
    bound) outside, times ``grad_scale``; ``dy/dx = 1`` inside, 0 outside."""
    with torch.no_grad():
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


def weight_std(w: torch.Tensor) -> torch.Tensor:
    """Unbiased standard deviation of all of ``w`` (EdMIPS's weight scale).

    Eagerly ``w.std()``. Under ``torch.compile`` one pass accumulating ``sum d`` and ``sum d^2`` in float64,
    ``d = w - w[0]`` (the same number up to float rounding): inductor turns it into one plain reduction,
    about 3x faster on CPU than its Welford kernel for ``torch.std`` (0.48 vs 1.6 ms for 2.4M weights).
    The shift by one of the weights keeps the cancellation harmless even where the mean dwarfs the spread
    (unshifted, a near-constant weight's variance came out negative: a NaN std)."""
    if not torch.compiler.is_compiling():
        return w.std()
    n = w.numel()
    d = w.double().reshape(-1)
    d = d - d[0]
    total, squares = d.sum(), (d * d).sum()
    return torch.sqrt(torch.clamp((squares - total * total / n) / max(n - 1, 1), min=0)).to(w.dtype)


def gaussian_step(coef: float, std: torch.Tensor, bits: int, clip_bound: str = "grid"
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """EdMIPS's weight step ``c_w[b] * std(W)`` and clip bound ``L * step``, ``L = 2^b / 2 - 0.5``, in the
    std's dtype. The step is built in float64 and then cast, as the official code computes it
    (``std().item()`` times the constant in Python floats): in float32 the product can land one ulp away,
    which moves weights across rounding boundaries (a whole ResNet-18's logits drift apart).
    ``clip_bound="grid"``: ``L * step`` of the cast step, the top level of the quantizer's own grid (the
    paper's formula; exact integer export); ``"float64"``: ``L * step`` in float64, then cast (the official
    code's bound; in about a quarter of tensors one ulp off the top level). The one definition the forward
    kernels and the export grid (``GaussianQuantizer.grid``) share."""
    step64 = std.double() * coef
    step = step64.to(std.dtype)
    limit = 2**bits / 2 - 0.5
    return step, ((step64 * limit).to(std.dtype) if clip_bound == "float64" else step * limit)


def _midrise(w: torch.Tensor, std: torch.Tensor, coef: float, bits: int, clip_bound: str) -> torch.Tensor:
    return _midrise_at(w, *gaussian_step(coef, std, bits, clip_bound))


def _midrise_at(w: torch.Tensor, step: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
    return torch.clamp((torch.round(w / step + 0.5) - 0.5) * step, -bound, bound)


def gaussian_midrise(w: torch.Tensor, coef: float, bits: int, clip_bound: str = "grid") -> torch.Tensor:
    """EdMIPS weights: mid-rise uniform with ``step = coef * std(w)`` (unbiased std, no gradient; the
    step in float64, :func:`gaussian_step`).

    ``q = (round(w / step + 0.5) - 0.5) * step`` clamped to ``+-(2^b / 2 - 0.5) * step``;
    identity gradient (no clip mask).
    """
    with torch.no_grad():
        q = _midrise(w, weight_std(w), coef, bits, clip_bound)
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
    """EdMIPS eq. (12) with HWGQ candidates, ``sum_j gates_j HWGQ_j(x)``, differentiated by autograd: the
    reference that ``core.quant.mixture.hwgq_mixture`` (what the layers run) is tested against.
    ``levels_j == 0`` is a full-precision (ReLU) candidate."""
    out = torch.zeros_like(x)
    for j, (step, lev) in enumerate(zip(steps, levels)):
        term = torch.relu(x) if lev <= 0 else hwgq_quant(x, step, lev)
        out = out + gates[j] * term
    return out


def gaussian_composite(w: torch.Tensor, gates: torch.Tensor, coefs: tuple[float, ...],
                       bits: tuple[int, ...], clip_bound: str = "grid") -> torch.Tensor:
    """EdMIPS eq. (16) with Gaussian mid-rise candidates on one shared ``w``, ``sum_i gates_i Q_i(w)``,
    differentiated by autograd: the reference of ``core.quant.mixture.gaussian_mixture``. ``bits_i >= 32``
    is the float weight. Gradients: ``dw = grad * sum_i gates_i`` (each candidate's identity STE),
    ``dgates_i = sum(grad * Q_i(w))``."""
    with torch.no_grad():
        std = weight_std(w)
    out = torch.zeros_like(w)
    for i, (coef, b) in enumerate(zip(coefs, bits)):
        if b >= 32:
            term = w
        else:
            with torch.no_grad():
                q = _midrise(w, std, coef, b, clip_bound)
            term = q + (w - w.detach())
        out = out + gates[i] * term
    return out


# -- pure kernels of the fused EdMIPS functions (core.quant.mixture): no autograd inside ---------------

def _hwgq_value_and_mask(x: torch.Tensor, step: float, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    if levels <= 0:  # full precision candidate: ReLU
        return torch.relu(x), x > 0
    clip = step * levels
    return torch.round(torch.clamp(x, 0.0, clip) / step) * step, (x > 0) & (x < clip)


def hwgq_mixture_forward(x: torch.Tensor, gates: torch.Tensor, steps: tuple[float, ...],
                         levels: tuple[int, ...]) -> torch.Tensor:
    """``sum_j gates_j HWGQ_j(x)`` (values only)."""
    out = torch.zeros_like(x)
    for j, (step, lev) in enumerate(zip(steps, levels)):
        out = out + gates[j] * _hwgq_value_and_mask(x, step, lev)[0]
    return out


def hwgq_mixture_backward(grad: torch.Tensor, x: torch.Tensor, gates: torch.Tensor,
                          steps: tuple[float, ...], levels: tuple[int, ...], need_gates: bool
                          ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(grad * sum_j gates_j 1[0 < x < clip_j], [sum(grad * HWGQ_j(x))]_j or None)``."""
    pass_through = torch.zeros_like(x)
    sums = []
    for j, (step, lev) in enumerate(zip(steps, levels)):
        value, mask = _hwgq_value_and_mask(x, step, lev)
        pass_through = pass_through + torch.where(mask, gates[j], 0.0)
        if need_gates:
            sums.append((grad * value).sum())
    return grad * pass_through, (torch.stack(sums) if need_gates else None)


INDEX_LIMIT = 2**30  # |w / step| below this: the level index fits an int32 (see gaussian_mixture_forward)


def gaussian_steps(w: torch.Tensor, coefs: tuple[float, ...], bits: tuple[int, ...], clip_bound: str = "grid"
                   ) -> torch.Tensor:
    """``(candidates, 3)``: each candidate's step and clip bound (:func:`gaussian_step`) from ``std(w)``, and
    ``max|w| / step`` (zeros for a float candidate, ``bits_i >= 32``; ``inf`` or ``nan`` for a zero step).
    Its own kernel, so that the per-element loops of :func:`gaussian_mixture_forward` / ``_backward`` read
    the few scalars instead of recomputing the float64 step inside the loop (inductor inlines scalar math
    into the vector loop; measured here: 20 % more time per candidate in the backward); the largest
    ``|w| / step`` says whether the integer level index is safe (:func:`gaussian_mixture_forward`)."""
    std = weight_std(w)
    top = w.abs().max()
    zero = torch.zeros((), dtype=w.dtype, device=w.device)
    rows = []
    for coef, b in zip(coefs, bits):
        if b >= 32:
            rows.append(torch.stack((zero, zero, zero)))
            continue
        step, bound = gaussian_step(coef, std, b, clip_bound)
        rows.append(torch.stack((step, bound, top / step)))
    return torch.stack(rows)


def _level_index(w: torch.Tensor, step: torch.Tensor, bits: int) -> torch.Tensor:
    """The mid-rise level index ``k = clamp(round(w / step + 0.5), 1 - 2^(b-1), 2^(b-1))`` (the level is
    ``(k - 0.5) step``), clamped as an int32: the same values as clamping ``(k - 0.5) step`` to the grid bound
    ``(2^(b-1) - 0.5) step`` (float rounding is monotone and both ends round alike), but plain integer
    min / max instead of the NaN-propagating float ones, which cost inductor's CPU kernels 40-60 % of a
    candidate's time (measured here). Needs ``|w / step| < 2^31`` (checked by the caller)."""
    top = 2 ** (bits - 1)
    return torch.round(w / step + 0.5).to(torch.int32).clamp(1 - top, top).to(w.dtype)


def gaussian_mixture_forward(w: torch.Tensor, gates: torch.Tensor, steps: torch.Tensor,
                             bits: tuple[int, ...], index: bool = False) -> torch.Tensor:
    """``sum_i gates_i Q_i(w)`` (values only; ``steps`` from :func:`gaussian_steps`; ``bits_i >= 32``: the
    float weight). ``index=True``: each ``Q_i`` as ``(k_i - 0.5) step_i`` from the integer level index
    (:func:`_level_index`), bit for bit the same values for the grid clip bound where ``|w| / step_i <
    INDEX_LIMIT`` (the caller's conditions: :func:`core.quant.mixture.gaussian_mixture`)."""
    out = torch.zeros_like(w)
    for i, b in enumerate(bits):
        if b >= 32:
            q = w
        elif index:
            q = (_level_index(w, steps[i, 0], b) - 0.5) * steps[i, 0]
        else:
            q = _midrise_at(w, steps[i, 0], steps[i, 1])
        out = out + gates[i] * q
    return out


def gaussian_mixture_backward(grad: torch.Tensor, w: torch.Tensor, gates: torch.Tensor, steps: torch.Tensor,
                              bits: tuple[int, ...], index: bool = False
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(grad * sum_i gates_i, [sum(grad * Q_i(w))]_i)``: the gradients to ``w`` (every candidate's
    identity STE) and to the gates, in one pass over ``grad`` and ``w``.

    The gate sums are taken over the half-integer levels, ``step_i * sum(grad * m_i)`` with ``m_i`` clamped to
    ``+-(2^b / 2 - 0.5)``: equal to ``sum(grad * Q_i(w))`` up to float rounding (summation order, and the
    clip bound ``L * step`` to an ulp), one multiplication per element and candidate less (about 20 % of a
    candidate's backward time on CPU). ``index``: the levels from the integer index, as in the forward."""
    sums = []
    for i, b in enumerate(bits):
        if b >= 32:
            sums.append((grad * w).sum())
            continue
        if index:
            levels = _level_index(w, steps[i, 0], b) - 0.5
        else:
            limit = 2**b / 2 - 0.5
            levels = torch.clamp(torch.round(w / steps[i, 0] + 0.5) - 0.5, -limit, limit)
        sums.append((grad * levels).sum() * steps[i, 0])
    return grad * gates.sum(), torch.stack(sums)

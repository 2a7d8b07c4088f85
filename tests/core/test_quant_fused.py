"""The fused EdMIPS functions (core.quant.mixture) equal their autograd references (core.quant.functional),
eagerly and compiled, and keep memory flat in the number of candidates."""

from __future__ import annotations

import pytest
import torch

import core.quant.base as qbase
from core.quant import GAUSSIAN_COEFS, HWGQ_STEPS, functional, set_compiled
from core.quant.mixture import gaussian_mixture, hwgq_mixture

MODES = ["eager", "aot_eager", pytest.param("inductor", marks=pytest.mark.slow)]


@pytest.fixture
def mode(request):
    if request.param != "eager":
        set_compiled(True, backend=request.param)
    yield request.param
    set_compiled(False)
    assert not qbase._FAILED, "torch.compile failed; the eager fallback ran instead"


def _run(fn, x, gates):
    """Output and gradients (to x and to the gates) of ``fn(x, gates)`` under a fixed upstream gradient."""
    x = x.clone().requires_grad_()
    g = None if gates is None else gates.clone().requires_grad_()
    y = fn(x, g)
    (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
    return [y.detach(), x.grad] + ([] if g is None else [g.grad])


@pytest.mark.parametrize("mode", MODES, indirect=True)
@pytest.mark.parametrize("bits", [1, 2, 4])
def test_single_hwgq_and_gaussian_equal_references(mode, bits):
    x = torch.randn(4, 3, 5, 5) * 1.5
    step, coef = HWGQ_STEPS[bits], GAUSSIAN_COEFS[bits]
    fused = _run(lambda t, _: hwgq_mixture(t, None, (step,), (2**bits - 1,)), x, None)
    ref = _run(lambda t, _: functional.hwgq_quant(t, step, 2**bits - 1), x, None)
    for a, b in zip(fused, ref):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    fused = _run(lambda t, _: gaussian_mixture(t, None, (coef,), (bits,)), x, None)
    ref = _run(lambda t, _: functional.gaussian_midrise(t, coef, bits), x, None)
    for a, b in zip(fused, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", MODES, indirect=True)
def test_mixtures_equal_references_with_a_full_precision_candidate(mode):
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5) * 1.5
    a_bits, w_bits = (1, 2, 3, 4, 32), (1, 2, 3, 4, 8, 32)
    steps = tuple(HWGQ_STEPS.get(b, 0.0) for b in a_bits)
    levels = tuple(2**b - 1 if b < 32 else 0 for b in a_bits)
    gates = torch.softmax(torch.randn(len(a_bits)), 0)
    fused = _run(lambda t, g: hwgq_mixture(t, g, steps, levels), x, gates)
    ref = _run(lambda t, g: functional.hwgq_mixture_sum(t, g, steps, levels), x, gates)
    for a, b in zip(fused, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    coefs = tuple(GAUSSIAN_COEFS.get(b, 0.0) for b in w_bits)
    gates = torch.softmax(torch.randn(len(w_bits)), 0)
    fused = _run(lambda t, g: gaussian_mixture(t, g, coefs, w_bits), x, gates)
    ref = _run(lambda t, g: functional.gaussian_composite(t, g, coefs, w_bits), x, gates)
    for a, b in zip(fused, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def _saved_bytes(fn) -> int:
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def test_saved_memory_does_not_grow_with_the_candidates():
    w = torch.randn(64, 64, 3, 3, requires_grad=True)

    def composite(k: int):
        bits = tuple(range(1, k + 1))
        gates = torch.full((k,), 1.0 / k, requires_grad=True)
        return lambda: gaussian_mixture(w, gates, tuple(GAUSSIAN_COEFS[b] for b in bits), bits)

    four, eight = _saved_bytes(composite(4)), _saved_bytes(composite(8))
    assert eight - four == 4 * 4 + 4 * 2 * 4  # only the gates and each candidate's step and bound grow
    assert four < 2 * w.numel() * 4  # the weight and scalars, not one tensor per candidate
    x = torch.randn(8, 64, 8, 8, requires_grad=True)
    mix = _saved_bytes(lambda: hwgq_mixture(x, torch.full((3,), 1 / 3, requires_grad=True),
                                            (0.538, 0.3217, 0.185), (3, 7, 15)))
    assert mix == x.numel() * 4 + 3 * 4

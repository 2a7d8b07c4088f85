"""The fused EdMIPS functions (core.quant.mixture) equal their autograd references (core.quant.functional),
eagerly and compiled, and keep memory flat in the number of candidates."""

from __future__ import annotations

import pytest
import torch

import core.quant.base as qbase
from core.quant import GAUSSIAN_COEFS, HWGQ_STEPS, functional, set_compiled
from core.quant.mixture import _use_level_index, gaussian_mixture, hwgq_mixture

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
    assert eight - four == 4 * 4 + 4 * 3 * 4  # only the gates and each candidate's three scalars grow
    assert four < 2 * w.numel() * 4  # the weight and scalars, not one tensor per candidate
    x = torch.randn(8, 64, 8, 8, requires_grad=True)
    mix = _saved_bytes(lambda: hwgq_mixture(x, torch.full((3,), 1 / 3, requires_grad=True),
                                            (0.538, 0.3217, 0.185), (3, 7, 15)))
    assert mix == x.numel() * 4 + 3 * 4


@pytest.mark.parametrize("bits", range(1, 9))
def test_the_integer_level_index_gives_the_value_clamps_bits(bits):
    """The compiled CPU path's level index (an int32 clamp) gives the same forward values and gate gradients
    as clamping the value to the grid bound, bit for bit: at every rounding boundary, one ulp either side,
    and far beyond the clip bound on both sides."""
    step = torch.tensor(0.0123)
    top = 2 ** (bits - 1)
    ks = torch.arange(-top - 2, top + 3, dtype=torch.float32) * step
    w = torch.cat([ks, torch.nextafter(ks, ks + 1), torch.nextafter(ks, ks - 1), ks + step / 2,
                   torch.tensor([1e3, -1e3, 0.0, -0.0]) * step, torch.randn(2000) * step * top])
    steps = torch.stack([step, step * (top - 0.5), w.abs().max() / step]).reshape(1, 3)
    gates, grad = torch.tensor([0.7]), torch.randn(w.shape)
    value = functional.gaussian_mixture_forward(w, gates, steps, (bits,))
    assert torch.equal(functional.gaussian_mixture_forward(w, gates, steps, (bits,), index=True), value)
    assert torch.equal(value, 0.7 * _midrise_reference(w, step, bits))
    for a, b in zip(functional.gaussian_mixture_backward(grad, w, gates, steps, (bits,)),
                    functional.gaussian_mixture_backward(grad, w, gates, steps, (bits,), index=True)):
        assert torch.equal(a, b)


def _midrise_reference(w, step, bits):
    bound = (2**bits / 2 - 0.5) * step
    return torch.clamp((torch.round(w / step + 0.5) - 0.5) * step, -bound, bound)


def test_the_level_index_is_taken_only_where_it_is_exact():
    """Compiled, on the CPU, with the grid clip bound, and where every ``|w| / step`` fits an int32; a
    constant weight (zero step: NaN as officially) and a near-constant one (|w| / step ~ 1e10, where an
    int32 index would overflow) keep the float math, so the compiled mixture still equals the eager one."""
    bits = tuple(range(1, 9))
    coefs = tuple(GAUSSIAN_COEFS[b] for b in bits)
    w = torch.randn(4, 3, 5, 5)
    near_constant = torch.full((1000,), 1.0)
    near_constant[0] = torch.nextafter(torch.tensor(1.0), torch.tensor(2.0))
    constant = torch.full((50,), 0.3)
    gates = torch.softmax(torch.randn(len(bits)), 0)
    eager = {name: gaussian_mixture(t, gates, coefs, bits)
             for name, t in (("w", w), ("near", near_constant), ("const", constant))}
    assert not _use_level_index(w, functional.gaussian_steps(w, coefs, bits), "grid")  # eager
    set_compiled(True, backend="aot_eager")
    try:
        assert _use_level_index(w, functional.gaussian_steps(w, coefs, bits), "grid")
        assert not _use_level_index(w, functional.gaussian_steps(w, coefs, bits, "float64"), "float64")
        for t in (near_constant, constant):
            assert not _use_level_index(t, functional.gaussian_steps(t, coefs, bits), "grid")
        compiled = {name: gaussian_mixture(t, gates, coefs, bits)
                    for name, t in (("w", w), ("near", near_constant), ("const", constant))}
    finally:
        set_compiled(False)
    assert not qbase._FAILED
    assert torch.equal(compiled["w"], eager["w"])
    # the compiled std is another formula (functional.weight_std, float64): near-constant data puts eager
    # float32 std 5e-4 apart; an overflowed int32 index would put positive weights at the negative bound
    torch.testing.assert_close(compiled["near"], eager["near"], rtol=1e-3, atol=0)
    assert torch.isnan(eager["const"]).all() and torch.isnan(compiled["const"]).all()

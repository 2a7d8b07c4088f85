"""Every quantizer states its integer grid, and the grid reproduces the quantizer (no onnx needed)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from core.errors import ExportError
from core.quant import QUANTIZERS, IntegerGrid, create_quantizer, functional

ROLES = ("weight", "activation")


def _cases():
    for name in sorted(QUANTIZERS):
        for role in ROLES:
            for bits in create_quantizer(name, 32, role=role).supported_bits:
                if bits < 32:
                    yield name, role, bits


def _quantizer(name: str, role: str, bits: int, x: torch.Tensor):
    q = create_quantizer(name, bits, role=role)
    q(x)  # LSQ initialises its step from the first batch
    return q


@pytest.mark.parametrize(("name", "role", "bits"), list(_cases()))
def test_every_quantizer_states_a_grid_that_holds_its_output(name, role, bits):
    x = torch.randn(8, 4, 5, 5) * 1.5
    q = _quantizer(name, role, bits, x)
    y = q(x)
    grid = q.grid(x)
    codes = grid.codes(y, name)  # on the grid, in range, and (exact grids) bit for bit
    assert grid.qmin <= int(codes.min()) and int(codes.max()) <= grid.qmax
    assert grid.signed == (grid.qmin < 0)
    if not grid.odd_only:
        fq = grid.fake_quant(x)
        if grid.exact:  # QuantizeLinear -> DequantizeLinear computes the quantizer itself
            assert torch.equal(fq, y)
        else:  # DoReFa: the same levels in real arithmetic, float32 values an ulp apart
            assert name == "dorefa" and grid.note
            assert torch.equal(torch.round(grid.steps(fq)), torch.round(grid.steps(y)))
            assert (fq - y).abs().max() <= 2 * torch.finfo(torch.float32).eps


def test_standard_ranges_follow_the_bit_width():
    x = torch.randn(6, 3, 3, 3)
    for bits in range(2, 9):
        lsq_w = _quantizer("lsq", "weight", bits, x).grid()
        assert (lsq_w.qmin, lsq_w.qmax) == (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        lsq_a = _quantizer("lsq", "activation", bits, x.abs())
        assert (lsq_a.grid().qmin, lsq_a.grid().qmax) == (0, 2**bits - 1)
        sym = create_quantizer("lsq", bits, role="weight", symmetric=True)
        sym(x)
        assert (sym.grid().qmin, sym.grid().qmax) == (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1)
        pact = create_quantizer("pact", bits, alpha_init=3.0)
        assert pact.grid().scale == pact.alpha.detach() / (2**bits - 1) and pact.grid().qmax == 2**bits - 1
    for bits in range(1, 5):
        hwgq = create_quantizer("hwgq", bits)
        assert float(hwgq.grid().scale) == pytest.approx(hwgq.steps[bits]) and hwgq.grid().qmax == 2**bits - 1


def test_lsq_per_channel_grid_has_one_step_per_channel():
    w = torch.randn(6, 3, 3, 3) * torch.linspace(0.1, 2, 6).reshape(6, 1, 1, 1)
    q = create_quantizer("lsq", 4, role="weight", per_channel=True, channels=6)
    y = q(w)
    grid = q.grid(w)
    assert grid.axis == 0 and grid.scale.shape == (6,) and torch.equal(grid.scale, q.step_for(4).detach())
    grid.codes(y)


def test_gaussian_grid_is_odd_integers_at_half_the_forwards_step():
    """Mid-rise levels (k - 0.5) step = (2k - 1) step / 2: odd integers in a container one bit wider."""
    w = torch.randn(16, 8, 3, 3) * 0.05
    for bits in range(1, 9):
        q = create_quantizer("gaussian", bits)
        grid = q.grid(w)
        step, bound = functional.gaussian_step(q.coefs[bits], functional.weight_std(w), bits)  # the forward's
        assert torch.equal(grid.scale * 2, step)
        assert grid.exact and torch.equal(bound, grid.dequantize(torch.tensor(float(grid.qmax))))
        assert (grid.qmin, grid.qmax, grid.odd_only) == (-(2**bits - 1), 2**bits - 1, True)
        codes = grid.codes(q(w))
        assert bool((codes.remainder(2) == 1).all())
        with pytest.raises(ExportError, match="odd-only"):
            grid.quantize(w)


def test_gaussian_grid_is_inexact_exactly_when_the_float64_clip_bound_is_off_the_top_level():
    """``clip_bound="float64"`` clips at ``(2^b / 2 - 0.5) * step`` built in float64 (official EdMIPS): where
    that casts one ulp away from the top level, the clipped weights are one ulp off the grid
    and it says so."""
    seen = set()
    for seed in range(40):
        w = torch.randn(16, 8, 3, 3, generator=torch.Generator().manual_seed(seed)) * 0.05
        q = create_quantizer("gaussian", 2, clip_bound="float64")
        y, grid = q(w), q.grid(w)
        seen.add(grid.exact)
        if grid.exact:
            assert torch.equal(grid.dequantize(grid.codes(y).float()), y)
        else:
            assert "ulp" in grid.note
            with pytest.raises(ExportError, match="stated exact"):
                dataclasses.replace(grid, exact=True).codes(y)
            codes = grid.codes(y)
            diff = (grid.dequantize(codes.float()) - y).abs()
            assert 0 < float(diff.max()) <= float(torch.finfo(torch.float32).eps * y.abs().max())
    assert seen == {True, False}


def test_sign_grid_per_channel_scale():
    w = torch.randn(4, 3, 3, 3)
    q = create_quantizer("sign", 1, per_channel_scale=True)
    grid = q.grid(w)
    assert grid.axis == 0 and torch.allclose(grid.scale, w.abs().mean(dim=(1, 2, 3)))
    assert sorted(torch.unique(grid.codes(q(w))).tolist()) == [-1, 1]


def test_grids_that_need_the_tensor_or_bits_say_so():
    with pytest.raises(ExportError, match="gaussian.*depends on the tensor"):
        create_quantizer("gaussian", 2).grid()
    with pytest.raises(ExportError, match="32 bits"):
        create_quantizer("lsq", 32).grid()
    with pytest.raises(ExportError, match="never initialised"):
        create_quantizer("lsq", 4).grid()


def test_codes_reject_values_off_the_stated_grid():
    grid = IntegerGrid(torch.tensor(0.5), 0, 3)
    assert grid.codes(torch.tensor([0.0, 0.5, 1.5])).tolist() == [0, 1, 3]
    with pytest.raises(ExportError, match="not on the stated grid"):
        grid.codes(torch.tensor([0.25]), "layer x")
    with pytest.raises(ExportError, match="outside the stated range"):
        grid.codes(torch.tensor([2.0]))
    with pytest.raises(ExportError, match="per-tensor grid needs a 0-d scale"):
        IntegerGrid(torch.ones(3), 0, 3)

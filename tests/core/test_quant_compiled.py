"""The compiled path (``set_compiled(True)``) equals the eager reference; compile failures fall back."""

from __future__ import annotations

import pytest
import torch

import core.quant.base as qbase
from core.quant import create_quantizer, is_compiled, set_compiled


@pytest.fixture
def compiled():
    set_compiled(True)
    yield
    set_compiled(False)


def _fwd_bwd(q, x):
    x = x.clone().requires_grad_()
    y = q(x)
    (y * torch.arange(y.numel(), dtype=y.dtype).reshape(y.shape).sin()).sum().backward()
    params = [p.grad.clone() for p in q.parameters() if p.grad is not None]
    for p in q.parameters():
        p.grad = None
    return y.detach(), x.grad, params


@pytest.mark.parametrize("backend", [
    "aot_eager",  # dynamo + AOTAutograd graphs (the surrogate gradients), no code generation: seconds
    pytest.param("inductor", marks=pytest.mark.slow),  # the generated kernel: first compile ~15-100 s
])
@pytest.mark.parametrize("gradient", ["paper", "native"])
def test_compiled_lsq_equals_eager(compiled, backend, gradient):
    q = create_quantizer("lsq", 2, role="weight", gradient=gradient)
    x = torch.randn(8, 4, 3, 3)  # at 2 bits about 5 % of the weights lie in the half-step bands
    set_compiled(False)
    ref = _fwd_bwd(q, x)
    set_compiled(True, backend=backend)
    assert is_compiled()
    out = _fwd_bwd(q, x)
    assert not qbase._FAILED, "torch.compile failed; the eager fallback ran instead"
    torch.testing.assert_close(out[0], ref[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(out[1], ref[1], atol=1e-6, rtol=0)
    torch.testing.assert_close(out[2], ref[2], atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name,role,options", [
    ("pact", "activation", {"alpha_init": 2.0}),
    ("dorefa", "weight", {}),
    ("hwgq", "activation", {}),
    ("gaussian", "weight", {}),
    ("sign", "weight", {"per_channel_scale": True}),
    ("lsq", "activation", {"per_channel": True, "channels": 4, "ch_axis": 1}),
])
def test_compiled_quantizers_equal_eager(compiled, name, role, options):
    q = create_quantizer(name, 1 if name == "sign" else 2, role=role, **options)
    x = torch.randn(8, 4, 3, 3)
    set_compiled(False)
    ref = _fwd_bwd(q, x)
    set_compiled(True)
    out = _fwd_bwd(q, x)
    assert not qbase._FAILED
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_compile_failure_warns_and_falls_back(monkeypatch):
    def eager(x):
        return x * 2

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(qbase, "_FAILED", set())
    call = qbase._guarded(eager, broken)
    with pytest.warns(RuntimeWarning, match="torch.compile of eager failed"):
        assert call(torch.ones(2)).tolist() == [2.0, 2.0]
    assert eager in qbase._FAILED
    assert call(torch.ones(1)).tolist() == [2.0]  # no second warning: the eager path is used directly


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_mixed_conv_equals_eager(compiled, backend):
    """EdMIPS's composite layer on the compiled path (each mixture one compiled function) gives the
    eager layer's output and gradients (to x, W, alpha_w, alpha_a)."""
    from core.nn import CompositeConv2d

    torch.manual_seed(0)
    m = CompositeConv2d(4, 6, 3, padding=1, bias=False)
    with torch.no_grad():
        m.alpha_w.copy_(torch.randn(4))
        m.alpha_a.copy_(torch.randn(3))
    x = torch.randn(2, 4, 6, 6) * 1.5

    def run():
        xi = x.clone().requires_grad_()
        y = m(xi)
        (y * torch.arange(y.numel(), dtype=y.dtype).reshape(y.shape).cos()).sum().backward()
        grads = [xi.grad] + [p.grad.clone() for p in (m.weight, m.alpha_w, m.alpha_a)]
        m.zero_grad()
        return [y.detach()] + grads

    set_compiled(False)
    ref = run()
    set_compiled(True, backend=backend)
    out = run()
    assert not qbase._FAILED, "torch.compile failed; the eager fallback ran instead"
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)

"""Search-step cost of EdMIPS's composite convolutions (section 4.4), as ratios measured in one run.

:func:`search_step_times` times one training step (forward, backward, optimizer steps) of

- ``float``: the plain network;
- ``uniform``: the same network with every searchable layer a fixed W2A2 ``QConv2d`` (HWGQ / Gaussian);
- ``search_w4``: the EdMIPS search model (composite conv, w {1,2,3,4}, a {2,3,4}, eq. 14-16) with its
  complexity loss and two optimizers;
- ``search_w8``: the same with 8 weight candidates (w {1..8}).

The paper's point (section 4.4): one convolution per layer whatever the number of candidates, so the search
step should cost about the uniform quantized step and hardly grow with the candidates. Measured eagerly and
with ``core.quant.set_compiled(True)`` (the quantizers' ``torch.compile``d kernels; the first, compiling call
is reported separately). ``PERF`` exposes the figures to ``mpq bench perf``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from core.config import OptimConfig
from core.engine import build_optimizer
from core.models import build_model
from core.nn import QuantSpec, arch_parameters, quantize_model, weight_parameters
from core.quant import is_compiled, set_compiled
from papers.edmips.complexity import ComplexityLoss, measure_layer_costs
from papers.edmips.config import QuantConfig
from papers.edmips.models import build_search_model

VARIANTS = ("float", "uniform", "search_w4", "search_w8")


def _step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, variant: str) -> Callable[[], None]:
    input_size = tuple(x.shape[1:])
    if variant == "uniform":
        quantize_model(model, QuantSpec(mode="fixed", w_quant="gaussian", a_quant="hwgq", w_bits=2, a_bits=2))
    rc = None
    if variant.startswith("search"):
        w = [1, 2, 3, 4] if variant == "search_w4" else list(range(1, 9))
        model, layers = build_search_model(model, QuantConfig(w_candidates=w))
        rc = ComplexityLoss(layers, measure_layer_costs(model, layers, input_size), "bops")
    model.to(x.device).train()
    opts = [build_optimizer(OptimConfig(lr=0.01), weight_parameters(model))]
    if rc is not None:
        opts.append(build_optimizer(OptimConfig(lr=0.01), arch_parameters(model)))

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        if rc is not None:
            loss = loss + 1e-3 * rc()
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss.backward()
        for o in opts:
            o.step()
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)

    return step


def search_step_times(model_name: str = "edmips_resnet18", batch: int = 32, image_size: int = 32,
                      repeats: int = 5, warmup: int = 1, modes: tuple[str, ...] = ("eager", "compiled"),
                      variants: tuple[str, ...] = VARIANTS, device: str = "cpu") -> dict:
    """Median step time (s) per ``mode`` and ``variant``, the first-call time, and the ratios of the brief:
    ``search_w4 / uniform``, ``uniform / float`` and ``search_w8 / search_w4`` per mode."""
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, image_size, image_size, generator=gen).to(dev)
    y = torch.randint(0, 1000, (batch,), generator=gen).to(dev)
    previous = is_compiled()
    out: dict = {"model": model_name, "batch": batch, "image_size": image_size,
                 "threads": torch.get_num_threads(), "device": str(dev), "times": {}, "first_call": {},
                 "peak_memory_mb": {}, "ratios": {}}
    try:
        for mode in modes:
            set_compiled(mode == "compiled")
            times, first, peak = {}, {}, {}
            for variant in variants:
                torch.manual_seed(0)
                step = _step(build_model(model_name, num_classes=1000), x, y, variant)
                if dev.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(dev)
                t0 = time.perf_counter()
                step()
                first[variant] = time.perf_counter() - t0
                for _ in range(max(0, warmup - 1)):
                    step()
                samples = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    step()
                    samples.append(time.perf_counter() - t0)
                times[variant] = statistics.median(samples)
                if dev.type == "cuda":
                    peak[variant] = torch.cuda.max_memory_allocated(dev) / 2**20
            out["times"][mode], out["first_call"][mode], out["peak_memory_mb"][mode] = times, first, peak
            ratios = {}
            if {"uniform", "float"} <= set(times):
                ratios["uniform/float"] = times["uniform"] / times["float"]
            if {"search_w4", "uniform"} <= set(times):
                ratios["search_w4/uniform"] = times["search_w4"] / times["uniform"]
            if {"search_w8", "search_w4"} <= set(times):
                ratios["search_w8/search_w4"] = times["search_w8"] / times["search_w4"]
            out["ratios"][mode] = ratios
    finally:
        set_compiled(previous)
    return out


def perf_group(smoke: bool = False) -> list[dict]:
    """``mpq bench perf`` figures: each search-step time against its baseline, eager and compiled."""
    res = search_step_times(repeats=1 if smoke else 5, modes=("eager",) if smoke else ("eager", "compiled"))
    rows = []
    for mode, times in res["times"].items():
        for name, base in (("uniform", "float"), ("search_w4", "uniform"), ("search_w8", "search_w4")):
            label = f"edmips {mode} step {name} (ResNet-18, b{res['batch']}, {res['image_size']}px)"
            rows.append({"name": label,
                         "value": times[name], "unit": "s", "baseline": f"{mode} step {base}",
                         "baseline_value": times[base], "ratio": times[name] / times[base]})
    return rows


PERF = {"edmips": perf_group}

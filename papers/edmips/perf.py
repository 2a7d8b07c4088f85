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
is reported separately). The variants are timed in interleaved rounds (``rounds`` x ``block`` steps each) so
that a slow phase of a shared machine hits all of them alike; each figure is the median over its steps, with
Python's garbage collector off while they run (``core.timing``). On the 2-core machine here one step's
time varies by +-20 % from one step to the next, so the default takes 40 rounds of one step: with 15 steps
per variant a run's w8 / w4 ratio moved by +-5 % from run to run, more than the margins it is judged by.

:func:`saved_tensor_mb` measures the memory that could grow with the candidates: the tensors autograd keeps
for the backward (on CPU the process's peak resident size was the same 4.4 GB for all four variants at
224x224, allocator caching hiding the differences); on CUDA ``search_step_times`` also reports
``torch.cuda.max_memory_allocated`` per variant. ``python -m papers.edmips.perf --image-size 224
--rounds 3`` runs the 224x224 measurement (a step takes seconds there). ``PERF`` exposes the 32x32 figures
to ``mpq bench perf``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from core.config import OptimConfig
from core.engine import build_optimizer
from core.io import print_json
from core.models import build_model
from core.nn import QuantSpec, arch_parameters, quantize_model, weight_parameters
from core.quant import is_compiled, set_compiled
from core.timing import interleaved_medians
from papers.edmips.complexity import ComplexityLoss, measure_layer_costs
from papers.edmips.config import QuantConfig
from papers.edmips.models import build_search_model

VARIANTS = ("float", "uniform", "search_w4", "search_w8")
RATIOS = (("uniform", "float"), ("search_w4", "uniform"), ("search_w8", "search_w4"))


def _prepare(model: torch.nn.Module, x: torch.Tensor, variant: str
             ) -> tuple[torch.nn.Module, ComplexityLoss | None]:
    """``model`` turned into ``variant`` (on ``x``'s device, in training mode) and its complexity loss."""
    input_size = tuple(x.shape[1:])
    if variant == "uniform":
        quantize_model(model, QuantSpec(kind="fixed", w_quant="gaussian", a_quant="hwgq", w_bits=2, a_bits=2))
    rc = None
    if variant.startswith("search"):
        w = [1, 2, 3, 4] if variant == "search_w4" else list(range(1, 9))
        model, layers = build_search_model(model, QuantConfig(w_candidates=w))
        rc = ComplexityLoss(layers, measure_layer_costs(model, layers, input_size), "bops")
    return model.to(x.device).train(), rc


def _step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, variant: str) -> Callable[[], None]:
    model, rc = _prepare(model, x, variant)
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


def _batch(batch: int, image_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, image_size, image_size, generator=gen).to(device)
    y = torch.randint(0, 1000, (batch,), generator=gen).to(device)
    return x, y


def search_step_times(model_name: str = "edmips_resnet18", batch: int = 32, image_size: int = 32,
                      rounds: int = 40, block: int = 1, warmup: int = 2,
                      modes: tuple[str, ...] = ("eager", "compiled"), variants: tuple[str, ...] = VARIANTS,
                      device: str = "cpu", clock: str = "wall") -> dict:
    """Median step time (s) per ``mode`` and ``variant`` over ``rounds`` interleaved blocks of ``block``
    steps (after ``warmup`` steps, the first one reported as ``first_call``), and the ratios of the brief:
    ``uniform / float``, ``search_w4 / uniform`` and ``search_w8 / search_w4`` per mode.

    ``clock="cpu"`` times the CPU time of the calling thread instead of the wall time (one torch thread
    only): the compute a step costs, unaffected by other jobs taking the cores (on a loaded machine the
    wall time of multi-threaded steps grows by 10-30x, unevenly between the variants)."""
    if clock not in ("wall", "cpu"):
        raise ValueError(f"clock must be 'wall' or 'cpu', got {clock!r}")
    if clock == "cpu" and (torch.get_num_threads() != 1 or device != "cpu"):
        raise ValueError("clock='cpu' measures one thread: use torch.set_num_threads(1) on the CPU")
    timer = time.thread_time if clock == "cpu" else time.perf_counter
    dev = torch.device(device)
    x, y = _batch(batch, image_size, dev)
    previous = is_compiled()
    out: dict = {"model": model_name, "batch": batch, "image_size": image_size, "clock": clock,
                 "threads": torch.get_num_threads(), "device": str(dev), "rounds": rounds, "block": block,
                 "times": {}, "first_call": {}, "peak_memory_mb": {}, "ratios": {}}
    try:
        for mode in modes:
            set_compiled(mode == "compiled")
            steps, first, peak = {}, {}, {}
            for variant in variants:
                torch.manual_seed(0)
                steps[variant] = _step(build_model(model_name, num_classes=1000), x, y, variant)
                if dev.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(dev)
                t0 = time.perf_counter()
                steps[variant]()
                first[variant] = time.perf_counter() - t0
                for _ in range(max(0, warmup - 1)):
                    steps[variant]()
                if dev.type == "cuda":
                    peak[variant] = torch.cuda.max_memory_allocated(dev) / 2**20
            times = interleaved_medians(steps, rounds, block, timer)
            del steps
            out["times"][mode], out["first_call"][mode], out["peak_memory_mb"][mode] = times, first, peak
            out["ratios"][mode] = {f"{a}/{b}": times[a] / times[b] for a, b in RATIOS
                                   if a in times and b in times}
    finally:
        set_compiled(previous)
    return out


def saved_tensor_mb(variant: str, model_name: str = "edmips_resnet18", batch: int = 32,
                    image_size: int = 32, compiled: bool = False) -> float:
    """MB of tensors autograd keeps from one forward of ``variant`` for its backward (distinct storages,
    parameters included): the training memory that candidates could multiply, measured exactly, unlike
    a CPU process's resident size (allocator caching makes that flat across the variants here)."""
    previous = is_compiled()
    set_compiled(compiled)
    try:
        x, y = _batch(batch, image_size, torch.device("cpu"))
        torch.manual_seed(0)
        model, rc = _prepare(build_model(model_name, num_classes=1000), x, variant)
        storages: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = F.cross_entropy(model(x), y)
            if rc is not None:
                loss = loss + 1e-3 * rc()
        return sum(storages.values()) / 2**20
    finally:
        set_compiled(previous)


def perf_group(smoke: bool = False) -> list[dict]:
    """``mpq bench perf`` figures: each search-step time against its baseline, eager and compiled."""
    res = search_step_times(rounds=1 if smoke else 40, block=1, warmup=1 if smoke else 2,
                            modes=("eager",) if smoke else ("eager", "compiled"))
    rows = []
    for mode, times in res["times"].items():
        for name, base in RATIOS:
            label = f"edmips {mode} step {name} (ResNet-18, b{res['batch']}, {res['image_size']}px)"
            rows.append({"name": label,
                         "value": times[name], "unit": "s", "baseline": f"{mode} step {base}",
                         "baseline_value": times[base], "ratio": times[name] / times[base]})
    return rows


PERF = {"edmips": perf_group}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="edmips_resnet18")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--block", type=int, default=1)
    p.add_argument("--modes", nargs="+", default=["eager", "compiled"], choices=["eager", "compiled"])
    p.add_argument("--memory", action="store_true", help="also the tensors saved for backward per variant")
    p.add_argument("--json", default=None, help="write the results to this file")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: torch's); 1 is steadier on a machine shared with other jobs")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall time, or the CPU time of the one thread (with --threads 1)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    res = search_step_times(args.model, args.batch, args.image_size, rounds=args.rounds, block=args.block,
                            modes=tuple(args.modes), clock=args.clock)
    if args.memory:
        res["saved_tensor_mb"] = {mode: {v: saved_tensor_mb(v, args.model, args.batch, args.image_size,
                                                            compiled=mode == "compiled") for v in VARIANTS}
                                  for mode in args.modes}
    print_json(res, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""LLT performance numbers for ``mpq bench perf`` (benchmarks, not tests).

- :func:`ilp_solve_time`: the ILP of main paper Eq. 4 on ResNet-50 (52 layers x 25 choices) from an
  indicators file; MACs are counted once, the solve is timed alone (official code: 0.35 s with CBC).
- :func:`indicator_step_time`: one Alg. 1 step (n key policies + K random ones, one update) against one
  plain LSQ training step of the same model at fixed bits.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
import torch.nn as nn

from core.models import build_model
from core.nn import QuantSpec, quantize_model
from papers.llt.complexity import layer_costs
from papers.llt.ilp import size_budget_bits, solve_ilp, uniform_bitops_budget
from papers.llt.indicators import ImportanceIndicators
from papers.llt.onetime import ImportanceTrainer, build_indicator_model

DEFAULT_INDICATORS = (Path(__file__).resolve().parents[3] / "shared" / "reference"
                      / "limpq-resnet50-indicators.json")


def ilp_solve_time(indicators_path: str | Path = DEFAULT_INDICATORS, repeats: int = 5,
                   model: str = "resnet50",
                   w_bits: float = 3, a_bits: float = 4, compression: float | None = 12.2,
                   alpha: float = 2.0) -> dict:
    """Median wall (``perf_counter``) and CPU (``process_time``) seconds of the ILP solve with each exact
    solver (mpq's branch and bound, scipy's HiGHS), plus the one-off MAC counting time."""
    ind = ImportanceIndicators.load(indicators_path)
    t0 = time.perf_counter()
    costs = layer_costs(build_model(model), ind.names_for_model(), (3, 224, 224), "limpq")
    mac_time = time.perf_counter() - t0
    bits = list(ind.bits)
    sw, sa = ind.table("weight", bits), ind.table("act", bits)
    bitops = uniform_bitops_budget(costs, w_bits, a_bits)
    size = size_budget_bits(costs, compression) if compression else None
    out: dict = {"model": model, "layers": len(costs.names), "choices_per_layer": len(bits) ** 2,
                 "mac_count_s": mac_time}
    for label in ("bnb", "highs"):
        wall, cpu, build = [], [], []
        for _ in range(repeats):
            c0 = time.process_time()
            sol = solve_ilp(sw, sa, costs, alpha=alpha, w_candidates=bits, a_candidates=bits,
                            bitops_budget=bitops, size_budget=size, solver=label)
            cpu.append(time.process_time() - c0)
            wall.append(sol.solve_time_s)
            build.append(sol.build_time_s)
        out[label] = {"solve_s_median": statistics.median(wall), "solve_s_min": min(wall),
                      "cpu_s_median": statistics.median(cpu), "build_s_median": statistics.median(build),
                      "variables": sol.stats.get("after_fixing", sol.stats.get("variables")),
                      "nodes": sol.stats.get("nodes"), "objective": sol.objective}
    return out


def _plain_lsq_model(model: nn.Module, bits: int) -> nn.Module:
    quantize_model(model, QuantSpec(kind="fixed", w_quant="lsq", a_quant="lsq", w_bits=bits, a_bits=bits,
                                    w_options={"init": "limpq"}, first="float", last="float"))
    return model


def indicator_step_time(model_name: str = "resnet20", batch_size: int = 32, image_size: int = 32,
                        bits: tuple[int, ...] = (6, 5, 4, 3, 2), repeats: int = 5, warmup: int = 2,
                        device: str = "cpu") -> dict:
    """Median seconds of one Alg. 1 step and of one plain LSQ step (W4A4), and their ratio (expected
    about n + K = 6 for five candidate bits)."""
    torch.manual_seed(0)
    x = torch.randn(batch_size, 3, image_size, image_size, device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)
    batch = (x, y)

    def timed(trainer) -> float:
        for _ in range(warmup):
            trainer.train_step(batch)
        times = []
        for _ in range(repeats):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            trainer.train_step(batch)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    from core.engine import Trainer

    plain = _plain_lsq_model(build_model(model_name, num_classes=10), 4)
    opt = torch.optim.SGD(plain.parameters(), lr=0.01, momentum=0.9)
    t_plain = timed(Trainer(plain, opt, [batch], epochs=1, device=device))
    model = build_model(model_name, num_classes=10)
    names = build_indicator_model(model, list(bits))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    t_llt = timed(ImportanceTrainer(model, opt, [batch], epochs=1, device=device, bits=list(bits),
                                    layer_names=names, grad_clip=1.0, grad_clip_mode="value"))
    return {"model": model_name, "batch_size": batch_size, "image_size": image_size, "bits": list(bits),
            "device": device, "threads": torch.get_num_threads(), "plain_lsq_step_s": t_plain,
            "indicator_step_s": t_llt, "ratio": t_llt / t_plain, "passes_per_step": len(bits) + 1}


def run_perf(indicators_path: str | Path = DEFAULT_INDICATORS) -> dict:
    """Both measurements (the ILP one only when the indicators file exists)."""
    out: dict = {"indicator_step": indicator_step_time()}
    if Path(indicators_path).is_file():
        out["ilp"] = ilp_solve_time(indicators_path)
    return out


def perf_group(smoke: bool = False) -> list[dict]:
    """``mpq bench perf`` figures: the Alg. 1 step against a plain LSQ step, and the ResNet-50 ILP solve
    (official: 0.35 s with CBC; goal 0.1 s) when the released indicators are present."""
    step = indicator_step_time(model_name="digits_resnet" if smoke else "resnet20",
                               batch_size=8 if smoke else 32, image_size=16 if smoke else 32,
                               repeats=1 if smoke else 5, warmup=1 if smoke else 2)
    rows = [{"name": f"llt indicator step ({step['model']}, b{step['batch_size']}, {len(step['bits'])} bits)",
             "value": step["indicator_step_s"], "unit": "s", "baseline": "plain LSQ W4A4 step",
             "baseline_value": step["plain_lsq_step_s"], "ratio": step["ratio"]}]
    if not smoke and Path(DEFAULT_INDICATORS).is_file():
        ilp = ilp_solve_time(repeats=5)
        for label, name in (("bnb", "mpq branch and bound"), ("highs", "HiGHS MILP")):
            rows.append({"name": f"llt ILP solve, ResNet-50 (52 layers x 25 choices), {name}",
                         "value": ilp[label]["solve_s_median"], "unit": "s",
                         "baseline": "official CBC time (published, i7-8700)", "baseline_value": 0.35,
                         "ratio": ilp[label]["solve_s_median"] / 0.35})
    return rows


PERF = {"llt": perf_group}


if __name__ == "__main__":
    import json

    torch.set_num_threads(1)
    print(json.dumps(run_perf(), indent=1))

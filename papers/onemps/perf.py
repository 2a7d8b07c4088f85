"""OneMPS performance figures for ``mpq bench perf`` (group ``onemps``), each a ratio measured in one run.

- **Supernet step** (:func:`step_times`): one training step of the OneMPS supernet (f_theta(eta) once, one
  straight-through path per layer, the full loss, weight and theta optimizers) against one step of the
  uniform LSQ network (every searchable layer W4A4) of the same network, first / last layers (W8 / W8A8),
  batch and input, both through ``core.engine.Trainer.train_step``; interleaved rounds, medians. Goal:
  <= 1.3x. Also, for reference, the same step without the kernel-similarity term (``supernet_mu0``:
  the unselected kernels then take no part in the step) and the all-path relaxed step (``gumbel_soft``,
  the DNAS configuration).
- **Time to a Pareto front** (:func:`front_times`): OneMPS = one supernet training (E epochs) + the sweep
  (``points`` eta, every distinct child BN-re-estimated and evaluated) against ONE EdMIPS search of E epochs
  on the same network, data, candidates and batch, reached through the benchmark method registry
  (``core.paper.get_paper("edmips")``, method ``edmips`` with ``max_searches=1``; a paper never imports
  another). EdMIPS needs one search per point, so its front of ``points`` points costs ``points`` searches.
  Goal: the whole OneMPS front <= 1.2x ONE EdMIPS search.

``python -m papers.onemps.perf`` prints both as JSON.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import torch

from core.engine import Trainer
from core.io import print_json
from core.models import build_model
from core.nn import QuantSpec, quantize_model
from core.quant import is_compiled, set_compiled
from core.timing import interleaved_medians
from papers.onemps.common import build_supernet
from papers.onemps.config import OneMpsConfig, load_onemps_config
from papers.onemps.train import SupernetTrainer, objective_of

STEP_VARIANTS = ("uniform", "supernet", "supernet_mu0", "supernet_soft")


def _step_fn(model_name: str, variant: str, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    torch.manual_seed(0)
    model = build_model(model_name, num_classes=10)
    batch = [(x, y)]
    if variant == "uniform":
        quantize_model(model, QuantSpec(kind="fixed", w_bits=4, a_bits=4, first="w8", last="w8a8"))
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        trainer = Trainer(model, opt, batch, epochs=1, device=x.device, log_every=10**9)
    else:
        gates = "gumbel_soft" if variant == "supernet_soft" else "gumbel_hard"
        mu = ["search.kernel_weight=0"] if variant == "supernet_mu0" else []
        cfg = load_onemps_config(None, [f"search.gates={gates}", "run.log_every=1000000000", *mu])
        model, costs = build_supernet(cfg, model, tuple(x.shape[1:]))
        from core.nn import arch_parameters, weight_parameters

        opts = {"weights": torch.optim.SGD(weight_parameters(model), lr=0.01, momentum=0.9),
                "arch": torch.optim.Adam(arch_parameters(model), lr=1e-3)}
        trainer = SupernetTrainer(model.to(x.device), opts, batch, epochs=1, device=x.device, log_every=10**9,
                                  objective=objective_of(cfg.search, costs), search=cfg.search)
    trainer.module.train()

    def step() -> None:
        trainer.train_step(batch[0])
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)

    return step


def step_times(model_name: str = "resnet18", batch: int = 32, image_size: int = 32, rounds: int = 5,
               block: int = 3, warmup: int = 2, modes: tuple[str, ...] = ("eager",),
               variants: tuple[str, ...] = STEP_VARIANTS, device: str = "cpu") -> dict:
    """Median step time (s) per mode and variant over ``rounds`` interleaved blocks of ``block`` steps."""
    dev = torch.device(device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, image_size, image_size, generator=g).to(dev)
    y = torch.randint(0, 10, (batch,), generator=g).to(dev)
    previous = is_compiled()
    out: dict = {"model": model_name, "batch": batch, "image_size": image_size, "device": str(dev),
                 "threads": torch.get_num_threads(), "times": {}, "ratios": {}}
    try:
        for mode in modes:
            set_compiled(mode == "compiled")
            steps = {v: _step_fn(model_name, v, x, y) for v in variants}
            for fn in steps.values():
                for _ in range(warmup):
                    fn()
            times = interleaved_medians(steps, rounds, block)
            out["times"][mode] = times
            out["ratios"][mode] = {f"{v}/uniform": times[v] / times["uniform"] for v in variants
                                   if v != "uniform"}
    finally:
        set_compiled(previous)
    return out


def _front_config(epochs: int, points: int, cap: int, extra: list[str]) -> OneMpsConfig:
    """The digits config (its penalty range, warm-up share, learning rates, sweep) with the EdMIPS
    request's candidates and first / last layers, ``epochs`` epochs."""
    from papers.onemps import PAPER

    return PAPER.load_config("digits", [
        "quant.w_candidates=[2, 3, 4]", "quant.a_candidates=[2, 3, 4]", "quant.first=float",
        "quant.last=float", f"search.schedule.epochs={epochs}", f"search.arch_warmup_epochs={epochs // 5}",
        f"search.max_steps_per_epoch={cap}", f"pareto.points={points}", "run.log_every=1000000000", *extra])


def front_times(epochs: int = 3, points: int = 10, cap: int = 0, extra: list[str] | None = None) -> dict:
    """Seconds to a front of ``points`` eta on digits (module docstring): OneMPS vs one EdMIPS search."""
    from core.bops import count
    from core.engine import init_distributed
    from core.method import SearchRequest
    from core.paper import get_paper
    from core.policy import BitPolicy
    from papers.onemps.common import build_data
    from papers.onemps.pareto import one_shot_front
    from papers.onemps.probability import sweep_etas
    from papers.onemps.train import fit_supernet

    cfg = _front_config(epochs, points, cap, extra or [])
    info = init_distributed("cpu")
    data = build_data(cfg, info, cap)
    out: dict = {"dataset": "digits", "model": "digits_resnet [8, 16, 32]", "epochs": epochs,
                 "points": points, "batch": cfg.data.batch_size, "candidates": [2, 3, 4],
                 "steps_per_epoch": len(data.train)}

    def build() -> torch.nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return build_model("digits_resnet", num_classes=10, **cfg.model.kwargs)

    t0 = time.perf_counter()
    model, costs = build_supernet(cfg, build(), data.input_size)
    fit_supernet(cfg, model, costs, data.train, None, info.device, None)
    t_train = time.perf_counter() - t0
    etas = sweep_etas(cfg.search.eta0, cfg.search.eta1, points, cfg.pareto.spacing)
    candidates, front = one_shot_front(model, costs, etas, data.train, data.val, cfg.pareto.bn_images,
                                       info.device)
    t_sweep = time.perf_counter() - t0 - t_train
    t1 = time.perf_counter()
    one_shot_front(model, costs, etas, data.train, data.val, cfg.pareto.bn_images, info.device, dedupe=False)
    out["onemps"] = {"train_s": t_train, "sweep_s": t_sweep, "total_s": t_train + t_sweep,
                     "sweep_every_point_s": time.perf_counter() - t1, "front_points": len(front),
                     "distinct_children": len({c.get("same_as_eta", c["eta"]) for c in candidates})}
    try:
        edmips = next(m for m in get_paper("edmips").load_methods() if m.name == "edmips")
    except Exception as exc:  # noqa: BLE001 - the comparison needs the edmips method; say why it is missing
        out["edmips"] = {"unavailable": f"{type(exc).__name__}: {exc}"}
        return out
    names = list(costs.names)
    macs = count(build(), data.input_size, policy=BitPolicy.uniform(names, 1, 1), convention="bpnas").bops
    request = SearchRequest(build_model=build, input_size=data.input_size, num_classes=10,
                            train_set=data.train_set, val_set=data.val_set, w_candidates=(2, 3, 4),
                            a_candidates=(2, 3, 4),
                            budget_bops=9.0 * macs, budget_avg_bits=3.0, run_dir=None, epochs=epochs,
                            batch_size=cfg.data.batch_size, log=lambda msg: None,
                            options={"max_searches": 1, "max_steps_per_epoch": cap})
    t0 = time.perf_counter()
    edmips.search(request)
    t_edmips = time.perf_counter() - t0
    out["edmips"] = {"one_search_s": t_edmips, "front_s": points * t_edmips}
    every = t_train + out["onemps"]["sweep_every_point_s"]
    out["ratios"] = {"onemps_front/one_edmips_search": out["onemps"]["total_s"] / t_edmips,
                     "onemps_front_every_point/one_edmips_search": every / t_edmips,
                     "onemps_front/edmips_front": out["onemps"]["total_s"] / (points * t_edmips)}
    return out


def perf_group(smoke: bool = False) -> list[dict]:
    """``mpq bench perf`` rows (module docstring)."""
    rows = []
    res = step_times(rounds=1 if smoke else 5, block=1 if smoke else 3, warmup=1 if smoke else 2,
                     batch=8 if smoke else 32)
    for mode, times in res["times"].items():
        for v in ("supernet", "supernet_mu0", "supernet_soft"):
            name = f"onemps {mode} step {v} (ResNet-18, b{res['batch']}, {res['image_size']}px)"
            rows.append({"name": name,
                         "value": times[v], "unit": "s", "baseline": f"{mode} step uniform LSQ W4A4",
                         "baseline_value": times["uniform"], "ratio": times[v] / times["uniform"]})
    front = front_times(epochs=1 if smoke else 10, points=10, cap=2 if smoke else 0)
    o, e = front["onemps"], front["edmips"]
    label = (f"onemps front: 1 supernet ({front['epochs']} ep) + sweep of {front['points']} eta, "
             f"{o['distinct_children']} distinct children (digits)")
    if "one_search_s" not in e:
        rows.append({"name": f"{label}; EdMIPS {e['unavailable']}", "value": o["total_s"], "unit": "s"})
        return rows
    one = f"ONE EdMIPS search ({front['epochs']} ep)"
    every = o["train_s"] + o["sweep_every_point_s"]
    rows += [{"name": label, "value": o["total_s"], "unit": "s", "baseline": one,
              "baseline_value": e["one_search_s"], "ratio": o["total_s"] / e["one_search_s"]},
             {"name": f"onemps front, each of the {front['points']} children evaluated", "value": every,
              "unit": "s", "baseline": one, "baseline_value": e["one_search_s"],
              "ratio": every / e["one_search_s"]},
             {"name": label, "value": o["total_s"], "unit": "s",
              "baseline": f"{front['points']} EdMIPS searches (one per point)",
              "baseline_value": e["front_s"], "ratio": o["total_s"] / e["front_s"]}]
    return rows


PERF = {"onemps": perf_group}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--what", choices=["step", "front", "both"], default="both")
    p.add_argument("--model", default="resnet18")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--modes", nargs="+", default=["eager"], choices=["eager", "compiled"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--points", type=int, default=10)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    res = {}
    if args.what in ("step", "both"):
        res["step"] = step_times(args.model, args.batch, args.image_size, rounds=args.rounds,
                                 modes=tuple(args.modes), device=args.device)
    if args.what in ("front", "both"):
        res["front"] = front_times(args.epochs, args.points)
    print_json(res, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Search-step cost of the BP-NAS supernet, as ratios measured in one run (``mpq bench perf``, ``bpnas``).

:func:`search_step_times` times one training step (forward, backward, optimizer steps) of ResNet-20 on
32x32 inputs for

- ``uniform``: every searched layer a fixed W4A4 ``QConv2d`` with the same ``scale_clip`` quantizers, the
  first conv and the classifier at 8 bits (the final network's step);
- ``search_sample``: the supernet step of :class:`papers.bpnas.search.BpnasSearchTrainer` with
  ``search.paths = sample`` (one pair per block drawn each step, the score-function term, barrier, Prob-1
  and the guarded architecture step; Table 1's five pairs);
- ``search_mixture``: the same with ``search.paths = mixture`` (one convolution per distinct activation
  bit-width of the pairs, two for Table 1's pairs).

The goal of the issue is ``search_sample / uniform <= 1.3``. The variants are timed in interleaved rounds
(``rounds`` x ``block`` steps each) so that a slow phase of a shared machine hits all of them alike; each
figure is the median over its steps. ``python -m papers.bpnas.perf`` prints the JSON (``--device cuda`` on
a GPU).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import torch

from core.engine import build_optimizer
from core.errors import ConfigError
from core.io import print_json
from core.timing import interleaved_medians
from papers.bpnas.config import BpnasConfig, ModelConfig
from papers.bpnas.losses import feasible_init
from papers.bpnas.models import build_fixed_model, build_supernet
from papers.bpnas.search import BpnasSearchTrainer
from papers.bpnas.supernet import block_selectors

VARIANTS = ("uniform", "search_sample", "search_mixture")
RATIOS = (("search_sample", "uniform"), ("search_mixture", "uniform"))


def _config(model: str, paths: str) -> BpnasConfig:
    cfg = BpnasConfig(model=ModelConfig(name=model))
    cfg.search.paths = paths
    cfg.search.warmup_epochs = 0
    cfg.search.b_max = 3.5
    return cfg


def _step(variant: str, model_name: str, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    input_size = tuple(x.shape[1:])
    if variant == "uniform":
        cfg = _config(model_name, "sample")
        model, names = build_fixed_model(cfg, 10)
        for n, m in model.named_modules():
            if n in names:
                m.w_bits, m.a_bits = 4, 4
        model.to(x.device).train()
        opt = build_optimizer(cfg.search.optim, model.parameters())
        criterion = torch.nn.CrossEntropyLoss()

        def step() -> None:
            loss = criterion(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    else:
        cfg = _config(model_name, variant.split("_")[1])
        model, selectors, cost = build_supernet(cfg, 10, input_size, x.device)
        feasible_init(cost, cfg.search.b_max, cfg.search.init_margin)
        from core.nn import arch_parameters, weight_parameters

        optimizers = {"weights": build_optimizer(cfg.search.optim, weight_parameters(model)),
                      "arch": build_optimizer(cfg.search.arch_optim, arch_parameters(model))}
        trainer = BpnasSearchTrainer(model, optimizers, [], None, epochs=1, device=x.device,
                                     selectors=block_selectors(model), cost=cost, search=cfg.search)
        model.train()

        def step() -> None:
            trainer.train_step((x, y))
    if x.device.type == "cuda":
        inner = step

        def step() -> None:
            inner()
            torch.cuda.synchronize(x.device)
    return step


def search_step_times(model_name: str = "resnet20", batch: int = 128, image_size: int = 32, rounds: int = 5,
                      block: int = 3, warmup: int = 2, variants: tuple[str, ...] = VARIANTS,
                      device: str = "cpu") -> dict:
    """Median step time (s) per variant over ``rounds`` interleaved blocks of ``block`` steps (after
    ``warmup`` steps) and the ratios ``search_sample / uniform`` and ``search_mixture / uniform``."""
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise ConfigError(f"unknown perf variant(s) {unknown}; choose from {list(VARIANTS)}")
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, image_size, image_size, generator=gen).to(dev)
    y = torch.randint(0, 10, (batch,), generator=gen).to(dev)
    steps = {}
    for variant in variants:
        torch.manual_seed(0)
        steps[variant] = _step(variant, model_name, x, y)
        for _ in range(warmup):
            steps[variant]()
    times = interleaved_medians(steps, rounds, block)
    return {"model": model_name, "batch": batch, "image_size": image_size, "device": str(dev),
            "threads": torch.get_num_threads(), "rounds": rounds, "block": block, "times": times,
            "ratios": {f"{a}/{b}": times[a] / times[b] for a, b in RATIOS if a in times and b in times}}


def perf_group(smoke: bool = False) -> list[dict]:
    """``mpq bench perf`` figures: each search step against the uniform quantized step."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    res = search_step_times(batch=32 if smoke else 128, rounds=1 if smoke else 5, block=1 if smoke else 3,
                            warmup=1 if smoke else 2, device=device)
    times = res["times"]
    return [{"name": f"bpnas {a} step (ResNet-20, b{res['batch']}, 32px, {res['device']})",
             "value": times[a], "unit": "s", "baseline": f"{b} W4A4 step", "baseline_value": times[b],
             "ratio": times[a] / times[b]} for a, b in RATIOS]


def det_perf_group(smoke: bool = False) -> list[dict]:
    """The detection row (``papers.bpnas.det.perf``): search step vs float Faster R-CNN step; a NaN row saying
    why when the ``det`` extra is missing."""
    from core.errors import MissingDependencyError

    try:
        from papers.bpnas.det.perf import perf_group as det_group

        return det_group(smoke)
    except MissingDependencyError as exc:
        return [{"name": f"bpnas det search step: skipped ({exc})", "value": float("nan"), "unit": "s"}]


PERF = {"bpnas": perf_group, "bpnas_det": det_perf_group}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--block", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="also write the results to this file")
    args = p.parse_args(argv)
    res = search_step_times(args.model, args.batch, args.image_size, args.rounds, args.block,
                            device=args.device)
    print_json(res, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

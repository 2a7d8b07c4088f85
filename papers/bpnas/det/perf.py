"""Detection search-step cost (``mpq bench perf --only bpnas_det``): one training step of BP-NAS's Faster
R-CNN supernet (``BpnasFasterRCNN``, ``paths=sample``: path sampling, the loss dict with barrier, Prob-1 and
score-function terms, the guarded architecture step of ``BpnasOptimWrapper``) against one step of mmdet's
float ``FasterRCNN`` with the same config, image size and batch (``OptimWrapper`` + SGD). The goal of the
issue is a ratio <= 2. Steps are interleaved in rounds; each figure is the median of its steps.

    python -m papers.bpnas.det.perf --depth 50 --image-size 128 --batch 2
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Callable

import torch

from core.extras import require
from core.timing import interleaved_medians

VARIANTS = ("float", "search_sample")


def _model_cfg(depth: int, image_size: int) -> dict:
    Config = require("mmengine.config", "the detection perf group").Config
    from papers.bpnas.det.run import CONFIG_DIR

    model = copy.deepcopy(Config.fromfile(str(CONFIG_DIR / "tiny_coco.py")).model)
    model["roi_head"]["bbox_head"]["num_classes"] = 3
    model["backbone"]["depth"] = depth
    if depth < 50:
        model["neck"]["in_channels"] = [64, 128, 256, 512]
    model["bpnas"]["count_size"] = [image_size, image_size]
    return model


def _step(variant: str, model_cfg: dict, data: dict, device: torch.device) -> Callable[[], None]:
    from mmdet.registry import MODELS
    from mmengine.optim import OptimWrapper

    import papers.bpnas.det.mm as mm

    cfg = copy.deepcopy(model_cfg)
    if variant == "float":
        cfg["type"] = "FasterRCNN"
        cfg.pop("bpnas")
    else:
        cfg["bpnas"]["mode"] = "search"
    model = MODELS.build(cfg).to(device).train()
    sgd = {"type": "SGD", "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4}
    if variant == "float":
        wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4))
    else:
        wrapper = mm.BpnasOptimWrapperConstructor({"optimizer": sgd})(model)
        model.arch_active = True
    counter = iter(range(10**9))

    def step() -> None:
        if variant != "float":  # what BpnasSearchHook does before each iteration
            generator = torch.Generator().manual_seed(next(counter))
            for s in model.selectors:
                s.resample(generator)
        model.train_step(data, wrapper)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return step


def det_step_times(depth: int = 50, image_size: int = 128, batch: int = 2, rounds: int = 3, block: int = 2,
                   warmup: int = 1, device: str = "cpu") -> dict:
    """Median step time (s) of the float and the search step, and their ratio."""
    require("mmdet", "the detection perf group")
    from mmdet.testing import demo_mm_inputs
    from mmdet.utils import register_all_modules

    register_all_modules()
    dev = torch.device(device)
    torch.manual_seed(0)
    data = demo_mm_inputs(batch, (3, image_size, image_size), num_items=[3] * batch, num_classes=3,
                          device=str(dev))
    model_cfg = _model_cfg(depth, image_size)
    steps = {}
    for variant in VARIANTS:
        steps[variant] = _step(variant, model_cfg, data, dev)
        for _ in range(warmup):
            steps[variant]()
    times = interleaved_medians(steps, rounds, block)
    return {"model": f"faster_rcnn_r{depth}_fpn", "image_size": image_size, "batch": batch,
            "device": str(dev), "threads": torch.get_num_threads(), "rounds": rounds, "block": block,
            "times": times, "ratio": times["search_sample"] / times["float"]}


def perf_group(smoke: bool = False) -> list[dict]:
    """``mpq bench perf`` row: the detection search step against the float Faster R-CNN step."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    res = det_step_times(depth=18 if smoke else 50, rounds=1 if smoke else 3, block=1 if smoke else 2,
                         device=device)
    t = res["times"]
    return [{"name": f"bpnas det search step ({res['model']}, b{res['batch']}, {res['image_size']}px, "
                     f"{res['device']})", "value": t["search_sample"], "unit": "s",
             "baseline": "float Faster R-CNN step", "baseline_value": t["float"], "ratio": res["ratio"]}]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--depth", type=int, default=50)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--block", type=int, default=2)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    print(json.dumps(det_step_times(args.depth, args.image_size, args.batch, args.rounds, args.block,
                                    device=args.device), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

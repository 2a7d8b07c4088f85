"""BASQ performance figures for ``mpq bench perf`` (ratios measured in one run; benchmarks, not tests).

- Candidate evaluation in the evolutionary search (``search_fold``'s fitness: a population's top-1
  accuracies over the cached fold, several candidates per forward; and one candidate per forward) per
  candidate, against one plain forward over the same fold, the weights quantized once as the search runs
  (goal <= 1.2x); BN re-calibration per candidate (an option) reported separately. Each pair is timed in
  alternation and the ratio is the median of the pairs' ratios.
- The whole 10-fold search (population 45, 20 iterations: up to 945 candidates per fold) at the quick
  suite's setting (digits, ``digits_resnet`` widths 4/8/16 at 16 px, the 397 validation images), on an
  untrained supernet (the time does not depend on the weights); goal < 60 s on 2 cores.
- One supernet step (a sampled selection, the student and the teacher forward, distillation loss,
  backward, Adam) against one plain LSQ step of the same network (every activation LSQ, no branches,
  cross-entropy) on the same batch (goal <= 1.3x); also without the teacher's forward.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from core.timing import interleaved_samples, median_time

QUICK = {"model": "digits_resnet", "kwargs": {"widths": [4, 8, 16], "blocks": 1}, "image_size": 16}


def _paired(fn: Callable[[], object], baseline: Callable[[], object], repeats: int,
            warmup: int = 1) -> tuple[float, float, float]:
    """``(median seconds of fn, of baseline, median of the per-pair ratios)``: the two are timed in
    alternation, so that a change of machine load between them does not bias the ratio."""
    for _ in range(warmup):
        fn()
        baseline()
    samples = interleaved_samples({"fn": fn, "baseline": baseline}, repeats)
    a, b = samples["fn"], samples["baseline"]
    return statistics.median(a), statistics.median(b), statistics.median(x / y for x, y in zip(a, b))


def _quick_supernet(bits: int = 2, clip_layers: str = "spatial", image_size: int = 16) -> nn.Module:
    from core.models import build_model
    from core.nn import quantize_model
    from papers.basq.layers import LAMBDAS
    from papers.basq.models import basq_spec

    torch.manual_seed(0)
    model = build_model(QUICK["model"], num_classes=10, **QUICK["kwargs"])
    quantize_model(model, basq_spec(bits, lambdas=LAMBDAS, clip_layers=clip_layers))
    model.train()
    with torch.no_grad():  # initialise the LSQ steps from data, as the first training step does
        model(torch.randn(32, 3, image_size, image_size))
    return model.eval()


def _search_config(smoke: bool):
    from core.config import DataConfig, RunConfig
    from papers.basq.config import BASQConfig, SearchConfig
    from papers.basq.evolution import EvolutionSettings

    evolution = EvolutionSettings(population=6, iterations=2, parents=2, crossover=2, mutation=2) if smoke \
        else EvolutionSettings()
    return BASQConfig(data=DataConfig(name="digits", workers=0), run=RunConfig(log_every=10**9),
                      search=SearchConfig(folds=3 if smoke else 10, evolution=evolution))


def candidate_evaluation(smoke: bool = False, repeats: int = 20, population: int = 45) -> dict:
    """Seconds per candidate of the search's fitness (a population evaluated together, and one candidate at
    a time) vs one plain forward over the same fold, and the BN re-calibration (weights quantized once)."""
    from core.data import DigitsDataset
    from papers.basq.folds import CachedBatches, candidates_top1, fold_indices
    from papers.basq.layers import sample_selection, search_space, searchable_blocks
    from papers.basq.search import SelectedBNRecalibration, quantized_weights_frozen

    size = 8 if smoke else QUICK["image_size"]
    model = _quick_supernet(image_size=size)
    val = DigitsDataset("val", image_size=size)
    fold = CachedBatches(val, fold_indices(val.targets, 10)[0], 200, "cpu")
    space, gen, blocks = search_space(model), torch.Generator().manual_seed(0), searchable_blocks(model)
    population = 6 if smoke else population

    def plain() -> None:
        with torch.no_grad():
            for x, _ in fold:
                model(x)

    def evaluate(images_per_forward: int) -> Callable[[], None]:
        def run() -> None:
            candidates = [sample_selection(space, gen) for _ in range(population)]
            candidates_top1(model, blocks, candidates, fold, "cpu", images_per_forward)
        return run

    repeats = 3 if smoke else repeats
    with quantized_weights_frozen(model):  # as the search runs: the weights quantized once
        t_pop, t_plain, ratio = _paired(evaluate(400), plain, repeats)
        t_one, _, ratio_one = _paired(evaluate(1), plain, max(1, repeats // 4))
        train = DigitsDataset("train", image_size=size)
        loader = torch.utils.data.DataLoader(train, batch_size=64, shuffle=False)
        images = 64 if smoke else 256
        recal = SelectedBNRecalibration(model, loader, images, torch.device("cpu"))
        t_recal, _, ratio_recal = _paired(recal, plain, 1 if smoke else 5)
    return {"fold_images": fold.count, "population": population, "plain_forward_s": t_plain,
            "candidate_s": t_pop / population, "ratio": ratio / population,
            "candidate_one_at_a_time_s": t_one / population, "ratio_one_at_a_time": ratio_one / population,
            "bn_recalibration_s": t_recal, "ratio_bn_recalibration": ratio_recal,
            "bn_recalibration_images": images}


def kfold_search_time(smoke: bool = False) -> dict:
    """Wall seconds of the whole K-fold search (``search_fold`` on every split) at the quick setting."""
    from core.data import DigitsDataset
    from papers.basq.folds import dataset_targets, make_splits
    from papers.basq.search import quantized_weights_frozen, search_fold

    size = 8 if smoke else QUICK["image_size"]
    model = _quick_supernet(image_size=size)
    cfg = _search_config(smoke)
    val = DigitsDataset("val", image_size=size)
    splits = make_splits(dataset_targets(val), "kfold", cfg.search.folds, "contiguous")
    t0, c0 = time.perf_counter(), time.process_time()
    with quantized_weights_frozen(model):
        records = [search_fold(model, split, val, cfg, torch.device("cpu")) for split in splits]
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    evaluated = sum(r["evaluated"] for r in records)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return {"folds": len(records), "candidates": evaluated, "seconds": total, "cpu_seconds": cpu,
            "per_candidate_s": total / max(1, evaluated), "threads": torch.get_num_threads(),
            "load_average_1min": load}


def supernet_step(smoke: bool = False, batch_size: int = 64, repeats: int = 10) -> dict:
    """Median seconds of one supernet step and one plain LSQ step of the same network on one batch."""
    from core.engine import Trainer
    from core.models import build_model
    from papers.basq.supernet import SupernetTrainer, supernet_param_groups

    size = 8 if smoke else QUICK["image_size"]
    batch = (torch.randn(batch_size, 3, size, size), torch.randint(0, 10, (batch_size,)))
    teacher = build_model(QUICK["model"], num_classes=10, **QUICK["kwargs"]).eval()
    repeats = 2 if smoke else repeats

    def trainer(model: nn.Module, trainer_cls: type, **kw) -> Trainer:
        model.train()
        opt = torch.optim.Adam(supernet_param_groups(model, 5e-6), lr=1e-3)
        return trainer_cls(model, opt, [batch], epochs=1, device="cpu", grad_clip=10.0, **kw)

    lsq = trainer(_quick_supernet(clip_layers="none", image_size=size), Trainer)
    basq = trainer(_quick_supernet(image_size=size), SupernetTrainer, teacher=teacher)
    t_basq, t_lsq, ratio = _paired(lambda: basq.train_step(batch), lambda: lsq.train_step(batch), repeats, 2)
    with torch.no_grad():
        t_teacher = median_time(lambda: teacher(batch[0]), repeats)
    return {"batch_size": batch_size, "image_size": size, "lsq_step_s": t_lsq, "supernet_step_s": t_basq,
            "teacher_forward_s": t_teacher, "ratio": ratio,
            "ratio_without_teacher": (t_basq - t_teacher) / t_lsq}


@contextmanager
def _threads(n: int) -> Iterator[None]:
    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def perf_group(smoke: bool = False) -> list[dict]:
    """``mpq bench perf`` rows, measured with one intra-op thread (the search is one process; on these
    small tensors a second thread only adds synchronisation, which on a loaded machine costs several
    times the work)."""
    with _threads(1):
        ev = candidate_evaluation(smoke)
        search = kfold_search_time(smoke)
        step = supernet_step(smoke)
    return [
        {"name": f"basq candidate evaluation ({ev['fold_images']} images, a population of "
                 f"{ev['population']} per call)", "value": ev["candidate_s"], "unit": "s",
         "baseline": "plain forward over the same fold", "baseline_value": ev["plain_forward_s"],
         "ratio": ev["ratio"]},
        {"name": "basq candidate evaluation, one candidate per forward",
         "value": ev["candidate_one_at_a_time_s"], "unit": "s",
         "baseline": "plain forward over the same fold", "baseline_value": ev["plain_forward_s"],
         "ratio": ev["ratio_one_at_a_time"]},
        {"name": f"basq BN re-calibration per candidate ({ev['bn_recalibration_images']} images, option)",
         "value": ev["bn_recalibration_s"], "unit": "s", "baseline": "plain forward over the fold",
         "baseline_value": ev["plain_forward_s"], "ratio": ev["ratio_bn_recalibration"]},
        {"name": f"basq {search['folds']}-fold search ({search['candidates']} candidates, quick setting, "
                 f"{search['threads']} thread, load {search['load_average_1min']:.1f}), wall",
         "value": search["seconds"], "unit": "s", "baseline": "goal 60 s", "baseline_value": 60.0,
         "ratio": search["seconds"] / 60.0},
        {"name": f"basq {search['folds']}-fold search, CPU time of this process",
         "value": search["cpu_seconds"], "unit": "s", "baseline": "goal 60 s", "baseline_value": 60.0,
         "ratio": search["cpu_seconds"] / 60.0},
        {"name": f"basq supernet step (b{step['batch_size']}, with the teacher forward)",
         "value": step["supernet_step_s"], "unit": "s", "baseline": "plain LSQ step, same network",
         "baseline_value": step["lsq_step_s"], "ratio": step["ratio"]},
        {"name": "basq supernet step without the teacher forward", "value":
         step["supernet_step_s"] - step["teacher_forward_s"], "unit": "s",
         "baseline": "plain LSQ step, same network", "baseline_value": step["lsq_step_s"],
         "ratio": step["ratio_without_teacher"]},
    ]


PERF = {"basq": perf_group}


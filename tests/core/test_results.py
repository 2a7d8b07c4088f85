"""core.results: the one results record (schema, writer, reader), validated the way torchvision's
test_schema_meta_validation checks weight metadata: every field, type and range."""

from __future__ import annotations

import json

import pytest
import torch

from core.bops import count
from core.engine import DistInfo
from core.errors import DataError
from core.models import build_model
from core.policy import BitPolicy
from core.results import (
    CODE_VERSION_RE,
    RunResult,
    code_version,
    counts_from_report,
    load_results,
    run_result,
    validate_results,
    write_results,
)
from tests.fake_paper import FakeConfig
from tests.fixtures import results_record


def test_a_record_round_trips_through_the_writer_and_the_reader(tmp_path):
    cfg = FakeConfig(table_row="fake/t/row")
    model = build_model("digits_resnet", num_classes=10, widths=[4, 4, 8], blocks=1)
    report = count(model, (3, 8, 8), convention="bpnas", policy=None)
    policy = BitPolicy({r.name: (2, 3) for r in report.counted_rows})
    report = count(model, (3, 8, 8), convention="bpnas", policy=policy)
    result = run_result(cfg, DistInfo(device=torch.device("cpu")), paper="fake", method="greedy",
                        report=report, policy=policy, metrics={"top1": 50, "top5": 90.5},
                        wall_time_s={"train": 1.5}, extra={"note": "x"})
    path = write_results(tmp_path / "run" / "results.json", result)
    again = load_results(path)
    assert again == result and isinstance(again, RunResult)
    data = json.loads(path.read_text())
    assert data["schema_version"] == 1 and data["table_row"] == "fake/t/row"
    assert data["config"]["budget_bits"] == 3.0 and data["device"] == "cpu" and data["seed"] == 0
    assert data["policy"]["layers"][0]["w_bits"] == 2 and data["metrics"]["top1"] == 50.0


def test_counts_name_their_convention_and_scope():
    model = build_model("digits_resnet", num_classes=10, widths=[4, 4, 8], blocks=1)
    edmips = counts_from_report(count(model, (3, 8, 8), convention="edmips"))
    exact = counts_from_report(count(model, (3, 8, 8), convention="exact"))
    assert (edmips.convention, edmips.scope) == ("edmips", "searchable")
    assert (exact.convention, exact.scope) == ("exact", "all")
    assert edmips.macs < edmips.macs_all and exact.macs == exact.macs_all
    assert edmips.params == exact.params and exact.avg_bits == pytest.approx(32.0)


def test_code_version_has_one_format():
    assert CODE_VERSION_RE.match(code_version())
    assert CODE_VERSION_RE.match("0.1.0") and CODE_VERSION_RE.match("0.1.0+1a2b3c4")
    assert not CODE_VERSION_RE.match("mpq 0.1.0 (1a2b3c4)")  # LLT's former format


@pytest.mark.parametrize("change, message", [
    ({"schema_version": 0}, "schema_version 0 is not 1"),
    ({"row": "a/b/c"}, "unknown config key row"),  # no aliases: `row` is not `table_row`
    ({"metrics": {"top1": "high"}}, "metrics.top1: expected float"),
    ({"metrics": {"top1": 101.0}}, "metrics.top1=101.0 is outside"),
    ({"metrics": {}}, "metrics is empty"),
    ({"code_version": "mpq 0.1.0"}, "code_version"),
    ({"wall_time_s": {"train": -1}}, "negative"),
    ({"counts": {"convention": "x", "scope": "some", "params": 1, "macs": 1, "macs_all": 1, "bops": 1,
                 "avg_bits": 1, "size_mb": 1}}, "counts.scope: expected one of"),
])
def test_invalid_records_are_refused_naming_the_problem(change, message, tmp_path):
    with pytest.raises(DataError, match=message):
        validate_results(results_record(**change), "r.json")
    data = results_record()
    del data["device"]
    with pytest.raises(DataError, match="missing required config key device"):
        validate_results(data)
    path = tmp_path / "results.json"
    with pytest.raises(DataError, match="does not exist"):
        load_results(path)


def test_the_writer_refuses_an_invalid_record_and_writes_nothing(tmp_path):
    bad = RunResult(**{**validate_results(results_record()).__dict__, "metrics": {"top1": 150.0}})
    with pytest.raises(DataError, match="outside"):
        write_results(tmp_path / "results.json", bad)
    assert not (tmp_path / "results.json").exists()

"""`mpq bench perf --smoke`: every group runs (or says why not), figures carry their baselines."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from benchmarks import perf
from core.cli import main
from core.errors import ConfigError


def test_builtin_groups_smoke() -> None:
    results: list[perf.Measurement] = []
    for group in ("fakequant", "bops", "data"):
        results += perf.run_perf(only=group, smoke=True, log=lambda m: None)
    by = {m.name: m for m in results}
    native = by["native learnable fake-quant fwd+bwd"]
    assert native.baseline == "relu fwd+bwd"
    assert native.ratio == pytest.approx(native.value / native.baseline_value)
    assert by["lsq gradient=native vs native op: max |grad x| difference"].value < 1e-6
    assert by["lsq gradient=native vs native op: grad step relative difference"].value < 1e-4
    assert 0 < by["lsq gradient=paper vs native op: share of grad x that differs"].value < 0.5
    assert any(m.group == "bops" and m.ratio and m.ratio > 0 for m in results)
    assert any(m.group == "data" and m.unit == "img/s" and m.value > 0 for m in results)
    assert all(m.value > 0 or math.isnan(m.value) or "difference" in m.name for m in results)


def test_perf_cli_json_and_unknown_group(tmp_path: Path, capsys) -> None:
    out = tmp_path / "perf.json"
    assert main(["bench", "perf", "--smoke", "--only", "fakequant", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert {"name", "value", "unit", "baseline", "baseline_value", "ratio"} <= set(data[0])
    assert "native learnable fake-quant fwd+bwd" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="unknown perf group"):
        perf.run_perf(only="nope", smoke=True)


def test_paper_groups_are_discovered_or_explained() -> None:
    groups = perf.paper_groups()
    for name, fn in groups.items():
        assert callable(fn) or (isinstance(fn, str) and fn.startswith("unavailable:")), name


@pytest.mark.parametrize("fvcore", ["installed", "absent"])
def test_counting_group_compares_tools_on_the_same_model(fvcore, monkeypatch) -> None:
    if fvcore == "installed":
        pytest.importorskip("fvcore.nn", reason="fvcore not installed (pip install -e .[bench])")
    else:
        monkeypatch.setitem(sys.modules, "fvcore.nn", None)  # import fails as if not installed
    by = {m.name: m for m in perf.run_perf(only="counting", smoke=True, log=lambda m: None)}
    base = "core.bops.count resnet20 (audited)"
    assert by[base].value > 0
    for tool in ("FlopCounterMode resnet20 (real forward)", "FlopCounterMode resnet20 (meta forward)"):
        assert by[tool].baseline == base and by[tool].ratio == pytest.approx(by[tool].value / by[base].value)
    assert by["FlopCounterMode MACs (FLOPs / 2) minus count's"].value == 0
    if fvcore == "installed":
        assert by["fvcore FlopCountAnalysis resnet20"].ratio > 0
        assert by["fvcore conv + linear MACs minus count's"].value == 0
    else:
        skipped = [m for m in by.values() if "fvcore not installed" in m.name]
        assert len(skipped) == 1 and math.isnan(skipped[0].value)

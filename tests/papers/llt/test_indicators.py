"""indicators.json: schema of the official release, round trip, extraction, errors."""

from __future__ import annotations

import json

import pytest
import torch

from core.errors import PolicyError
from papers.llt.indicators import ImportanceIndicators, extract_indicators
from papers.llt.onetime import build_indicator_model
from tests.papers.llt.helpers import tiny_net


def _sample() -> ImportanceIndicators:
    names = ["module.a", "module.b"]
    return ImportanceIndicators(
        bits=[4, 3, 2], layer_names=names,
        weight={n: {4: 0.01 * (i + 1), 3: 0.02 * (i + 1), 2: 0.05 * (i + 1)} for i, n in enumerate(names)},
        act={n: {4: 0.1 * (i + 1), 3: 0.2 * (i + 1), 2: 0.4 * (i + 1)} for i, n in enumerate(names)},
        meta={"source": "test"})


def test_round_trip_keeps_schema_and_values(tmp_path):
    ind = _sample()
    path = tmp_path / "sub" / "indicators.json"
    ind.save(path)
    raw = json.loads(path.read_text())
    assert list(raw) == ["source", "bits", "layer_name", "weight", "act"]  # official keys (+ source)
    assert raw["weight"]["module.a"] == {"4": 0.01, "3": 0.02, "2": 0.05}  # bits as string keys
    back = ImportanceIndicators.load(path)
    assert back == ind
    assert back.names_for_model() == ["a", "b"]
    assert [p.name for p in path.parent.iterdir()] == ["indicators.json"]  # no temporary left


def test_extraction_reads_every_per_bit_step_and_round_trips(tmp_path):
    model = tiny_net()
    names = build_indicator_model(model, [6, 4, 2])
    assert names == ["3", "6"]
    with torch.no_grad():
        for b in (6, 4, 2):
            for n in names:
                m = model.get_submodule(n)
                m.weight_quantizer.step[[6, 4, 2].index(b)].fill_(b / 100)
                m.act_quantizer.step[[6, 4, 2].index(b)].fill_(b / 10)
    ind = extract_indicators(model, [6, 4, 2])
    assert ind.layer_names == names
    assert ind.weight["3"] == pytest.approx({6: 0.06, 4: 0.04, 2: 0.02})
    assert ind.act["6"] == pytest.approx({6: 0.6, 4: 0.4, 2: 0.2})
    ind.save(tmp_path / "i.json")
    assert ImportanceIndicators.load(tmp_path / "i.json").table("act").tolist() == ind.table("act").tolist()


@pytest.mark.parametrize("content, match", [
    ("{not json", "not valid JSON"),
    ('{"bits": [4], "layer_name": ["a"], "weight": {}}', "missing key"),
    ('{"bits": [4], "layer_name": ["a"], "weight": {"a": {"4": 1}}, "act": {}}', "'act' has no entry"),
    ('{"bits": [4, 2], "layer_name": ["a"], "weight": {"a": {"4": 1}}, "act": {"a": {"4": 1}}}', "lacks bit"),
    ('{"bits": [4], "layer_name": ["a"], "weight": {"a": {"4": "x"}}, "act": {"a": {"4": 1}}}', "malformed"),
])
def test_malformed_files_raise_policy_error(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(PolicyError, match=match):
        ImportanceIndicators.load(path)


def test_missing_file_and_unknown_bits():
    with pytest.raises(PolicyError, match="does not exist"):
        ImportanceIndicators.load("/nonexistent/indicators.json")
    with pytest.raises(PolicyError, match=r"bit-width\(s\) \[8\] have no indicators"):
        _sample().table("weight", [8, 4])

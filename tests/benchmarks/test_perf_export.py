"""`mpq bench perf --only export --smoke`: export time and packed size against the physical limit."""

from __future__ import annotations

import pytest

from benchmarks import perf

pytest.importorskip("onnx", reason="the export group needs the [export] extra (onnx)")


def test_export_group_smoke() -> None:
    by = {m.name: m for m in perf.run_perf(only="export", smoke=True, log=lambda m: None)}
    timed = by["export resnet20 QDQ"]
    assert timed.value > 0 and timed.baseline == "export resnet20 float (same exporter)" and timed.ratio > 0
    limit = by["weights: physical limit sum b|W| / (32 sum|W|)"].value
    size = by["file: packed / float32"]
    # a mixed 2-8 bit policy: far below float32, at or above the physical limit of its weights
    assert 0 < limit < size.value < 0.5 and size.value >= size.baseline_value > limit

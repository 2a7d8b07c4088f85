"""EdMIPS's final network on digits (Gaussian weights, HWGQ activations, every candidate bit-width) trained
through the CLI, exported from its run directory with ``mpq export``, and run with onnxruntime."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

pytest.importorskip("onnx", reason="ONNX export needs the [export] extra (onnx)")
pytest.importorskip("onnxruntime", reason="parity needs the [export] extra (onnxruntime)")

from core.cli import main  # noqa: E402
from core.data import build_dataset  # noqa: E402
from core.export import export_onnx  # noqa: E402
from core.export.check import compare_onnxruntime  # noqa: E402
from core.export.spec import model_from_run  # noqa: E402
from core.policy import BitPolicy  # noqa: E402
from papers.edmips.cli import register  # noqa: E402
from papers.edmips.config import ModelConfig, QuantConfig  # noqa: E402
from papers.edmips.models import build_float_model, quantize_fixed  # noqa: E402

KWARGS = {"widths": [8, 16, 32], "blocks": 1}  # the digits config's network


def test_final_network_exports_from_its_run_dir_with_parity(tmp_path, capsys):
    model = build_float_model(ModelConfig(name="digits_resnet", kwargs=KWARGS), 10)
    names = quantize_fixed(model, QuantConfig())
    w_bits, a_bits = [1, 2, 3, 4], [2, 3, 4]  # every candidate of eq. 17
    policy = BitPolicy({n: (w_bits[i % 4], a_bits[i % 3]) for i, n in enumerate(names)}, {"method": "test"})
    policy.save(tmp_path / "policy.json")
    out = tmp_path / "run"
    parser = argparse.ArgumentParser(prog="mpq")
    register(parser.add_subparsers())
    args = parser.parse_args(["edmips", "train", "-c", "digits", f"run.out_dir={out}",
                              f"train.policy={tmp_path / 'policy.json'}", "train.schedule.epochs=1",
                              "train.schedule.milestones=[1]", "train.max_steps_per_epoch=2",
                              "run.log_every=100"])
    assert args.func(args) == 0
    spec = json.loads((out / "train" / "export.json").read_text())
    assert spec["checkpoint"] == "checkpoints/last.pt" and spec["quant"]["w_quant"] == "gaussian"

    assert main(["export", str(out), "-o", str(tmp_path / "edmips.onnx")]) == 0
    assert "wrote" in capsys.readouterr().out and (tmp_path / "edmips.onnx").stat().st_size > 0

    model, loaded_policy, _, _ = model_from_run(out)
    assert loaded_policy == policy
    images = torch.stack([build_dataset("digits", split="val", image_size=16)[i][0] for i in range(64)])
    result = export_onnx(model, images[:2], policy=loaded_policy)
    elements = {(t.role, t.bits): t.element.name for t in result.tensors}
    # mid-rise Gaussian levels are odd integers: 1-3 bits fit int4, 4 bits needs int8; HWGQ 2-4 bits uint4
    assert elements == {("weight", 1): "int4", ("weight", 2): "int4", ("weight", 3): "int4",
                        ("weight", 4): "int8", ("activation", 2): "uint4", ("activation", 3): "uint4",
                        ("activation", 4): "uint4"}
    report = compare_onnxruntime(model, result, images)
    print(report.summary())  # shown with pytest -s
    assert report.ok(ulps=16), report.summary()

"""LLT's fine-tuned network on digits (LSQ at the policy's bits, first conv W8, fc W8A8) exported from its
run directory (``final.pt``: the weights after BN re-estimation) and run with onnxruntime."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("onnx", reason="ONNX export needs the [export] extra (onnx)")
pytest.importorskip("onnxruntime", reason="parity needs the [export] extra (onnxruntime)")

from core.config import load_config  # noqa: E402
from core.data import build_dataset  # noqa: E402
from core.engine import load_checkpoint  # noqa: E402
from core.export import export_onnx  # noqa: E402
from core.export.check import compare_onnxruntime  # noqa: E402
from core.export.spec import model_from_run  # noqa: E402
from core.models import build_model  # noqa: E402
from core.nn import quantize_model  # noqa: E402
from core.policy import BitPolicy  # noqa: E402
from papers.llt.config import LLTConfig  # noqa: E402
from papers.llt.finetune import finetune_spec, run_finetune  # noqa: E402

CONFIG = Path(__file__).resolve().parents[3] / "papers" / "llt" / "configs" / "digits.yaml"


def test_finetuned_network_exports_with_w8_edges_and_parity(tmp_path):
    names = quantize_model(build_model("digits_resnet", num_classes=10), finetune_spec())
    bits = [2, 3, 4, 5, 6]
    policy = BitPolicy({n: (bits[i % 5], bits[(i + 2) % 5]) for i, n in enumerate(names)}, {"method": "test"})
    policy.save(tmp_path / "policy.json")
    cfg = load_config(LLTConfig, CONFIG, [
        f"run.out_dir={tmp_path / 'run'}", f"finetune.policy={tmp_path / 'policy.json'}",
        "finetune.init=pretrained", "data.batch_size=256", "finetune.schedule.epochs=1",
        "finetune.bn_calibration_images=256", "run.log_every=1000"])
    results = run_finetune(cfg)

    model, loaded_policy, spec, path = model_from_run(tmp_path / "run")
    assert path == tmp_path / "run" / "finetune" / "export.json" and spec.checkpoint == "final.pt"
    assert loaded_policy == policy
    last = load_checkpoint(tmp_path / "run" / "finetune" / "checkpoints" / "last.pt")["model"]
    bn = "layer1.0.bn1.running_mean"  # final.pt holds the re-estimated statistics, not the last epoch's
    assert not torch.equal(model.state_dict()[bn], last[bn])
    images = torch.stack([build_dataset("digits", split="val", image_size=16)[i][0] for i in range(64)])
    result = export_onnx(model, images[:2], policy=loaded_policy)
    kinds = {(t.layer, t.role): (t.bits, t.element.name) for t in result.tensors}
    assert kinds[("conv1", "weight")] == (8, "int8") and ("conv1", "activation") not in kinds  # W8, float in
    assert kinds[("fc", "weight")] == (8, "int8") and kinds[("fc", "activation")] == (8, "uint8")  # W8A8
    for name, (w, a) in policy.items():
        assert kinds[(name, "weight")] == (w, "int4" if w <= 4 else "int8")
        assert kinds[(name, "activation")] == (a, "uint4" if a <= 4 else "uint8")
    report = compare_onnxruntime(model, result, images)
    print(report.summary())  # shown with pytest -s
    assert report.ok(ulps=16), report.summary()
    with torch.no_grad():  # the exported model is the one LLT evaluated
        assert 0 <= results.metrics["top1"] <= 100 and model(images).shape == (64, 10)

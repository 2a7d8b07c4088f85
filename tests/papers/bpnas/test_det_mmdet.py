"""BP-NAS detection through mmdet / mmengine: the registered detector, its loss dict and optimizers, the
search on the tiny COCO fixture with an interruption and resume, the final training and COCO evaluation.

Needs the 'det' extra (mmdet, mmcv with ops); without it every test here skips with the install command.
The fixture runs use a ResNet-18 backbone (``model.backbone.depth=18``) at 128 px to stay short on CPU;
the R50 test builds the paper's detector without training it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from core.cli import main
from core.errors import ConfigError, MissingDependencyError
from core.extras import require

try:
    require("mmdet", "the BP-NAS detection tests")
    require("mmcv.ops", "the BP-NAS detection tests")
except MissingDependencyError as exc:
    pytest.skip(str(exc), allow_module_level=True)

pytestmark = pytest.mark.mmdet

TINY = ["model.backbone.depth=18", "model.neck.in_channels=[64,128,256,512]", "bpnas_run.fixture.n_train=4",
        "bpnas_run.fixture.n_val=2"]


def _train_epochs(work_dir: Path) -> list[int]:
    """Epochs of the training iterations logged by the LAST Runner run in ``work_dir``."""
    last = sorted(p for p in work_dir.iterdir() if p.is_dir())[-1]
    text = (last / f"{last.name}.log").read_text()
    return [int(e) for e in re.findall(r"Epoch\(train\)\s*\[(\d+)\]", text)]


@pytest.mark.slow
def test_det_search_resumes_then_trains_and_evaluates(tmp_path):
    from core.engine.mmengine_compat import mmengine_safe_loading
    from core.policy import BitPolicy
    from core.results import load_results

    out = tmp_path / "run"
    search = ["bpnas", "det-search", "-c", "tiny_coco", f"run.out_dir={out}", *TINY,
              "bpnas_run.search.warmup_epochs=0"]
    assert main([*search, "bpnas_run.search.epochs=1"]) == 0  # the run "interrupted" after epoch 1
    first = json.loads((out / "search" / "arch_history.json").read_text())
    assert [e["epoch"] for e in first["epochs"]] == [0, 1]
    with mmengine_safe_loading():  # the checkpoint loads under torch's weights_only
        ckpt = torch.load(out / "search" / "epoch_1.pth", map_location="cpu", weights_only=True)
    assert "bpnas_arch_optimizer" in ckpt["optimizer"] and len(ckpt["bpnas_arch_history"]) == 2
    alphas = [k for k in ckpt["state_dict"] if k.endswith("selector.alpha")]
    assert alphas and all(not torch.equal(ckpt["state_dict"][k], torch.zeros_like(ckpt["state_dict"][k]))
                          for k in alphas)  # the feasible init tilted them, the search moved them

    assert main([*search, "bpnas_run.search.epochs=2"]) == 0  # resumes from epoch_1.pth
    assert set(_train_epochs(out / "search")) == {2}  # only epoch 2 ran in the second process
    history = json.loads((out / "search" / "arch_history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [0, 1, 2]
    assert history["epochs"][1] == first["epochs"][1]  # restored from the checkpoint, not recomputed
    policy = BitPolicy.load(out / "policy.json")
    meta = policy.meta
    assert len(meta["blocks"]) == 24 and meta["within_budget"] and meta["avg_bits"] <= meta["b_max"]
    assert meta["diagnostics"]["max_expected_avg_bits_after_step"] <= meta["b_max"] - 1e-3
    assert all(e["expected_avg_bits"] < meta["b_max"] for e in history["epochs"])

    assert main(["bpnas", "det-train", "-c", "tiny_coco", f"run.out_dir={out}", *TINY,
                 "bpnas_run.train.epochs=1"]) == 0
    result = load_results(out / "results.json")
    assert {"map", "map50", "map75"} <= set(result.metrics) and 0 <= result.metrics["map"] <= 100
    assert {"bbox_mAP", "bbox_mAP_50", "bbox_mAP_75"} <= set(result.extra["bbox"])
    assert result.counts.avg_bits == pytest.approx(meta["avg_bits"])
    assert result.policy["layers"] == policy.to_dict()["layers"]


def test_det_stage_errors(tmp_path, capsys):
    from papers.bpnas.det.mm import DetBpnas

    out = tmp_path / "none"
    assert main(["bpnas", "det-train", "-c", "tiny_coco", f"run.out_dir={out}"]) == 2
    assert "det-search" in capsys.readouterr().err and not (out / "train").exists()
    assert main(["bpnas", "det-search", "-c", "no_such_config"]) == 2
    assert "tiny_coco" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="unknown key"):
        DetBpnas.build({"b_mx": 3})
    with pytest.raises(ConfigError, match="policy"):
        DetBpnas.build({"mode": "train"})


@pytest.mark.slow
def test_r50_supernet_loss_dict_and_table2_network():
    from mmdet.registry import MODELS
    from mmdet.testing import demo_mm_inputs
    from mmdet.utils import register_all_modules

    import papers.bpnas.det.mm  # noqa: F401 - registers BpnasFasterRCNN
    from papers.bpnas.det.blocks import count_detector, faster_rcnn_blocks
    from papers.bpnas.det.run import load_det_config, resolve_det_policy
    from papers.bpnas.losses import barrier_penalty

    register_all_modules()
    cfg = load_det_config("faster_rcnn_r50_fpn_coco_table2", ["model.backbone.init_cfg=null"])
    model = cfg.model.copy()
    model.bpnas = {**model.bpnas, "mode": "search", "count_size": [224, 224]}
    det = MODELS.build(model)
    assert sorted(s.name for s in det.selectors) == sorted(faster_rcnn_blocks(50))
    assert det.cost.value() <= det.opts.b_max - det.opts.init_margin + 1e-9
    for s in det.selectors:
        s.resample(torch.Generator().manual_seed(0))
    data = det.data_preprocessor(demo_mm_inputs(1, (3, 64, 64), num_items=[2], num_classes=3), True)
    losses = det.loss(data["inputs"], data["data_samples"])
    assert {"loss_barrier", "loss_prob1", "loss_arch_score", "loss_cls", "loss_rpn_cls"} <= set(losses)
    expected = det.cost.expected_avg_bits().detach()
    barrier = float(barrier_penalty(expected, 4.25, 0.01))
    assert float(losses["loss_barrier"].detach()) == pytest.approx(barrier)
    (losses["loss_barrier"] + losses["loss_prob1"]).backward()
    assert all(s.alpha.grad is not None and s.alpha.grad.abs().sum() > 0 for s in det.selectors)

    model = cfg.model.copy()
    model.bpnas = {**model.bpnas, "mode": "train", "policy": str(resolve_det_policy(cfg))}
    fixed = MODELS.build(model)
    report = count_detector(fixed, (800, 1344), fixed.num_rois, policy=fixed.policy)  # COCO's 80 classes
    assert report.avg_bits == pytest.approx(fixed.policy.meta["avg_bits"], rel=1e-9)
    stem = fixed.get_submodule("backbone.conv1")
    assert (stem.w_bits, stem.a_bits) == (4, 8)


@pytest.mark.slow
def test_det_search_two_gloo_ranks(tmp_path):
    """mmengine's pytorch launcher under torchrun on CPU (gloo, DDP without device ids)."""
    import subprocess
    import sys

    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29731",
           "-m", "core.cli", "bpnas", "det-search", "-c", "tiny_coco", f"run.out_dir={out}", *TINY,
           "bpnas_run.search.epochs=2", "bpnas_run.search.warmup_epochs=1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                          cwd=Path(__file__).resolve().parents[3])
    assert proc.returncode == 0, proc.stderr[-3000:]
    history = json.loads((out / "search" / "arch_history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [0, 1, 2] and history["epochs"][2]["steps"] == 1
    assert (out / "policy.json").is_file()

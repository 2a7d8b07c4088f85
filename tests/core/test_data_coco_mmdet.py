"""The COCO fixture through mmdet itself: CocoDataset built from core's config, CocoMetric on it.

mmdet/mmcv are the 'det' extra, which tox's test env installs, so under tox these tests run; an environment
without it (plain `pip install -e .`) skips them with the reason.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.data import coco_metric_config, mmdet_dataset_config
from tests.fixtures import write_coco

mmdet = pytest.importorskip("mmdet", reason="mmdet/mmcv not installed: the 'det' extra "
                                             "(python tools/install_mmcv.py && pip install -e '.[det]')")
pytestmark = pytest.mark.mmdet


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    return write_coco(tmp_path_factory.mktemp("coco"), n_images=3)


def _build(cfg: dict):
    from mmdet.registry import DATASETS
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    return DATASETS.build(cfg)


def test_mmdet_cocodataset_loads_fixture(coco_root):
    pipeline = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", with_bbox=True),
                dict(type="PackDetInputs")]
    ds = _build(mmdet_dataset_config(coco_root, "val", pipeline=pipeline))
    assert len(ds) == 3
    assert ds.metainfo["classes"] == ("person", "car")
    sample = ds[0]
    inputs, data = sample["inputs"], sample["data_samples"]
    assert tuple(inputs.shape) == (3, 128, 160)  # CHW of the 160x128 fixture JPEG
    assert data.gt_instances.bboxes.shape[0] >= 1


def test_mmdet_cocometric_scores_ground_truth_as_perfect(coco_root):
    """Feeding the ground-truth boxes back as predictions must give bbox mAP 1.0; shifted boxes less."""
    from mmdet.evaluation import CocoMetric
    from pycocotools.coco import COCO

    cfg = coco_metric_config(coco_root, "val")
    cfg.pop("type")
    gt = COCO(cfg["ann_file"])
    cat_ids = sorted(gt.cats)

    def predictions(shift: float):
        out = []
        for img_id in sorted(gt.imgs):
            anns = gt.imgToAnns[img_id]
            xywh = [a["bbox"] for a in anns]
            boxes = np.array([[x + shift, y, x + w + shift, y + h] for x, y, w, h in xywh])
            info = gt.imgs[img_id]
            out.append({"img_id": img_id, "ori_shape": (info["height"], info["width"]), "pred_instances": {
                "bboxes": torch.tensor(boxes, dtype=torch.float32),
                "scores": torch.ones(len(anns)),
                "labels": torch.tensor([cat_ids.index(a["category_id"]) for a in anns])}})
        return out

    results = {}
    for shift in (0.0, 12.0):
        metric = CocoMetric(**cfg)
        metric.dataset_meta = {"classes": ("person", "car")}
        metric.process({}, predictions(shift))
        results[shift] = metric.evaluate(size=len(gt.imgs))["coco/bbox_mAP"]
    assert results[0.0] == pytest.approx(1.0)
    assert results[12.0] < 0.9

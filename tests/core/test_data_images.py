"""ImageNet-style JPEG trees and COCO JSON written in their real formats, read by the real loaders."""

from __future__ import annotations

import json

import pytest

from core.data import (
    build_dataset,
    build_loader,
    check_dataset,
    coco_metric_config,
    mmdet_dataset_config,
    validate_coco,
)
from core.errors import DataError
from tests.fixtures import IMAGENET_CLASSES, write_coco, write_corrupt_jpeg, write_imagenet


@pytest.fixture
def imagenet(tmp_path):
    return write_imagenet(tmp_path / "imagenet", per_class=2, size=(72, 56))


@pytest.mark.parametrize("fast", [True, False])
def test_imagenet_train_and_val(imagenet, fast):
    train = build_dataset("imagenet", imagenet, "train", image_size=32, fast_decode=fast)
    val = build_dataset("imagenet", imagenet, "val", image_size=32, resize_size=40, interpolation="bicubic",
                        fast_decode=fast)
    assert train.classes == list(IMAGENET_CLASSES) and len(train) == len(val) == 6
    x, y = train[3]
    assert x.shape == (3, 32, 32) and y == 1
    images, targets = next(iter(build_loader(val, 4, train=False, workers=0)))
    assert images.shape == (4, 3, 32, 32) and targets.tolist() == [0, 0, 1, 1]
    assert -3 < images.mean().item() < 3


def test_imagenet_fast_and_pil_paths_agree_on_val(imagenet):
    fast = build_dataset("imagenet", imagenet, "val", image_size=48, resize_size=56)
    ref = build_dataset("imagenet", imagenet, "val", image_size=48, resize_size=56, fast_decode=False)
    diff = (fast[0][0] - ref[0][0]).abs().mean().item()  # same decoder family, tensor vs PIL resize
    assert diff < 0.05


def test_imagenet_corrupt_jpeg_named_or_skipped(imagenet):
    bad = write_corrupt_jpeg(imagenet / "train" / IMAGENET_CLASSES[0] / "zz_corrupt.JPEG")
    for fast in (True, False):
        strict = build_dataset("imagenet", imagenet, "train", image_size=32, fast_decode=fast)
        i = [p for p, _ in strict.samples].index(str(bad))
        with pytest.raises(DataError, match="cannot decode .*zz_corrupt.JPEG.*skip_corrupt"):
            strict[i]
        lenient = build_dataset("imagenet", imagenet, "train", image_size=32, fast_decode=fast,
                                skip_corrupt=True)
        with pytest.warns(UserWarning, match="zz_corrupt"):
            x, y = lenient[i]
        assert x.shape == (3, 32, 32) and y == 1  # the next readable sample
        assert lenient.skipped == {str(bad)}


def test_imagenet_layout_errors(tmp_path, imagenet):
    write_imagenet(tmp_path / "only_train", per_class=1)
    (tmp_path / "only_train" / "val").rename(tmp_path / "only_train" / "validation")
    with pytest.raises(DataError, match="no val/ directory.*found: train"):
        build_dataset("imagenet", tmp_path / "only_train", "val")
    (imagenet / "val" / "n99999999").mkdir()
    with pytest.raises(DataError, match="n99999999 is not a class of train/"):
        build_dataset("imagenet", imagenet, "val")
    (tmp_path / "empty" / "train" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        build_dataset("imagenet", tmp_path / "empty", "train")
    with pytest.raises(DataError, match="(?s)no root given.*ROOT/train/<class>"):
        build_dataset("imagenet")


def test_imagenet_check(imagenet):
    report = check_dataset("imagenet", imagenet)
    assert (report["classes"], report["train"], report["val"]) == (3, 6, 6) and "corrupt" not in report
    bad = write_corrupt_jpeg(imagenet / "val" / IMAGENET_CLASSES[2] / "broken.JPEG")
    report = check_dataset("imagenet", imagenet, verify=True)
    assert report["val"] == 7 and report["corrupt"] == 1 and report["corrupt_files"] == str(bad)


@pytest.fixture
def coco(tmp_path):
    return write_coco(tmp_path / "coco", n_images=3)


def test_coco_pycocotools_and_mmdet_config(coco):
    counts = validate_coco(coco, "val")
    assert counts["images"] == 3 and counts["categories"] == 2 and counts["annotations"] >= 3
    cfg = mmdet_dataset_config(coco, "train")
    assert cfg["type"] == "CocoDataset" and cfg["metainfo"]["classes"] == ("person", "car")
    assert (coco / cfg["ann_file"]).is_file() and (coco / cfg["data_prefix"]["img"]).is_dir()
    assert mmdet_dataset_config(coco, "val")["test_mode"] is True
    assert coco_metric_config(coco)["ann_file"].endswith("instances_val2017.json")
    report = check_dataset("coco", coco)
    assert report["classes"] == 2 and report["train"].startswith("3 images")


def test_coco_detection_dataset(coco):
    ds = build_dataset("coco", coco, "val")
    image, target = ds[0]
    assert image.shape == (3, 128, 160) and 0 <= image.min() and image.max() <= 1
    ann = json.loads((coco / "annotations" / "instances_val2017.json").read_text())
    first = [a for a in ann["annotations"] if a["image_id"] == target["image_id"]]
    x, y, w, h = first[0]["bbox"]
    assert target["boxes"][0].tolist() == [x, y, x + w, y + h]
    assert target["labels"].tolist() == [{1: 0, 3: 1}[a["category_id"]] for a in first]


def test_coco_errors(coco, tmp_path):
    (coco / "val2017" / "000000001002.jpg").unlink()
    with pytest.raises(DataError, match="1 image.*missing.*000000001002.jpg"):
        validate_coco(coco, "val")
    (coco / "annotations" / "instances_train2017.json").write_text("{not json")
    with pytest.raises(DataError, match="not a valid COCO annotation file"):
        validate_coco(coco, "train")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError, match="annotation file not found"):
        build_dataset("coco", tmp_path / "nothing", "train")
    with pytest.raises(DataError, match="neither train nor val"):
        check_dataset("coco", tmp_path / "nothing")

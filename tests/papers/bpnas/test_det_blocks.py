"""BP-NAS detection without mmdet: supp. Table 2's blocks, its packaged policy, the tiny COCO fixture."""

from __future__ import annotations

import json

import pytest

from core.data.coco import validate_coco
from core.errors import ConfigError
from core.policy import BitPolicy
from papers.bpnas.det.blocks import TABLE2, block_policy, faster_rcnn_blocks, table2_block_pairs
from papers.bpnas.det.fixture import CLASSES, make_tiny_coco
from papers.bpnas.supernet import TABLE2_PAIRS, block_of

POLICY = "papers/bpnas/policies/det/table2_faster_rcnn_r50_fpn.json"


def test_faster_rcnn_blocks_are_table2_rows():
    blocks = faster_rcnn_blocks(50)
    assert len(blocks) == 32 == sum(len(w) for w, _ in TABLE2.values())
    assert block_of("backbone.conv1", blocks) == "backbone.layer0"
    assert block_of("backbone.layer3.0.downsample.0", blocks) == "backbone.layer3.0"
    assert block_of("neck.fpn_convs.2.conv", blocks) == "neck.fpn_convs.2"
    assert block_of("rpn_head.rpn_cls", blocks) == "rpn_head.rpn_cls"
    assert block_of("roi_head.bbox_head.fc_reg", blocks) == "bbox_head.fc_reg"
    assert len(faster_rcnn_blocks(18)) == 1 + 8 + 8 + 3 + 4
    with pytest.raises(ConfigError, match="depth"):
        faster_rcnn_blocks(42)


def test_table2_pairs_as_printed():
    pairs = table2_block_pairs()
    assert pairs["backbone.layer0"] == (4, 8)
    layer3 = [pairs[f"backbone.layer3.{i}"] for i in range(6)]
    assert layer3 == [(4, 6), (4, 3), (4, 4), (3, 5), (4, 4), (4, 3)]
    assert [pairs[f"backbone.layer4.{i}"] for i in range(3)] == [(3, 5), (4, 4), (4, 6)]
    assert all(pairs[b] == (4, 4) for b in pairs if not b.startswith("backbone"))
    assert set(pairs.values()) == set(TABLE2_PAIRS)


def test_packaged_table2_policy_matches_the_table():
    policy = BitPolicy.load(POLICY)
    pairs, rule = table2_block_pairs(), faster_rcnn_blocks(50)
    assert len(policy.names) == 68  # 53 backbone convs, 8 FPN, 3 RPN, 4 bbox-head linears
    assert {block_of(n, rule) for n in policy.names} == set(pairs)
    assert all(policy[n] == pairs[block_of(n, rule)] for n in policy.names)
    assert policy.meta["blocks"] == {b: list(p) for b, p in pairs.items()}
    assert policy.meta["avg_bits"] == pytest.approx(4.0331, abs=1e-4)  # 800x1344, 512 RoIs, all layers
    regenerated = block_policy(policy.names, rule, pairs, policy.meta)
    assert regenerated.to_dict() == policy.to_dict()


def test_block_policy_needs_every_block():
    with pytest.raises(ConfigError, match="no pair"):
        block_policy(["neck.fpn_convs.0.conv"], faster_rcnn_blocks(50), {"backbone.layer0": (4, 8)})


def test_tiny_coco_fixture_is_valid_and_deterministic(tmp_path):
    root = make_tiny_coco(tmp_path / "a", n_train=3, n_val=2)
    counts = validate_coco(root, "train")
    assert counts["images"] == 3 and counts["categories"] == len(CLASSES) and counts["annotations"] >= 3
    assert validate_coco(root, "val")["images"] == 2
    again = make_tiny_coco(tmp_path / "b", n_train=3, n_val=2)
    for split in ("train", "val"):
        name = f"annotations/instances_{split}2017.json"
        assert json.loads((root / name).read_text()) == json.loads((again / name).read_text())
    data = json.loads((root / "annotations/instances_train2017.json").read_text())
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        assert 0 <= x and x + w <= 160 and 0 <= y and y + h <= 128 and w > 0 and h > 0

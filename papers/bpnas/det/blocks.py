"""Supp. Table 2's blocks of Faster R-CNN R50-FPN, its published configuration, and the detector's count.

Table 2 lists one (w_bit, a_bit) pair per block: ``backbone.layer0`` (the stem conv, one block),
``backbone.layer1..4`` (3 / 4 / 6 / 3 bottlenecks, each one block holding its downsample conv), ``neck``
(8 blocks: mmdet's 4 lateral and 4 output FPN convs), ``roi_head`` (3 conv blocks: the RPN head's
``rpn_conv``, ``rpn_cls``, ``rpn_reg``, the only convs of the detector outside backbone and neck) and
``bbox_head`` (4 linear blocks: ``shared_fcs.0/1``, ``fc_cls``, ``fc_reg``): 32 blocks, one layer each
except the bottlenecks. :func:`faster_rcnn_blocks` is that grouping as a ``bpnas_pairs`` block mapping
(mmdet's module names), :data:`TABLE2` the printed bits.

Counting (:func:`count_detector`): a detector's MACs depend on the image size and on how many RoIs the
box head sees. :class:`DetectorCountView` runs backbone and neck on one image, the RPN head on every FPN
level (its convs are counted once per level) and the box head on ``num_rois`` RoIs (default: the R-CNN
sampler's 512 per training image). Under core's ``bpnas`` convention with the first and last layers
INSIDE the sums (Table 2 searches the stem, at (4, 8), and lists every bbox-head linear), the average bits
are ``sqrt(BOPs / MACs)`` over all 32 blocks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from core.bops import count
from core.errors import ConfigError
from core.policy import BitPolicy
from papers.bpnas.supernet import block_of

CONVENTION = "bpnas"
#: bottlenecks (or basic blocks) per stage of mmdet's ResNet
STAGE_BLOCKS: dict[int, tuple[int, ...]] = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3),
                                            101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
BBOX_LINEARS = ("shared_fcs.0", "shared_fcs.1", "fc_cls", "fc_reg")
RPN_CONVS = ("rpn_conv", "rpn_cls", "rpn_reg")

#: supp. Table 2 as printed: part -> (w_bits per block, a_bits per block)
TABLE2: dict[str, tuple[list[int], list[int]]] = {
    "backbone.layer0": ([4], [8]),
    "backbone.layer1": ([4, 3, 3], [4, 5, 5]),
    "backbone.layer2": ([3, 4, 4, 4], [5, 4, 3, 4]),
    "backbone.layer3": ([4, 4, 4, 3, 4, 4], [6, 3, 4, 5, 4, 3]),
    "backbone.layer4": ([3, 4, 4], [5, 4, 6]),
    "neck": ([4] * 8, [4] * 8),
    "roi_head": ([4] * 3, [4] * 3),
    "bbox_head": ([4] * 4, [4] * 4),
}


def faster_rcnn_blocks(depth: int = 50) -> dict[str, list[str]]:
    """Table 2's blocks as ``{block: [layer-name prefixes]}`` for mmdet's Faster R-CNN with a ResNet-``depth``
    backbone (block names: the table's part and index, e.g. ``neck.fpn_convs.0``, ``rpn_head.rpn_cls``)."""
    if depth not in STAGE_BLOCKS:
        raise ConfigError(f"ResNet depth {depth} unknown; choose one of {sorted(STAGE_BLOCKS)}")
    blocks = {"backbone.layer0": ["backbone.conv1"]}
    for stage, n in enumerate(STAGE_BLOCKS[depth], start=1):
        blocks.update({f"backbone.layer{stage}.{i}": [f"backbone.layer{stage}.{i}"] for i in range(n)})
    for kind in ("lateral_convs", "fpn_convs"):
        blocks.update({f"neck.{kind}.{i}": [f"neck.{kind}.{i}"] for i in range(4)})
    blocks.update({f"rpn_head.{c}": [f"rpn_head.{c}"] for c in RPN_CONVS})
    blocks.update({f"bbox_head.{fc}": [f"roi_head.bbox_head.{fc}"] for fc in BBOX_LINEARS})
    return blocks


def table2_block_pairs() -> dict[str, tuple[int, int]]:
    """Table 2 as ``{block of faster_rcnn_blocks(50): (w, a)}`` (parts in the table's order)."""
    names = list(faster_rcnn_blocks(50))
    parts = [names[:1], *([n for n in names if n.startswith(f"backbone.layer{s}.")] for s in range(1, 5)),
             names[17:25], names[25:28], names[28:]]
    out = {}
    for (part, (w, a)), blocks in zip(TABLE2.items(), parts):
        if len(blocks) != len(w) or len(w) != len(a):
            raise AssertionError(f"Table 2 part {part}: {len(w)} pairs for {len(blocks)} blocks")
        out.update({b: (wb, ab) for b, wb, ab in zip(blocks, w, a)})
    return out


def block_policy(layer_names: Sequence[str], rule: Any, pairs_by_block: Mapping[str, Sequence[int]],
                 meta: Mapping[str, Any] | None = None) -> BitPolicy:
    """Every layer of ``layer_names`` at the pair of its block under ``rule``."""
    layers = {}
    for name in layer_names:
        block = block_of(name, rule)
        if block not in pairs_by_block:
            raise ConfigError(f"layer {name!r} is in block {block!r}, which has no pair")
        layers[name] = tuple(int(b) for b in pairs_by_block[block])
    return BitPolicy(layers, dict(meta or {}))


class DetectorCountView(nn.Module):
    """What :func:`core.bops.count` runs of a two-stage detector (module docstring); the detector's parts are
    submodules under their own names, so the count's layer names are the detector's."""

    def __init__(self, detector: nn.Module, num_rois: int) -> None:
        super().__init__()
        self.backbone, self.neck = detector.backbone, detector.neck
        self.rpn_head, self.roi_head = detector.rpn_head, detector.roi_head
        self.num_rois = int(num_rois)

    def forward(self, img: torch.Tensor) -> None:
        feats = self.neck(self.backbone(img))
        self.rpn_head(feats)
        h, w = img.shape[-2:]
        t = torch.linspace(0.0, 1.0, self.num_rois, device=img.device)
        x1, y1 = t * (w - 32) * 0.9, (1 - t) * (h - 32) * 0.9  # boxes of every scale, anywhere in the image
        rois = torch.stack([torch.zeros_like(t), x1, y1, x1 + 16 + t * (w - 48) / 2,
                            y1 + 16 + (1 - t) * (h - 48) / 2], dim=1)
        extractor = self.roi_head.bbox_roi_extractor
        self.roi_head.bbox_head(extractor(feats[:extractor.num_inputs], rois))


def count_detector(detector: nn.Module, image_size: Sequence[int], num_rois: int,
                   policy: BitPolicy | None = None):
    """The ``bpnas``-convention report of ``detector`` (float or quantized) at ``image_size`` (H, W), every
    conv / linear inside the sums (first and last included)."""
    was_training = detector.training
    try:
        return count(DetectorCountView(detector, num_rois).eval(), (3, *map(int, image_size)), policy=policy,
                     convention=CONVENTION, include_first=True, include_last=True)
    finally:
        detector.train(was_training)

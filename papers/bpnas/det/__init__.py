"""BP-NAS detection (supp. Table 2): Faster R-CNN R50-FPN searched and trained through mmdet / mmengine.

- :mod:`papers.bpnas.det.blocks`: Table 2's blocks (stem, 16 bottlenecks, 8 FPN convs, 3 RPN head convs,
  4 bbox-head linears) as a ``bpnas_pairs`` block mapping, the published configuration as a policy, and the
  MAC count of a detector (pure torch);
- :mod:`papers.bpnas.det.mm`: the components registered in mmdet's / mmengine's registries
  (``BpnasFasterRCNN``, ``BpnasOptimWrapper`` and its constructor, ``BpnasSearchHook``);
- :mod:`papers.bpnas.det.run`: ``mpq bpnas det-search`` / ``det-train`` (mmengine's Runner);
- :mod:`papers.bpnas.det.fixture`: a tiny generated COCO-format dataset for CPU runs and tests.

Only :mod:`~papers.bpnas.det.mm` and :mod:`~papers.bpnas.det.run` need the ``det`` extra.
"""

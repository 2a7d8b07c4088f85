"""BP-NAS (Yu et al., ECCV 2020): "Search What You Want: Barrier Penalty NAS for Mixed Precision
Quantization". Stages (each a CLI command, ``mpq bpnas search|derive|train|run|plot``):

- :mod:`papers.bpnas.supernet`: the layer kind ``bpnas_pairs`` (block-shared candidate (w, a) pairs with
  softmax probabilities; importing :mod:`papers.bpnas.kinds` registers it);
- :mod:`papers.bpnas.losses`: E(SN), the barrier penalty (supp. eq. 3-5), Prob-1 (eq. 6-7), the feasible
  initialisation and the guarded architecture step;
- :mod:`papers.bpnas.search`: the search; :mod:`papers.bpnas.derive`: the highest-probability pair per
  block -> ``policy.json``; :mod:`papers.bpnas.train`: training of the derived / published network;
- :mod:`papers.bpnas.plots`: search curves and supp. Fig. 1 / Fig. 2 as runs;
- :mod:`papers.bpnas.det`: Faster R-CNN R50-FPN (supp. Table 2) through mmdet / mmengine,
  ``mpq bpnas det-search|det-train`` (the ``det`` extra).

Distribution reshaping (supp. section 5) is core's ``scale_clip`` quantizer (:mod:`core.quant.scale_clip`).
See ``papers/bpnas/README.md`` for the supplementary-equation -> code table.
"""

from pathlib import Path

from core.paper import Paper

PAPER = Paper(
    name="bpnas",
    title="BP-NAS: Search What You Want: Barrier Penalty NAS for Mixed Precision Quantization (ECCV 2020)",
    cli="papers.bpnas.cli:register",
    config_schema="papers.bpnas.config:BpnasConfig",
    configs=Path(__file__).resolve().parent / "configs",
    methods=("papers.bpnas.bench:METHOD",),
    recomputers="papers.bpnas.recomputers:RECOMPUTERS",
    perf="papers.bpnas.perf:PERF",
    smoke="papers.bpnas.cli:smoke",
    layer_kinds=("papers.bpnas.kinds",),
)

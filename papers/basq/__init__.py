"""BASQ: Branch-wise Activation-clipping Search Quantization for Sub-4-bit Neural Networks (ECCV 2022).

The method, in three stages (supplementary Alg. 1; each a CLI command, ``mpq basq
supernet|search|finetune|report``):

- :mod:`papers.basq.supernet`: supernet training, a uniformly sampled branch per block each iteration,
  distillation from a float teacher, two stages (activations, then weights + activations);
- :mod:`papers.basq.search`: K-fold evolutionary search of the selection vector (:mod:`papers.basq.evolution`,
  :mod:`papers.basq.folds`);
- :mod:`papers.basq.finetune`: per fold, BN and clip fine-tuning, accuracy on the other folds.

The search space is the layer kind ``basq`` (:mod:`papers.basq.layers`, registered when that module is
imported; ``QuantSpec(kind="basq")`` imports it through ``layer_kinds`` below); the networks (the new
building block with flexconn, or the standard MobileNetV2 block) are in :mod:`papers.basq.models`.
See README.md for the algorithm line -> code table.
"""

from pathlib import Path

from core.paper import Paper

PAPER = Paper(
    name="basq",
    title="BASQ: branch-wise activation-clipping search quantization for sub-4-bit networks (ECCV 2022)",
    cli="papers.basq.cli:register",
    config_schema="papers.basq.config:BASQConfig",
    configs=Path(__file__).resolve().parent / "configs",
    methods=("papers.basq.bench:METHOD",),
    recomputers="papers.basq.recomputers:RECOMPUTERS",
    perf="papers.basq.perf:PERF",
    smoke="papers.basq.cli:smoke",
    layer_kinds=("papers.basq.layers",),
)

"""One-Shot Mixed Precision Search (Koryakovskiy et al., CVPR 2023): one supernet and a bit-width
probability model f_theta(eta) that give the whole accuracy/BOPs Pareto front after ONE training.

Stages (``mpq onemps train|pareto|finetune|correlate|plot``):

- :mod:`papers.onemps.train`: the supernet (:mod:`papers.onemps.supernet`, the ``onemps`` layer kind) and
  f_theta (:mod:`papers.onemps.probability`) trained on the loss of the slide "One-shot Mixed Precision
  Search" (:mod:`papers.onemps.losses`); VIMPS, DNAS and the EdMIPS proxy are configurations of it
  (:data:`papers.onemps.config.PRESETS`);
- :mod:`papers.onemps.pareto`: sweep eta, most probable child per eta, evaluated with the supernet
  weights (BN re-calibrated per child), non-dominated set -> JSON + PNG;
- :mod:`papers.onemps.finetune`: a chosen child fine-tuned as a fixed-precision network;
- :mod:`papers.onemps.correlate`: Kendall tau between child accuracy under the supernet and standalone
  accuracy, per configuration.

The ``onemps`` layer kind is registered when :mod:`papers.onemps.supernet` is imported (every stage does,
and ``QuantSpec(kind="onemps")`` imports it through ``layer_kinds``; loading this package must not import
torch). See ``papers/onemps/README.md`` for the slide-equation ->
code table.
"""

from pathlib import Path

from core.paper import Paper

PAPER = Paper(
    name="onemps",
    title="One-Shot Mixed Precision Search (CVPR 2023)",
    cli="papers.onemps.cli:register",
    config_schema="papers.onemps.config:OneMpsConfig",
    configs=Path(__file__).resolve().parent / "configs",
    methods=("papers.onemps.bench:METHOD", "papers.onemps.bench:VIMPS", "papers.onemps.bench:DNAS"),
    perf="papers.onemps.perf:PERF",
    layer_kinds=("papers.onemps.supernet",),
    smoke="papers.onemps.cli:smoke",
)

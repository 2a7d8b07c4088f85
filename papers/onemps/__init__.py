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

See ``papers/onemps/README.md`` for the slide-equation -> code table.
"""

# importing the supernet module registers the `onemps` layer kind
from papers.onemps import supernet as _supernet  # noqa: F401

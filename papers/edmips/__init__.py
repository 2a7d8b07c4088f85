"""EdMIPS (Cai & Vasconcelos, CVPR 2020): efficient differentiable mixed-precision network search.

Stages (each a CLI command, ``mpq edmips search|discretize|train|plot``):

- :mod:`papers.edmips.search`: the relaxed search model (composite convolutions, eq. 10-16) trained on the
  complexity-aware Lagrangian (eq. 6, 12, 13), single pass or alternating (section 4.6);
- :mod:`papers.edmips.discretize`: winner-take-all (eq. 18) or multinomial sampling (eq. 19)
  -> ``policy.json``;
- :mod:`papers.edmips.train`: the discretised (or uniform HWGQ) network trained from scratch (section 5.1);
- :mod:`papers.edmips.plots`: Figure 4-like architecture evolution and Figure 6-like bit allocation.

See ``papers/edmips/README.md`` for the equation -> code table.
"""

from pathlib import Path

from core.paper import Paper

PAPER = Paper(
    name="edmips",
    title="EdMIPS: efficient differentiable mixed-precision network search (CVPR 2020)",
    cli="papers.edmips.cli:register",
    config_schema="papers.edmips.config:EdmipsConfig",
    configs=Path(__file__).resolve().parent / "configs",
    methods=("papers.edmips.bench:METHOD",),
    perf="papers.edmips.perf:PERF",
    smoke="papers.edmips.cli:smoke",
)

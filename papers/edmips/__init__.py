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

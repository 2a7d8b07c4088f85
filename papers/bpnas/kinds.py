"""Importing this module registers BP-NAS's layer kind ``bpnas_pairs`` (:mod:`papers.bpnas.supernet`).

The package ``__init__`` stays free of torch (loading the :class:`core.paper.Paper` object must not import
training code), so the kind lives here; ``tests/core/test_nn_kinds.py`` imports ``papers.<name>.kinds``.
"""

from papers.bpnas.supernet import KIND, PairConv2d, PairLinear

__all__ = ["KIND", "PairConv2d", "PairLinear"]

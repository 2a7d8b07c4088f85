"""The contract between a paper's search and the cross-method benchmark.

A paper joins the benchmark by exposing a :class:`SearchMethod` (e.g. ``papers/<name>/bench.py: METHOD``)
and naming it in its :class:`core.paper.Paper` (``methods=("papers.<name>.bench:METHOD",)``; a paper
may register several). The benchmark builds one
:class:`SearchRequest` per (method, budget, seed), calls ``METHOD.search(request)``, and then trains
every returned policy with one shared recipe, so that methods differ only in the policy they choose.

This module lives in core because papers may not import the benchmark package.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch.nn as nn
from torch.utils.data import Dataset

from core.policy import BitPolicy


@dataclass
class SearchRequest:
    """Everything a search needs; identical for every method in one comparison.

    ``budget_bops`` is the upper bound on sum_l MACs_l * w_bits_l * a_bits_l over the searchable layers
    (first conv and last linear excluded, they are kept as the request says), counted by
    ``core.bops.count(..., convention="bpnas")`` at ``input_size``. ``budget_avg_bits`` is the same
    budget expressed as sqrt(budget_bops / MACs), for reports.
    """

    build_model: Callable[[], nn.Module]  # a fresh float model (same init for a given seed)
    input_size: tuple[int, int, int]
    num_classes: int
    train_set: Dataset
    val_set: Dataset
    w_candidates: tuple[int, ...]
    a_candidates: tuple[int, ...]
    budget_bops: float
    budget_avg_bits: float
    run_dir: Path
    seed: int = 0
    device: str = "cpu"
    epochs: int = 5  # search-phase epochs (each method maps this to its own schedule)
    batch_size: int = 64
    log: Callable[[str], None] = print
    options: dict = field(default_factory=dict)  # method-specific knobs, documented by the method


@dataclass
class SearchMethod:
    """A registered search: ``search(request)`` returns a policy over the searchable layers."""

    name: str
    paper: str
    search: Callable[[SearchRequest], BitPolicy]
    description: str = ""

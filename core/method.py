"""The contract between a paper's search and the cross-method benchmark.

A paper joins the benchmark by exposing a :class:`SearchMethod` (e.g. ``papers/<name>/bench.py: METHOD``)
and naming it in its :class:`core.paper.Paper` (``methods=("papers.<name>.bench:METHOD",)``; a paper
may register several). The benchmark builds one
:class:`SearchRequest` per (method, budget, seed), calls ``METHOD.search(request)``, and then trains
every returned policy with one shared recipe, so that methods differ only in the policy they choose.

What a search returns besides the bits, in ``policy.meta`` (read by the benchmark, all optional):

``"diagnostics"``: how far the search got; its keys say which kind of search it was, and the benchmark
judges each kind by one convergence criterion (``benchmarks/convergence.py``, documented in
``benchmarks/README.md``). A row whose search did not converge is marked, not ranked.

- distribution over candidates per layer (EdMIPS, OneMPS, VIMPS, DNAS, BP-NAS):
  ``"max_prob"``: per searchable layer, max_k pi_k at the end of the search, either one number or
  ``[weights, activations]``; ``"entropy"``: the same shape, in nats; ``"expected_bops"``:
  ``{"start": E[BOPs] under the initial pi, "end": E[BOPs] at the end}``; optional ``"num_candidates"``
  (same shape as ``max_prob``; default: the request's ``len(w_candidates)`` / ``len(a_candidates)`` for
  a pair, ``len(w_candidates) * len(a_candidates)`` for one number per layer).
- learned importance indicators (LLT): ``"monotone_fraction"``: the share of indicator rows (layer x
  weights / activations) that decrease strictly with the bit-width; ``"indicator_change"``: the mean
  ``|log(s_end / s_init)|`` over every indicator (0 when they never trained).
- evolution / sampling (BASQ): ``"best_so_far"``: the best fitness after each iteration (non-decreasing).
- any kind: ``"fallback": true`` when the returned policy is not the search's result (e.g. no searched
  setting met the budget and the method fell back to the cheapest policy); such a row is not converged.

``"search_cost_shared_s"`` with ``"shared_over"``: seconds of search work this policy shares with other
calls (e.g. one supernet answering every budget), and a key naming that work (the same key in every
call that reuses it, e.g. :meth:`SearchRequest.fingerprint`). The benchmark charges the work once: the
call that did it (the first to report the key) is charged its wall time minus that work, and every call
reporting the key gets an equal share of the work (``search_cost_shared_s / calls``).

This module lives in core because papers may not import the benchmark package.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
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

    ``epochs`` is the search budget in passes over ``train_set``; each method maps it to its own schedule
    by a documented rule (its adapter's docstring). ``time_budget_s`` is the CPU time (one thread) the
    benchmark allots to this call, shared work divided among the calls that use it (None: no limit): a
    method sizes its schedule to fit it (deterministically: never by measuring its own speed, so results
    do not depend on the machine); the report flags a search that takes longer. ``shared_dir`` is a
    directory shared by every budget of this method and seed (None: nothing is shared), for work a method
    reuses across budgets.
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
    time_budget_s: float | None = None
    shared_dir: Path | None = None

    def fingerprint(self, *extra: object) -> str:
        """A short hash of what determines a search's work besides the budget (seed, network and its
        initialisation, training data, candidates, epochs, batch, device type) plus ``extra`` (e.g. the
        options that change the work): the key for work one method shares across budgets
        (``"shared_over"``)."""
        h = hashlib.sha256()
        h.update(json.dumps([self.seed, list(self.input_size), self.num_classes, list(self.w_candidates),
                             list(self.a_candidates), self.epochs, self.batch_size,
                             torch.device(self.device).type, [str(e) for e in extra]],
                            sort_keys=True, default=str).encode())
        model = self.build_model()
        h.update(type(model).__name__.encode())
        for name, t in sorted(model.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        h.update(str(len(self.train_set)).encode())
        for i in range(min(16, len(self.train_set))):
            x, y = self.train_set[i][:2]
            h.update(torch.as_tensor(x).numpy().tobytes())
            h.update(str(int(y)).encode())
        return h.hexdigest()[:16]


@dataclass
class SearchMethod:
    """A registered search: ``search(request)`` returns a policy over the searchable layers."""

    name: str
    paper: str
    search: Callable[[SearchRequest], BitPolicy]
    description: str = ""

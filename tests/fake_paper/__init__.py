"""A minimal paper plugin for the tests: every part of the protocol (core.paper.Paper), nothing heavy.

Registered only inside tests, through the ``use_papers`` fixture (tests/conftest.py), which replaces the
``mpq.papers`` entry points.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from core.bops import count
from core.config import ExperimentConfig
from core.method import SearchMethod, SearchRequest
from core.paper import Paper
from core.policy import BitPolicy


@dataclass
class FakeConfig(ExperimentConfig):
    budget_bits: float = 3.0


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("fake", help="the test paper")
    sub = parser.add_subparsers(metavar="STAGE")
    hello = PAPER.add_config_arguments(sub.add_parser("hello", help="print the config's table_row"))
    hello.set_defaults(func=lambda a: print(PAPER.load_config(a.config, a.overrides).table_row) or 0)
    return parser


def greedy_search(req: SearchRequest) -> BitPolicy:
    """A reference search: raise weight bits of the cheapest layers while the budget holds."""
    rows = count(req.build_model(), req.input_size, convention="bpnas").counted_rows
    bits = {r.name: (min(req.w_candidates), min(req.a_candidates)) for r in rows}
    for r in sorted(rows, key=lambda r: r.macs):
        for w in sorted(req.w_candidates, reverse=True):
            trial = {**bits, r.name: (w, bits[r.name][1])}
            if sum(x.macs * trial[x.name][0] * trial[x.name][1] for x in rows) <= req.budget_bops:
                bits = trial
                break
    return BitPolicy(bits, {"source": "greedy"})


def decided_greedy_search(req: SearchRequest) -> BitPolicy:
    """The greedy policy with the diagnostics of a decided distribution search (converged)."""
    policy = greedy_search(req)
    policy.meta["diagnostics"] = {"max_prob": [[0.99, 0.99]] * len(policy),
                                  "entropy": [[0.05, 0.05]] * len(policy)}
    return policy


METHOD = SearchMethod(name="greedy", paper="Fake (tests)", search=greedy_search)
RECOMPUTERS = {"fake_counter": lambda ctx, n: {"layers": n}}

PAPER = Paper(name="fake", title="Fake paper (tests)", cli="tests.fake_paper:register",
              config_schema="tests.fake_paper:FakeConfig",
              configs=Path(__file__).resolve().parent / "configs", methods=("tests.fake_paper:METHOD",),
              recomputers="tests.fake_paper:RECOMPUTERS")

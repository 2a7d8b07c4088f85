"""Shared pytest setup: the repository root on ``sys.path`` (also without an editable install), one
torch thread (tests use tiny tensors; the CI machine has few cores), and a fixed seed per test."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("PYTHONPATH", str(ROOT))  # subprocesses (torchrun, CLI) import the same tree

torch.set_num_threads(int(os.environ.get("MPQ_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture
def use_papers(monkeypatch):
    """``use_papers({"name": "module:PAPER", ...})`` makes exactly those the ``mpq.papers`` entry points
    (other entry-point groups are untouched), e.g. to add the test paper or a broken one."""
    from importlib.metadata import EntryPoint

    import core.paper

    def install(papers: dict[str, str]) -> None:
        eps = [EntryPoint(name=n, value=v, group=core.paper.GROUP) for n, v in papers.items()]
        monkeypatch.setattr(core.paper, "entry_points",
                            lambda group: eps if group == core.paper.GROUP else [])

    return install

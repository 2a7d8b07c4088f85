"""What every EdMIPS stage shares: run directories and their identities and process setup (the stages take
their data from ``core.engine.classification_data``, with ``max_steps`` for smoke runs).

Each stage is one run directory under ``run.out_dir`` (``core.engine.RunDir``: its lock, ``run.json``,
resume only by the same run) and writes only there: ``search/``, ``discretize/`` (``policy.json``),
``train/`` (``results.json``). A stage's identity leaves out the sections it does not read, so changing
``train.*`` never disowns a search, and the training's identity carries the bits it trains.
"""

from __future__ import annotations

from pathlib import Path

from core.engine import (
    DistInfo,
    config_identity,
    num_classes_for,
    setup_process,
)
from core.policy import BitPolicy
from papers.edmips.config import EdmipsConfig

SEARCH_DIR, DISCRETIZE_DIR, TRAIN_DIR = "search", "discretize", "train"
POLICY_FILE, RESULTS_FILE = "policy.json", "results.json"
#: The config sections each stage does not read (left out of its identity).
_NOT_READ = {SEARCH_DIR: ["discretize", "train"], DISCRETIZE_DIR: ["train"],
             TRAIN_DIR: ["search", "discretize"]}


def stage_dir(cfg: EdmipsConfig, stage: str) -> Path:
    """``run.out_dir/<stage>``: the run directory of ``search``, ``discretize`` or ``train``."""
    return Path(cfg.run.out_dir) / stage


def search_dir(cfg: EdmipsConfig) -> Path:
    """The search a discretize stage reads: ``discretize.search_dir``, by default ``RUN_DIR/search``."""
    return Path(cfg.discretize.search_dir) if cfg.discretize.search_dir else stage_dir(cfg, SEARCH_DIR)


def stage_identity(cfg: EdmipsConfig, stage: str, policy: BitPolicy | None = None) -> dict:
    """The identity of ``stage``'s run (:func:`core.engine.config_identity`): the config without the
    sections the stage does not read; the training's also holds the ``policy`` it trains (whose search
    and discretisation are checked through the policy's producer records instead)."""
    return config_identity(cfg, exclude=_NOT_READ[stage], policy=policy)


def setup(cfg: EdmipsConfig) -> DistInfo:
    """core.engine.setup_process: process group, seed (run.seed + rank), compiled path."""
    return setup_process(cfg.run)



def num_classes_of(cfg: EdmipsConfig) -> int:
    """``model.num_classes``, or the dataset's when it is None."""
    return num_classes_for(cfg.model, cfg.data.name)

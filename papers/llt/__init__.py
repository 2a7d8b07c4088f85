"""LLT: Mixed-Precision Neural Network Quantization via Learned Layer-wise Importance (ECCV 2022).

Stages: one-time indicator training (``onetime``, supplementary Alg. 1) -> ``indicators.json``
(``indicators``) -> ILP search (``ilp``, ``search``; main paper Eq. 4) -> fine-tuning (``finetune``).
See README.md for the paper -> code map.
"""

from pathlib import Path

from core.paper import Paper

PAPER = Paper(
    name="llt",
    title="LLT: mixed-precision quantization via learned layer-wise importance (ECCV 2022)",
    cli="papers.llt.cli:register",
    config_schema="papers.llt.config:LLTConfig",
    configs=Path(__file__).resolve().parent / "configs",
    methods=("papers.llt.bench:METHOD",),
    recomputers="papers.llt.recomputers:RECOMPUTERS",
    perf="papers.llt.perf:PERF",
    smoke="papers.llt.cli:smoke",
)

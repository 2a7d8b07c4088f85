"""LLT: Mixed-Precision Neural Network Quantization via Learned Layer-wise Importance (ECCV 2022).

Stages: one-time indicator training (``onetime``, supplementary Alg. 1) -> ``indicators.json``
(``indicators``) -> ILP search (``ilp``, ``search``; main paper Eq. 4) -> fine-tuning (``finetune``).
See README.md for the paper -> code map.
"""

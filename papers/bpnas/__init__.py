"""BP-NAS (Yu et al., ECCV 2020): "Search What You Want: Barrier Penalty NAS for Mixed Precision
Quantization". Importing the package registers the ``scale_clip`` quantizer and the ``bpnas_pairs`` layer
kind. See ``papers/bpnas/README.md`` for the supplementary-equation -> code table.
"""

from papers.bpnas import quant, supernet  # noqa: F401  (registrations)

"""Params / MACs / BOPs counting with the papers' named conventions (see ``conventions``), audited
op by op so that no multiply-accumulate work is counted as 0 silently (see ``audit``).

>>> from core.bops import count
>>> from core.models import build_model
>>> count(build_model("resnet20", num_classes=10), (3, 32, 32)).macs_all
40551040
"""

from core.bops.cli import add_cli_arguments, parse_input_size, run_cli
from core.bops.conventions import (
    CONVENTIONS,
    MATMUL_RULES,
    Convention,
    floor_macs,
    get_convention,
    input_over_stride_macs,
    register_convention,
    true_division_macs,
)
from core.bops.counter import MB, BopsReport, LayerRow, annotate_macs, count, expected_bops

__all__ = [
    "CONVENTIONS", "MATMUL_RULES", "Convention", "register_convention", "get_convention",
    "floor_macs", "input_over_stride_macs", "true_division_macs",
    "MB", "BopsReport", "LayerRow", "count", "annotate_macs", "expected_bops",
    "add_cli_arguments", "run_cli", "parse_input_size",
]

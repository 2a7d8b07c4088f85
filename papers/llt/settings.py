"""The settings of one ILP search (the ``search`` block of a config, or ``mpq llt search``'s flags) and
the paper's alpha per network; imported by both ``config.py`` and ``search.py``."""

from __future__ import annotations

from dataclasses import dataclass

#: alpha of main paper Eq. 4 per network (supplementary Sec. 1).
PAPER_ALPHA = {"resnet18": 3.0, "resnet50": 2.0, "mobilenet_v1": 1.0}


def paper_alpha(model: str, default: float = 2.0) -> float:
    """:data:`PAPER_ALPHA` of ``model``, also under the timm names of the official starting models
    (``gluon_resnet18_v1b`` / ``gluon_resnet50_v1b``, now ``resnet*.gluon_in1k``); ``default`` otherwise."""
    net = model.removeprefix("gluon_").removesuffix("_v1b").removesuffix(".gluon_in1k")
    return PAPER_ALPHA.get(net, default)


@dataclass
class SearchSettings:
    """The constraints and knobs of one search (the ``search`` block of a config, or the CLI flags).

    ``w_bits``/``a_bits``: BitOPs budget of the uniform ``W{w_bits}A{a_bits}`` model over the searchable
    layers (``None``: no BitOPs constraint); ``bitops_budget`` gives it in absolute BitOPs instead.
    ``compression``: model-size budget ``32 * weights / compression`` bits (``None``: none).
    ``bits``: candidate bits (default: the indicators' own). ``weight_only_a_bits``: fix every
    activation at this width and search weights only (the MobileNetV1 W4A8 setting: 8).
    """

    alpha: float = 2.0
    bits: list[int] | None = None
    w_bits: float | None = 3
    a_bits: float | None = 4
    bitops_budget: float | None = None
    compression: float | None = None
    weight_only_a_bits: int | None = None
    macs: str = "limpq"
    fixed_w_bits: int = 8
    nonmonotone_rule: bool = True
    solver: str = "bnb"  # exact either way: "bnb" (mpq's branch and bound) or "highs" (scipy's MILP)
    input_size: list[int] | None = None  # None: the config's data size, or 3x224x224 on the CLI

"""Model glue: the float network, the supernet (layer kind ``bpnas_pairs``) and the fixed-precision network.

In both the first conv is held at 8 bits (``quant.first``: supp. Table 1 "We quantize the first convolutional
layer into 8-bit") and the classifier at 8 bits (``quant.last``; the table does not list it); both stay
outside the budget, as core's ``bpnas`` counting convention says. Every other conv / linear is searched,
grouped into blocks by ``quant.blocks`` (``2``: ResNet blocks ``layerS.I``, the rows of supp. Table 1).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch
import torch.nn as nn

from core.bops import count
from core.config import ModelConfig
from core.errors import ConfigError
from core.export.spec import ExportSpec
from core.models import build_model
from core.nn import QuantSpec, quantize_model
from core.policy import BitPolicy
from papers.bpnas.config import BpnasConfig, QuantConfig
from papers.bpnas.losses import SupernetCost
from papers.bpnas.supernet import KIND, BlockSelector, block_of, block_selectors

CONVENTION = "bpnas"


def build_float_model(cfg: ModelConfig, num_classes: int) -> nn.Module:
    """The float network of ``model`` (``core.models.build_model``; ``pretrained``: a local weights file)."""
    return build_model(cfg.name, num_classes=num_classes, pretrained=cfg.pretrained, **cfg.kwargs)


def _spec(quant: QuantConfig, kind: str, options: dict | None = None) -> QuantSpec:
    """``quant``'s quantizers with their options: ``scale_clip`` weights clip at ``w_k x w_stat`` when
    ``uniformize``, else over the full range (``stat=max, k=1``); ``scale_clip`` / ``pact`` activations."""
    w_opts: dict[str, Any] = {}
    a_opts: dict[str, Any] = {}
    if quant.w_quant == "scale_clip":
        w_opts = {"k": quant.w_k, "stat": quant.w_stat} if quant.uniformize else {"k": 1.0, "stat": "max"}
    if quant.a_quant == "scale_clip":
        a_opts = {"k": quant.a_k, "stat": quant.a_stat, "momentum": quant.a_momentum}
    elif quant.a_quant == "pact":
        a_opts = {"alpha_init": quant.pact_alpha_init}
    return QuantSpec(kind=kind, w_quant=quant.w_quant, a_quant=quant.a_quant, w_options=w_opts,
                     a_options=a_opts, options=options or {}, first=quant.first, last=quant.last,
                     edge_w_quant=quant.edge_quant, edge_a_quant=quant.edge_quant, w_bits=32, a_bits=32)


def fixed_spec(quant: QuantConfig) -> QuantSpec:
    """The QuantSpec of the final network: fixed QConv2d / QLinear (bits then set by a policy)."""
    return _spec(quant, "fixed")


def supernet_spec(quant: QuantConfig, paths: str) -> QuantSpec:
    """The QuantSpec of the supernet: every searched layer a PairConv2d / PairLinear over ``quant.pairs``."""
    options = {"pairs": [list(p) for p in quant.pairs], "blocks": quant.blocks, "paths": paths}
    return _spec(quant, KIND, options)


def build_supernet(cfg: BpnasConfig, num_classes: int, input_size: tuple[int, int, int],
                   device: torch.device | str = "cpu") -> tuple[nn.Module, list[BlockSelector], SupernetCost]:
    """The supernet of ``cfg`` on ``device``, its block selectors (module order) and its E(SN)."""
    model = build_float_model(cfg.model, num_classes)
    report = count(model, input_size, convention=CONVENTION)
    quantize_model(model, supernet_spec(cfg.quant, cfg.search.paths))
    selectors = block_selectors(model)
    if not selectors:
        raise ConfigError(f"{cfg.model.name} has no searchable layer besides its first and last layers")
    model.to(device)
    return model, selectors, SupernetCost.from_report(selectors, report)


def build_fixed_model(cfg: BpnasConfig, num_classes: int) -> tuple[nn.Module, list[str]]:
    """The fixed-precision network (QConv2d / QLinear with the reshaping quantizers); bits are then set
    per layer by a :class:`BitPolicy`. Returns the model and its policy layer names."""
    model = build_float_model(cfg.model, num_classes)
    names = quantize_model(model, fixed_spec(cfg.quant))
    return model, names


def export_spec(cfg: BpnasConfig, num_classes: int, input_size: tuple[int, int, int], policy: BitPolicy,
                checkpoint: str, meta: dict) -> ExportSpec:
    """How ``mpq export`` rebuilds the final network (``core.export.spec``)."""
    return ExportSpec(model=cfg.model.name, num_classes=num_classes, input_size=tuple(input_size),
                      checkpoint=checkpoint, quant=asdict(fixed_spec(cfg.quant)), policy=policy.to_dict(),
                      model_kwargs=dict(cfg.model.kwargs), meta=meta)


def random_block_policy(names: list[str], rule: Any, pairs: list[list[int]], seed: int) -> BitPolicy:
    """Each block (layers ``names`` grouped by ``rule``) at a pair drawn uniformly from ``pairs`` (supp.
    section 5: "We randomly select bitwidth from {(1,1),(2,2),(4,4),(8,8)} for each block")."""
    gen = torch.Generator().manual_seed(int(seed))
    blocks = [block_of(n, rule) for n in names]
    chosen = {b: tuple(pairs[int(torch.randint(len(pairs), (1,), generator=gen))])
              for b in dict.fromkeys(blocks)}
    meta = {"source": "random", "seed": int(seed), "pairs": [list(p) for p in pairs],
            "blocks": {b: list(p) for b, p in chosen.items()}}
    return BitPolicy({n: chosen[b] for n, b in zip(names, blocks)}, meta)


def policy_report(cfg: BpnasConfig, policy: BitPolicy, num_classes: int, input_size: tuple[int, ...]):
    """The ``bpnas``-convention count of ``policy`` on the float network."""
    return count(build_float_model(cfg.model, num_classes), tuple(input_size), policy=policy,
                 convention=CONVENTION)



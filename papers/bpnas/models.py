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


def quantizer_options(quant: QuantConfig, w_quant: str | None = None, a_quant: str | None = None
                      ) -> tuple[str, dict[str, Any], str, dict[str, Any]]:
    """(weight quantizer, its options, activation quantizer, its options) of ``quant`` (or the overrides)."""
    w_quant, a_quant = w_quant or quant.w_quant, a_quant or quant.a_quant
    w_opts: dict[str, Any] = {}
    a_opts: dict[str, Any] = {}
    if w_quant == "scale_clip":
        w_opts = {"k": quant.w_k, "stat": quant.w_stat} if quant.uniformize else {"k": 1.0, "stat": "max"}
    if a_quant == "scale_clip":
        a_opts = {"k": quant.a_k, "stat": quant.a_stat, "momentum": quant.a_momentum}
    elif a_quant == "pact":
        a_opts = {"alpha_init": quant.pact_alpha_init}
    return w_quant, w_opts, a_quant, a_opts


def fixed_spec(quant: QuantConfig, w_quant: str | None = None, a_quant: str | None = None) -> QuantSpec:
    """The QuantSpec of the final network: fixed QConv2d / QLinear (bits then set by a policy)."""
    return _spec(quant, "fixed", w_quant=w_quant, a_quant=a_quant)


def _spec(quant: QuantConfig, kind: str, options: dict | None = None, w_quant: str | None = None,
          a_quant: str | None = None) -> QuantSpec:
    wq, w_opts, aq, a_opts = quantizer_options(quant, w_quant, a_quant)
    return QuantSpec(kind=kind, w_quant=wq, a_quant=aq, w_options=w_opts, a_options=a_opts,
                     options=options or {}, first=quant.first, last=quant.last, edge_w_quant=quant.edge_quant,
                     edge_a_quant=quant.edge_quant, w_bits=32, a_bits=32)


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


def build_fixed_model(cfg: BpnasConfig, num_classes: int, w_quant: str | None = None,
                      a_quant: str | None = None) -> tuple[nn.Module, list[str]]:
    """The fixed-precision network (QConv2d / QLinear with the reshaping quantizers); bits are then set
    per layer by a :class:`BitPolicy`. Returns the model and its policy layer names."""
    model = build_float_model(cfg.model, num_classes)
    names = quantize_model(model, fixed_spec(cfg.quant, w_quant, a_quant))
    return model, names


def export_spec(cfg: BpnasConfig, num_classes: int, input_size: tuple[int, int, int], policy: BitPolicy,
                checkpoint: str, meta: dict) -> ExportSpec:
    """How ``mpq export`` rebuilds the final network (``core.export.spec``)."""
    return ExportSpec(model=cfg.model.name, num_classes=num_classes, input_size=tuple(input_size),
                      checkpoint=checkpoint, quant=asdict(fixed_spec(cfg.quant)), policy=policy.to_dict(),
                      model_kwargs=dict(cfg.model.kwargs), meta=meta)


def layer_blocks(names: list[str], rule: Any) -> dict[str, list[str]]:
    """``{block: [layer names]}`` in order, for policy layer names grouped by ``quant.blocks``."""
    blocks: dict[str, list[str]] = {}
    for name in names:
        blocks.setdefault(block_of(name, rule), []).append(name)
    return blocks


def block_policy_to_layers(blocks: dict[str, list[str]], pairs: dict[str, tuple[int, int]],
                           meta: dict | None = None) -> BitPolicy:
    return BitPolicy({n: pairs[b] for b, names in blocks.items() for n in names}, meta)


def random_block_policy(names: list[str], rule: Any, pairs: list[list[int]], seed: int) -> BitPolicy:
    """Each block at a pair drawn uniformly from ``pairs`` (supp. section 5: "We randomly select bitwidth
    from {(1,1),(2,2),(4,4),(8,8)} for each block")."""
    gen = torch.Generator().manual_seed(int(seed))
    blocks = layer_blocks(names, rule)
    chosen = {b: tuple(pairs[int(torch.randint(len(pairs), (1,), generator=gen))]) for b in blocks}
    meta = {"source": "random", "seed": int(seed), "pairs": [list(p) for p in pairs],
            "blocks": {b: list(p) for b, p in chosen.items()}}
    return block_policy_to_layers(blocks, chosen, meta)


def policy_report(cfg: BpnasConfig, policy: BitPolicy, num_classes: int, input_size: tuple[int, ...]):
    """The ``bpnas``-convention count of ``policy`` on the float network."""
    return count(build_float_model(cfg.model, num_classes), tuple(input_size), policy=policy,
                 convention=CONVENTION)



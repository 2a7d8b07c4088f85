"""Model glue: the float networks of the paper, their search models and their fixed-precision models.

Networks (section 5): ``googlenet``, ``inception_v3``, ``resnet18``/``resnet50`` (torchvision),
``edmips_resnet18``/``edmips_resnet50`` (the official BN-before-conv ResNets) and ``alexnet_bn``, all from
core.models; any other name core.models.build_model knows also works. GoogLeNet and Inception-V3 are
built without their auxiliary classifiers ("all auxiliary losses were removed", section 5.1): the config
names ``googlenet`` / ``inception_v3`` build core's ``googlenet_noaux`` / ``inception_v3_noaux`` (also without
torchvision's ``transform_input``, a re-normalisation for ported weights; models are trained from scratch
here). The official code has no AlexNet: ``alexnet_bn`` (core.models) is torchvision's AlexNet with a
BatchNorm after every convolution and hidden fully connected layer, as in the HWGQ-Net AlexNet the paper
builds on: HWGQ's fixed steps assume unit-variance (batch-normalised) inputs.

In every network the first convolution and the last fully connected layer stay full precision and every
other Conv2d / Linear is searched (official code; downsample 1x1 convs included).
"""

from __future__ import annotations

from dataclasses import asdict

import torch
import torch.nn as nn

from core.errors import ConfigError
from core.export.spec import ExportSpec
from core.models import build_model
from core.nn import QuantSpec, quantizable_layers, quantize_model
from papers.edmips.config import ModelConfig, QuantConfig

#: the networks whose auxiliary classifiers the paper removes -> core's variant without them.
AUX_FREE: dict[str, str] = {"googlenet": "googlenet_noaux", "inception_v3": "inception_v3_noaux"}


def build_float_model(cfg: ModelConfig, num_classes: int) -> nn.Module:
    """The full-precision network named by ``cfg`` (auxiliary classifiers removed; ``cfg.pretrained``,
    a local file, loaded when set: the paper trains from scratch)."""
    if cfg.kwargs.get("aux_logits"):
        raise ConfigError(f"model.kwargs.aux_logits=true: EdMIPS removes the auxiliary classifiers of "
                          f"{cfg.name} (section 5.1); drop the option")
    return build_model(AUX_FREE.get(cfg.name, cfg.name), num_classes=num_classes, pretrained=cfg.pretrained,
                       **cfg.kwargs)


def composite_spec(quant: QuantConfig) -> QuantSpec:
    """The QuantSpec of the search model: composite layers over the candidates of eq. 17."""
    return QuantSpec(kind="composite", w_quant=quant.w_quantizer, a_quant=quant.a_quantizer,
                     w_candidates=list(quant.w_candidates), a_candidates=list(quant.a_candidates),
                     w_options=_w_options(quant), options={"share_weight": quant.shared_weight},
                     first="float", last="float")


def fixed_spec(quant: QuantConfig, w_bits: int, a_bits: int) -> QuantSpec:
    """The QuantSpec of a fixed-precision model (bits then set per layer by a BitPolicy)."""
    return QuantSpec(kind="fixed", w_quant=quant.w_quantizer, a_quant=quant.a_quantizer,
                     w_bits=w_bits, a_bits=a_bits, w_options=_w_options(quant), first="float", last="float")


def _w_options(quant: QuantConfig) -> dict:
    """``quant.w_clip_bound`` for the Gaussian weight quantizer (the only one that has it)."""
    return {"clip_bound": quant.w_clip_bound} if quant.w_quantizer == "gaussian" else {}


def build_search_model(model: nn.Module, quant: QuantConfig, alpha_init: float = 0.01
                       ) -> tuple[nn.Module, list[tuple[str, nn.Module]]]:
    """Swap every searchable layer of ``model`` (in place) for a composite layer (eq. 14-16) with its
    architecture parameters set to ``alpha_init`` (section 5.1: 0.01); returns the model and its layers."""
    quantize_model(model, composite_spec(quant))
    layers = quantizable_layers(model)
    if not layers:
        raise ConfigError("the model has no searchable layer besides its first conv and last fc")
    with torch.no_grad():
        for _, m in layers:
            m.alpha_w.fill_(alpha_init)
            m.alpha_a.fill_(alpha_init)
    return model, layers


def export_spec(cfg: ModelConfig, quant: QuantConfig, num_classes: int, input_size: tuple[int, int, int],
                policy_dict: dict | None, checkpoint: str, meta: dict) -> ExportSpec:
    """How ``mpq export`` rebuilds the final network (``core.export.spec``): :func:`build_float_model`'s
    name and options, :func:`fixed_spec` (none for the float reference) and the policy."""
    fixed = asdict(fixed_spec(quant, 32, 32)) if policy_dict is not None else None
    return ExportSpec(model=AUX_FREE.get(cfg.name, cfg.name), num_classes=num_classes,
                      input_size=tuple(input_size), checkpoint=checkpoint, quant=fixed, policy=policy_dict,
                      model_kwargs=dict(cfg.kwargs), meta=meta)


def quantize_fixed(model: nn.Module, quant: QuantConfig) -> list[str]:
    """Swap the searchable layers of ``model`` (in place) for fixed-precision quantized layers; the bits
    are then set per layer by a :class:`core.policy.BitPolicy`. Returns the quantized layer names."""
    return quantize_model(model, fixed_spec(quant, 32, 32))

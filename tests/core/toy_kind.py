"""A layer kind registered from outside core, the way a paper registers its own (importing this module
registers it): block-shared ``(w_bits, a_bits)`` PAIRS, as BP-NAS searches them.

Every layer holds one (weight, input) quantizer pair per candidate pair and computes
``sum_k g_k op(a_k(x), Q_k(W))``; the gates ``g`` come from ONE :class:`PairSelector` per block (the
parent module of the layer), created by the kind's post-pass and shared by the block's layers.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from core.nn import KindContext, QuantSpec, register_layer_kind
from core.nn.qlayers import copy_float_params
from core.quant import create_quantizer

TOY_KIND = "toy_block_pairs"


class PairSelector(nn.Module):
    """Architecture logits over the candidate pairs of one block."""

    arch_parameter_names = ("alpha",)

    def __init__(self, n_pairs: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(n_pairs))

    def gates(self) -> torch.Tensor:
        return torch.softmax(self.alpha, 0)


class _PairMixin:
    weight: nn.Parameter
    bias: nn.Parameter | None

    def _init_pairs(self, pairs: list[list[int]]) -> None:
        self.pairs = [(int(w), int(a)) for w, a in pairs]
        self.w_quantizers = nn.ModuleList(create_quantizer("dorefa", w, role="weight") for w, _ in self.pairs)
        self.a_quantizers = nn.ModuleList(create_quantizer("pact", a) for _, a in self.pairs)
        self.selector: PairSelector | None = None  # set by the post-pass (shared with the block)
        self.bit_frozen = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gates = self.selector.gates()
        return sum(g * self.op(aq(x), wq(self.weight)) for g, wq, aq in
                   zip(gates, self.w_quantizers, self.a_quantizers))


class PairConv2d(_PairMixin, nn.Conv2d):
    def op(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, w, self.bias)


class PairLinear(_PairMixin, nn.Linear):
    def op(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.linear(x, w, self.bias)


def share_selectors_by_block(model: nn.Module, spec: QuantSpec, ctx: KindContext) -> None:
    """Post-pass: one PairSelector per parent module of the built layers, a submodule of each of them
    (a shared module: ``parameters()`` and ``arch_parameters`` list it once)."""
    for name in ctx.names:
        block_name = name.rpartition(".")[0]
        if block_name not in ctx.shared:
            ctx.shared[block_name] = PairSelector(len(ctx.options["pairs"]))
        model.get_submodule(name).selector = ctx.shared[block_name]


@register_layer_kind(TOY_KIND, layers=(PairConv2d, PairLinear), options={"pairs": [[4, 4], [2, 4]]},
                     w_quant="dorefa", a_quant="pact", post=share_selectors_by_block)
def build_pair_layer(module: nn.Module, spec: QuantSpec, name: str, ctx: KindContext) -> nn.Module:
    """A conv / linear searching the candidate (w_bits, a_bits) pairs of its block."""
    if isinstance(module, nn.Conv2d):
        new = PairConv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride,
                         module.padding, module.dilation, module.groups, module.bias is not None,
                         module.padding_mode)
    else:
        new = PairLinear(module.in_features, module.out_features, module.bias is not None)
    new._init_pairs(ctx.options["pairs"])
    copy_float_params(module, new)
    return new.to(module.weight.device)

"""The BP-NAS supernet: per-block candidate ``(w_bits, a_bits)`` PAIRS with softmax probabilities.

"All layers in the same block share the same quantization bitwidth" (supplementary Table 2), and the tables
list one (w-bit, a-bit) pair per block, so the search space is a set of PAIRS per block (not independent
weight and activation bits as in EdMIPS). The layer kind ``bpnas_pairs`` (registered here, used through
``core.nn.quantize_model``) turns every searched ``nn.Conv2d`` / ``nn.Linear`` into a :class:`PairConv2d` /
:class:`PairLinear` holding one weight quantizer per candidate weight bit-width and one input quantizer per
candidate activation bit-width (quantizers without state are cheap; the ``scale_clip`` activation
quantizers of a layer share one running statistic). Its post-pass groups the layers into blocks and gives
each block ONE :class:`BlockSelector` (architecture logits ``alpha``, ``p = softmax(alpha)``), a shared
submodule of the block's layers. Kind options (``QuantSpec.options``):

- ``pairs``: the candidate pairs, ``[[w, a], ...]`` (default: the pairs of supp. Table 1's searched blocks);
- ``blocks``: how layers form blocks: ``"parent"`` (the parent module, default), ``"layer"`` (one block
  per layer), an int ``n`` (the first ``n`` components of the layer name: ``2`` makes ``layer1.0.conv1`` and
  ``layer1.0.downsample.0`` one ResNet block ``layer1.0``), a mapping ``{block: [layer names or name
  prefixes]}`` (the longest matching prefix wins; a layer no entry matches is an error), or a callable
  ``name -> block`` (e.g. Faster R-CNN: FPN convs, RPN head convs, bbox-head linears as their own blocks);
- ``paths``: ``mixture`` (default: DARTS-like, every layer computes ``sum_k p_k op(a_k(x), Q_k(W))``, exactly,
  as one convolution per distinct activation bit-width of the pairs, since the op is linear in the weight;
  every forward is differentiable in ``alpha``) or ``sample`` (one pair per block per training step, drawn
  from ``p``: one convolution per layer, the cost of a fixed-precision step; ``alpha`` then learns from the
  search trainer's score-function term; the BP-NAS configs choose it, ``search.paths``);
- ``alpha_init``: initial logits (the search then moves them inside the feasible domain, see
  :func:`papers.bpnas.losses.feasible_init`).

In ``eval()`` a ``sample`` supernet runs the highest-probability pair of each block (the derived network);
a ``mixture`` supernet runs the mixture. In training, call :func:`resample_paths` once per step (the search
trainer does; a detection runner does it in a hook before each iteration): every call of a block's layers in
that step (e.g. an RPN conv shared by the FPN levels) uses the same pair.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from core.errors import ConfigError
from core.nn import KindContext, QuantSpec, build_quantizer, register_layer_kind
from core.nn.qlayers import copy_float_params, layer_like
from core.policy import BitPolicy
from core.quant.scale_clip import share_running_stat, stats_frozen

KIND = "bpnas_pairs"
PATH_MODES = ("sample", "mixture")
#: the (w, a) pairs of the searched blocks of supp. Table 1 (ResNet-20, B_max = 3 / 3.5 / 4).
TABLE1_PAIRS: tuple[tuple[int, int], ...] = ((2, 4), (3, 3), (4, 3), (4, 4), (6, 4))
#: the (w, a) pairs of supp. Table 2 (Faster R-CNN R50-FPN; (4, 8) is its stem conv).
TABLE2_PAIRS: tuple[tuple[int, int], ...] = ((3, 5), (4, 3), (4, 4), (4, 6), (4, 8))

BlockRule = str | int | Mapping[str, Sequence[str]] | Callable[[str], str]


def check_pairs(pairs: Iterable[Sequence[int]]) -> list[tuple[int, int]]:
    """``pairs`` as a list of distinct ``(w_bits, a_bits)`` tuples of integers in 1..32."""
    out = []
    for pair in pairs:
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2 or not all(
                isinstance(b, int) and not isinstance(b, bool) and 1 <= b <= 32 for b in pair):
            raise ConfigError(f"candidate pair {pair!r} is not a [w_bits, a_bits] pair of integers in 1..32")
        out.append((int(pair[0]), int(pair[1])))
    if not out or len(set(out)) != len(out):
        raise ConfigError(f"the candidate pairs must be a non-empty list of distinct [w, a] pairs, got {out}")
    return out


def block_of(name: str, rule: BlockRule) -> str:
    """The block of layer ``name`` under ``rule`` (see the module docstring)."""
    if callable(rule):
        return str(rule(name))
    if isinstance(rule, int) and not isinstance(rule, bool):
        if rule < 1:
            raise ConfigError(f"blocks={rule}: a name-prefix depth must be >= 1")
        return ".".join(name.split(".")[:rule])
    if rule == "parent":
        return name.rpartition(".")[0] or name
    if rule == "layer":
        return name
    if isinstance(rule, Mapping):
        best, length = None, -1
        for block, prefixes in rule.items():
            for prefix in [prefixes] if isinstance(prefixes, str) else prefixes:
                if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > length:
                    best, length = str(block), len(prefix)
        if best is None:
            raise ConfigError(f"layer {name!r} belongs to no block of the blocks mapping {dict(rule)}; add "
                              "its name (or a prefix of it) to one block, or keep it out of the search")
        return best
    raise ConfigError(f"unknown block rule {rule!r}: use 'parent', 'layer', a name-prefix depth (int), a "
                      "mapping {block: [layer name prefixes]} or a callable name -> block")


class BlockSelector(nn.Module):
    """The architecture logits of one block over its candidate pairs; ``p = softmax(alpha)``."""

    arch_parameter_names = ("alpha",)  # collected by core.nn.arch_parameters

    def __init__(self, pairs: Sequence[Sequence[int]], name: str = "", paths: str = "mixture",
                 alpha_init: float = 0.0, device: Any = None) -> None:
        super().__init__()
        self.pairs = check_pairs(pairs)
        if paths not in PATH_MODES:
            raise ConfigError(f"unknown path mode {paths!r}; choose one of {list(PATH_MODES)}")
        self.alpha = nn.Parameter(torch.full((len(self.pairs),), float(alpha_init), device=device))
        self.register_buffer("costs", torch.tensor([float(w * a) for w, a in self.pairs], device=device),
                             persistent=False)
        self.name, self.paths = name, paths
        self.layer_names: list[str] = []
        self.index: int | None = None  # the pair sampled for the current step (paths="sample")

    def probs(self) -> torch.Tensor:
        """``p = softmax(alpha)``: the probability of each candidate pair."""
        return torch.softmax(self.alpha, dim=0)

    def expected_cost(self) -> torch.Tensor:
        """``E[w * a] = sum_k p_k w_k a_k``: the block's expected BOPs per MAC (differentiable, float64: the
        feasibility checks compare it with B_max closely)."""
        return torch.dot(torch.softmax(self.alpha.double(), dim=0), self.costs.double())

    def argmax(self) -> int:
        return int(self.alpha.detach().argmax())

    def resample(self, generator: torch.Generator | None = None) -> int:
        """Draw this step's pair from ``p`` (on the CPU, from ``generator`` or torch's global RNG)."""
        p = self.probs().detach().float().cpu()
        self.index = int(torch.multinomial(p, 1, generator=generator))
        return self.index

    def path(self) -> int | None:
        """The pair the block's layers run now: sampled (training), argmax (eval), None for the mixture."""
        if self.paths == "mixture":
            return None
        if not self.training:
            return self.argmax()
        if self.index is None:
            self.resample()
        return self.index

    def extra_repr(self) -> str:
        return f"block={self.name!r}, pairs={self.pairs}, paths={self.paths}, layers={len(self.layer_names)}"


class _PairMixin:
    """What :class:`PairConv2d` and :class:`PairLinear` share."""

    weight: nn.Parameter
    bias: nn.Parameter | None

    def _init_pairs(self, pairs: Sequence[Sequence[int]], w_quant: str, a_quant: str, w_options: dict | None,
                    a_options: dict | None, out_channels: int, in_channels: int) -> None:
        self.pairs = check_pairs(pairs)
        self.w_candidates = sorted({w for w, _ in self.pairs})
        self.a_candidates = sorted({a for _, a in self.pairs})
        self.w_quantizers = nn.ModuleDict({str(b): build_quantizer(w_quant, b, "weight", w_options,
                                                                   out_channels)
                                           for b in self.w_candidates})
        self.a_quantizers = nn.ModuleDict({str(b): build_quantizer(a_quant, b, "activation", a_options,
                                                                   in_channels)
                                           for b in self.a_candidates})
        share_running_stat(list(self.a_quantizers.values()))
        self.selector: BlockSelector | None = None  # set by the kind's post-pass (shared by the block)
        self.bit_frozen = False

    def op(self, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The layer's float operation (conv2d / linear) with weight ``w``: defined by each layer class."""
        raise NotImplementedError(f"{type(self).__name__} must define op()")

    def pair_forward(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """``op(a_k(x), Q_k(W))`` of candidate pair ``index``: one convolution."""
        w, a = self.pairs[index]
        return self.op(self.a_quantizers[str(a)](x), self.w_quantizers[str(w)](self.weight), self.bias)

    def mixture_forward(self, x: torch.Tensor) -> torch.Tensor:
        """``sum_k p_k op(a_k(x), Q_k(W))`` computed as ``sum_a op(a(x), sum_{k: a_k = a} p_k Q_k(W))``."""
        p = self.selector.probs()
        qw = {w: self.w_quantizers[str(w)](self.weight) for w in self.w_candidates}
        out = None
        for j, a in enumerate(self.a_candidates):
            terms = [p[k] * qw[w] for k, (w, ak) in enumerate(self.pairs) if ak == a]
            wbar = terms[0] if len(terms) == 1 else torch.stack(terms).sum(0)
            quant = self.a_quantizers[str(a)]
            with stats_frozen(quant) if j else nullcontext():  # the shared statistic is updated once
                term = self.op(quant(x), wbar, self.bias if j == 0 else None)
            out = term if out is None else out + term
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.selector is None:
            raise ConfigError(f"{type(self).__name__} has no block selector: build it through "
                              f"core.nn.quantize_model(model, QuantSpec(kind={KIND!r})), whose post-pass "
                              "attaches one per block")
        index = self.selector.path()
        return self.mixture_forward(x) if index is None else self.pair_forward(x, index)

    def _pairs_repr(self) -> str:
        block = self.selector.name if self.selector is not None else None
        return f", pairs={self.pairs}, block={block!r}"


class PairConv2d(_PairMixin, nn.Conv2d):
    """A convolution searching its block's candidate ``(w_bits, a_bits)`` pairs."""

    def op(self, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return self._conv_forward(x, w, bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + self._pairs_repr()


class PairLinear(_PairMixin, nn.Linear):
    """A linear layer searching its block's candidate ``(w_bits, a_bits)`` pairs."""

    def op(self, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, w, bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + self._pairs_repr()


def attach_block_selectors(model: nn.Module, spec: QuantSpec, ctx: KindContext) -> None:
    """The kind's post-pass: group the built layers into blocks (option ``blocks``) and give every block one
    :class:`BlockSelector`, a submodule of each of its layers."""
    opts = ctx.options
    for name in ctx.names:
        layer = model.get_submodule(name)
        block = block_of(name, opts["blocks"])
        if block not in ctx.shared:
            ctx.shared[block] = BlockSelector(opts["pairs"], block, opts["paths"], opts["alpha_init"],
                                              device=layer.weight.device)
        ctx.shared[block].layer_names.append(name)
        layer.selector = ctx.shared[block]


@register_layer_kind(KIND, layers=(PairConv2d, PairLinear), w_quant="scale_clip", a_quant="scale_clip",
                     options={"pairs": [list(p) for p in TABLE1_PAIRS], "blocks": "parent",
                              "paths": "mixture", "alpha_init": 0.0},
                     post=attach_block_selectors)
def build_pair_layer(module: nn.Module, spec: QuantSpec, name: str, ctx: KindContext
                     ) -> PairConv2d | PairLinear:
    """PairConv2d / PairLinear: BP-NAS's searchable layer over block-shared (w_bits, a_bits) pairs."""
    if isinstance(module, nn.Conv2d):
        new = layer_like(PairConv2d, module)
        channels = (module.out_channels, module.in_channels)
    else:
        new = layer_like(PairLinear, module)
        channels = (module.out_features, module.in_features)
    new._init_pairs(ctx.options["pairs"], spec.w_quant, spec.a_quant, dict(spec.w_options),
                    dict(spec.a_options), *channels)
    copy_float_params(module, new)
    return new.to(module.weight.device)


# ---------------------------------------------------------------------------------------------- helpers
def block_selectors(model: nn.Module) -> list[BlockSelector]:
    """The model's block selectors, each once, in module order."""
    seen: dict[int, BlockSelector] = {}
    for m in model.modules():
        if isinstance(m, BlockSelector):
            seen.setdefault(id(m), m)
    return list(seen.values())


def resample_paths(selectors: Iterable[BlockSelector], generator: torch.Generator | None = None) -> list[int]:
    """Draw one pair per block for the next training step; returns the indices."""
    return [s.resample(generator) for s in selectors]


def set_path_mode(selectors: Iterable[BlockSelector], paths: str) -> None:
    """Switch every block between ``sample`` and ``mixture``."""
    if paths not in PATH_MODES:
        raise ConfigError(f"unknown path mode {paths!r}; choose one of {list(PATH_MODES)}")
    for s in selectors:
        s.paths = paths


def block_pairs(selectors: Iterable[BlockSelector]) -> dict[str, tuple[int, int]]:
    """The highest-probability pair of every block (the derivation of the final model)."""
    return {s.name: s.pairs[s.argmax()] for s in selectors}


def layer_policy(selectors: Iterable[BlockSelector], pairs_by_block: Mapping[str, Sequence[int]],
                 meta: Mapping[str, Any] | None = None) -> BitPolicy:
    """A layer-level :class:`BitPolicy`: every layer of a block at the block's pair."""
    layers = {}
    for s in selectors:
        w, a = pairs_by_block[s.name]
        layers.update({name: (int(w), int(a)) for name in s.layer_names})
    return BitPolicy(layers, meta)

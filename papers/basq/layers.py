"""Branch-wise activation clipping (BASQ's search space) as the layer kind ``basq``.

A *searchable block* is one convolution whose input is clip-quantized (by default every conv with a
spatial kernel: MobileNetV2's depthwise 3x3, ResNet-18's 3x3). It holds one **branch** per L2-decay
candidate ``lambda_j``: branch ``j`` owns a clip quantizer (:class:`~papers.basq.quant.ClipQuantizer`)
whose clip is decayed with ``lambda_j`` (:func:`clip_param_groups`), and its own BatchNorms around the
conv (:class:`BranchBatchNorm2d`); the conv weight (and its weight quantizer) is shared by the branches.
A :class:`BranchSelector` per block holds which branch runs; the model's *selection vector* is the
tuple of their indices (:func:`set_selection`, :func:`current_selection`).

Every other conv / linear becomes a fixed :class:`~core.nn.QConv2d` / :class:`~core.nn.QLinear` (LSQ by
default; BASQ: per-channel unsigned activations, per-output-channel symmetric weights, see
:func:`papers.basq.models.basq_spec`).

Which BatchNorms are per-branch: a block's parent module may declare them in ``BRANCH_BATCHNORMS =
{conv attribute: (batchnorm attributes, ...)}`` (BASQ's building block: the BN before the clip quantizer,
the BN after the conv and the BN after the skip add); otherwise the BatchNorm right after the conv (its
post-BN) is made per-branch.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from core.errors import ConfigError
from core.nn import KindContext, QConv2d, QLinear, QuantSpec, following_batchnorms, register_layer_kind
from core.nn.qlayers import build_quantizer, copy_float_params, layer_like
from papers.basq.quant import CLIP_STEPS, ClipQuantizer

#: The official L2-decay candidates (branch 0 is the strongest decay).
LAMBDAS = (1e-2, 5e-3, 1e-3, 5e-4, 1e-4, 5e-5, 1e-5)
CLIP_LAYERS = ("spatial", "depthwise", "all", "none")
KIND = "basq"


class BranchSelector(nn.Module):
    """Which of a block's ``n`` branches runs (``index``, a Python int: no device sync per forward); kept
    in ``state_dict`` as extra state, so a saved model remembers its selection.

    ``per_sample`` (eval mode only): a long tensor with one branch index per sample of the batch, so that
    one forward evaluates several candidates (:func:`per_sample_selection`; ``None``: ``index`` for all)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n, self.index = int(n), 0
        self.per_sample: torch.Tensor | None = None

    def select(self, index: int) -> None:
        index = int(index)
        if not 0 <= index < self.n:
            raise ConfigError(f"branch index {index} out of range: this block has {self.n} branches")
        self.index = index

    def get_extra_state(self) -> torch.Tensor:
        return torch.tensor(self.index)  # a tensor: torch's ONNX tracer detaches every state_dict entry

    def set_extra_state(self, state: torch.Tensor | dict) -> None:
        self.select(state["index"] if isinstance(state, dict) else int(state))

    def extra_repr(self) -> str:
        return f"n={self.n}, index={self.index}"


class BranchClipConv2d(nn.Conv2d):
    """``conv(clip_j(x), Q_w(W))`` for the selected branch ``j``: one clip quantizer per ``lambdas`` entry,
    one shared weight and weight quantizer. ``a_bits`` sets every branch's bits."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1,
                 padding: Any = 0, dilation: Any = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", device: Any = None, dtype: Any = None, *,
                 lambdas: Sequence[float] = LAMBDAS, w_bits: int = 4, a_bits: int = 4, w_quant: str = "lsq",
                 w_options: dict | None = None, clip_init: float = 6.0, clip_step: str = "paper") -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)
        if not lambdas:
            raise ConfigError("a BASQ block needs at least one L2-decay candidate (lambdas)")
        self.lambdas = tuple(float(v) for v in lambdas)
        self.weight_quantizer = build_quantizer(w_quant, w_bits, "weight", w_options, out_channels)
        self.clips = nn.ModuleList(ClipQuantizer(a_bits, alpha_init=clip_init, step=clip_step)
                                   for _ in self.lambdas)
        self.selector = BranchSelector(len(self.lambdas))
        self.bit_frozen = False

    @property
    def act_quantizer(self) -> ClipQuantizer:
        """The selected branch's clip quantizer."""
        return self.clips[self.selector.index]

    @property
    def w_bits(self) -> int:
        return self.weight_quantizer.bits

    @w_bits.setter
    def w_bits(self, value: int) -> None:
        self.weight_quantizer.bits = value

    @property
    def a_bits(self) -> int:
        return self.clips[0].bits

    @a_bits.setter
    def a_bits(self, value: int) -> None:
        for clip in self.clips:
            clip.bits = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        per_sample = self.selector.per_sample
        if per_sample is None:
            x = self.clips[self.selector.index](x)
        else:  # each sample through its own branch's clip (the branches differ only in the clip value)
            alpha = torch.stack([c.alpha for c in self.clips])[per_sample].view(-1, 1, 1, 1)
            x = self.clips[0].quantize_with(x, alpha)
        return self._conv_forward(x, self.weight_quantizer(self.weight), self.bias)

    @classmethod
    def from_float(cls, module: nn.Conv2d, **options: Any) -> BranchClipConv2d:
        new = layer_like(cls, module, **options)
        copy_float_params(module, new)
        return new

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, lambdas={list(self.lambdas)}"


class BranchBatchNorm2d(nn.Module):
    """One copy of a BatchNorm per branch (each starts as the float BN); the block's selector picks."""

    def __init__(self, bn: nn.BatchNorm2d, selector: BranchSelector) -> None:
        super().__init__()
        self.bns = nn.ModuleList(copy.deepcopy(bn) for _ in range(selector.n))
        self.selector = selector

    @property
    def selected(self) -> nn.BatchNorm2d:
        return self.bns[self.selector.index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        per_sample = self.selector.per_sample
        if per_sample is None:
            return self.bns[self.selector.index](x)
        if self.training:
            raise ConfigError("per-sample branch selection evaluates candidates: it needs eval mode (running "
                              "statistics)")
        # each sample normalised with its own branch's running statistics and affine: x * scale + shift
        scale = torch.stack([b.weight / torch.sqrt(b.running_var + b.eps) for b in self.bns])
        mean = torch.stack([b.running_mean for b in self.bns])
        shift = torch.stack([b.bias for b in self.bns]) - mean * scale
        return torch.addcmul(shift[per_sample][:, :, None, None], x, scale[per_sample][:, :, None, None])


def _is_branched(conv: nn.Conv2d, clip_layers: str) -> bool:
    if clip_layers == "none":
        return False
    if clip_layers == "all":
        return True
    if clip_layers == "depthwise":
        return conv.groups > 1 and conv.groups == conv.in_channels
    return max(conv.kernel_size) > 1  # spatial


def _check_options(opts: dict) -> None:
    for key, valid in (("clip_layers", CLIP_LAYERS), ("clip_step", CLIP_STEPS)):
        if opts[key] not in valid:
            raise ConfigError(f"basq option {key} must be one of {list(valid)}, got {opts[key]!r}")
    lambdas = opts["lambdas"]
    if not lambdas or any(float(v) < 0 for v in lambdas):
        raise ConfigError(f"basq option lambdas must be a non-empty list of L2 decays >= 0, got {lambdas}")


def attach_branch_batchnorms(model: nn.Module, spec: QuantSpec, ctx: KindContext) -> None:
    """Post-pass: make each searchable block's BatchNorms per-branch (module docstring), sharing the
    block's selector."""
    following = {layer: bn_name for bn_name, _, layer in following_batchnorms(ctx)}
    for name in ctx.names:
        conv = model.get_submodule(name)
        if not isinstance(conv, BranchClipConv2d):
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        declared = getattr(parent, "BRANCH_BATCHNORMS", {}).get(attr)
        if declared is not None:
            targets = [f"{parent_name}.{bn}" if parent_name else bn for bn in declared]
        else:
            targets = [following[name]] if name in following else []
        for bn_name in targets:
            bn = model.get_submodule(bn_name)
            if type(bn) is not nn.BatchNorm2d:
                raise ConfigError(f"basq: {bn_name} (a branch BatchNorm of {name}) is a {type(bn).__name__}, "
                                  "not an nn.BatchNorm2d")
            bn_parent, _, bn_attr = bn_name.rpartition(".")
            setattr(model.get_submodule(bn_parent) if bn_parent else model, bn_attr,
                    BranchBatchNorm2d(bn, conv.selector))


@register_layer_kind(KIND, layers=(BranchClipConv2d, QConv2d, QLinear), post=attach_branch_batchnorms,
                     options={"lambdas": list(LAMBDAS), "clip_layers": "spatial", "clip_init": 6.0,
                              "clip_step": "paper"})
def build_basq_layer(module: nn.Module, spec: QuantSpec, name: str, ctx: KindContext) -> nn.Module:
    """BASQ: a branch-wise clip-quantized conv per searchable block, fixed LSQ layers elsewhere."""
    opts = ctx.options
    _check_options(opts)
    if isinstance(module, nn.Conv2d) and _is_branched(module, opts["clip_layers"]):
        return BranchClipConv2d.from_float(
            module, lambdas=opts["lambdas"], w_bits=spec.w_bits, a_bits=spec.a_bits, w_quant=spec.w_quant,
            w_options=dict(spec.w_options), clip_init=float(opts["clip_init"]), clip_step=opts["clip_step"])
    cls = QConv2d if isinstance(module, nn.Conv2d) else QLinear
    return cls.from_float(module, w_bits=spec.w_bits, a_bits=spec.a_bits, w_quant=spec.w_quant,
                          a_quant=spec.a_quant, w_options=dict(spec.w_options),
                          a_options=dict(spec.a_options))


# ------------------------------------------------------------------------------------ the selection vector
def searchable_blocks(model: nn.Module) -> list[tuple[str, BranchClipConv2d]]:
    """``(conv name, conv)`` of every searchable block, in module order (the selection vector's order)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, BranchClipConv2d)]


def search_space(model: nn.Module) -> tuple[int, ...]:
    """Number of branches of each searchable block."""
    return tuple(m.selector.n for _, m in searchable_blocks(model))


def current_selection(model: nn.Module) -> tuple[int, ...]:
    return tuple(m.selector.index for _, m in searchable_blocks(model))


def set_selection(model: nn.Module, selection: Sequence[int],
                  blocks: list[tuple[str, BranchClipConv2d]] | None = None) -> None:
    """Select branch ``selection[i]`` in block ``i`` (validated before anything changes). ``blocks``:
    ``searchable_blocks(model)`` when the caller has it (a search sets ~1000 selections per fold)."""
    blocks = searchable_blocks(model) if blocks is None else blocks
    if len(selection) != len(blocks):
        raise ConfigError(f"the selection has {len(selection)} entries, the model has {len(blocks)} "
                          "searchable blocks")
    for (name, m), j in zip(blocks, selection):
        if not 0 <= int(j) < m.selector.n:
            raise ConfigError(f"selection entry {j} for block {name}: it has {m.selector.n} branches")
    for (_, m), j in zip(blocks, selection):
        m.selector.select(j)


@contextmanager
def per_sample_selection(blocks: list[tuple[str, BranchClipConv2d]], candidates: Sequence[Sequence[int]],
                         repeat: int, device: torch.device | str) -> Iterator[None]:
    """Within the block, a batch of ``len(candidates) * repeat`` samples runs candidate ``c`` on samples
    ``c * repeat .. (c + 1) * repeat - 1`` (the same images repeated per candidate): one forward evaluates
    every candidate (eval mode)."""
    for b, (_, conv) in enumerate(blocks):
        index = torch.tensor([int(c[b]) for c in candidates], dtype=torch.long, device=device)
        conv.selector.per_sample = index.repeat_interleave(repeat)
    try:
        yield
    finally:
        for _, conv in blocks:
            conv.selector.per_sample = None


def sample_selection(space: Sequence[int], generator: torch.Generator) -> tuple[int, ...]:
    """Alg. 1 part 1, line 2: one branch per block, uniformly and independently."""
    return tuple(int(torch.randint(n, (1,), generator=generator)) for n in space)


def clip_values(model: nn.Module) -> dict[str, list[float]]:
    """``{block: [clip of branch j, ...]}`` (supplementary Fig. 1 / Fig. 2)."""
    return {n: [c.alpha.item() for c in m.clips] for n, m in searchable_blocks(model)}


def selected_clips(model: nn.Module) -> dict[str, float]:
    """The clip of the selected branch of each block."""
    return {n: m.act_quantizer.alpha.item() for n, m in searchable_blocks(model)}


def clip_parameters(model: nn.Module) -> list[list[nn.Parameter]]:
    """``[[clip of branch j in every block] for j]``: branch ``j``'s clips, decayed with ``lambda_j``."""
    blocks = [m for _, m in searchable_blocks(model)]
    if not blocks:
        return []
    lambdas = blocks[0].lambdas
    if any(m.lambdas != lambdas for m in blocks):
        raise ConfigError("basq: every searchable block must have the same lambda candidates")
    return [[m.clips[j].alpha for m in blocks] for j in range(len(lambdas))]


def clip_param_groups(model: nn.Module) -> list[dict]:
    """One optimizer param group per branch index ``j`` holding the clips of branch ``j`` of every block,
    with ``weight_decay = lambda_j`` (the L2 decay that makes branch ``j``'s clip, section 3 / Fig. 1)."""
    blocks = [m for _, m in searchable_blocks(model)]
    return [{"params": params, "weight_decay": blocks[0].lambdas[j], "name": f"clips_lambda{j}"}
            for j, params in enumerate(clip_parameters(model))]

"""Counting conventions: the papers count MACs and BOPs differently, so each has a name.

A :class:`Convention` says how a layer's MACs follow from its module and the shapes seen in the
forward pass, whether the first and last layers are inside the budget (the totals), and which
bits an excluded first/last layer is reported at. For every convention a layer's BOPs are
``macs * w_bits * a_bits`` and the average bits are ``sqrt(sum BOPs / sum MACs)`` over the
counted layers. A conv's MACs count every image of the call (a model may fold patches or windows
into the batch dimension). Activation x activation matmuls (attention) are outside every paper's
convention: ``Convention.matmuls`` says whether they are refused (``error``, every built-in
convention), counted or listed outside the totals; their MACs are exact under every convention.

==========  =========================================================================  =========
name        MACs per layer                                                              budget
==========  =========================================================================  =========
exact       (C_in / groups) * C_out * kh * kw * H_out * W_out, floor output sizes      all layers
edmips      (C_in / groups) * C_out * kh * kw * H_in * W_in / (s_h * s_w)   ("sp")     first, last out
limpq       like exact, but H_out = (H + 2p - d(k-1) - 1) / s + 1 without floor          first, last out
            (fractional for stride 2); first conv and fc reported at W8A8               (W8A8)
bpnas       exact MACs; BOPs ~ FLOPs * b_w * b_a; first conv fixed at 8 bits            first, last out
basq        exact MACs of the quantized layers ("binary BitOPs") times b_w * b_a        first, last out
==========  =========================================================================  =========

Sources (../shared/reference/README.md and ../shared/papers):
- edmips: eq. (12) of the paper, c(f) = E[b_f] E[b_a] |f| w_x h_x / s^2, and the official code's
  ``size_product`` = C_in*C_out*k^2/stride^2 * H_in*W_in of the conv input; "average bits" =
  sqrt(sum sp*a*w / sum sp) over the quantized layers.
- limpq: the official MAC hook divides without flooring; MB are 2^20 bytes; size budget
  (first conv + fc weights) * 8 + sum b_w * numel.
- bpnas: supplementary Sec. 1 ("BOPs ~ FLOPs x b x a", average bits (BOPs/FLOPs)^(1/2), budget
  B_max^2 * FLOPs); Table 1 quantizes the first conv to 8 bits and its B_max budgets hold only
  with that layer outside the sum (its B_max=3 policy averages 2.961 bits without it, 3.061 with it).
- basq: supplementary Sec. 6 ("we multiply the BitOPs from the network with binary precision by
  2^2" for 2 bits); the first conv and classifier stay full precision, so the binary BitOPs are
  the MACs of the quantized layers. On ResNet-18 with BASQ's parameter-free shortcuts this gives
  6.705 / 15.087 / 26.820 G for 2/3/4 bits, printed in Table 5 (truncated) as 6.70G/15.08G/26.82G.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from core.errors import ConfigError

Shape = tuple[int, ...]
#: macs_fn(module, input_shape, output_shape) -> MACs of one call at batch size 1.
MacsFn = Callable[[nn.Module, Shape, Shape], float]


def _numel(shape: Shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _linear_macs(module: nn.Linear, in_shape: Shape) -> int:
    """in_features * out_features per input row (token), rows = input numel / in_features."""
    rows = _numel(in_shape) // module.in_features
    return module.in_features * module.out_features * rows


def _conv_kernel_macs(module: nn.Conv2d, out_shape: Shape) -> int:
    """MACs per output position, (C_in / groups) * C_out * kh * kw, times the images in the call.

    The model's input has batch size 1, but a model may fold other axes into the batch of a conv
    (TNT runs its pixel embedding on every patch as one batch), so the leading dims count.
    """
    kh, kw = module.kernel_size
    return (module.in_channels // module.groups) * module.out_channels * kh * kw * _numel(out_shape[:-3])


def floor_macs(module: nn.Module, in_shape: Shape, out_shape: Shape) -> float:
    """Exact MACs from the real output size (what the forward pass computed)."""
    if isinstance(module, nn.Linear):
        return _linear_macs(module, in_shape)
    h_out, w_out = out_shape[-2:]
    return _conv_kernel_macs(module, out_shape) * h_out * w_out


def input_over_stride_macs(module: nn.Module, in_shape: Shape, out_shape: Shape) -> float:
    """EdMIPS's size product: kernel MACs * H_in * W_in / (s_h * s_w)."""
    if isinstance(module, nn.Linear):
        return _linear_macs(module, in_shape)
    h_in, w_in = in_shape[-2:]
    sh, sw = module.stride
    return _conv_kernel_macs(module, out_shape) * h_in * w_in / (sh * sw)


def _true_division_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> float:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) / stride + 1


def true_division_macs(module: nn.Module, in_shape: Shape, out_shape: Shape) -> float:
    """LIMPQ's MACs: output size by true division, ``(H + 2p - d(k-1) - 1) / s + 1`` (no floor)."""
    if isinstance(module, nn.Linear):
        return _linear_macs(module, in_shape)
    h_in, w_in = in_shape[-2:]
    if isinstance(module.padding, str):  # "valid" = no padding; "same" (stride 1 only) keeps the size
        if module.padding == "same":
            return _conv_kernel_macs(module, out_shape) * h_in * w_in
        ph = pw = 0
    else:
        ph, pw = module.padding
    (kh, kw), (sh, sw), (dh, dw) = module.kernel_size, module.stride, module.dilation
    h = _true_division_size(h_in, kh, sh, ph, dh)
    w = _true_division_size(w_in, kw, sw, pw, dw)
    return _conv_kernel_macs(module, out_shape) * h * w


@dataclass(frozen=True)
class Convention:
    """How one paper counts.

    Attributes:
        name: registry key.
        description: one line for ``mpq bops --help`` and reports.
        macs: MAC function of one layer call (see :data:`MacsFn`).
        include_first: the first executed conv/linear is inside the totals by default.
        include_last: the last executed conv/linear is inside the totals by default.
        first_bits: bits an *excluded* first layer is reported at (None: policy/layer/default).
        last_bits: the same for an excluded last layer.
        unit: what the BOPs column is called in this paper.
        matmuls: what to do with activation x activation matmuls (attention's ``q @ k^T``,
            ``attn @ v``, SDPA), which no layer's weight carries: ``error`` (refuse, naming them),
            ``count`` (rows inside the totals) or ``exclude`` (rows outside the totals); see
            :data:`MATMUL_RULES`.
    """

    name: str
    description: str
    macs: MacsFn
    include_first: bool = True
    include_last: bool = True
    first_bits: tuple[int, int] | None = None
    last_bits: tuple[int, int] | None = None
    unit: str = "BOPs"
    matmuls: str = "error"

    def __post_init__(self) -> None:
        check_matmul_rule(self.matmuls)


#: Rules for activation x activation matmuls (see ``Convention.matmuls`` and ``core.bops.audit``).
MATMUL_RULES = ("error", "count", "exclude")


def check_matmul_rule(rule: str) -> str:
    if rule not in MATMUL_RULES:
        raise ConfigError(f"unknown matmul rule {rule!r}; use one of {MATMUL_RULES}")
    return rule


#: name -> Convention. Register new ones with :func:`register_convention`; the test-suite checks
#: every registered convention on a small model for free.
CONVENTIONS: dict[str, Convention] = {}


def register_convention(convention: Convention) -> Convention:
    if convention.name in CONVENTIONS and CONVENTIONS[convention.name] != convention:
        raise ConfigError(f"BOPs convention {convention.name!r} is already registered")
    CONVENTIONS[convention.name] = convention
    return convention


def get_convention(name: str | Convention) -> Convention:
    if isinstance(name, Convention):
        return name
    try:
        return CONVENTIONS[name]
    except KeyError:
        raise ConfigError(f"unknown BOPs convention {name!r}; choose one of {sorted(CONVENTIONS)}") from None


register_convention(Convention(
    "exact", "floor output sizes, every conv/linear layer counted", floor_macs))
register_convention(Convention(
    "edmips", "EdMIPS: sp = Cin*Cout*k^2*H_in*W_in/s^2, quantized layers only (first conv, fc out)",
    input_over_stride_macs, include_first=False, include_last=False))
register_convention(Convention(
    "limpq", "LIMPQ: true-division output sizes; first conv and fc outside the budget at W8A8",
    true_division_macs, include_first=False, include_last=False, first_bits=(8, 8), last_bits=(8, 8),
    unit="BitOPs"))
register_convention(Convention(
    "bpnas", "BP-NAS: BOPs = MACs*b_w*b_a, avg bits sqrt(BOPs/MACs); first conv fixed W8A8 outside "
    "the budget, fc out", floor_macs, include_first=False, include_last=False, first_bits=(8, 8)))
register_convention(Convention(
    "basq", "BASQ: binary BitOPs (MACs of quantized layers) times b_w*b_a; first conv, fc full precision",
    floor_macs, include_first=False, include_last=False, unit="BitOPs"))

"""Per-layer params / MACs / BOPs of a model, found by forward hooks on one real forward pass.

Counted layers are the weight layers: ``nn.Conv2d`` and ``nn.Linear`` (and their subclasses, the
quantized and searchable layers of ``core.nn``). BatchNorm, pooling, activations, element-wise
additions and parameter-free matrix products are not MACs of a weight layer and are not counted.
Layer kinds the counter does not understand (Conv1d/Conv3d, transposed convs, Bilinear, RNNs,
nn.MultiheadAttention's packed projections) raise ``ConfigError`` instead of counting 0.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from core.bops.conventions import Convention, get_convention
from core.bops.trace import trace_shapes
from core.errors import ConfigError
from core.policy import BitPolicy, is_mixed_layer, is_quantized_layer

MB = 2 ** 20  #: bytes in one MB (all papers here use 2^20).
FULL_PRECISION = 32

_UNSUPPORTED: tuple[type[nn.Module], ...] = (
    nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
    nn.Bilinear, nn.MultiheadAttention, nn.RNNBase, nn.RNNCellBase,
)


@dataclass
class LayerRow:
    """One Conv2d/Linear layer.

    ``weight_numel`` counts the weight tensor only (what bit-widths apply to and what model sizes
    use); ``params`` adds the bias (torchvision-style parameter counts). ``macs`` follows the
    convention and sums over calls (a layer run twice counts twice). ``counted``: inside the
    totals under the convention; ``quantized``: weight or activation bits below 32.
    """

    name: str
    kind: str
    type: str
    weight_numel: int
    params: int
    macs: float
    in_shape: list[int] | None
    out_shape: list[int] | None
    w_bits: float
    a_bits: float
    bops: float
    quantized: bool
    counted: bool
    role: str = ""
    calls: int = 0
    groups: int = 1


@dataclass
class BopsReport:
    """Rows in module order plus the convention and input size they were counted with."""

    rows: list[LayerRow]
    convention: str
    input_size: tuple[int, ...]
    unit: str = "BOPs"
    model: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def counted_rows(self) -> list[LayerRow]:
        return [r for r in self.rows if r.counted]

    @property
    def params(self) -> int:
        """Weights + biases of every conv/linear layer (counted or not)."""
        return sum(r.params for r in self.rows)

    @property
    def weights(self) -> int:
        """Weight elements of every conv/linear layer."""
        return sum(r.weight_numel for r in self.rows)

    @property
    def macs(self) -> float:
        """MACs of the counted layers (the budget's FLOPs)."""
        return sum(r.macs for r in self.counted_rows)

    @property
    def macs_all(self) -> float:
        """MACs of every layer, counted or not."""
        return sum(r.macs for r in self.rows)

    @property
    def bops(self) -> float:
        """sum macs * w_bits * a_bits over the counted layers."""
        return sum(r.bops for r in self.counted_rows)

    @property
    def avg_bits(self) -> float:
        """sqrt(BOPs / MACs) over the counted layers (EdMIPS, BP-NAS "average bits")."""
        macs = self.macs
        return math.sqrt(self.bops / macs) if macs else float("nan")

    def size_mb(self, w_bits: float | None = None, include_bias: bool = False) -> float:
        """Weight storage in MB (2^20 bytes) of every conv/linear layer.

        ``w_bits=None`` uses each row's weight bits (an excluded first/last layer at its reported
        bits, e.g. 8 under ``limpq``); a number uses that width everywhere (32: the float size).
        ``include_bias`` adds biases at 32 bits.
        """
        bits = sum(r.weight_numel * (r.w_bits if w_bits is None else w_bits) for r in self.rows)
        if include_bias:
            bits += sum((r.params - r.weight_numel) * FULL_PRECISION for r in self.rows)
        return bits / 8 / MB

    @property
    def compression_ratio(self) -> float:
        """Float weight size over the size at the rows' bits."""
        return self.size_mb(FULL_PRECISION) / self.size_mb()

    @property
    def totals(self) -> dict[str, float]:
        return {"params": self.params, "weights": self.weights, "macs": self.macs,
                "macs_all": self.macs_all, "bops": self.bops, "avg_bits": self.avg_bits,
                "size_mb": self.size_mb(), "fp_size_mb": self.size_mb(FULL_PRECISION),
                "compression_ratio": self.compression_ratio}

    def to_dict(self) -> dict[str, Any]:
        totals = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in self.totals.items()}
        return {"model": self.model, "convention": self.convention, "unit": self.unit,
                "input_size": list(self.input_size), "rows": [asdict(r) for r in self.rows],
                "totals": totals, "meta": dict(self.meta)}

    def table(self) -> str:
        """Plain-text table: one line per layer, then the totals. ``*`` marks layers in the budget."""
        width = max([len("layer")] + [len(r.name) for r in self.rows])

        def fmt_bits(b: float) -> str:
            return f"{b:g}" if float(b).is_integer() else f"{b:.2f}"

        def fmt_num(x: float) -> str:
            return f"{x:,.0f}" if float(x).is_integer() else f"{x:,.1f}"

        head = (f"  {'layer':<{width}}  {'type':<12} {'out shape':<16} {'params':>11} {'MACs':>17} "
                f"{'W':>5} {'A':>5} {self.unit:>20}")
        lines = [head, "-" * len(head)]
        for r in self.rows:
            mark = "*" if r.counted else " "
            shape = "x".join(str(s) for s in r.out_shape[1:]) if r.out_shape else "(not run)"
            lines.append(f"{mark} {r.name:<{width}}  {r.type:<12} {shape:<16} {r.params:>11,} "
                         f"{fmt_num(r.macs):>17} {fmt_bits(r.w_bits):>5} {fmt_bits(r.a_bits):>5} "
                         f"{fmt_num(r.bops):>20}")
        t = self.totals
        lines += ["-" * len(head),
                  f"convention {self.convention!r} at input {'x'.join(map(str, self.input_size))}; "
                  f"* = inside the totals ({len(self.counted_rows)} of {len(self.rows)} layers)",
                  f"params (weights + biases, all layers): {t['params']:,}",
                  f"MACs (counted): {fmt_num(t['macs'])}   MACs (all layers): {fmt_num(t['macs_all'])}",
                  f"{self.unit} (counted): {fmt_num(t['bops'])}   average bits: {t['avg_bits']:.4f}",
                  f"weight size: {t['size_mb']:.4f} MB   float: {t['fp_size_mb']:.4f} MB   "
                  f"compression: {t['compression_ratio']:.4f}x  (MB = 2^20 bytes)"]
        return "\n".join(lines)


def _check_supported(model: nn.Module) -> list[tuple[str, nn.Module]]:
    layers = []
    for name, m in model.named_modules():
        if isinstance(m, _UNSUPPORTED) or (isinstance(m, nn.modules.conv._ConvNd)
                                           and not isinstance(m, nn.Conv2d)):
            raise ConfigError(
                f"layer {name!r} is a {type(m).__name__}, which the BOPs counter does not understand "
                "(it counts Conv2d and Linear only); counting it as 0 would be wrong")
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            layers.append((name, m))
    return layers


def _layer_bits(name: str, module: nn.Module, policy: BitPolicy | None,
                default_bits: tuple[float, float]) -> tuple[float, float]:
    if policy is not None and name in policy:
        return policy[name]
    if is_mixed_layer(module):  # expected bits (EdMIPS eq. 13) of a searchable layer
        return float(module.expected_w_bits().detach()), float(module.expected_a_bits().detach())
    if is_quantized_layer(module):
        return module.w_bits, module.a_bits
    return default_bits


def count(model: nn.Module, input_size: tuple[int, ...] = (3, 224, 224), policy: BitPolicy | None = None,
          convention: str | Convention = "exact", include_first: bool | None = None,
          include_last: bool | None = None, default_bits: tuple[float, float] = (32, 32),
          trace: str = "auto") -> BopsReport:
    """Count params, MACs and BOPs of ``model`` for one input of shape ``input_size`` (no batch dim).

    Bits of a layer: the convention's fixed bits for an excluded first/last layer (``limpq``: W8A8),
    else the ``policy`` entry, else the layer's ``.w_bits``/``.a_bits`` (expected bits E[b] for a
    searchable layer), else ``default_bits``. ``include_first``/``include_last`` override whether
    the first/last executed layer is inside the totals (default: the convention's choice).
    Shapes come from one forward pass at batch 1 (``trace``: ``meta`` = data-free, ``real``, or
    ``auto`` = meta with a fallback to real; see ``core.bops.trace``); the model is left as it was
    found.
    """
    conv = get_convention(convention)
    input_size = tuple(int(s) for s in input_size)
    layers = _check_supported(model)
    if not layers:
        raise ConfigError(f"{type(model).__name__} has no Conv2d/Linear layer to count")
    if policy is not None:
        policy.validate(model, require_all=False)
    shape_only = [m for _, m in layers if is_quantized_layer(m)]
    calls, order, traced = trace_shapes(model, layers, input_size, trace, shape_only=shape_only)
    first = order[0] if order else None
    last = order[-1] if order else None
    inc_first = conv.include_first if include_first is None else include_first
    inc_last = conv.include_last if include_last is None else include_last

    rows = []
    for name, module in layers:
        role = "first" if name == first else "last" if name == last else ""
        counted = name in calls and not (role == "first" and not inc_first) \
            and not (role == "last" and not inc_last)
        fixed = conv.first_bits if role == "first" else conv.last_bits if role == "last" else None
        if role and not counted and fixed is not None:
            w_bits, a_bits = fixed
        else:
            w_bits, a_bits = _layer_bits(name, module, policy, default_bits)
        shapes = calls.get(name, [])
        macs = sum(conv.macs(module, i, o) for i, o in shapes)
        weight_numel = module.weight.numel()
        bias = module.bias.numel() if module.bias is not None else 0
        is_conv = isinstance(module, nn.Conv2d)
        rows.append(LayerRow(
            name=name, kind="conv2d" if is_conv else "linear", type=type(module).__name__,
            weight_numel=weight_numel, params=weight_numel + bias, macs=macs,
            in_shape=list(shapes[0][0]) if shapes else None, out_shape=list(shapes[0][1]) if shapes else None,
            w_bits=w_bits, a_bits=a_bits, bops=macs * w_bits * a_bits,
            quantized=w_bits < FULL_PRECISION or a_bits < FULL_PRECISION, counted=counted, role=role,
            calls=len(shapes), groups=module.groups if is_conv else 1))
    meta = {"include_first": inc_first, "include_last": inc_last, "trace": traced}
    return BopsReport(rows=rows, convention=conv.name, input_size=input_size, unit=conv.unit,
                      model=type(model).__name__, meta=meta)


def annotate_macs(model: nn.Module, input_size: tuple[int, ...] = (3, 224, 224),
                  convention: str | Convention = "edmips") -> dict[str, float]:
    """Set ``.macs`` (under ``convention``) on every quantized/searchable layer; return all layers' MACs.

    The searchable layers' ``.macs`` feed :func:`expected_bops` (with ``edmips``: |f| w_x h_x / s^2
    of EdMIPS eq. 12).
    """
    report = count(model, input_size, convention=convention)
    modules = dict(model.named_modules())
    for row in report.rows:
        if is_quantized_layer(modules[row.name]):
            modules[row.name].macs = float(row.macs)
    return {row.name: row.macs for row in report.rows}


def expected_bops(model: nn.Module, include_fixed: bool = False) -> torch.Tensor:
    """Differentiable sum_l macs_l * E[b_w,l] * E[b_a,l] over searchable layers (EdMIPS eq. 12).

    E[b] = sum_i pi_i b_i from each layer's architecture logits (eq. 13). ``include_fixed`` adds
    the fixed quantized layers' constant ``macs * w_bits * a_bits``. Needs :func:`annotate_macs`.
    """
    total: torch.Tensor | None = None
    constant = 0.0
    for name, m in model.named_modules():
        mixed = is_mixed_layer(m)
        if not mixed and not (include_fixed and is_quantized_layer(m)):
            continue
        macs = getattr(m, "macs", None)
        if not isinstance(macs, (int, float)) or isinstance(macs, bool) or macs <= 0:
            raise ConfigError(f"layer {name!r} has no MACs (.macs={macs!r}); call "
                              "core.bops.annotate_macs(model, input_size, convention) first")
        if mixed:
            term = macs * m.expected_w_bits() * m.expected_a_bits()
            total = term if total is None else total + term
        else:
            constant += macs * m.w_bits * m.a_bits
    if total is None:
        raise ConfigError(f"{type(model).__name__} has no searchable (mixed) layer; expected BOPs need pi")
    return total + constant

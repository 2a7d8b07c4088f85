"""Per-layer params / MACs / BOPs of a model, from one audited forward pass (``core.bops.trace``).

Counted layers are the weight layers: ``nn.Conv2d`` and ``nn.Linear`` (and their subclasses, the
quantized and searchable layers of ``core.nn``), each call counted, including calls of
``F.linear``/``F.conv2d`` with a layer's own weight made outside its module. BatchNorm, pooling,
activations and element-wise additions are not MACs of a weight layer and are not counted.
Activation x activation matmuls (attention) are rows of their own under the convention's matmul
rule (``count``/``exclude``) or refused (``error``, every built-in convention's default).
Nothing is counted as 0 silently: layer kinds the counter does not understand (Conv1d/Conv3d,
transposed convs, Bilinear, RNNs, nn.MultiheadAttention's packed projections), a layer that never
runs, and multiply-accumulate work the dispatcher-level audit (``core.bops.audit``) cannot
attribute to a counted row raise ``CountingError`` naming the modules and ops.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from core.bops.audit import OpRecord
from core.bops.conventions import Convention, check_matmul_rule, floor_macs, get_convention
from core.bops.trace import Trace, trace_model
from core.errors import ConfigError, CountingError, PolicyError
from core.policy import BitPolicy, is_mixed_layer, is_quantized_layer, policy_layer_names

MB = 2 ** 20  #: bytes in one MB (all papers here use 2^20).
FULL_PRECISION = 32

_UNSUPPORTED: tuple[type[nn.Module], ...] = (
    nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
    nn.Bilinear, nn.MultiheadAttention, nn.RNNBase, nn.RNNCellBase,
)


@dataclass
class LayerRow:
    """One Conv2d/Linear layer (``kind`` conv2d/linear) or one module's matmuls (``kind`` matmul).

    ``weight_numel`` counts the weight tensor only (what bit-widths apply to and what model sizes
    use); ``params`` adds the bias (torchvision-style parameter counts). ``macs`` follows the
    convention and sums over calls (a layer run twice counts twice). ``counted``: inside the
    totals under the convention; ``quantized``: weight or activation bits below 32. ``bits_from``:
    where the bits come from: ``policy``, ``layer`` (a quantized layer's own), ``frozen`` (a layer
    held at its bits, e.g. an 8-bit first conv), ``expected`` (E[b] of a searchable layer),
    ``default`` or ``pinned`` (fixed by the convention for an excluded first/last layer). A matmul
    row is named after the module running it; ``type`` is the aten op; it has no weight and
    ``default`` bits.
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
    bits_from: str = ""


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
        """Plain-text table: one line per row, then the totals and a legend.

        ``*`` marks rows inside the totals; the ``bits from`` column says where each row's bits
        come from, ``pinned`` meaning the convention fixes them (e.g. ``limpq``'s W8A8 first conv).
        """
        width = max([len("layer")] + [len(r.name) for r in self.rows])

        def fmt_bits(b: float) -> str:
            return f"{b:g}" if float(b).is_integer() else f"{b:.2f}"

        def fmt_num(x: float) -> str:
            return f"{x:,.0f}" if float(x).is_integer() else f"{x:,.1f}"

        head = (f"  {'layer':<{width}}  {'type':<12} {'out shape':<16} {'params':>11} {'MACs':>17} "
                f"{'W':>5} {'A':>5} {'bits from':<9} {self.unit:>20}")
        lines = [head, "-" * len(head)]
        for r in self.rows:
            mark = "*" if r.counted else " "
            shape = "x".join(str(s) for s in r.out_shape[1:]) if r.out_shape else "(not run)"
            lines.append(f"{mark} {r.name:<{width}}  {r.type:<12} {shape:<16} {r.params:>11,} "
                         f"{fmt_num(r.macs):>17} {fmt_bits(r.w_bits):>5} {fmt_bits(r.a_bits):>5} "
                         f"{r.bits_from:<9} {fmt_num(r.bops):>20}")
        t = self.totals
        lines += ["-" * len(head),
                  f"convention {self.convention!r} at input {'x'.join(map(str, self.input_size))}; "
                  f"* = inside the totals ({len(self.counted_rows)} of {len(self.rows)} rows)"]
        pinned = [r for r in self.rows if r.bits_from == "pinned"]
        if pinned:
            lines.append("pinned = bits fixed by the convention for a layer it leaves outside the totals: "
                         + ", ".join(f"{r.name} ({r.role}) W{fmt_bits(r.w_bits)}A{fmt_bits(r.a_bits)}"
                                     for r in pinned))
        if any(r.kind == "matmul" for r in self.rows):
            lines.append(f"matmul rows = activation x activation products (no weight) of the named module, "
                         f"exact MACs, default bits; matmuls={self.meta.get('matmuls')!r}")
        lines += [f"params (weights + biases, all conv/linear layers): {t['params']:,}"
                  + (f"   outside them (norms, embeddings, ...): {self.meta['params_outside_layers']:,}"
                     if self.meta.get("params_outside_layers") else ""),
                  f"MACs (counted): {fmt_num(t['macs'])}   MACs (all rows): {fmt_num(t['macs_all'])}",
                  f"{self.unit} (counted): {fmt_num(t['bops'])}   average bits: {t['avg_bits']:.4f}",
                  f"weight size: {t['size_mb']:.4f} MB   float: {t['fp_size_mb']:.4f} MB   "
                  f"compression: {t['compression_ratio']:.4f}x  (MB = 2^20 bytes)"]
        return "\n".join(lines)


def _check_supported(model: nn.Module) -> list[tuple[str, nn.Module]]:
    layers = []
    for name, m in model.named_modules():
        if isinstance(m, _UNSUPPORTED) or (isinstance(m, nn.modules.conv._ConvNd)
                                           and not isinstance(m, nn.Conv2d)):
            raise CountingError(
                f"layer {name!r} is a {type(m).__name__}, which the BOPs counter does not understand "
                "(it counts Conv2d and Linear only); counting it as 0 would be wrong")
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            layers.append((name, m))
    return layers


def _layer_bits(name: str, module: nn.Module, policy: BitPolicy | None,
                default_bits: tuple[float, float]) -> tuple[float, float, str]:
    """``(w_bits, a_bits, source)``; source: policy, expected, frozen, layer or default."""
    if policy is not None and name in policy:
        return (*policy[name], "policy")
    if is_mixed_layer(module):  # expected bits (EdMIPS eq. 13) of a searchable layer
        return float(module.expected_w_bits().detach()), float(module.expected_a_bits().detach()), "expected"
    if is_quantized_layer(module):
        return module.w_bits, module.a_bits, "frozen" if getattr(module, "bit_frozen", False) else "layer"
    return (*default_bits, "default")


def _shown(items: list[str], limit: int = 6, sep: str = "; ") -> str:
    return sep.join(items[:limit]) + (f"{sep}... ({len(items) - limit} more)" if len(items) > limit else "")


def _mmacs(macs: float) -> str:
    return f"{macs / 1e6:,.2f} M MACs"


def _by_module(records: list[OpRecord]) -> str:
    """``'mod' (Type): aten.mm x1, aten.convolution x1, 7.68 M MACs, on mod.weight; ...``"""
    grouped: dict[str, list[OpRecord]] = {}
    for r in records:
        grouped.setdefault(r.module, []).append(r)
    items = []
    for module, rs in grouped.items():
        ops = ", ".join(f"aten.{r.op} x{r.calls}" for r in rs)
        sources = list(dict.fromkeys(n for r in rs for n in r.sources))
        items.append(f"{module or '(top-level forward)'!r} ({rs[0].module_type}): {ops}, "
                     f"{_mmacs(sum(r.macs for r in rs))}" + (f", on {', '.join(sources)}" if sources else ""))
    return _shown(items)


def _audit_problems(trace: Trace, layers: list[tuple[str, nn.Module]], exact_checked: set[str],
                    matmuls: str, input_size: tuple[int, ...]) -> list[str]:
    """What the dispatcher-level audit found that the counted rows do not account for."""
    problems = []
    never = [n for n, _ in layers if n not in trace.calls]
    if never:
        problems.append(
            f"{len(never)} Conv2d/Linear layer(s) never ran in the forward pass at input "
            f"{'x'.join(map(str, input_size))}: {_shown(never)}. Their weights would enter the sizes "
            "but not the MACs; remove the unused layers from the model (e.g. an auxiliary head that "
            "runs only in training: torchvision's googlenet and inception_v3 take aux_logits=False) or "
            "count at an input size that runs them")
    wrong = []
    for name, module in layers:
        if name not in exact_checked or name not in trace.calls:
            continue
        expected = sum(floor_macs(module, i, o) for i, o in trace.calls[name])
        seen = trace.layer_macs.get(name, 0)
        if seen != expected:
            wrong.append(f"{name!r} ({type(module).__name__}): its forward ran {seen:,} MACs of "
                         f"conv/matmul ops, one conv/linear map of its shapes is {expected:,}")
    if wrong:
        problems.append("layer(s) whose forward does other work than one conv/linear map: "
                        + _shown(wrong) + "; the counter cannot count such a layer exactly")
    if trace.outside:
        problems.append(
            "weight-carrying work outside the counted Conv2d/Linear layers: " + _by_module(trace.outside)
            + ". The counter counts Conv2d/Linear modules and F.linear/F.conv2d calls with such a layer's "
            "own weight and geometry; a weight mixed or built at run time (e.g. timm's CondConv2d), a "
            "convolution outside a Conv2d module or a matmul with a parameter is not a layer it can count")
    if trace.matmuls and matmuls == "error":
        problems.append(
            "activation x activation matmuls (no weight; e.g. attention's q @ k^T and attn @ v): "
            + _by_module(trace.matmuls) + ". No paper convention here defines them: count them with "
            "matmuls='count' (mpq bops --matmuls count; rows inside the totals at the default bits) "
            "or list them outside the totals with matmuls='exclude'")
    return problems


def _check_policy_covers(policy: BitPolicy, model: nn.Module, rows: list[LayerRow], convention: str) -> None:
    """Every layer inside the totals that a policy can set must be in the policy."""
    coverable = set(policy_layer_names(model))
    missing = [r for r in rows if r.counted and r.kind != "matmul" and r.name in coverable
               and r.name not in policy]
    if not missing:
        return
    names = _shown([r.name for r in missing], limit=8, sep=", ")
    bits = sorted({f"W{r.w_bits:g}A{r.a_bits:g}" for r in missing})
    edges = {r.role for r in missing} <= {"first", "last"}
    hint = ("; or leave them outside the totals (a convention that excludes them, e.g. edmips, or "
            "include_first/include_last=False; mpq bops --exclude-first/--exclude-last)") if edges else ""
    raise PolicyError(
        f"the policy leaves out {len(missing)} layer(s) inside the {convention!r} totals of "
        f"{type(model).__name__}: {names}; they would be counted at {', '.join(bits)}. Give every "
        f"searchable layer its bits in the policy{hint}")


def _matmul_row(record: OpRecord, bits: tuple[float, float], counted: bool) -> LayerRow:
    w_bits, a_bits = bits
    return LayerRow(
        name=record.module or "(top-level forward)", kind="matmul", type=record.op, weight_numel=0,
        params=0, macs=record.macs, in_shape=record.in_shape, out_shape=record.out_shape, w_bits=w_bits,
        a_bits=a_bits, bops=record.macs * w_bits * a_bits,
        quantized=w_bits < FULL_PRECISION or a_bits < FULL_PRECISION, counted=counted,
        calls=record.calls, bits_from="default")


def count(model: nn.Module, input_size: tuple[int, ...] = (3, 224, 224), policy: BitPolicy | None = None,
          convention: str | Convention = "exact", include_first: bool | None = None,
          include_last: bool | None = None, default_bits: tuple[float, float] = (32, 32),
          trace: str = "auto", matmuls: str | None = None) -> BopsReport:
    """Count params, MACs and BOPs of ``model`` for one input of shape ``input_size`` (no batch dim).

    Bits of a layer: the convention's fixed bits for an excluded first/last layer (``limpq``: W8A8;
    ``bits_from="pinned"``), else the ``policy`` entry, else the layer's ``.w_bits``/``.a_bits``
    (expected bits E[b] for a searchable layer), else ``default_bits``. A policy must cover every
    layer inside the totals that it can set (``core.policy.policy_layer_names``), or
    ``PolicyError`` names the missing ones. ``include_first``/``include_last`` override whether the
    first/last executed layer is inside the totals (default: the convention's choice).
    Shapes come from one forward pass at batch 1 (``trace``: ``meta`` = data-free, ``real``, or
    ``auto`` = meta with a fallback to real; see ``core.bops.trace``), audited op by op
    (``core.bops.audit``): a layer that never ran, weight-carrying work outside the counted
    layers, or activation x activation matmuls under ``matmuls="error"`` raise ``CountingError``
    naming the modules and ops. ``matmuls`` (default: the convention's, ``error`` for all built-in
    conventions): ``count`` adds one row per module and matmul op inside the totals, ``exclude``
    lists the rows outside them; such rows have exact MACs under every convention and
    ``default_bits``. The model is left as it was found.
    """
    conv = get_convention(convention)
    matmuls = check_matmul_rule(conv.matmuls if matmuls is None else matmuls)
    input_size = tuple(int(s) for s in input_size)
    layers = _check_supported(model)
    if not layers:
        raise ConfigError(f"{type(model).__name__} has no Conv2d/Linear layer to count")
    if policy is not None:
        policy.validate(model, require_all=False)
    shape_only = [m for _, m in layers if is_quantized_layer(m)]
    traced = trace_model(model, layers, input_size, trace, shape_only=shape_only)
    # In a real pass core.nn's layers run their quantizers (a search layer may run one conv per
    # candidate); by contract they count as one map of their geometry, as in the meta pass.
    exact_checked = {n for n, m in layers if traced.mode == "meta" or not is_quantized_layer(m)}
    problems = _audit_problems(traced, layers, exact_checked, matmuls, input_size)
    if problems:
        raise CountingError(f"cannot count {type(model).__name__} exactly: " + " | ".join(problems))
    first = traced.order[0] if traced.order else None
    last = traced.order[-1] if traced.order else None
    inc_first = conv.include_first if include_first is None else include_first
    inc_last = conv.include_last if include_last is None else include_last

    rows = []
    for name, module in layers:
        role = "first" if name == first else "last" if name == last else ""
        counted = not (role == "first" and not inc_first) and not (role == "last" and not inc_last)
        fixed = conv.first_bits if role == "first" else conv.last_bits if role == "last" else None
        if role and not counted and fixed is not None:
            w_bits, a_bits, source = (*fixed, "pinned")
        else:
            w_bits, a_bits, source = _layer_bits(name, module, policy, default_bits)
        shapes = traced.calls[name]
        macs = sum(conv.macs(module, i, o) for i, o in shapes)
        weight_numel = module.weight.numel()
        bias = module.bias.numel() if module.bias is not None else 0
        is_conv = isinstance(module, nn.Conv2d)
        rows.append(LayerRow(
            name=name, kind="conv2d" if is_conv else "linear", type=type(module).__name__,
            weight_numel=weight_numel, params=weight_numel + bias, macs=macs,
            in_shape=list(shapes[0][0]), out_shape=list(shapes[0][1]),
            w_bits=w_bits, a_bits=a_bits, bops=macs * w_bits * a_bits,
            quantized=w_bits < FULL_PRECISION or a_bits < FULL_PRECISION, counted=counted, role=role,
            calls=len(shapes), groups=module.groups if is_conv else 1, bits_from=source))
    if matmuls != "error" and traced.matmuls:
        position = {n: i for i, (n, _) in enumerate(model.named_modules())}
        rows += [_matmul_row(r, default_bits, matmuls == "count") for r in traced.matmuls]
        rows.sort(key=lambda r: position.get(r.name, 0))
    if policy is not None:
        _check_policy_covers(policy, model, rows, conv.name)
    in_layers = {id(p) for _, m in layers for p in m.parameters()}  # with quantizer step sizes
    meta = {"include_first": inc_first, "include_last": inc_last, "trace": traced.mode,
            "matmuls": matmuls, "first_bits": conv.first_bits, "last_bits": conv.last_bits,
            "params_outside_layers": sum(p.numel() for p in model.parameters() if id(p) not in in_layers)}
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
        if row.kind != "matmul" and is_quantized_layer(modules[row.name]):
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

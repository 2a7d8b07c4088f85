"""``mpq bench perf``: the performance figures, each as a ratio to a baseline measured in the same run.

Every figure is the median of ``repeats`` timed repetitions (after one warm-up) and is reported with
its absolute value, its baseline's and the ratio. Groups:

- ``fakequant``: LSQ forward+backward (core's eager ``lsq_fake_quant`` and its ``torch.compile``d
  version) vs torch's native ``_fake_quantize_learnable_per_tensor_affine`` and vs ReLU, on a
  64x256x28x28 tensor; plus the largest gradient difference between LSQ's ``gradient="native"`` option
  (``lsq_fake_quant_native``) and the native op, and the share of elements where the paper's gradient
  (the default) differs from the native op's.
- ``bops``: ``core.bops.count`` on ResNet-50 vs one plain forward pass of the same model.
- ``counting``: ``core.bops.count`` on ResNet-50 (its op-by-op audit included) vs fvcore's
  ``FlopCountAnalysis`` and vs ``torch.utils.flop_counter.FlopCounterMode`` around a real and a
  meta forward; each ratio is the other tool's time over ``count``'s (above 1: ``count`` is
  faster), and the MACs of each tool minus ``count``'s are reported too (0: they agree). Without
  fvcore (``pip install -e .[bench]``) its rows say so and the others still run.
- ``data``: ImageNet-folder loading (core.data, fixture JPEGs written to a temp dir) vs decoding the
  same files with PIL alone.
- paper groups: every registered paper's ``perf`` mapping ``{group: fn(smoke: bool) -> list[dict]}``
  (:class:`core.paper.Paper`). Each dict has the JSON keys below; a group that cannot run, or a paper
  that failed to load, prints ``unavailable: <why>``.

- ``export``: ONNX QDQ export of a ResNet-18 at a mixed LSQ policy (first call and median) vs exporting it
  in float, and the packed file size / float32 against the physical limit (needs ``mpq[export]``).

``--json FILE`` writes a list of ``{name, value, unit, baseline, baseline_value, ratio}``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from benchmarks.discovery import load_perf_groups
from benchmarks.report import write_atomic
from core.errors import ConfigError
from core.timing import median_time

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Measurement:
    name: str
    value: float
    unit: str
    baseline: str | None = None
    baseline_value: float | None = None
    ratio: float | None = None
    group: str = ""


class Unavailable(Exception):
    """A group cannot run here; the message says why."""


def _vs(name: str, value: float, unit: str, baseline: str, baseline_value: float) -> Measurement:
    ratio = value / baseline_value if baseline_value else None
    return Measurement(name, value, unit, baseline, baseline_value, ratio)


# ----------------------------------------------------------------------------- fakequant
def group_fakequant(smoke: bool, repeats: int) -> list[Measurement]:
    from core.quant.functional import lsq_fake_quant, lsq_fake_quant_native

    shape = (2, 8, 8, 8) if smoke else (64, 256, 28, 28)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(shape, generator=gen)
    bits = 4
    qn, qp = 0, 2 ** bits - 1  # unsigned activations
    grad_scale = 1.0 / (qp * x0.numel()) ** 0.5
    step0 = torch.tensor(2 * x0.abs().mean().item() / qp ** 0.5)

    def run_lsq(fn: Callable) -> tuple[torch.Tensor, torch.Tensor]:
        x = x0.clone().requires_grad_(True)
        s = step0.clone().requires_grad_(True)
        fn(x, s, qn, qp, grad_scale).sum().backward()
        return x.grad, s.grad

    def native(x: torch.Tensor, s: torch.Tensor, qn_: int, qp_: int, g: float) -> torch.Tensor:
        zp = torch.zeros(1)
        return torch._fake_quantize_learnable_per_tensor_affine(x, s.reshape(1), zp, qn_, qp_, g)

    def relu() -> None:
        x = x0.clone().requires_grad_(True)
        torch.relu(x).sum().backward()

    t_relu = median_time(relu, repeats)
    t_native = median_time(lambda: run_lsq(native), repeats)
    t_eager = median_time(lambda: run_lsq(lsq_fake_quant), repeats)
    out = [Measurement("relu fwd+bwd", t_relu, "s"),
           _vs("native learnable fake-quant fwd+bwd", t_native, "s", "relu fwd+bwd", t_relu),
           _vs("lsq eager fwd+bwd", t_eager, "s", "native learnable fake-quant fwd+bwd", t_native),
           _vs("lsq eager fwd+bwd (vs relu)", t_eager, "s", "relu fwd+bwd", t_relu)]
    gx_l, gs_l = run_lsq(lsq_fake_quant_native)
    gx_n, gs_n = run_lsq(native)
    out.append(Measurement("lsq gradient=native vs native op: max |grad x| difference",
                           float((gx_l - gx_n).abs().max()), "abs"))
    out.append(Measurement("lsq gradient=native vs native op: grad step relative difference",
                           float((gs_l - gs_n).abs() / gs_n.abs().clamp_min(1e-12)), "rel"))
    gx_p, _ = run_lsq(lsq_fake_quant)
    out.append(Measurement("lsq gradient=paper vs native op: share of grad x that differs",
                           float((gx_p != gx_n).double().mean()), "fraction"))
    if smoke:
        out.append(Measurement("lsq compiled fwd+bwd: skipped in --smoke (compile takes 10 s to minutes)",
                               float("nan"), "s"))
        return out
    try:
        compiled = torch.compile(lsq_fake_quant)
        start = time.perf_counter()
        run_lsq(compiled)
        compile_s = time.perf_counter() - start
        t_comp = median_time(lambda: run_lsq(compiled), repeats)
        out.append(_vs("lsq compiled fwd+bwd", t_comp, "s", "native learnable fake-quant fwd+bwd", t_native))
        out.append(_vs("lsq compiled fwd+bwd (vs eager)", t_comp, "s", "lsq eager fwd+bwd", t_eager))
        out.append(Measurement("lsq first compiled call (compile time)", compile_s, "s"))
    except Exception as exc:  # noqa: BLE001 - no compiler here: say so, keep the other figures
        out.append(Measurement(f"lsq compiled: unavailable ({type(exc).__name__}: {str(exc)[:80]})",
                               float("nan"), "s"))
    return out


# ----------------------------------------------------------------------------- bops
def group_bops(smoke: bool, repeats: int) -> list[Measurement]:
    from core.bops import count
    from core.models import build_model

    name, size = ("resnet20", (3, 32, 32)) if smoke else ("resnet50", (3, 224, 224))
    model = build_model(name, num_classes=10 if smoke else 1000).eval()
    x = torch.randn(1, *size)

    def forward() -> None:
        with torch.no_grad():
            model(x)

    t_fwd = median_time(forward, repeats)
    t_count = median_time(lambda: count(model, size, convention="exact"), repeats)
    return [Measurement(f"{name} forward (batch 1)", t_fwd, "s"),
            _vs(f"core.bops.count {name}", t_count, "s", f"{name} forward (batch 1)", t_fwd)]


# ----------------------------------------------------------------------------- counting
def group_counting(smoke: bool, repeats: int) -> list[Measurement]:
    import copy
    import logging
    import warnings

    from torch.utils.flop_counter import FlopCounterMode

    from core.bops import count
    from core.models import build_model

    name, size = ("resnet20", (3, 32, 32)) if smoke else ("resnet50", (3, 224, 224))
    model = build_model(name, num_classes=10 if smoke else 1000).eval()
    meta_model = copy.deepcopy(model).to("meta")
    x = torch.randn(1, *size)
    macs = count(model, size).macs

    def flop_counter(net: torch.nn.Module, device: str) -> int:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(x.to(device))
        return counter.get_total_flops() // 2

    base = f"core.bops.count {name} (audited)"
    t_count = median_time(lambda: count(model, size), repeats)
    out = [Measurement(base, t_count, "s")]
    for label, net, device in (("real", model, "cpu"), ("meta", meta_model, "meta")):
        t = median_time(lambda net=net, device=device: flop_counter(net, device), repeats)
        out.append(_vs(f"FlopCounterMode {name} ({label} forward)", t, "s", base, t_count))
    out.append(Measurement("FlopCounterMode MACs (FLOPs / 2) minus count's",
                           flop_counter(model, "cpu") - macs, "MACs"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # fvcore scripts a helper with the deprecated torch.jit.script
            from fvcore.nn import FlopCountAnalysis
    except ImportError:
        out.append(Measurement("fvcore FlopCountAnalysis: skipped (fvcore not installed; "
                               "pip install -e .[bench])", float("nan"), "s"))
        return out

    def fvcore() -> dict[str, int]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # jit tracer warnings
            analysis = FlopCountAnalysis(model, x)
            analysis.unsupported_ops_warnings(False)
            analysis.uncalled_modules_warnings(False)
            return analysis.by_operator()

    logging.disable(logging.WARNING)  # fvcore logs every op it skips (batch norm, pooling, ...)
    try:
        t_fvcore = median_time(fvcore, repeats)
        by_op = fvcore()
    finally:
        logging.disable(logging.NOTSET)
    out.append(_vs(f"fvcore FlopCountAnalysis {name}", t_fvcore, "s", base, t_count))
    out.append(Measurement("fvcore conv + linear MACs minus count's",
                           by_op.get("conv", 0) + by_op.get("linear", 0) - macs, "MACs"))
    return out


# ----------------------------------------------------------------------------- data
def _fixtures():
    path = REPO_ROOT / "tests" / "fixtures.py"
    if not path.is_file():
        raise Unavailable(f"{path} not found (the data group needs a source checkout with tests/)")
    spec = importlib.util.spec_from_file_location("_mpq_test_fixtures", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def group_data(smoke: bool, repeats: int) -> list[Measurement]:
    from PIL import Image
    from torch.utils.data import DataLoader

    from core.data import build_dataset

    fixtures = _fixtures()
    classes, per_class = (2, 4) if smoke else (10, 20)
    with tempfile.TemporaryDirectory() as tmp:
        root = fixtures.write_imagenet(tmp, classes=classes, per_class=per_class, size=(320, 240))
        files = sorted((Path(root) / "train").rglob("*.JPEG"))
        dataset = build_dataset("imagenet", root, "train", image_size=224)

        def load() -> None:
            for _ in DataLoader(dataset, batch_size=16, num_workers=0):
                pass

        def decode() -> None:
            for f in files:
                with Image.open(f) as im:
                    im.convert("RGB").load()

        n = len(files)
        t_decode = median_time(decode, repeats)
        t_load = median_time(load, repeats)
    return [Measurement("PIL decode only (images/s)", n / t_decode, "img/s"),
            _vs("core.data imagenet train loader, 224 crops (images/s)", n / t_load, "img/s",
                "PIL decode only (images/s)", n / t_decode)]


# ----------------------------------------------------------------------------- export
def group_export(smoke: bool, repeats: int) -> list[Measurement]:
    """``core.export``: QDQ export time of a ResNet-18 at a mixed LSQ policy (first conv W8, fc W8A8) vs
    exporting the same model in float, and the packed file size vs float32 and its physical limit."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise Unavailable("onnx is not installed (pip install 'mpq[export]')") from None
    from core.export import export_onnx
    from core.export.report import size_report
    from core.models import build_model
    from core.nn import QuantSpec, quantize_model
    from core.policy import BitPolicy

    name, size, classes = ("resnet20", (3, 32, 32), 10) if smoke else ("resnet18", (3, 224, 224), 1000)
    model = build_model(name, num_classes=classes)
    names = quantize_model(model, QuantSpec(kind="fixed", first="w8", last="w8a8"))
    bits = [2, 3, 4, 5, 6, 8]
    BitPolicy({n: (bits[i % 6], bits[(i + 3) % 6]) for i, n in enumerate(names)}).apply(model)
    example = torch.randn(1, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(example)  # LSQ steps initialise from this batch
    model.eval()
    start = time.perf_counter()
    result = export_onnx(model, example)
    first = time.perf_counter() - start
    t_qdq = median_time(lambda: export_onnx(model, example), repeats, warmup=0)
    float_model = export_onnx(model, example, quantized=False).model
    t_float = median_time(lambda: export_onnx(model, example, quantized=False), repeats, warmup=0)
    sizes = size_report(model, result, float_model.ByteSize())
    threads = torch.get_num_threads()
    return [Measurement(f"export {name} QDQ, first call ({threads} threads)", first, "s"),
            _vs(f"export {name} QDQ", t_qdq, "s", f"export {name} float (same exporter)", t_float),
            Measurement("weights: physical limit sum b|W| / (32 sum|W|)", sizes.weight_limit, "ratio"),
            _vs("file: packed / float32", sizes.ratio, "ratio",
                "file limit (weights at b bits; scales, BN, graph as exported)", sizes.file_limit),
            Measurement(f"file sizes: packed {sizes.packed_bytes / 1e6:.2f} MB, 8-bit containers "
                        f"{sizes.int8_bytes / 1e6:.2f} MB, float32 {sizes.float_bytes / 1e6:.2f} MB",
                        sizes.packed_bytes / 1e6, "MB")]


BUILTIN: dict[str, Callable[[bool, int], list[Measurement]]] = {
    "fakequant": group_fakequant, "bops": group_bops, "counting": group_counting, "data": group_data,
    "export": group_export}


def paper_groups() -> dict[str, Callable[[bool, int], list[Measurement]] | str]:
    """The registered papers' perf groups (``Paper.perf``); a str value says why a paper has none."""
    return {name: fn if isinstance(fn, str) else _wrap_paper(fn) for name, fn in load_perf_groups().items()}


def _wrap_paper(fn: Callable) -> Callable[[bool, int], list[Measurement]]:
    def run(smoke: bool, repeats: int) -> list[Measurement]:
        out = []
        for item in fn(smoke):
            m = item if isinstance(item, Measurement) else Measurement(**{k: item.get(k) for k in (
                "name", "value", "unit", "baseline", "baseline_value", "ratio")})
            out.append(m)
        return out
    return run


def run_perf(only: str | None = None, smoke: bool = False, repeats: int | None = None,
             log: Callable[[str], None] = print) -> list[Measurement]:
    repeats = repeats or (1 if smoke else 5)
    groups: dict[str, Callable | str] = {**BUILTIN, **paper_groups()}
    if only is not None:
        if only not in groups:
            raise ConfigError(f"unknown perf group {only!r}; groups: {sorted(groups)}")
        groups = {only: groups[only]}
    results: list[Measurement] = []
    for name, fn in groups.items():
        if isinstance(fn, str):
            log(f"[{name}] {fn}")
            continue
        log(f"[{name}] running ({'smoke' if smoke else f'{repeats} repetitions'}) ...")
        try:
            ms = fn(smoke, repeats)
        except Unavailable as exc:
            log(f"[{name}] unavailable: {exc}")
            continue
        for m in ms:
            m.group = name
        results.extend(ms)
    return results


def render_table(results: list[Measurement]) -> str:
    def fmt(v: float | None, unit: str = "") -> str:
        if v is None:
            return "-"
        if v != v:  # NaN
            return "n/a"
        if unit == "s":
            return f"{v * 1e3:.3f} ms" if v < 1 else f"{v:.3f} s"
        return f"{v:.4g} {unit}".strip()

    head = ("group", "measurement", "value", "baseline", "ratio")
    rows = [(m.group, m.name, fmt(m.value, m.unit), f"{m.baseline} = {fmt(m.baseline_value, m.unit)}"
             if m.baseline else "-", f"{m.ratio:.2f}x" if m.ratio is not None else "-") for m in results]
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(5)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def run_from_args(args: argparse.Namespace) -> int:
    """Exit 1 when a registered paper's perf groups failed to load (a broken plugin is never silent)."""
    broken = [name for name, fn in paper_groups().items()
              if isinstance(fn, str) and args.only in (None, name)]
    results = run_perf(args.only, args.smoke, args.repeats)
    print(render_table(results))
    if args.json:
        data = [{k: (None if isinstance(v, float) and v != v else v) for k, v in asdict(m).items()}
                for m in results]
        write_atomic(args.json, json.dumps(data, indent=1))
        print(f"written {args.json}")
    for name in broken:
        print(f"ERROR: paper {name!r}: its perf groups are unavailable (see `mpq papers`)")
    return 1 if broken else 0

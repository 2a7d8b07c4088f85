"""``mpq export RUN_DIR | --model NAME --policy FILE --checkpoint FILE -o model.onnx [--report]``."""

from __future__ import annotations

import argparse
import inspect
import json
from dataclasses import asdict
from pathlib import Path

import torch

from core.errors import ConfigError
from core.export.qdq import DEFAULT_OPSET

EDGES = ("float", "w8", "w8a8", "quantize")


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``mpq export`` (``core.cli`` builds the sub-parser and calls :func:`run_cli`)."""
    parser.add_argument("run_dir", nargs="?", metavar="RUN_DIR",
                        help="a run directory holding export.json (written by edmips train / llt finetune), "
                        "or the export.json itself")
    parser.add_argument("-o", "--output", required=True, metavar="FILE", help="the ONNX file to write")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help=f"ONNX opset (default {DEFAULT_OPSET}: int4/uint4; below 21, 2-4 bit tensors "
                        "use 8-bit containers; 25 adds int2)")
    parser.add_argument("--report", action="store_true",
                        help="print per-layer bits and element types, sizes and onnxruntime CPU latency")
    parser.add_argument("--allow-inexact", action="store_true",
                        help="export quantizers whose grid is not exact in float32 (DoReFa) anyway")
    g = parser.add_argument_group("without a run directory")
    g.add_argument("--model", help="model name (core.models.build_model: core, torchvision or timm)")
    g.add_argument("--policy", metavar="FILE", help="the BitPolicy JSON the checkpoint was trained with")
    g.add_argument("--checkpoint", metavar="FILE",
                   help="the trained weights (a training checkpoint or a state_dict)")
    g.add_argument("--num-classes", type=int, default=None,
                   help="classifier outputs (default: the model's own)")
    g.add_argument("--input-size", type=int, nargs=3, default=None, metavar=("C", "H", "W"),
                   help="input size without the batch (default: the model's own, else 3 224 224)")
    g.add_argument("--w-quant", default="lsq", help="weight quantizer it was trained with (default lsq)")
    g.add_argument("--a-quant", default="lsq", help="activation quantizer (default lsq)")
    g.add_argument("--first", default="float", choices=EDGES, help="first conv/linear (default float)")
    g.add_argument("--last", default="float", choices=EDGES, help="last conv/linear (default float)")
    g.add_argument("--w-options", default="{}", metavar="JSON", help="weight quantizer options, e.g. "
                   "'{\"per_channel\": true}'")
    g.add_argument("--a-options", default="{}", metavar="JSON", help="activation quantizer options")


def _json_option(text: str, flag: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{flag} is not valid JSON ({exc.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{flag} must be a JSON object, got {text!r}")
    return value


def spec_from_args(args: argparse.Namespace):
    """An :class:`~core.export.spec.ExportSpec` from ``--model``, ``--policy``, ``--checkpoint`` and the
    quantizer flags."""
    from core.export.spec import ExportSpec
    from core.models import MODELS
    from core.nn import QuantSpec
    from core.policy import BitPolicy

    missing = [f for f in ("model", "policy", "checkpoint") if not getattr(args, f)]
    if missing:
        raise ConfigError("give a RUN_DIR, or --model, --policy and --checkpoint (missing: "
                          + ", ".join(f"--{m}" for m in missing) + ")")
    factory = MODELS.get(args.model)
    num_classes = args.num_classes
    if num_classes is None:
        default = inspect.signature(factory).parameters.get("num_classes") if factory else None
        num_classes = default.default if default is not None and isinstance(default.default, int) else 1000
    size = tuple(args.input_size) if args.input_size else tuple(getattr(factory, "input_size", (3, 224, 224)))
    quant = QuantSpec(kind="fixed", w_quant=args.w_quant, a_quant=args.a_quant, first=args.first,
                      last=args.last, w_options=_json_option(args.w_options, "--w-options"),
                      a_options=_json_option(args.a_options, "--a-options"))
    return ExportSpec(model=args.model, num_classes=num_classes, input_size=size,
                      checkpoint=str(Path(args.checkpoint).resolve()), quant=asdict(quant),
                      policy=BitPolicy.load(args.policy).to_dict(), meta={"policy_file": args.policy})


def run_cli(args: argparse.Namespace) -> int:
    from core.export.qdq import export_onnx, require_onnx
    from core.export.spec import model_from_run, model_from_spec

    require_onnx()
    if args.run_dir and args.model:
        raise ConfigError("give either RUN_DIR or --model/--policy/--checkpoint, not both")
    if args.run_dir:
        model, policy, spec, source = model_from_run(args.run_dir)
    else:
        spec = spec_from_args(args)
        model, policy = model_from_spec(spec)
        source = Path(spec.checkpoint)
    example = torch.randn(2, *spec.input_size, generator=torch.Generator().manual_seed(0))
    meta = {"mpq.source": str(source), "mpq.model": spec.model,
            "mpq.input_size": json.dumps(list(spec.input_size))}
    result = export_onnx(model, example, args.output, opset=args.opset, allow_inexact=args.allow_inexact,
                         policy=policy, metadata=meta)
    print(f"wrote {result.path}: {spec.model}, {len(result.weights)} integer weights, "
          f"{len(result.activations)} quantized activations, opset {result.opset}, "
          f"{result.model.ByteSize() / 1e6:.3f} MB")
    if args.report:
        from core.export.report import build_report

        float_model = export_onnx(model, example, None, opset=args.opset, allow_inexact=True,
                                  quantized=False).model
        inputs = torch.randn(8, *spec.input_size, generator=torch.Generator().manual_seed(1))
        print(build_report(model, result, float_model, example[:1], parity_inputs=inputs).table())
    return 0

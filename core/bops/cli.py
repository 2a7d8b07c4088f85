"""``mpq bops MODEL [--input 3x224x224] [--policy FILE] [--convention NAME] [--json]``."""

from __future__ import annotations

import argparse
import inspect
import json

from core.bops.conventions import CONVENTIONS, MATMUL_RULES
from core.bops.counter import count
from core.errors import ConfigError


def parse_input_size(text: str) -> tuple[int, ...]:
    """``"3x224x224"`` -> ``(3, 224, 224)``; ``"224"`` -> ``(3, 224, 224)``; ``"32x32"`` -> (3, 32, 32)."""
    try:
        dims = tuple(int(p) for p in text.lower().replace(",", "x").split("x") if p)
    except ValueError:
        raise ConfigError(f"--input {text!r} is not of the form CxHxW (e.g. 3x224x224)") from None
    if len(dims) == 1:
        dims = (3, dims[0], dims[0])
    elif len(dims) == 2:
        dims = (3, *dims)
    if len(dims) != 3 or min(dims) < 1:
        raise ConfigError(f"--input {text!r} is not of the form CxHxW with positive sizes (e.g. 3x224x224)")
    return dims


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``mpq bops`` (``core.cli`` builds the sub-parser and calls :func:`run_cli`)."""
    parser.add_argument("model", metavar="MODEL",
                        help="a core model (resnet20, edmips_resnet18, mobilenet_v1, ...), "
                        "or a torchvision or timm name")
    parser.add_argument("--input", default=None, metavar="CxHxW",
                        help="input size without the batch dimension (default: the core model's own, "
                        "e.g. 3x32x32 for resnet20, else 3x224x224)")
    parser.add_argument("--policy", default=None, metavar="FILE",
                        help="a BitPolicy JSON file giving the bits")
    parser.add_argument("--convention", default="exact", choices=sorted(CONVENTIONS),
                        help="counting convention (default: exact); "
                        + "; ".join(f"{c.name}: {c.description}" for c in CONVENTIONS.values()))
    parser.add_argument("--num-classes", type=int, default=None,
                        help="classifier outputs (default: the core model's own, e.g. 10 for resnet20, "
                        "else 1000)")
    parser.add_argument("--bits", type=int, nargs=2, default=None, metavar=("W", "A"),
                        help="bits of layers that neither the policy nor the layer sets (default: 32 32)")
    first = parser.add_mutually_exclusive_group()
    first.add_argument("--include-first", dest="include_first", action="store_true", default=None,
                       help="count the first layer inside the totals")
    first.add_argument("--exclude-first", dest="include_first", action="store_false",
                       help="leave the first layer outside the totals")
    last = parser.add_mutually_exclusive_group()
    last.add_argument("--include-last", dest="include_last", action="store_true", default=None,
                      help="count the last layer inside the totals")
    last.add_argument("--exclude-last", dest="include_last", action="store_false",
                      help="leave the last layer outside the totals")
    parser.add_argument("--matmuls", default=None, choices=MATMUL_RULES,
                        help="activation x activation matmuls (attention's q @ k^T, attn @ v, SDPA): "
                        "error = refuse, naming them (every built-in convention's default); count = one "
                        "row per module and op inside the totals, at --bits; exclude = rows outside the "
                        "totals")
    parser.add_argument("--json", action="store_true", help="print the rows and totals as JSON")


def run_cli(args: argparse.Namespace) -> int:
    """Build the model, count, print the table (or JSON). Errors are ``MpqError`` for the CLI."""
    from core.models import MODELS, build_model
    from core.policy import BitPolicy

    factory = MODELS.get(args.model)
    if args.input is not None:
        input_size = parse_input_size(args.input)
    else:
        input_size = tuple(getattr(factory, "input_size", (3, 224, 224)))
    num_classes = args.num_classes
    if num_classes is None:
        default = inspect.signature(factory).parameters.get("num_classes") if factory else None
        num_classes = default.default if default is not None and isinstance(default.default, int) else 1000
    model = build_model(args.model, num_classes=num_classes)
    policy = BitPolicy.load(args.policy) if args.policy else None
    report = count(model, input_size=input_size, policy=policy, convention=args.convention,
                   include_first=args.include_first, include_last=args.include_last,
                   default_bits=tuple(args.bits) if args.bits else (32, 32), matmuls=args.matmuls)
    report.model = args.model
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        layers = sum(r.kind != "matmul" for r in report.rows)
        print(f"{args.model}: {layers} conv/linear layers"
              + (f", {len(report.rows) - layers} matmul rows" if len(report.rows) > layers else ""))
        print(report.table())
    return 0

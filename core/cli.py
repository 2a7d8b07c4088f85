"""The `mpq` command line.

Common commands live here (`mpq env`, `mpq data check`, `mpq bops`, `mpq export`). Papers and the
benchmark add their own groups (`mpq edmips ...`, `mpq bench ...`) through the ``mpq.commands``
entry-point group: each entry point is a ``register(subparsers)`` function that adds one sub-parser
whose handler is set with ``parser.set_defaults(func=...)``. core never imports a paper by name.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import entry_points

from core.errors import MpqError


def _cmd_env(args: argparse.Namespace) -> int:
    import platform

    import torch

    rows = [("python", platform.python_version()), ("platform", platform.platform()),
            ("torch", torch.__version__)]
    for mod in ("torchvision", "timm", "mmengine", "mmcv", "mmdet", "numpy", "scipy", "sklearn"):
        try:
            rows.append((mod, __import__(mod).__version__))
        except Exception as exc:  # noqa: BLE001 - report, don't crash
            rows.append((mod, f"not available ({type(exc).__name__}: {exc})"))
    try:
        from mmcv.ops import nms  # noqa: F401

        ops = "yes"
    except Exception as exc:  # noqa: BLE001
        ops = f"no ({type(exc).__name__})"
    rows.append(("mmcv ops", ops))
    cuda = torch.cuda.is_available()
    rows.append(("cuda", f"yes, {torch.cuda.device_count()} device(s): {torch.cuda.get_device_name(0)}"
                 if cuda else "no"))
    rows.append(("default device", "cuda" if cuda else "cpu"))
    rows.append(("torch threads", str(torch.get_num_threads())))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


def _cmd_data_check(args: argparse.Namespace) -> int:
    from core.data import check_dataset

    report = check_dataset(args.name, args.root, verify=args.verify)
    for key, value in report.items():
        print(f"{key}: {value}")
    return 0


def _cmd_bops(args: argparse.Namespace) -> int:
    from core.bops import run_cli

    return run_cli(args)


def _cmd_export(args: argparse.Namespace) -> int:
    from core.export.cli import run_cli

    return run_cli(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mpq", description="Mixed-precision quantization: faithful paper implementations, benchmarks.")
    sub = parser.add_subparsers(title="command groups", metavar="COMMAND")

    p = sub.add_parser("env", help="versions, device, and whether mmcv ops are available")
    p.set_defaults(func=_cmd_env)

    p = sub.add_parser("data", help="dataset utilities")
    dsub = p.add_subparsers(metavar="SUBCOMMAND")
    c = dsub.add_parser("check", help="validate a dataset layout and print counts")
    c.add_argument("name", help="digits | cifar10 | cifar100 | imagenet | coco")
    c.add_argument("--root", default=None, help="dataset root directory (not needed for digits)")
    c.add_argument("--verify", action="store_true", help="also decode every image and count unreadable ones")
    c.set_defaults(func=_cmd_data_check)
    p.set_defaults(func=lambda a: (p.print_help(), 1)[1])

    from core.bops import add_cli_arguments

    p = sub.add_parser("bops", help="per-layer params / MACs / BOPs table of a model")
    add_cli_arguments(p)
    p.set_defaults(func=_cmd_bops)

    from core.export.cli import add_cli_arguments as add_export_arguments

    p = sub.add_parser("export", help="a trained quantized model as an ONNX QDQ graph (needs mpq[export])")
    add_export_arguments(p)
    p.set_defaults(func=_cmd_export)

    for ep in sorted(entry_points(group="mpq.commands"), key=lambda e: e.name):
        try:
            register = ep.load()
        except ImportError as exc:
            # A group whose module is missing is reported, not fatal for the other commands.
            broken = sub.add_parser(ep.name, help=f"(unavailable: {exc})")
            broken.set_defaults(func=lambda a, exc=exc: _unavailable(exc))
            continue
        register(sub)
    return parser


def _unavailable(exc: Exception) -> int:
    print(f"error: this command group failed to import: {exc}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except MpqError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

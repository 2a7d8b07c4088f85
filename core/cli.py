"""The `mpq` command line.

Common commands live here (`mpq env`, `mpq data check`, `mpq bops`, `mpq papers`, `mpq config`,
`mpq export`). Each registered paper (a :class:`core.paper.Paper` under the ``mpq.papers`` entry
points) adds its group (`mpq <paper> ...`); other command groups (the benchmark's `mpq bench ...`)
come from the ``mpq.commands`` entry points, each a ``register(subparsers)`` function that adds one
sub-parser whose handler is set with ``parser.set_defaults(func=...)``. A group that fails to load is
listed as unavailable (its commands then print the error and exit 2). core never imports a paper by
name.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import entry_points

from core.errors import DataError, MpqError
from core.paper import discover_papers, get_paper


def _cmd_env(args: argparse.Namespace) -> int:
    import platform

    import torch

    from core.extras import EXTRAS

    det_packages, det_install = EXTRAS["det"]
    rows = [("python", platform.python_version()), ("platform", platform.platform()),
            ("torch", torch.__version__)]
    for mod in ("torchvision", "timm", "mmengine", "mmcv", "mmdet", "numpy", "scipy", "sklearn"):
        try:
            rows.append((mod, __import__(mod).__version__))
        except Exception as exc:  # noqa: BLE001 - report, don't crash
            hint = f"; the 'det' extra: {det_install}" if mod in det_packages else ""
            rows.append((mod, f"not available ({type(exc).__name__}: {exc}){hint}"))
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
    if report.get("corrupt"):
        raise DataError(f"{args.name}: {report['corrupt']} file(s) under {report.get('root')} do not decode "
                        f"({report['corrupt_files']}); replace them, or train with data.skip_corrupt=true to "
                        "skip and count them")
    return 0


def _cmd_bops(args: argparse.Namespace) -> int:
    from core.bops import run_cli

    return run_cli(args)


def _cmd_papers(args: argparse.Namespace) -> int:
    """Every registered paper: loaded or not (with the error), its methods, configs, recomputers, perf."""
    failed = 0
    for entry in discover_papers():
        if entry.paper is None:
            failed += 1
            print(f"{entry.name}: FAILED to load ({entry.value})\n  error: {entry.error}")
            continue
        info = entry.paper.check()
        status = "ok" if not info["errors"] else f"{len(info['errors'])} problem(s)"
        failed += bool(info["errors"])
        print(f"{entry.name}: {status} - {entry.paper.title}")
        print(f"  methods: {', '.join(info['methods']) or '-'}; configs: {info['configs']}; "
              f"recomputers: {', '.join(info['recomputers']) or '-'}; perf: {', '.join(info['perf']) or '-'}")
        for err in info["errors"]:
            print(f"  error: {err}")
    return 1 if failed else 0


def _cmd_config_show(args: argparse.Namespace) -> int:
    from core.config import config_to_yaml

    cfg = get_paper(args.paper).load_config(args.config, args.overrides)
    print(config_to_yaml(cfg), end="")
    return 0


def _cmd_config_list(args: argparse.Namespace) -> int:
    papers = [get_paper(args.paper)] if args.paper else [e.paper for e in discover_papers() if e.paper]
    for paper in papers:
        print(f"{paper.name}: {' '.join(paper.config_names()) or '(no packaged configs)'}")
    return 0

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
    c.add_argument("name", help="digits | mnist5k | cifar10 | cifar100 | imagenet | coco")
    c.add_argument("--root", default=None, help="dataset root directory (not needed for digits, mnist5k)")
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

    p = sub.add_parser("papers", help="the registered papers: loaded or not, methods, configs (exit 1 if one "
                                      "is broken)")
    p.set_defaults(func=_cmd_papers)

    p = sub.add_parser("config", help="packaged configs of a paper: list, or show one resolved as YAML")
    csub = p.add_subparsers(metavar="SUBCOMMAND")
    c = csub.add_parser("show", help="print the resolved config (defaults <- file <- overrides) as YAML",
                        description="mpq config show PAPER [-c NAME|PATH] [KEY=VALUE ...]")
    c.add_argument("paper", help="a registered paper (mpq papers)")
    c.add_argument("-c", "--config", default=None, metavar="NAME|PATH",
                   help="packaged config name or YAML file (default: the schema's defaults)")
    c.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    c.set_defaults(func=_cmd_config_show, overrides_anywhere=True)
    c = csub.add_parser("list", help="the packaged config names of one paper (or of every paper)")
    c.add_argument("paper", nargs="?", default=None)
    c.set_defaults(func=_cmd_config_list)
    p.set_defaults(func=lambda a: (p.print_help(), 1)[1])

    groups = [(e.name, e.error, e.paper.register_cli if e.paper else None) for e in discover_papers()]

    for ep in sorted(entry_points(group="mpq.commands"), key=lambda e: e.name):
        try:
            groups.append((ep.name, None, ep.load()))
        except Exception as exc:  # noqa: BLE001 - reported, not fatal for the other commands
            groups.append((ep.name, f"{type(exc).__name__}: {exc}", None))
    for name, error, register in groups:
        if error is None:
            try:
                register(sub)
                continue
            except Exception as exc:  # noqa: BLE001
                error = f"{type(exc).__name__}: {exc}"
        if name not in sub.choices:
            broken = sub.add_parser(name, help=f"(unavailable: {error})")
            broken.add_argument("rest", nargs=argparse.REMAINDER)
            broken.set_defaults(func=lambda a, name=name, error=error: _unavailable(name, error))
    return parser


def _unavailable(name: str, error: str) -> int:
    print(f"error: the command group {name!r} failed to load: {error} (see `mpq papers`)", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # argparse cannot take positional KEY=VALUE overrides on both sides of `-c NAME`; commands that
        # declare `overrides_anywhere` collect them here (anything else is an unknown argument)
        if not getattr(args, "overrides_anywhere", False) or any(e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    if not hasattr(args, "func"):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except MpqError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a fault of the file system outside the write sites that name it themselves
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

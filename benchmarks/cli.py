"""``mpq bench``: ``check`` (reported tables vs mpq), ``run`` (the cross-method benchmark), ``perf``.

Registered through the ``mpq.commands`` entry point ``bench = "benchmarks.cli:register"`` (the one command
group that is not a paper).
"""

from __future__ import annotations

import argparse


def _cmd_check(args: argparse.Namespace) -> int:
    from benchmarks.check import run_check
    from benchmarks.report import render_markdown, render_text, write_atomic

    report = run_check(args.results, paper=args.paper, reference_dirs=args.reference)
    print(render_text(report), end="")
    for paper, why in report.broken_papers.items():
        print(f"ERROR: registered paper {paper!r} failed to load its recomputers: {why}")
    if args.markdown:
        write_atomic(args.markdown, render_markdown(report))
        print(f"markdown report written to {args.markdown}")
    return report.exit_code


def _cmd_run(args: argparse.Namespace) -> int:
    from benchmarks.quick import run_from_args

    return run_from_args(args)


def _cmd_perf(args: argparse.Namespace) -> int:
    from benchmarks.perf import run_from_args

    return run_from_args(args)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench",
                              help="benchmarks: check reported tables, compare methods, measure speed")
    sub = p.add_subparsers(metavar="SUBCOMMAND")

    c = sub.add_parser("check", help="recompute / compare every transcribed table cell; exit 1 on a "
                                     "mismatch, unless the cell's note predicts mpq's value",
                       description="Prints one side-by-side table (reported | mpq | status) per paper table.")
    c.add_argument("--results", default=None, help="directory searched recursively for results.json files")
    c.add_argument("--markdown", default=None, metavar="FILE", help="also write the report as markdown")
    c.add_argument("--paper", default=None, help="check one paper's tables only (see `mpq papers`)")
    c.add_argument("--reference", action="append", default=None, metavar="DIR",
                   help="directory holding reference files (e.g. released indicators); repeatable")
    c.set_defaults(func=_cmd_check)

    r = sub.add_parser("run", help="the cross-method benchmark: search, train with one recipe, report",
                       description="--suite quick: every registered method, the random control and the "
                                   "uniform baselines on an embedded dataset (CPU, minutes; paired "
                                   "statistics over seeds). --suite paper: one method on ImageNet "
                                   "ResNet-18 at paper scale.")
    r.add_argument("--suite", choices=["quick", "paper"], default="quick")
    r.add_argument("--out", default="bench_out", help="output directory (report.md, PNGs, results)")
    r.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default 0 1 2 3 4)")
    r.add_argument("--dataset", default=None, choices=["digits", "mnist5k"],
                   help="--suite quick: the embedded dataset (default: the suite's; epochs scaled to the "
                        "same number of SGD steps)")
    r.add_argument("--jobs", type=int, default=None,
                   help="worker processes, one torch thread each (default: one per CPU core, at most 8; "
                        "1 on an accelerator or with --micro); results do not depend on it")
    r.add_argument("--methods", nargs="+", default=None,
                   help="method names to run (default: every method of every registered paper)")
    r.add_argument("--micro", action="store_true", help="a seconds-long setting (tests, smoke runs)")
    r.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    r.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads of the main process with --jobs 1 (default: 1 for --suite quick, "
                        "torch's choice otherwise)")
    r.add_argument("--method", default=None, help="--suite paper: the method (a registered method name)")
    r.add_argument("--data-root", default=None, help="--suite paper: dataset root (e.g. ImageNet)")
    r.set_defaults(func=_cmd_run)

    f = sub.add_parser("perf", help="performance suite: medians of repetitions, ratios to in-run baselines")
    f.add_argument("--json", default=None, metavar="FILE", help="write [{name, value, unit, baseline, "
                                                                "baseline_value, ratio}, ...]")
    f.add_argument("--only", default=None, metavar="GROUP",
                   help="run one group (see the table's group column)")
    f.add_argument("--smoke", action="store_true", help="tiny sizes, 1 repetition (tests)")
    f.add_argument("--repeats", type=int, default=None, help="repetitions per measurement (default 5)")
    f.set_defaults(func=_cmd_perf)

    p.set_defaults(func=lambda a: (p.print_help(), 1)[1])

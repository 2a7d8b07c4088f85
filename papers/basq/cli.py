"""``mpq basq supernet|search|finetune|report -c CONFIG [key=value ...]``.

``supernet`` (Alg. 1 part 1) and ``finetune`` (part 3) resume from ``run.out_dir`` and run under
``torchrun``; ``search`` (part 2) runs in one process; ``report`` prints the K-fold table (supplementary
Table 2), the mean and the BitOPs (Table 5).
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("basq", help="BASQ (ECCV 2022): branch-wise activation-clipping search")
    sub = parser.add_subparsers(metavar="SUBCOMMAND")
    for name, help_text, func in (
        ("supernet", "supernet training, two stages (Alg. 1 part 1)", _cmd_supernet),
        ("search", "K-fold evolutionary search of the clip branches (Alg. 1 part 2)", _cmd_search),
        ("finetune", "per-fold BN/clip fine-tuning and the K-fold accuracy (Alg. 1 part 3)", _cmd_finetune),
        ("report", "the K-fold table, its mean and the BitOPs of a run", _cmd_report),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("-c", "--config", required=True, help="YAML config (papers/basq/configs/*.yaml)")
        p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data.root=/data/imagenet")
        p.set_defaults(func=func)
    parser.set_defaults(func=lambda a: (parser.print_help(), 1)[1])
    return parser


def load(args: argparse.Namespace):
    from core.config import load_config
    from papers.basq.config import BASQConfig

    return load_config(BASQConfig, args.config, args.overrides)


def _cmd_supernet(args: argparse.Namespace) -> int:
    from papers.basq.supernet import run_supernet

    run_supernet(load(args))
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    from papers.basq.search import run_search

    run_search(load(args))
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    from papers.basq.finetune import run_finetune

    run_finetune(load(args))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from papers.basq.report import run_report

    print(run_report(load(args)))
    return 0

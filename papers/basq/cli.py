"""``mpq basq supernet|search|finetune|report -c NAME|PATH [key=value ...]``.

``supernet`` (Alg. 1 part 1) and ``finetune`` (part 3) resume from ``run.out_dir`` and run under
``torchrun``; ``search`` (part 2) runs in one process; ``report`` prints the K-fold table (supplementary
Table 2), the mean and the BitOPs (Table 5).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from papers.basq import PAPER

#: The digits config shrunk to seconds (the smoke run and the end-to-end tests).
TINY = ["data.image_size=8", "data.batch_size=128", "teacher.schedule.epochs=1",
        "supernet.stage1.schedule.epochs=1", "supernet.stage2.schedule.epochs=1", "search.folds=3",
        "search.evolution.population=6", "search.evolution.iterations=2", "search.evolution.parents=2",
        "search.evolution.crossover=2", "search.evolution.mutation=2", "finetune.schedule.epochs=1",
        "run.log_every=1000"]


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
        PAPER.add_config_arguments(p, required=True)
        p.set_defaults(func=func)
    parser.set_defaults(func=lambda a: (parser.print_help(), 1)[1])
    return parser


def smoke(out_dir: Path) -> Path:
    """Teacher, supernet, a 3-fold search and fine-tuning on the digits config shrunk to seconds;
    returns its results.json."""
    from papers.basq.finetune import run_finetune
    from papers.basq.search import run_search
    from papers.basq.supernet import run_supernet

    cfg = PAPER.load_config("digits", [f"run.out_dir={out_dir}", *TINY])
    run_supernet(cfg)
    run_search(cfg)
    run_finetune(cfg)
    return Path(cfg.run.out_dir) / "finetune" / "results.json"


def _load(args: argparse.Namespace):
    return PAPER.load_config(args.config, args.overrides)


def _cmd_supernet(args: argparse.Namespace) -> int:
    from papers.basq.supernet import run_supernet

    run_supernet(_load(args))
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    from papers.basq.search import run_search

    run_search(_load(args))
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    from papers.basq.finetune import run_finetune

    run_finetune(_load(args))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from papers.basq.report import run_report

    print(run_report(_load(args)))
    return 0

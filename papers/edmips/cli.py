"""``mpq edmips search|discretize|train|run|plot``: the EdMIPS stages from the command line.

Each stage takes ``-c CONFIG`` (a YAML path, or the name of a packaged config such as ``digits`` or
``resnet18_imagenet``) and ``key=value`` overrides, e.g.::

    mpq edmips search -c digits search.eta=0.02 run.out_dir=runs/edmips/digits
    torchrun --nproc_per_node 8 -m core.cli edmips search -c resnet18_imagenet data.root=/data/imagenet

Stages resume from their last checkpoint with ``run.resume=auto`` (the default).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from core.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def config_path(name: str | None) -> Path | None:
    """A YAML path as given, or ``configs/<name>.yaml`` of this package."""
    if name is None:
        return None
    path = Path(name)
    if path.is_file():
        return path
    packaged = CONFIG_DIR / (name if name.endswith(".yaml") else f"{name}.yaml")
    if packaged.is_file():
        return packaged
    known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    raise ConfigError(f"config {name!r} not found (neither a file nor a packaged config); packaged: {known}")


def load(args: argparse.Namespace):
    from papers.edmips.config import load_edmips_config

    return load_edmips_config(config_path(args.config), args.overrides)


def _search(args: argparse.Namespace) -> int:
    from papers.edmips.search import run_search

    run_search(load(args))
    return 0


def _discretize(args: argparse.Namespace) -> int:
    from papers.edmips.discretize import run_discretize

    run_discretize(load(args))
    return 0


def _train(args: argparse.Namespace) -> int:
    from papers.edmips.train import run_train

    run_train(load(args))
    return 0


def _run(args: argparse.Namespace) -> int:
    from papers.edmips.discretize import run_discretize
    from papers.edmips.search import run_search
    from papers.edmips.train import run_train

    cfg = load(args)
    if cfg.train.policy == "searched":
        run_search(cfg)
        run_discretize(cfg)
    run_train(cfg)
    return 0


def _plot(args: argparse.Namespace) -> int:
    from papers.edmips.plots import plot_runs

    for path in plot_runs(args.run_dir, args.out):
        print(path)
    return 0


def _with_config(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("-c", "--config", default=None,
                        help="YAML config path or packaged config name (papers/edmips/configs/NAME.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. search.eta=0.002 data.root=/data/imagenet")
    return parser


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``edmips`` command group to ``mpq``."""
    group = subparsers.add_parser("edmips", help="EdMIPS (CVPR 2020): differentiable mixed-precision search",
                                  description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = group.add_subparsers(metavar="STAGE")
    stages = (("search", _search, "train the relaxed search model (section 4) -> RUN_DIR/search/"),
              ("discretize", _discretize, "derive the bit policy (section 4.7) -> RUN_DIR/policy.json"),
              ("train", _train, "train the discretised / uniform network from scratch (section 5.1) "
                                "-> RUN_DIR/results.json"),
              ("run", _run, "search, discretize and train in one go"))
    for name, func, text in stages:
        _with_config(sub.add_parser(name, help=text, description=text)).set_defaults(func=func)
    p = sub.add_parser("plot", help="architecture evolution (Fig. 4), complexity evolution (Fig. 7(b)) and "
                                    "bit allocation (Fig. 6) PNGs")
    p.add_argument("run_dir", metavar="RUN_DIR", nargs="+", help="run directories (run.out_dir) of searches")
    p.add_argument("--out", default="complexity_evolution.png",
                   help="with several RUN_DIRs: their complexity curves in one figure here (Fig. 7(b))")
    p.set_defaults(func=_plot)
    group.set_defaults(func=lambda a: (group.print_help(), 1)[1])
    return group

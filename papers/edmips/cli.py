"""``mpq edmips search|discretize|train|run|plot``: the EdMIPS stages from the command line.

Each stage takes ``-c CONFIG`` (a YAML path, or the name of a packaged config such as ``digits`` or
``resnet18_imagenet``) and ``key=value`` overrides, e.g.::

    mpq edmips search -c digits search.eta=0.02 run.out_dir=runs/edmips/digits
    torchrun --nproc_per_node 8 -m core.cli edmips search -c resnet18_imagenet data.root=/data/imagenet

Each stage writes its own run directory under ``run.out_dir`` (default ``runs/edmips/<config name>``):
``search/``, ``discretize/`` (``policy.json``), ``train/`` (``results.json``). A stage resumes its last
checkpoint only when the config is the same as far as that stage reads it (``run.resume=auto``, the
default); otherwise it stops naming the differing keys (``run.resume=none`` starts the stage afresh).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from papers.edmips import PAPER


def load(args: argparse.Namespace):
    """The EdmipsConfig of ``-c NAME|PATH`` plus the overrides (core.paper.Paper.load_config)."""
    return PAPER.load_config(args.config, args.overrides)


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


def smoke(out_dir: Path) -> Path:
    """search -> discretize -> train on the ``digits`` config shrunk to seconds; returns results.json."""
    from papers.edmips.discretize import run_discretize
    from papers.edmips.search import run_search
    from papers.edmips.train import run_train

    cfg = PAPER.load_config("digits", [
        f"run.out_dir={out_dir}", "data.image_size=8", "data.batch_size=32",
        "model.kwargs={widths: [4, 8, 8], blocks: 1}", "search.schedule.epochs=1",
        "search.max_steps_per_epoch=3", "train.schedule.epochs=1", "train.schedule.milestones=[1]",
        "train.max_steps_per_epoch=3", "run.log_every=100"])
    run_search(cfg)
    run_discretize(cfg)
    run_train(cfg)
    return Path(cfg.run.out_dir) / "train" / "results.json"


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``edmips`` command group to ``mpq``."""
    group = subparsers.add_parser("edmips", help="EdMIPS (CVPR 2020): differentiable mixed-precision search",
                                  description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = group.add_subparsers(metavar="STAGE")
    stages = (("search", _search, "train the relaxed search model (section 4) -> RUN_DIR/search/"),
              ("discretize", _discretize, "derive the bit policy (section 4.7) -> RUN_DIR/discretize/"),
              ("train", _train, "train the discretised / uniform network from scratch (section 5.1) "
                                "-> RUN_DIR/train/results.json"),
              ("run", _run, "search, discretize and train in one go"))
    for name, func, text in stages:
        PAPER.add_config_arguments(sub.add_parser(name, help=text, description=text)).set_defaults(func=func)
    p = sub.add_parser("plot", help="architecture evolution (Fig. 4), complexity evolution (Fig. 7(b)) and "
                                    "bit allocation (Fig. 6) PNGs")
    p.add_argument("run_dir", metavar="RUN_DIR", nargs="+", help="run directories (run.out_dir) of searches")
    p.add_argument("--out", default="complexity_evolution.png",
                   help="with several RUN_DIRs: their complexity curves in one figure here (Fig. 7(b))")
    p.set_defaults(func=_plot)
    group.set_defaults(func=lambda a: (group.print_help(), 1)[1])
    return group

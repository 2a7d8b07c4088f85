"""``mpq bpnas search|derive|train|run|plot``: the BP-NAS stages from the command line.

Each stage takes ``-c CONFIG`` (a YAML path, or the name of a packaged config such as ``digits`` or
``cifar10_resnet20_bmax3``) and ``key=value`` overrides, e.g.::

    mpq bpnas search -c digits run.out_dir=runs/bpnas/digits
    mpq bpnas train -c cifar10_resnet20_table1_bmax3 data.root=/data/cifar10
    torchrun --nproc_per_node 8 -m core.cli bpnas search -c resnet50_imagenet data.root=/data/imagenet
    mpq bpnas plot search runs/bpnas/digits
    mpq bpnas plot fig1 -c digits_figures
    mpq bpnas det-search -c tiny_coco && mpq bpnas det-train -c tiny_coco   # detection (det extra)

Stages resume from their last checkpoint with ``run.resume=auto`` (the default).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from papers.bpnas import PAPER


def load(args: argparse.Namespace):
    """The BpnasConfig of ``-c NAME|PATH`` plus the overrides (core.paper.Paper.load_config)."""
    return PAPER.load_config(args.config, args.overrides)


def _search(args: argparse.Namespace) -> int:
    from papers.bpnas.derive import run_derive
    from papers.bpnas.search import run_search

    cfg = load(args)
    run_search(cfg)
    run_derive(cfg)
    return 0


def _derive(args: argparse.Namespace) -> int:
    from papers.bpnas.derive import run_derive

    run_derive(load(args))
    return 0


def _train(args: argparse.Namespace) -> int:
    from papers.bpnas.train import run_train

    run_train(load(args))
    return 0


def _run(args: argparse.Namespace) -> int:
    from papers.bpnas.derive import run_derive
    from papers.bpnas.search import run_search
    from papers.bpnas.train import run_train

    cfg = load(args)
    if cfg.train.policy == "searched":
        run_search(cfg)
        run_derive(cfg)
    run_train(cfg)
    return 0


def _det(args: argparse.Namespace) -> int:
    from papers.bpnas.det.run import load_det_config, run_det_search, run_det_train

    cfg = load_det_config(args.config, args.overrides)
    (run_det_search if args.stage == "det-search" else run_det_train)(cfg)
    return 0


def _plot_search(args: argparse.Namespace) -> int:
    from papers.bpnas.plots import plot_search

    for path in plot_search(args.run_dir):
        print(path)
    return 0


def _figure(args: argparse.Namespace) -> int:
    from papers.bpnas.plots import run_figure

    print(run_figure(load(args), args.figure))
    return 0


SMOKE = ["data.image_size=8", "data.batch_size=32", "model.kwargs={widths: [4, 8, 8], blocks: 1}",
         "search.schedule.epochs=2", "search.warmup_epochs=1", "search.max_steps_per_epoch=3",
         "train.schedule.epochs=1", "train.schedule.milestones=[1]", "train.max_steps_per_epoch=3",
         "run.log_every=100"]


def smoke(out_dir: Path) -> Path:
    """search -> derive -> train on the ``digits`` config shrunk to seconds; returns results.json."""
    from papers.bpnas.derive import run_derive
    from papers.bpnas.search import run_search
    from papers.bpnas.train import run_train

    cfg = PAPER.load_config("digits", [f"run.out_dir={out_dir}", *SMOKE])
    run_search(cfg)
    run_derive(cfg)
    run_train(cfg)
    return Path(cfg.run.out_dir) / "results.json"


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``bpnas`` command group to ``mpq``."""
    group = subparsers.add_parser("bpnas", help="BP-NAS (ECCV 2020): barrier-penalty mixed-precision search",
                                  description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = group.add_subparsers(metavar="STAGE")
    stages = (("search", _search, "barrier-penalty search of the supernet, then derive -> "
                                  "RUN_DIR/policy.json"),
              ("derive", _derive, "highest-probability pair per block -> RUN_DIR/policy.json"),
              ("train", _train, "train the derived / published / uniform / random network -> "
                                "RUN_DIR/results.json"),
              ("run", _run, "search, derive and train in one go"))
    for name, func, text in stages:
        PAPER.add_config_arguments(sub.add_parser(name, help=text, description=text)).set_defaults(func=func)
    det = (("det-search", "Faster R-CNN supernet search (mmdet Runner), then derive -> RUN_DIR/policy.json"),
           ("det-train", "train the derived / Table 2 detector, COCO bbox mAP -> RUN_DIR/results.json"))
    for name, text in det:
        p = sub.add_parser(name, help=text, description=text + " (needs the det extra)")
        p.add_argument("-c", "--config", required=True, metavar="NAME|PATH",
                       help="a packaged det config (papers/bpnas/configs/det/: faster_rcnn_r50_fpn_coco, "
                            "faster_rcnn_r50_fpn_coco_table2, tiny_coco) or an mmdet config file")
        p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                       help="data.root=..., run.out_dir=..., or any mmengine config key (a.b=value)")
        p.set_defaults(func=_det, stage=name, overrides_anywhere=True)
    plot = sub.add_parser("plot", help="search curves, or supp. Fig. 1 / Fig. 2 as training runs -> PNG")
    psub = plot.add_subparsers(metavar="WHAT")
    p = psub.add_parser("search", help="p per block and E(SN) over the search epochs -> RUN_DIR/plots/")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run directory (run.out_dir) of a search")
    p.set_defaults(func=_plot_search)
    figures = (("fig1", "supp. Fig. 1: a random mixed network with / without weight uniformization"),
               ("fig2", "supp. Fig. 2: the same network with distribution reshaping / with PACT"))
    for figure, text in figures:
        fig = PAPER.add_config_arguments(psub.add_parser(figure, help=text, description=text))
        fig.set_defaults(func=_figure, figure=figure)
    plot.set_defaults(func=lambda a: (plot.print_help(), 1)[1])
    group.set_defaults(func=lambda a: (group.print_help(), 1)[1])
    return group


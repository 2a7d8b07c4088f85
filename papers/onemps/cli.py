"""``mpq onemps train|pareto|finetune|correlate|plot``: the One-Shot MPS stages from the command line.

``train`` and ``correlate`` take ``-c CONFIG`` (a YAML path or a packaged config: ``digits``,
``cifar10_resnet20``, ``resnet18_imagenet``, ``mobilenetv2_imagenet``), ``--preset`` (``onemps``, ``vimps``,
``dnas``, ``edmips_proxy``: the configurations of the same code path) and ``key=value`` overrides; the
other stages take the RUN_DIR of a ``train`` (its resolved config is read back) and overrides::

    mpq onemps train -c digits run.out_dir=runs/onemps/digits
    mpq onemps pareto runs/onemps/digits --points 12
    mpq onemps finetune runs/onemps/digits --point 3
    mpq onemps correlate -c digits correlate.architectures=6
    mpq onemps plot runs/onemps/digits
    torchrun --nproc_per_node 8 -m core.cli onemps train -c resnet18_imagenet data.root=/data/imagenet
"""

from __future__ import annotations

import argparse
from pathlib import Path

from core.errors import ConfigError


def load(args: argparse.Namespace):
    from papers.onemps import PAPER
    from papers.onemps.config import load_onemps_config

    return load_onemps_config(PAPER.config_path(args.config) if args.config else None, args.overrides,
                              args.preset)


def load_run(run_dir: str, overrides: list[str]):
    """The resolved config a ``train`` wrote into RUN_DIR/supernet/config.yaml, with ``overrides``."""
    from papers.onemps.common import SUPERNET_DIR
    from papers.onemps.config import load_onemps_config

    saved = Path(run_dir) / SUPERNET_DIR / "config.yaml"
    if not saved.is_file():
        raise ConfigError(f"{saved} not found: {run_dir} is not the run directory of `mpq onemps train` "
                          "(run.out_dir)")
    return load_onemps_config(saved, [*overrides, f"run.out_dir={run_dir}"])


def _train(args: argparse.Namespace) -> int:
    from papers.onemps.train import run_train

    run_train(load(args))
    return 0


def _pareto(args: argparse.Namespace) -> int:
    from papers.onemps.pareto import run_pareto

    overrides = list(args.overrides) + ([f"pareto.points={args.points}"] if args.points else [])
    run_pareto(load_run(args.run_dir, overrides))
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from papers.onemps.finetune import run_finetune

    overrides = list(args.overrides)
    if args.point is not None:
        overrides.append(f"finetune.point={args.point}")
    if args.policy:
        overrides.append(f"finetune.policy={args.policy}")
    run_finetune(load_run(args.run_dir, overrides))
    return 0


def _correlate(args: argparse.Namespace) -> int:
    from papers.onemps.correlate import run_correlate

    run_correlate(load(args))
    return 0


def _plot(args: argparse.Namespace) -> int:
    from papers.onemps.plots import plot_run

    for path in plot_run(load_run(args.run_dir, [])):
        print(path)
    return 0


SMOKE = ["data.image_size=8", "data.batch_size=32", "model.kwargs={widths: [4, 4, 8], blocks: 1}",
         "search.schedule.epochs=1", "search.max_steps_per_epoch=3", "pareto.points=3", "pareto.bn_images=32",
         "finetune.schedule.epochs=1", "finetune.max_steps_per_epoch=3", "finetune.bn_images=32",
         "run.log_every=100"]


def smoke(out_dir: Path) -> Path:
    """train -> pareto -> finetune on the ``digits`` config shrunk to seconds; returns results.json."""
    from papers.onemps import PAPER
    from papers.onemps.finetune import run_finetune
    from papers.onemps.pareto import run_pareto
    from papers.onemps.train import run_train

    cfg = PAPER.load_config("digits", [f"run.out_dir={out_dir}", *SMOKE])
    run_train(cfg)
    run_pareto(cfg)
    return Path(run_finetune(cfg)["path"])


def _with_config(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from papers.onemps import PAPER

    PAPER.add_config_arguments(parser)
    parser.add_argument("--preset", default=None, choices=["onemps", "vimps", "dnas", "edmips_proxy"],
                        help="the configuration of the one code path (default: onemps)")
    return parser


def _with_run_dir(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("run_dir", metavar="RUN_DIR",
                        help="the run directory (run.out_dir) of `mpq onemps train`")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    parser.set_defaults(overrides_anywhere=True)  # core.cli.main: before or after the options
    return parser


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``onemps`` command group to ``mpq``."""
    group = subparsers.add_parser("onemps", help="One-Shot MPS (CVPR 2023): one supernet for the whole "
                                                 "Pareto front", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = group.add_subparsers(metavar="STAGE")
    text = "train the supernet and f_theta (or a VIMPS / DNAS / EdMIPS-proxy search) -> RUN_DIR/supernet/"
    _with_config(sub.add_parser("train", help=text, description=text)).set_defaults(func=_train)
    text = "sweep eta, evaluate each most probable child, keep the non-dominated set -> RUN_DIR/pareto/"
    p = _with_run_dir(sub.add_parser("pareto", help=text, description=text))
    p.add_argument("--points", type=int, default=None, help="eta values of the sweep (pareto.points)")
    p.set_defaults(func=_pareto)
    text = "fine-tune one child as a fixed-precision network -> RUN_DIR/finetune/<tag>/results.json"
    p = _with_run_dir(sub.add_parser("finetune", help=text, description=text))
    p.add_argument("--point", type=int, default=None, help="index into pareto/front.json (default: the most "
                                                           "accurate front point)")
    p.add_argument("--policy", default=None, help="a policy.json to fine-tune instead of a front point")
    p.set_defaults(func=_finetune)
    text = ("Kendall tau between child accuracy under the supernet and standalone accuracy, per "
            "configuration -> RUN_DIR/correlate/kendall.json")
    _with_config(sub.add_parser("correlate", help=text, description=text)).set_defaults(func=_correlate)
    text = "bits vs eta (f_theta) and the Pareto front PNGs -> RUN_DIR/plots/"
    p = sub.add_parser("plot", help=text, description=text)
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.set_defaults(func=_plot)
    group.set_defaults(func=lambda a: (group.print_help(), 1)[1])
    return group

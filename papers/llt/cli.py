"""``mpq llt indicators|search|finetune|plot``.

``search`` needs only an indicators file and a model name (no training run); ``indicators`` and
``finetune`` take ``-c CONFIG`` plus ``key=value`` overrides, resume from ``run.out_dir`` and run under
``torchrun`` (one process per GPU).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from core.errors import ConfigError
from papers.llt import PAPER


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("llt",
                                   help="LLT (ECCV 2022): learned layer-wise importance + ILP search")
    sub = parser.add_subparsers(metavar="SUBCOMMAND")

    p = sub.add_parser("indicators", help="one-time training of the importance indicators (Alg. 1)")
    _config_args(p)
    p.set_defaults(func=_cmd_indicators)

    p = sub.add_parser("search", help="ILP search (main paper Eq. 4) on an indicators file")
    p.add_argument("--indicators", required=True, help="indicators.json (mpq or official schema)")
    p.add_argument("--model", required=True, help="model name for core.models.build_model, e.g. resnet50")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--input-size", type=int, nargs=3, default=[3, 224, 224], metavar=("C", "H", "W"))
    p.add_argument("--w-bits", type=float, default=None,
                   help="BitOPs budget: uniform W<w>A<a> (with --a-bits)")
    p.add_argument("--a-bits", type=float, default=None)
    p.add_argument("--compression", type=float, default=None, help="model-size budget: compression ratio")
    p.add_argument("--alpha", type=float, default=None,
                   help="weight of the weight indicators (default: the paper's per model, else 2)")
    p.add_argument("--macs", choices=["limpq", "limpq_int", "exact"], default="limpq",
                   help="MAC convention: limpq (true-division output sizes), limpq_int (the official hook "
                        "exactly: the output area truncated to an integer) or exact (floor)")
    p.add_argument("--bits", type=int, nargs="+", default=None, help="candidate bits (default: the file's)")
    p.add_argument("--weight-only", type=int, default=None, metavar="A_BITS",
                   help="search weights only, every activation fixed at A_BITS (e.g. 8)")
    p.add_argument("--no-nonmonotone-rule", action="store_true",
                   help="do not penalise non-monotone indicators (the official code does)")
    p.add_argument("--solver", choices=["bnb", "highs"], default="bnb",
                   help="exact solver: mpq's branch and bound (default) or scipy's HiGHS MILP")
    p.add_argument("-o", "--output", default="policy.json")
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser("finetune", help="fine-tune the searched policy with LSQ (official recipe)")
    _config_args(p)
    p.set_defaults(func=_cmd_finetune)

    p = sub.add_parser("plot", help="per-layer bit allocation (weights and activations) as a PNG")
    p.add_argument("policy", help="policy.json")
    p.add_argument("-o", "--output", default=None, help="PNG path (default: next to the policy)")
    p.add_argument("--title", default=None)
    p.set_defaults(func=_cmd_plot)

    parser.set_defaults(func=lambda a: (parser.print_help(), 1)[1])
    return parser


def smoke(out_dir: Path) -> Path:
    """indicators -> ILP -> fine-tuning on the ``digits`` config shrunk to seconds; returns results.json."""
    from papers.llt.finetune import run_finetune
    from papers.llt.onetime import run_indicators

    cfg = PAPER.load_config("digits", [
        f"run.out_dir={out_dir}", "data.image_size=8", "data.batch_size=128", "indicators.schedule.epochs=1",
        "indicators.eval_bits=[]", "finetune.schedule.epochs=1", "finetune.bn_calibration_images=128",
        "run.log_every=1000"])
    run_indicators(cfg)
    run_finetune(cfg)
    return Path(cfg.run.out_dir) / "finetune" / "results.json"


def _config_args(p: argparse.ArgumentParser) -> None:
    PAPER.add_config_arguments(p, required=True)


def _cmd_indicators(args: argparse.Namespace) -> int:
    from papers.llt.onetime import run_indicators

    run_indicators(PAPER.load_config(args.config, args.overrides))
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    from papers.llt.finetune import run_finetune

    run_finetune(PAPER.load_config(args.config, args.overrides))
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    from core.models import build_model
    from papers.llt.indicators import ImportanceIndicators
    from papers.llt.search import search_policy
    from papers.llt.settings import SearchSettings, paper_alpha

    if (args.w_bits is None) != (args.a_bits is None):
        raise ConfigError("a BitOPs budget needs both --w-bits and --a-bits")
    indicators = ImportanceIndicators.load(args.indicators)
    t0 = time.perf_counter()
    model = build_model(args.model, num_classes=args.num_classes)
    alpha = args.alpha if args.alpha is not None else paper_alpha(args.model)
    settings = SearchSettings(alpha=alpha, bits=args.bits, w_bits=args.w_bits, a_bits=args.a_bits,
                              compression=args.compression, weight_only_a_bits=args.weight_only,
                              macs=args.macs, nonmonotone_rule=not args.no_nonmonotone_rule,
                              solver=args.solver, input_size=list(args.input_size))
    policy = search_policy(indicators, model, settings)
    policy.meta.update(model=args.model, indicators=str(args.indicators),
                       total_time_s=time.perf_counter() - t0)
    policy.save(args.output)
    m = policy.meta
    width = max(len(n) for n in policy.layers)
    print(f"{'#':>3}  {'layer':<{width}}  W  A")
    for i, (name, (w, a)) in enumerate(policy.layers.items()):
        print(f"{i:>3}  {name:<{width}}  {w}  {a}")
    print(f"weights: {[w for w, _ in policy.layers.values()]}")
    print(f"acts:    {[a for _, a in policy.layers.values()]}")
    print(f"budget {m['budget']}; alpha {m['alpha']}; MACs {m['macs_convention']}")
    print(f"BitOPs {m['bitops_g']:.4f} G searchable layers, {m['bitops_g_with_first_last_w8a8']:.4f} G with "
          f"first conv and fc at W8A8; size {m['size_mb']:.3f} MB of "
          f"{m['fp_size_mb']:.3f} MB float; compression {m['compression_ratio']:.4f}")
    if m["penalised_choices"]:
        print(f"penalised (non-monotone) choices forced by the budget: {m['penalised_choices']}")
    print(f"ILP solve {m['solve_time_s'] * 1e3:.1f} ms ({m['solver']}), "
          f"matrices {m['build_time_s'] * 1e3:.1f} ms, "
          f"MAC counting {m['mac_count_time_s'] * 1e3:.1f} ms; wrote {args.output}")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from core.policy import BitPolicy
    from papers.llt.plots import plot_bit_allocation

    policy = BitPolicy.load(args.policy)
    out = Path(args.output) if args.output else Path(args.policy).with_suffix(".png")
    title = args.title or _default_title(policy.meta)
    plot_bit_allocation(policy, out, title=title)
    print(f"wrote {out}")
    return 0


def _default_title(meta: dict) -> str:
    parts = [str(meta.get(k)) for k in ("model", "budget") if meta.get(k)]
    if "size_mb" in meta:
        parts.append(f"{meta['size_mb']:.2f} MB")
    return " | ".join(parts) if parts else "LLT bit allocation"

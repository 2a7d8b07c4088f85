"""What every OneMPS stage shares: process setup, data, the run layout, building the supernet and children.

Run directory (``run.out_dir``)::

    supernet/    the supernet + f_theta training (core Trainer run: run.json, config.yaml, checkpoints,
                 metrics.jsonl), costs.json (h_{k,b}), summary.json
    pareto/      candidates.json, front.json, pareto.png          (mpq onemps pareto RUN_DIR)
    finetune/<tag>/  a child fine-tuned; results.json               (mpq onemps finetune RUN_DIR)
    correlate/   one supernet per configuration, standalone runs, kendall.json (mpq onemps correlate)
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from core.engine import (
    ClassificationData,
    DistInfo,
    build_model_from_config,
    classification_data,
    num_classes_for,
    setup_process,
)
from core.errors import ConfigError
from core.nn import QuantSpec, quantize_model
from papers.onemps.config import OneMpsConfig
from papers.onemps.losses import HardwareCosts
from papers.onemps.supernet import KIND, supernet_layers

SUPERNET_DIR, PARETO_DIR, FINETUNE_DIR, CORRELATE_DIR = "supernet", "pareto", "finetune", "correlate"
COSTS_FILE, SUMMARY_FILE = "costs.json", "summary.json"
#: config sections a supernet does not depend on (its identity excludes them)
LATER_STAGES = ("pareto", "finetune", "correlate")


def setup(cfg: OneMpsConfig) -> DistInfo:
    """core.engine.setup_process: process group, seed (run.seed + rank), compiled path."""
    return setup_process(cfg.run)




def build_data(cfg: OneMpsConfig, info: DistInfo, max_steps: int = 0) -> ClassificationData:
    """core.engine.classification_data (``data.batch_size`` is global) with the train loader capped at
    ``max_steps`` batches per epoch."""
    data = classification_data(cfg.data, cfg.run.seed, info=info, max_steps=max_steps)
    data.num_classes = num_classes_for(cfg.model, cfg.data.name)
    return data


def run_paths(cfg: OneMpsConfig) -> dict[str, Path]:
    root = Path(cfg.run.out_dir)
    return {"root": root, "supernet": root / SUPERNET_DIR, "pareto": root / PARETO_DIR,
            "finetune": root / FINETUNE_DIR, "correlate": root / CORRELATE_DIR}


def float_model(cfg: OneMpsConfig) -> nn.Module:
    """The float network of ``cfg.model`` (``pretrained``: a local float checkpoint)."""
    return build_model_from_config(cfg.model, cfg.data.name)


@torch.no_grad()
def signed_input_layers(model: nn.Module, input_size: tuple[int, ...]) -> list[str]:
    """Conv / linear layers of the FLOAT ``model`` whose input takes negative values on a random normal
    batch in eval mode (e.g. MobileNet-v2's 1x1 convs after a linear bottleneck; not a conv after a ReLU)."""
    seen: dict[str, bool] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, inp, n=n: seen.__setitem__(
        n, seen.get(n, False) or bool((inp[0] < 0).any())))
        for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    try:
        model.eval()
        param = next(model.parameters())
        model(torch.randn(2, *input_size, generator=torch.Generator().manual_seed(0)).to(param))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return [n for n, negative in seen.items() if negative]


def supernet_spec(cfg: OneMpsConfig, signed: list[str]) -> QuantSpec:
    q, s = cfg.quant, cfg.search
    return QuantSpec(kind=KIND, w_quant=q.quantizer, a_quant=q.quantizer,
                     w_candidates=list(q.w_candidates), a_candidates=list(q.a_candidates),
                     w_options=dict(q.w_options), a_options=dict(q.a_options), first=q.first, last=q.last,
                     options={
                         "probability_model": s.probability_model, "mlp_depth": s.mlp_depth,
                         "mlp_width": s.mlp_width, "eta_range": [s.eta0, s.eta1], "gates": s.gates,
                         "tau": s.tau_start, "conditional_bn": q.conditional_bn, "signed_inputs": signed})


def build_supernet(cfg: OneMpsConfig, model: nn.Module, input_size: tuple[int, int, int]
                   ) -> tuple[nn.Module, HardwareCosts]:
    """Turn the float ``model`` (in place) into the supernet of ``cfg``; returns it and its costs h_{k,b}."""
    from core.bops import count

    signed = signed_input_layers(model, input_size) if cfg.quant.signed_inputs == "auto" else []
    report = count(model, tuple(input_size), convention=cfg.quant.bops_convention)
    macs = {r.name: float(r.macs) for r in report.rows}
    quantize_model(model, supernet_spec(cfg, signed))
    layers = supernet_layers(model)
    if not layers:
        raise ConfigError(f"{cfg.model.name} has no searchable layer besides its first and last layers")
    costs = HardwareCosts([n for n, _ in layers], [macs[n] for n, _ in layers],
                          [m.w_candidates for _, m in layers], [m.a_candidates for _, m in layers],
                          cfg.quant.bops_convention)
    return model, costs


def load_supernet_state(model: nn.Module, run_dir: Path, device: torch.device) -> dict:
    """Load the newest checkpoint of the supernet run ``run_dir`` into ``model``; returns the state."""
    from core.engine import Checkpointer
    from core.errors import CheckpointError

    found = Checkpointer(run_dir / "checkpoints").load_latest(map_location=device)
    if found is None:
        raise CheckpointError(f"no supernet checkpoint in {run_dir}: run `mpq onemps train` with this config "
                              "first")
    model.load_state_dict(found[1]["model"])
    return found[1]

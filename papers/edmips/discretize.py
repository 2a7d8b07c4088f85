"""Section 4.7: derive the discrete mixed-precision network from the searched soft selectors.

The search writes ``search/arch_state.json`` (per layer: candidates, alpha at full float32 precision, pi
and the cost bases). This stage reads only that file, applies the rule of ``discretize.rule`` to the
weights and the activations of each layer independently (winner-take-all on the raw alphas, as the
official code does: the float32 pi of two alphas one ulp apart can tie), and writes
``discretize/policy.json`` (a :class:`core.policy.BitPolicy`) whose ``meta`` carries the BitOps and average
bits under the ``edmips`` counting convention.

Multinomial sampling (eq. 19): each architecture is drawn layer by layer as ``O ~ Multinomial(n, pi)`` and
keeps, per layer, the candidate with the highest count among the n trials (n = ``discretize.trials``; n = 1 is
one categorical sample). With ``discretize.samples > 1`` several architectures are drawn and, as in the
paper's sampling ablation ("sampled ... with close BitOps to the uniform 2-bit model"), the one whose average
bits is closest to ``discretize.target_avg_bits`` is kept (without a target: the first). Every sample is
listed in ``discretize_samples.json``.
"""

from __future__ import annotations

import json
import math
import os
import time

import torch

from core.bops import BopsReport, count
from core.engine import RunDir, atomic_write_text, barrier, check_producer, is_main, log
from core.errors import ConfigError
from core.io import read_json
from core.policy import BitPolicy
from papers.edmips.common import (
    DISCRETIZE_DIR,
    POLICY_FILE,
    SEARCH_DIR,
    num_classes_of,
    search_dir,
    stage_dir,
    stage_identity,
)
from papers.edmips.config import EdmipsConfig
from papers.edmips.models import build_float_model
from papers.edmips.rules import RULES, select

ARCH_STATE_FILE = "arch_state.json"


def load_arch_state(path: str | os.PathLike) -> dict:
    hint = "run `mpq edmips search` with the same config (run.out_dir) first"
    state = read_json(path, "EdMIPS architecture state", hint, ConfigError)
    try:
        for layer in state["layers"]:
            _ = layer["name"], layer["pi_w"], layer["pi_a"], layer["w_candidates"], layer["a_candidates"]
            _ = layer["alpha_w"], layer["alpha_a"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path} is not an EdMIPS architecture state ({exc}); re-run the search") from exc
    return state


def choose_bits(arch_layers: list[dict], rule: str = "argmax", trials: int = 1,
                generator: torch.Generator | None = None) -> dict[str, tuple[int, int]]:
    """Apply ``rule`` to every layer: ``{name: (w_bits, a_bits)}`` in model order."""
    if rule not in RULES:
        raise ConfigError(f"unknown discretize.rule {rule!r}; choose one of {', '.join(RULES)}")
    bits = {}
    for layer in arch_layers:
        w = select(torch.tensor(layer["pi_w"]), rule, trials, generator, alpha=layer["alpha_w"])
        a = select(torch.tensor(layer["pi_a"]), rule, trials, generator, alpha=layer["alpha_a"])
        bits[layer["name"]] = (int(layer["w_candidates"][w]), int(layer["a_candidates"][a]))
    return bits


def edmips_avg_bits(arch_layers: list[dict], bits: dict[str, tuple[int, int]]) -> tuple[float, float]:
    """(BitOps, average bits) over the searched layers with the official count:
    BitOps = sum_l sp_l w_l a_l and average bits = sqrt(BitOps / sum_l sp_l) (sp_l: eq. 8, input size)."""
    bops = sum(layer["macs"] * bits[layer["name"]][0] * bits[layer["name"]][1] for layer in arch_layers)
    macs = sum(layer["macs"] for layer in arch_layers)
    return bops, math.sqrt(bops / macs) if macs > 0 else 0.0


def expected_avg_bits(arch_layers: list[dict]) -> float:
    """sqrt(E[BitOps] / MACs) of the relaxed model (eq. 12-13 with the stored pi)."""
    num = den = 0.0
    for layer in arch_layers:
        ew = sum(p * b for p, b in zip(layer["pi_w"], layer["w_candidates"]))
        ea = sum(p * b for p, b in zip(layer["pi_a"], layer["a_candidates"]))
        num += layer["macs"] * ew * ea
        den += layer["macs"]
    return math.sqrt(num / den) if den > 0 else 0.0


def discretize_state(state: dict, rule: str = "argmax", trials: int = 1, samples: int = 1,
                     target_avg_bits: float = 0.0, seed: int = 0) -> tuple[BitPolicy, list[dict]]:
    """The policy chosen from an architecture state, and a summary of every drawn sample."""
    if samples < 1:
        raise ConfigError(f"discretize.samples must be >= 1, got {samples}")
    if rule == "argmax" and samples != 1:
        raise ConfigError("discretize.samples > 1 only makes sense with discretize.rule=multinomial "
                          "(winner-take-all is deterministic)")
    layers = state["layers"]
    gen = torch.Generator().manual_seed(int(seed))
    drawn = []
    for k in range(samples):
        bits = choose_bits(layers, rule, trials, gen)
        bops, avg = edmips_avg_bits(layers, bits)
        drawn.append({"sample": k, "bits": bits, "bops": bops, "avg_bits": avg})
    chosen = drawn[0]
    if target_avg_bits > 0:
        chosen = min(drawn, key=lambda d: abs(d["avg_bits"] - target_avg_bits))
    meta = {
        "method": "edmips",
        "model": state.get("model"),
        "eta": state.get("eta"),
        "complexity": state.get("complexity"),
        "rule": rule,
        "trials": trials if rule == "multinomial" else None,
        "samples": samples,
        "sample": chosen["sample"],
        "seed": seed if rule == "multinomial" else None,
        "convention": "edmips",
        "bops": chosen["bops"],
        "avg_bits": chosen["avg_bits"],
        "expected_avg_bits": expected_avg_bits(layers),
        "layer_macs": {layer["name"]: layer["macs"] for layer in layers},
        "input_size": state.get("input_size"),
        "search_epochs": state.get("epoch"),
    }
    policy = BitPolicy(dict(chosen["bits"]), meta)
    summary = [{"sample": d["sample"], "bops": d["bops"], "avg_bits": d["avg_bits"],
                "layers": [{"name": n, "w_bits": w, "a_bits": a} for n, (w, a) in d["bits"].items()]}
               for d in drawn]
    return policy, summary


def policy_counts(cfg: EdmipsConfig, policy: BitPolicy, input_size: tuple[int, ...], num_classes: int
                  ) -> BopsReport:
    """The ``edmips``-convention count of ``policy`` on the float network of ``cfg``."""
    model = build_float_model(cfg.model, num_classes)
    return count(model, tuple(input_size), policy=policy, convention="edmips")


def run_discretize(cfg: EdmipsConfig) -> BitPolicy:
    """``mpq edmips discretize``: the search's arch_state.json -> RUN_DIR/discretize/policy.json.

    The search must be this config's (its ``run.json``: differing keys are an error naming them, a search
    that stopped early a warning). The policy's meta carries the records of both producers, ``search``
    and ``producer`` (this stage; :meth:`core.engine.RunDir.producer_record`), which the training checks."""
    t0 = time.perf_counter()
    d = cfg.discretize
    source = search_dir(cfg)
    with RunDir(stage_dir(cfg, DISCRETIZE_DIR)) as run:
        run.claim(stage_identity(cfg, DISCRETIZE_DIR), cfg.run.resume)  # nothing written yet
        state = load_arch_state(source / ARCH_STATE_FILE)
        check_producer(source, stage_identity(cfg, SEARCH_DIR), what="EdMIPS search",
                       fix="Run `mpq edmips search` with this config first (or set discretize.search_dir "
                           "to a search of this config).")
        policy, summary = discretize_state(state, d.rule, d.trials, d.samples, d.target_avg_bits, d.seed)
        report = policy_counts(cfg, policy, state["input_size"], num_classes_of(cfg))
        run.start(cfg)
        policy.meta.update(bops=report.bops, avg_bits=report.avg_bits, macs=report.macs,
                           dataset=cfg.data.name, table_row=cfg.table_row,
                           discretize_wall_s=time.perf_counter() - t0,
                           search=RunDir(source).producer_record(), producer=run.producer_record())
        if is_main():
            policy.save(run.path / POLICY_FILE)
            atomic_write_text(run.path / "discretize_samples.json", json.dumps(summary, indent=1) + "\n")
        barrier()  # under torchrun, every rank of a following train stage reads the file rank 0 wrote
    log(f"EdMIPS discretize ({d.rule}): {len(policy)} layers, BitOps {report.bops / 1e9:.4f} G, "
        f"average bits {report.avg_bits:.3f} (edmips convention) -> {run.path / POLICY_FILE}")
    return policy

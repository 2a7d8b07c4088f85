"""Derivation of the final model: the highest-probability pair of every block.

The search writes ``search/arch_state.json`` (per block: layers, pairs, ``p`` and MACs inside the budget).
This stage reads only that file and writes ``policy.json``, a layer-level :class:`core.policy.BitPolicy`
(every layer of a block at the block's pair) whose ``meta`` carries the per-block pairs, the BOPs and
average bits under the ``bpnas`` convention and convergence diagnostics.

E(SN) < B_max holds throughout the search, but E(SN) is an expectation: the argmax network can exceed
B_max while ``p`` is not yet one-hot (the Prob-1 regularizer drives it there). With ``derive.repair``
(default) such a network is cheapened greedily: among all switches of one block to a cheaper pair, take
the one losing the least log-probability per BOP saved, until the budget holds; every switch is listed in
``meta["repairs"]``. ``derive.repair=false`` keeps the argmax network and records ``within_budget: false``.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from core.engine import barrier, is_main, log
from core.errors import ConfigError
from core.policy import BitPolicy
from papers.bpnas.common import ARCH_STATE_FILE, POLICY_FILE, num_classes_of, run_paths
from papers.bpnas.config import BpnasConfig
from papers.bpnas.models import CONVENTION, policy_report
from papers.bpnas.search import diagnostics


def load_arch_state(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} not found: run `mpq bpnas search` with the same config (run.out_dir) "
                          "first")
    try:
        state = json.loads(path.read_text())
        for block in state["blocks"]:
            _ = block["name"], block["layers"], block["pairs"], block["probs"], block["macs"]
        _ = state["b_max"], state["flops"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path} is not a BP-NAS architecture state ({exc}); re-run the search") from exc
    return state


def avg_bits(state: dict, pairs: dict[str, tuple[int, int]]) -> float:
    """sqrt(BOPs / FLOPs) of a per-block choice, from the state's block MACs."""
    bops = sum(b["macs"] * pairs[b["name"]][0] * pairs[b["name"]][1] for b in state["blocks"])
    return math.sqrt((bops + state.get("fixed_bops", 0.0)) / state["flops"])


def derive_pairs(state: dict, repair: bool = True) -> tuple[dict[str, tuple[int, int]], list[dict]]:
    """The argmax pair of every block, repaired to the budget if asked; and the repairs made."""
    blocks = state["blocks"]
    index = {b["name"]: max(range(len(b["probs"])), key=b["probs"].__getitem__) for b in blocks}

    def pairs() -> dict[str, tuple[int, int]]:
        return {b["name"]: tuple(b["pairs"][index[b["name"]]]) for b in blocks}

    repairs: list[dict] = []
    b_max = state["b_max"]
    while repair and avg_bits(state, pairs()) > b_max:
        best = None
        for b in blocks:
            cur = index[b["name"]]
            c_cur = b["pairs"][cur][0] * b["pairs"][cur][1]
            for k, (w, a) in enumerate(b["pairs"]):
                saved = b["macs"] * (c_cur - w * a)
                if saved <= 0:
                    continue
                lost = math.log(max(b["probs"][cur], 1e-300)) - math.log(max(b["probs"][k], 1e-300))
                score = lost / saved
                if best is None or score < best[0]:
                    best = (score, b["name"], k)
        if best is None:
            break  # every block already at its cheapest pair
        _, name, k = best
        block = next(b for b in blocks if b["name"] == name)
        repairs.append({"block": name, "from": block["pairs"][index[name]], "to": block["pairs"][k]})
        index[name] = k
    return pairs(), repairs


def derive_policy(state: dict, repair: bool = True) -> BitPolicy:
    """``policy.json``'s content from an architecture state (meta without the core count)."""
    chosen, repairs = derive_pairs(state, repair)
    bits = avg_bits(state, chosen)
    layers = {name: chosen[b["name"]] for b in state["blocks"] for name in b["layers"]}
    meta = {"method": "bpnas", "model": state.get("model"), "b_max": state["b_max"], "convention": CONVENTION,
            "blocks": {n: list(p) for n, p in chosen.items()}, "avg_bits": bits,
            "within_budget": bits <= state["b_max"], "repairs": repairs,
            "expected_avg_bits": state.get("expected_avg_bits"), "search_epochs": state.get("epoch"),
            "input_size": state.get("input_size"), "diagnostics": diagnostics(state["blocks"])}
    return BitPolicy(layers, meta)


def run_derive(cfg: BpnasConfig) -> BitPolicy:
    """``mpq bpnas derive``: RUN_DIR/search/arch_state.json -> RUN_DIR/policy.json."""
    t0 = time.perf_counter()
    root, search_dir, _ = run_paths(cfg)
    state = load_arch_state(search_dir / ARCH_STATE_FILE)
    policy = derive_policy(state, cfg.derive.repair)
    report = policy_report(cfg, policy, num_classes_of(cfg), state["input_size"])
    if not math.isclose(report.avg_bits, policy.meta["avg_bits"], rel_tol=1e-9):
        raise ConfigError(f"the architecture state's MACs disagree with core.bops on {cfg.model.name} "
                          f"({policy.meta['avg_bits']:.6f} vs {report.avg_bits:.6f} bits): the state belongs "
                          "to another model or input size")
    policy.meta.update(bops=report.bops, flops=report.macs, dataset=cfg.data.name, table_row=cfg.table_row,
                       derive_wall_s=time.perf_counter() - t0)
    if not policy.meta["within_budget"]:
        log(f"BP-NAS derive: the argmax network averages {report.avg_bits:.4f} bits > B_max = "
            f"{state['b_max']:g} (derive.repair=false); the search had not converged to one-hot p")
    if is_main():
        policy.save(root / POLICY_FILE)
    barrier()
    log(f"BP-NAS derive: {len(policy.meta['blocks'])} blocks, {report.bops / 1e6:.3f} M BOPs, "
        f"{report.avg_bits:.4f} average bits (B_max {state['b_max']:g}, "
        f"{len(policy.meta['repairs'])} repairs) -> {root / POLICY_FILE}")
    return policy


"""End to end on the embedded digits: indicators (Alg. 1) -> ILP -> fine-tuning -> results.json, resumable."""

from __future__ import annotations

import pytest

from core.config import load_config
from core.policy import BitPolicy
from core.results import load_results
from papers.llt.config import LLTConfig
from papers.llt.finetune import run_finetune
from papers.llt.indicators import ImportanceIndicators
from papers.llt.onetime import run_indicators

CONFIG = "papers/llt/configs/digits.yaml"


@pytest.mark.slow
def test_digits_pipeline_writes_indicators_policy_and_results(tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    overrides = [f"run.out_dir={tmp_path}", "data.batch_size=256", "indicators.schedule.epochs=1",
                 "indicators.eval_bits=[]", "finetune.schedule.epochs=1",
                 "finetune.bn_calibration_images=256", "run.log_every=1000"]
    cfg = load_config(LLTConfig, root / CONFIG, overrides)
    path = run_indicators(cfg)
    ind = ImportanceIndicators.load(path)
    assert ind.bits == [6, 4, 3, 2] and len(ind.layer_names) == 6
    results = run_finetune(cfg)
    policy = BitPolicy.load(tmp_path / "finetune" / "policy.json")
    assert list(policy.layers) == ind.layer_names
    assert policy.meta["bitops"] <= policy.meta["bitops_budget"]
    saved = load_results(tmp_path / "finetune" / "results.json")  # validated against core.results
    assert saved == results and saved.paper == "llt" and saved.table_row is None
    # digits counts with `exact` (search.macs): every layer, the W8 first conv and W8A8 fc included
    assert (saved.counts.convention, saved.counts.scope) == ("exact", "all")
    assert saved.counts.bops > policy.meta["bitops"]
    assert saved.extra["bn_calibration_images"] == 256 and saved.policy == policy.to_dict()
    times = saved.wall_time_s
    assert set(times) == {"indicators", "search", "train", "bn_reestimation", "eval", "total"}
    assert times["total"] == pytest.approx(sum(v for k, v in times.items() if k != "total"))
    # resuming a finished run re-uses the checkpoint instead of training again; its training time is the
    # one recorded in the checkpoint (all but the writing of that checkpoint), not this process's ~0 s
    again = run_finetune(cfg)
    assert 0.5 * times["train"] < again.wall_time_s["train"] <= times["train"]

"""LLT's two run directories (indicators/, finetune/) are continued only by their own run (issue #10),
through the CLI on digits with tiny schedules: a budget change is one error and leaves policy.json and
results.json as they were, the fine-tuning checks the indicators it consumes, a key of the other stage
does not disown a run, and `run.resume=none` starts clean."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from core.cli import main
from core.models import build_model
from core.policy import BitPolicy
from core.results import load_results


def _fast(out: Path, *extra: str) -> list[str]:
    return ["-c", "digits", f"run.out_dir={out}", "data.image_size=8", "data.batch_size=256",
            "indicators.schedule.epochs=1", "indicators.eval_bits=[]", "finetune.schedule.epochs=1",
            "finetune.bn_calibration_images=256", "run.log_every=1000", *extra]


def _starts(stage_dir: Path) -> int:
    return len(json.loads((stage_dir / "run.json").read_text())["starts"])


def test_finetune_continues_only_its_own_run_and_checks_the_indicators(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["llt", "indicators", *_fast(out)]) == 0
    assert main(["llt", "finetune", *_fast(out)]) == 0
    policy, results = out / "finetune" / "policy.json", out / "finetune" / "results.json"
    before = {p: p.read_bytes() for p in (policy, results, out / "finetune" / "run.json")}
    capsys.readouterr()
    # a budget change once overwrote policy.json, trained nothing and reported the old weights
    w4a4 = ["search.w_bits=4", "search.a_bits=4"]
    assert main(["llt", "finetune", *_fast(out, *w4a4)]) == 2
    err = capsys.readouterr().err
    assert "search.w_bits: 3.0 -> 4.0" in err and "search.a_bits: 3.0 -> 4.0" in err
    assert "run.resume=none" in err
    # the indicators it would search from were made by another run (fewer epochs)
    assert main(["llt", "finetune", *_fast(out, "indicators.schedule.epochs=2")]) == 2
    err = capsys.readouterr().err
    assert f"LLT indicators in {out / 'indicators'} was made by another run" in err
    assert "indicators.schedule.epochs: 1 -> 2" in err and "mpq llt indicators" in err
    assert {p: p.read_bytes() for p in before} == before  # validate first, then write: nothing written
    # a fine-tuning key does not disown the indicators (finished: continued, nothing retrained)
    assert main(["llt", "indicators", *_fast(out, "finetune.optim.lr=0.5")]) == 0
    assert _starts(out / "indicators") == 2 and "resumed from" in capsys.readouterr().out
    # resume=none: the new budget's run from scratch, the old one set aside whole
    assert main(["llt", "finetune", *_fast(out, *w4a4, "run.resume=none")]) == 0
    assert "resumed from" not in capsys.readouterr().out
    assert BitPolicy.load(policy).meta["budget"] == "BitOPs<=W4A4"
    assert load_results(results).policy == BitPolicy.load(policy).to_dict()
    (previous,) = (out / "finetune" / ".previous").iterdir()
    assert (previous / "policy.json").read_bytes() == before[policy]
    assert (previous / "results.json").read_bytes() == before[results]


def test_finetune_of_a_given_policy_ignores_the_search_and_indicator_keys(tmp_path, capsys):
    names = [n for n, m in build_model("digits_resnet", num_classes=10).named_modules()
             if isinstance(m, torch.nn.Conv2d)][1:]
    given = tmp_path / "w4a4.json"
    BitPolicy.uniform(names, 4, 4).save(given)
    args = _fast(tmp_path / "run", f"finetune.policy={given}", "finetune.init=pretrained")
    assert main(["llt", "finetune", *args]) == 0
    assert main(["llt", "finetune", *args, "indicators.schedule.epochs=7", "search.alpha=3"]) == 0
    assert _starts(tmp_path / "run" / "finetune") == 2 and "resumed from" in capsys.readouterr().out
    # the policy is the run's input: other bits in the same file are another run
    BitPolicy.uniform(names, 3, 3).save(given)
    assert main(["llt", "finetune", *args]) == 2
    assert "policy.layer1.0.conv1: [4, 4] -> [3, 3]" in capsys.readouterr().err

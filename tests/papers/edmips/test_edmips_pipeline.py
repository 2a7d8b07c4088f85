"""End to end on the embedded digits set: search -> discretize -> train through the CLI, plots, resume."""

import argparse
import json
from pathlib import Path

import pytest

from core.errors import ConfigError
from core.policy import BitPolicy
from core.results import load_results
from papers.edmips import PAPER
from papers.edmips.cli import register


def _fast(out_dir, *extra):
    return ["-c", "digits", f"run.out_dir={out_dir}", "data.image_size=8", "data.batch_size=32",
            "model.kwargs={widths: [4, 8, 8], blocks: 1}", "search.schedule.epochs=2",
            "search.max_steps_per_epoch=3", "train.schedule.epochs=1", "train.schedule.milestones=[1]",
            "train.max_steps_per_epoch=3", "run.log_every=100", *extra]


def _mpq(*argv):
    parser = argparse.ArgumentParser(prog="mpq")
    register(parser.add_subparsers())
    args = parser.parse_args(list(argv))
    return args.func(args)


@pytest.mark.slow  # ~30 s on a loaded 2-core machine, mostly the first import of sklearn and matplotlib
def test_search_discretize_train_writes_policy_and_results(tmp_path):
    out = tmp_path / "run"
    assert _mpq("edmips", "search", *_fast(out)) == 0
    history = json.loads((out / "search" / "arch_history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [0, 1, 2]
    assert len(history["layers"]) == 6 and history["w_candidates"] == [1, 2, 3, 4]

    assert _mpq("edmips", "discretize", *_fast(out)) == 0
    policy = BitPolicy.load(out / "discretize" / "policy.json")
    state = json.loads((out / "search" / "arch_state.json").read_text())
    assert policy.names == [layer["name"] for layer in state["layers"]]
    for layer in state["layers"]:  # winner-take-all of eq. 18 on the alphas, weights and activations apart
        w, a = policy[layer["name"]]
        assert w == layer["w_candidates"][max(range(4), key=layer["alpha_w"].__getitem__)]
        assert a == layer["a_candidates"][max(range(3), key=layer["alpha_a"].__getitem__)]
    assert policy.meta["method"] == "edmips" and policy.meta["convention"] == "edmips"
    assert 1.0 <= policy.meta["avg_bits"] <= 4.0

    assert _mpq("edmips", "train", *_fast(out)) == 0
    results = load_results(out / "train" / "results.json")  # validated against core.results.RunResult
    assert results.paper == "edmips" and results.method == "edmips" and results.table_row == "digits-demo"
    assert results.counts.convention == "edmips" and results.counts.scope == "searchable"
    assert results.counts.bops == pytest.approx(policy.meta["bops"])
    assert set(results.wall_time_s) == {"search", "discretize", "train"}
    assert 0.0 <= results.metrics["top1"] <= 100.0 and results.extra["policy_source"] == "searched"

    assert _mpq("edmips", "plot", str(out)) == 0
    for png in ("arch_evolution_weights.png", "arch_evolution_activations.png", "bit_allocation.png",
                "complexity_evolution.png"):
        assert (out / "plots" / png).stat().st_size > 1000


def test_search_resumes_and_extends(tmp_path):
    out = tmp_path / "run"
    _mpq("edmips", "search", *_fast(out, "search.schedule.epochs=1"))
    # one more epoch: a changed identity key, so the run continues only when forced (recorded in run.json)
    _mpq("edmips", "search", *_fast(out, "search.schedule.epochs=2", "run.resume=force"))
    history = json.loads((out / "search" / "arch_history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [0, 1, 2]
    records = [json.loads(line) for line in (out / "search" / "metrics.jsonl").read_text().splitlines()]
    epochs = [r["epoch"] for r in records if r.get("kind") == "epoch"]
    assert epochs == [0, 1]


def test_uniform_baseline_and_multinomial_discretize(tmp_path):
    out = tmp_path / "run"
    _mpq("edmips", "train", *_fast(out, "train.policy=uniform"))
    results = load_results(out / "train" / "results.json")
    assert {(e["w_bits"], e["a_bits"]) for e in results.policy["layers"]} == {(2, 2)}
    assert results.counts.avg_bits == pytest.approx(2.0) and results.method == "uniform"
    _mpq("edmips", "search", *_fast(out, "search.schedule.epochs=1"))
    _mpq("edmips", "discretize", *_fast(out, "search.schedule.epochs=1", "discretize.rule=multinomial",
                                         "discretize.trials=50", "discretize.samples=3",
                                         "discretize.target_avg_bits=2.0"))
    samples = json.loads((out / "discretize" / "discretize_samples.json").read_text())
    policy = BitPolicy.load(out / "discretize" / "policy.json")
    assert len(samples) == 3 and policy.meta["rule"] == "multinomial" and policy.meta["trials"] == 50


def test_plot_compares_the_complexity_evolution_of_several_searches(tmp_path):
    """Figure 7(b) style: the complexity (average bits) of two searches of different eta in one figure,
    from their arch_history.json files alone."""
    runs = []
    for eta, drift in ((0.001, 0.1), (0.002, 0.2)):
        run = tmp_path / f"eta{eta}"
        (run / "search").mkdir(parents=True)
        epochs = [{"epoch": e, "pi_w": [[0.5, 0.5]], "pi_a": [[0.5, 0.5]], "complexity": 1.0,
                   "expected_avg_bits": 3.0 - drift * e, "argmax_avg_bits": 3.2 - drift * e}
                  for e in range(4)]
        history = {"layers": ["layer1.0.conv1"], "w_candidates": [2, 4], "a_candidates": [2, 4], "eta": eta,
                   "complexity": "bops", "epochs": epochs}
        (run / "search" / "arch_history.json").write_text(json.dumps(history))
        runs.append(str(run))
    out = tmp_path / "fig7b.png"
    assert _mpq("edmips", "plot", *runs, "--out", str(out)) == 0
    assert out.stat().st_size > 1000
    for run in runs:
        assert (Path(run) / "plots" / "complexity_evolution.png").stat().st_size > 1000


def test_cli_errors_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="packaged: .*digits"):
        PAPER.config_path("no_such_config")
    with pytest.raises(ConfigError, match="unknown config key"):
        PAPER.load_config("digits", ["search.etaa=1"])
    with pytest.raises(ConfigError, match="arch_state.json"):
        _mpq("edmips", "discretize", *_fast(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="discretize"):
        _mpq("edmips", "train", *_fast(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="nothing to plot"):
        (tmp_path / "bare").mkdir()
        _mpq("edmips", "plot", str(tmp_path / "bare"))


@pytest.mark.parametrize("name", PAPER.config_names())
def test_every_packaged_config_loads(name):
    cfg = PAPER.load_config(name)
    assert cfg.table_row, f"{name}.yaml must name its table row"
    assert cfg.search.strategy in ("single_pass", "alternating")
    assert cfg.discretize.rule in ("argmax", "multinomial")
    assert cfg.train.policy in ("searched", "uniform", "float")

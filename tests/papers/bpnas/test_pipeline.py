"""End to end through the CLI: search -> derive -> train on digits, the published Table 1 policies training
directly on CIFAR-format data, the figure runs, the plots, and bad input."""

from __future__ import annotations

import json

import pytest
import torch

from core.cli import main as mpq
from core.data import build_dataset
from core.export.check import compare_onnxruntime
from core.export.qdq import export_onnx
from core.export.spec import model_from_run
from core.policy import BitPolicy
from core.results import load_results
from papers.bpnas import PAPER
from papers.bpnas.cli import SMOKE as TINY
from papers.bpnas.train import packaged_policies
from tests.fixtures import write_cifar10


@pytest.mark.slow  # ~20 s on a loaded 2-core machine (imports of matplotlib included)
def test_search_derive_train_and_plot_through_the_cli(tmp_path):
    out = tmp_path / "run"
    assert mpq(["bpnas", "search", "-c", "digits", f"run.out_dir={out}", *TINY]) == 0
    state = json.loads((out / "search" / "arch_state.json").read_text())
    history = json.loads((out / "search" / "arch_history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [0, 1, 2]
    assert all(e["expected_avg_bits"] < 3.5 for e in history["epochs"])
    policy = BitPolicy.load(out / "policy.json")
    assert len(state["blocks"]) == 3 and len(policy) == 6
    for block in state["blocks"]:  # the highest-probability pair of every block, for all its layers
        best = block["pairs"][max(range(len(block["probs"])), key=block["probs"].__getitem__)]
        assert policy.meta["blocks"][block["name"]] == best or policy.meta["repairs"]
        assert {policy[n] for n in block["layers"]} == {tuple(policy.meta["blocks"][block["name"]])}
    assert policy.meta["method"] == "bpnas" and policy.meta["convention"] == "bpnas"
    assert policy.meta["within_budget"] and policy.meta["avg_bits"] <= 3.5

    assert mpq(["bpnas", "train", "-c", "digits", f"run.out_dir={out}", *TINY]) == 0
    results = load_results(out / "results.json")
    assert results.paper == results.method == "bpnas" and results.counts.convention == "bpnas"
    assert results.counts.bops == pytest.approx(policy.meta["bops"])
    assert results.extra["within_budget"] is True
    assert set(results.wall_time_s) == {"search", "derive", "train"}
    assert results.policy["meta"]["blocks"] == policy.meta["blocks"]
    # the final network leaves through `mpq export` (scale_clip grids) and matches onnxruntime
    assert mpq(["export", str(out), "-o", str(tmp_path / "bpnas.onnx")]) == 0
    model, _, spec, _ = model_from_run(out)
    val = build_dataset("digits", split="val", image_size=spec.input_size[-1])
    images = torch.stack([val[i][0] for i in range(64)])
    report = compare_onnxruntime(model, export_onnx(model, images[:1]), images)
    assert report.ok(ulps=16), report.summary()

    assert mpq(["bpnas", "plot", "search", str(out)]) == 0
    for png in ("arch_evolution.png", "complexity.png"):
        assert (out / "plots" / png).stat().st_size > 1000


@pytest.mark.parametrize("b_max", ["3", "3.5", "4"])
def test_table1_policies_train_directly(tmp_path, b_max):
    """The packaged supp. Table 1 configurations train as they are (CIFAR-10 format fixture, one step)."""
    root = tmp_path / "cifar"
    write_cifar10(root, 2)
    out = tmp_path / "run"
    assert mpq(["bpnas", "train", "-c", f"cifar10_resnet20_table1_bmax{b_max}", f"data.root={root}",
                f"run.out_dir={out}", "data.batch_size=10", "data.workers=0", "run.device=cpu",
                "train.schedule.epochs=1", "train.max_steps_per_epoch=1", "run.log_every=100"]) == 0
    results = load_results(out / "results.json")
    expected = {"3": 2.9605, "3.5": 3.1947, "4": 3.5438}[b_max]
    assert results.counts.avg_bits == pytest.approx(expected, abs=1e-4)
    assert results.extra["b_max"] == float(b_max) and results.extra["within_budget"] is True
    assert results.policy["meta"]["source"].startswith("BP-NAS supplementary Table 1")


@pytest.mark.slow  # two short trainings
def test_figure1_run_writes_its_png(tmp_path):
    out = tmp_path / "figs"
    assert mpq(["bpnas", "plot", "fig1", "-c", "digits_figures", f"run.out_dir={out}", *TINY]) == 0
    assert (out / "figures" / "fig1.png").stat().st_size > 1000
    arms = [load_results(out / "figures" / "fig1" / arm / "results.json")
            for arm in ("with_uniformization", "without_uniformization")]
    assert arms[0].policy["layers"] == arms[1].policy["layers"]  # one random policy for both
    assert {tuple(p) for p in arms[0].policy["meta"]["blocks"].values()} <= {(1, 1), (2, 2), (4, 4), (8, 8)}
    assert [a.extra["quantizers"]["uniformize"] for a in arms] == [True, False]


def test_bad_input_gives_one_clear_error(tmp_path, capsys):
    out = tmp_path / "run"
    assert mpq(["bpnas", "search", "-c", "digits", f"run.out_dir={out}", "search.b_max=2.5", *TINY]) == 2
    assert "infeasible" in capsys.readouterr().err and not (out / "search").exists()
    assert mpq(["bpnas", "search", "-c", "digits", "search.bmax=3"]) == 2
    assert "unknown config key search.bmax" in capsys.readouterr().err
    assert mpq(["bpnas", "train", "-c", "digits", f"run.out_dir={out}"]) == 2
    assert "mpq bpnas search" in capsys.readouterr().err
    assert mpq(["bpnas", "search", "-c", "digits", "search.init_margin=0.0001"]) == 2
    assert "init_margin" in capsys.readouterr().err
    assert mpq(["bpnas", "train", "-c", "nope"]) == 2
    assert "packaged" in capsys.readouterr().err


def test_packaged_configs_name_their_policies():
    names = PAPER.config_names()
    assert len(names) >= 11
    for name in names:
        policy = PAPER.load_config(name).train.policy
        assert policy in ("searched", "random") or policy in packaged_policies(), name
    assert PAPER.load_config("cifar10_resnet20_bmax3").search.b_max == 3.0
    assert PAPER.load_config("cifar10_resnet20_table1_bmax3.5").train.policy == "table1_bmax3.5"
    assert PAPER.load_config("resnet50_imagenet").model.name == "resnet50"

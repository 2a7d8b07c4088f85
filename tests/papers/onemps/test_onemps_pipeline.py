"""End to end through the CLI on the embedded digits set: train -> pareto -> finetune -> plot, the
correlation study, and the stages' errors on bad input."""

from __future__ import annotations

import json

import pytest
import torch

from core.cli import main as mpq
from core.data import build_dataset
from core.errors import ConfigError
from core.export.check import compare_onnxruntime
from core.export.qdq import export_onnx
from core.export.spec import model_from_run
from core.pareto import pareto_front
from core.results import load_results
from papers.onemps.cli import SMOKE
from papers.onemps.correlate import kendall_tau, sample_architectures
from tests.papers.onemps.helpers import tiny_supernet


def _fast(out, *extra):
    return ["-c", "digits", f"run.out_dir={out}", *SMOKE, *extra]


def test_the_onemps_kind_passes_cores_layer_kind_smoke_test():
    """core's test imports the paper packages, whose loading must not import torch: the kind registers
    when papers.onemps.supernet is imported, so its smoke test is run here with the same code."""
    import papers.onemps.supernet  # noqa: F401
    from tests.core.test_nn_kinds import test_every_kind_builds_trains_and_round_trips as smoke

    smoke("onemps")


@pytest.mark.slow  # ~30 s on a loaded 2-core machine
def test_train_pareto_finetune_plot_through_the_cli(tmp_path):
    out = tmp_path / "run"
    assert mpq(["onemps", "train", *_fast(out)]) == 0
    supernet = out / "supernet"
    assert (supernet / "checkpoints" / "last.pt").is_file() and (supernet / "costs.json").is_file()
    summary = json.loads((supernet / "summary.json").read_text())
    assert set(summary["diagnostics"]) == {"start", "end"}

    assert mpq(["onemps", "pareto", str(out), "--points", "4", "pareto.spacing=linear"]) == 0
    etas = [c["eta"] for c in json.loads((out / "pareto" / "candidates.json").read_text())["candidates"]]
    assert etas == pytest.approx([0.001 + 0.999 * k / 3 for k in range(4)])  # the abstract's linear sweep
    assert mpq(["onemps", "pareto", str(out), "--points", "4"]) == 0
    cands = json.loads((out / "pareto" / "candidates.json").read_text())
    front = json.loads((out / "pareto" / "front.json").read_text())["front"]
    assert len(cands["candidates"]) == 4 and cands["points"] == 4 and cands["spacing"] == "log"
    etas = [c["eta"] for c in cands["candidates"]]
    assert etas == pytest.approx([0.001, 0.01, 0.1, 1.0])  # digits: [eta0, eta1] = [0.001, 1]
    distinct = [c for c in cands["candidates"] if "same_as_eta" not in c]
    assert 1 <= len(front) <= len(distinct)
    for p in front:  # non-dominated among the distinct children
        assert not any(q["bops"] <= p["bops"] and q["top1"] >= p["top1"] and (q["bops"], q["top1"]) !=
                       (p["bops"], p["top1"]) for q in distinct)
    assert (out / "pareto" / "pareto.png").stat().st_size > 1000

    assert mpq(["onemps", "finetune", str(out), "--point", "0", "finetune.max_steps_per_epoch=2"]) == 0
    result = load_results(out / "finetune" / "point0" / "results.json")
    assert result.paper == "onemps" and result.counts.convention == "bpnas"
    assert {n: tuple(b) for n, b in front[0]["policy"].items()} == {
        e["name"]: (e["w_bits"], e["a_bits"]) for e in result.policy["layers"]}
    assert result.counts.avg_bits == pytest.approx(front[0]["avg_bits"])
    # the fine-tuned child leaves through `mpq export`: rebuilt from export.json it is the evaluated network
    child_dir = out / "finetune" / "point0"
    assert mpq(["export", str(child_dir), "-o", str(tmp_path / "child.onnx")]) == 0
    model, policy, spec, _ = model_from_run(child_dir)
    assert policy.to_dict()["layers"] == result.policy["layers"]
    val = build_dataset("digits", split="val", image_size=spec.input_size[-1])
    images = torch.stack([val[i][0] for i in range(len(val))])
    labels = torch.tensor([val[i][1] for i in range(len(val))])
    with torch.no_grad():
        top1 = 100.0 * float((model.eval()(images).argmax(1) == labels).float().mean())
    assert top1 == pytest.approx(result.metrics["top1"], abs=1e-6)
    report = compare_onnxruntime(model, export_onnx(model, images[:1]), images[:64])
    assert report.ok(ulps=16), report.summary()

    assert mpq(["onemps", "plot", str(out)]) == 0
    assert (out / "plots" / "bits_vs_eta.png").stat().st_size > 1000
    assert (out / "plots" / "pareto.png").stat().st_size > 1000


@pytest.mark.slow  # ~40 s: 3 standalone networks, 2 supernets
def test_correlation_study_on_digits(tmp_path):
    out = tmp_path / "run"
    row = "onemps/kendall-tau/resnet18-dnas"
    study_keys = ["correlate.architectures=3", "search.eta=0.1", "correlate.schedule.epochs=1",
                  "correlate.presets=[onemps, dnas]", f"correlate.table_rows={{dnas: {row}}}"]
    assert mpq(["onemps", "correlate", *_fast(out, *study_keys)]) == 0
    study = json.loads((out / "correlate" / "kendall.json").read_text())
    assert len(study["architectures"]) == len(study["standalone_top1"]) == 3
    for res in study["presets"].values():
        assert res["tau"] == pytest.approx(kendall_tau(res["supernet_top1"], study["standalone_top1"])[0])
    assert load_results(out / "correlate" / "dnas" / "results.json").table_row == row
    assert "tau" in load_results(out / "correlate" / "onemps" / "results.json").metrics


def test_kendall_tau_is_scipys_tau_b():
    from scipy.stats import kendalltau

    x, y = [1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 1.0, 4.0, 3.0, 5.0]
    tau, _ = kendall_tau(x, y)
    assert tau == pytest.approx(kendalltau(x, y).statistic)
    concordant, discordant = 8, 2  # of the 10 pairs, (1,2) and (3,4) swap
    assert tau == pytest.approx((concordant - discordant) / 10)
    assert kendall_tau([1, 2, 3], [3, 2, 1])[0] == pytest.approx(-1.0)


def test_sampled_architectures_are_distinct_and_spread_over_the_bops_range():
    _, _, costs = tiny_supernet()
    archs = sample_architectures(costs, 6, seed=0)
    assert len({tuple(a[n] for n in costs.names) for a in archs}) == 6
    bops = [costs.bops(a) for a in archs]
    assert bops[0] < bops[-1] and min(bops) <= bops[0] * 1.5


def test_pareto_extraction_keeps_the_non_dominated_set():
    points = [(4.0, 90.0), (2.0, 80.0), (3.0, 70.0), (2.0, 80.0), (1.0, 60.0), (5.0, 89.0)]
    keep = pareto_front(points, maximize=(False, True))
    assert keep == [0, 1, 3, 4]
    for i in keep:
        assert not any(b <= points[i][0] and a >= points[i][1] and (b, a) != points[i] for b, a in points)


def test_stages_refuse_bad_input(tmp_path):
    from papers.onemps.cli import load_run
    from papers.onemps.config import load_onemps_config

    assert mpq(["onemps", "pareto", str(tmp_path / "nothing")]) == 2  # core.cli: `error: ...`, exit 2
    with pytest.raises(ConfigError, match="not the run directory"):
        load_run(str(tmp_path / "nothing"), [])
    with pytest.raises(ConfigError, match="unknown preset"):
        load_onemps_config(None, [], "nope")
    with pytest.raises(ConfigError, match="eta1"):
        load_onemps_config(None, ["search.eta0=2", "search.eta1=1"])
    with pytest.raises(ConfigError, match="fixed"):
        load_onemps_config(None, ["search.hardware_loss=multiplicative"])
    out = tmp_path / "vimps"
    assert mpq(["onemps", "train", "--preset", "vimps", *_fast(out)]) == 0
    with pytest.raises(ConfigError, match="one architecture, not a front"):
        from papers.onemps.pareto import run_pareto

        run_pareto(load_run(str(out), []))

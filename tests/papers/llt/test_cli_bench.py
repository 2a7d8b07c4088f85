"""``mpq llt search`` on an indicators file alone, ``mpq llt plot``, and the benchmark entry point."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from core.bops import count
from core.cli import main
from core.method import SearchRequest
from core.models import build_model
from core.policy import BitPolicy
from papers.llt.bench import METHOD
from papers.llt.indicators import ImportanceIndicators
from tests.papers.llt.helpers import tiny_net


@pytest.fixture
def resnet18_indicators(tmp_path):
    """Synthetic, monotone indicators for torchvision ResNet-18's 19 searchable layers."""
    from torchvision.models import resnet18

    names = [n for n, m in resnet18().named_modules() if isinstance(m, torch.nn.Conv2d)][1:]
    bits = [4, 3, 2]
    weight = {n: {b: (0.01 + 0.001 * i) * 2 ** (4 - b) for b in bits} for i, n in enumerate(names)}
    act = {n: {b: (0.1 + 0.01 * (i % 5)) * 2 ** (4 - b) for b in bits} for i, n in enumerate(names)}
    path = tmp_path / "indicators.json"
    ImportanceIndicators(bits=bits, layer_names=names, weight=weight, act=act).save(path)
    return path, names


def test_cli_search_writes_a_policy_within_budget(resnet18_indicators, tmp_path, capsys):
    path, names = resnet18_indicators
    out = tmp_path / "policy.json"
    rc = main(["llt", "search", "--indicators", str(path), "--model", "resnet18", "--w-bits", "3",
               "--a-bits", "3", "--compression", "9", "--input-size", "3", "64", "64", "-o", str(out)])
    assert rc == 0
    policy = BitPolicy.load(out)
    assert list(policy.layers) == names
    meta = policy.meta
    assert meta["bitops"] <= meta["bitops_budget"] and meta["compression_ratio"] >= 9
    assert meta["alpha"] == 3.0  # the paper's alpha for ResNet-18
    assert meta["solver"] == "bnb"
    assert "compression" in capsys.readouterr().out
    rc = main(["llt", "plot", str(out), "-o", str(tmp_path / "bits.png")])
    assert rc == 0 and (tmp_path / "bits.png").stat().st_size > 1000
    # the generic MILP as the option gives a policy of the same objective
    out_highs = tmp_path / "policy_highs.json"
    rc = main(["llt", "search", "--indicators", str(path), "--model", "resnet18", "--w-bits", "3",
               "--a-bits", "3", "--compression", "9", "--input-size", "3", "64", "64", "--solver", "highs",
               "-o", str(out_highs)])
    highs = BitPolicy.load(out_highs).meta
    assert rc == 0 and highs["solver"] == "highs"
    assert highs["objective"] == pytest.approx(meta["objective"], rel=1e-9)


def test_cli_search_infeasible_budget_exits_2_and_writes_nothing(resnet18_indicators, tmp_path, capsys):
    path, _ = resnet18_indicators
    out = tmp_path / "policy.json"
    rc = main(["llt", "search", "--indicators", str(path), "--model", "resnet18", "--w-bits", "1",
               "--a-bits", "1", "--input-size", "3", "32", "32", "-o", str(out)])
    assert rc == 2 and not out.exists()
    err = capsys.readouterr().err
    assert "infeasible" in err and "smallest reachable" in err and "W2A2" in err


def test_cli_search_unknown_layer_is_reported(tmp_path, capsys):
    path = tmp_path / "i.json"
    path.write_text(json.dumps({"bits": [4, 2], "layer_name": ["nope"], "weight": {"nope": {"4": 1, "2": 2}},
                                "act": {"nope": {"4": 1, "2": 2}}}))
    rc = main(["llt", "search", "--indicators", str(path), "--model", "resnet18", "--w-bits", "3",
               "--a-bits", "3", "--input-size", "3", "32", "32"])
    assert rc == 2 and "not conv/linear layers of the model" in capsys.readouterr().err


def _indicators(path, names, bits=(4, 2), step=0.1):
    table = {n: {b: step * 2 ** (4 - b) for b in bits} for n in names}
    ImportanceIndicators(bits=list(bits), layer_names=list(names), weight=table, act=table).save(path)
    return path


def test_cli_search_refuses_indicators_that_miss_layers_of_the_model(tmp_path, capsys):
    """The digits model's indicators (6 layers) with --model resnet20 (18 searchable layers) once gave a
    6-layer policy, the other 12 layers silently at 8 bits."""
    digits = [n for n, m in build_model("digits_resnet", num_classes=10).named_modules()
              if isinstance(m, torch.nn.Conv2d)][1:]
    path = _indicators(tmp_path / "digits.json", digits)
    out = tmp_path / "policy.json"
    rc = main(["llt", "search", "--indicators", str(path), "--model", "resnet20", "--num-classes", "10",
               "--w-bits", "3", "--a-bits", "3", "--input-size", "3", "32", "32", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and not out.exists()
    assert "cover 6 of the model's 18 searchable layers" in err and "layer1.1.conv1, layer1.1.conv2" in err


@pytest.mark.parametrize("step", [0.0, -0.05, float("nan")])
def test_cli_search_refuses_nonpositive_steps(tmp_path, capsys, step):
    names = [n for n, m in build_model("resnet20", num_classes=10).named_modules()
             if isinstance(m, torch.nn.Conv2d)][1:]
    path = _indicators(tmp_path / "i.json", names)
    data = json.loads(path.read_text())
    data["act"][names[4]]["2"] = step
    path.write_text(json.dumps(data))
    rc = main(["llt", "search", "--indicators", str(path), "--model", "resnet20", "--num-classes", "10",
               "--w-bits", "3", "--a-bits", "3", "--input-size", "3", "32", "32", "-o", str(tmp_path / "p")])
    err = capsys.readouterr().err
    assert rc == 2 and f"'act' of layer '{names[4]}' has step(s) {{2: {step}}}" in err and "> 0" in err


def test_benchmark_method_returns_a_policy_within_the_bops_budget(tiny_data, tmp_path):
    def build():
        torch.manual_seed(0)
        return tiny_net()

    macs = {r.name: r.macs for r in count(build(), (3, 8, 8), convention="bpnas").rows if r.counted}
    budget = sum(m * 3 * 3 for m in macs.values())
    request = SearchRequest(build_model=build, input_size=(3, 8, 8), num_classes=4, train_set=tiny_data,
                            val_set=tiny_data, w_candidates=(2, 3, 4), a_candidates=(2, 3, 4),
                            budget_bops=budget, budget_avg_bits=3.0, run_dir=tmp_path, epochs=1,
                            batch_size=16, log=lambda s: None)
    policy = METHOD.search(request)
    assert METHOD.name == "llt"
    assert list(policy.layers) == list(macs)
    assert sum(macs[n] * w * a for n, (w, a) in policy.layers.items()) <= budget
    assert (tmp_path / "indicators.json").is_file()
    # the same request again reuses its indicators (one Alg. 1 training for every budget); another seed
    # or another initialisation trains its own instead of reusing these
    key = policy.meta["shared_over"]
    assert METHOD.search(request).meta["shared_over"] == key
    assert METHOD.search(dataclasses.replace(request, seed=1)).meta["shared_over"] != key
    other = METHOD.search(dataclasses.replace(request, build_model=lambda: build().apply(_reinit)))
    assert other.meta["shared_over"] != key


def _reinit(module):
    if isinstance(module, torch.nn.Conv2d):
        torch.nn.init.constant_(module.weight, 0.01)

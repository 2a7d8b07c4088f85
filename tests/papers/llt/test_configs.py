"""Every shipped config loads and validates; the weight-only search path on MobileNetV1."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.bops import count
from core.config import load_config
from core.models import build_model
from papers.llt.complexity import layer_costs
from papers.llt.config import LLTConfig
from papers.llt.ilp import uniform_bitops_budget
from papers.llt.indicators import ImportanceIndicators
from papers.llt.search import search_policy
from papers.llt.settings import PAPER_ALPHA, SearchSettings, paper_alpha

CONFIG_DIR = Path(__file__).resolve().parents[3] / "papers" / "llt" / "configs"
CONFIGS = sorted(p for p in CONFIG_DIR.glob("*.yaml") if not p.name.startswith("_"))


def test_configs_exist():
    assert {p.stem for p in CONFIGS} >= {"resnet50_w3a4_cr12.2", "resnet18_w3a3", "resnet18_w4a4",
                                         "mobilenet_v1_w4a4", "mobilenet_v1_w4a8_weight_only",
                                         "cifar10_resnet20", "digits"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_with_the_papers_constants(path):
    cfg = load_config(LLTConfig, path, [])
    assert cfg.bits and (cfg.search.w_bits is not None or cfg.search.compression is not None)
    if cfg.data.name == "imagenet":
        assert cfg.bits == [6, 5, 4, 3, 2]
        assert cfg.search.alpha == paper_alpha(cfg.model.name, None) and cfg.search.macs == "limpq"
        assert cfg.indicators.optim.lr == 0.01 and cfg.finetune.optim.lr == 0.04
        # the official recipe (the published rows ran it): 90 + 5 cool-down epochs, per-epoch cosine
        assert cfg.finetune.schedule.epochs == 95 and cfg.finetune.schedule.cooldown_epochs == 5
        assert cfg.finetune.schedule.warmup_epochs == 5 and not cfg.finetune.schedule.warmup_prefix
        assert not cfg.indicators.schedule.per_step and cfg.indicators.schedule.min_lr == 1e-5
        for stage in (cfg.indicators, cfg.finetune):
            assert stage.optim.nesterov and stage.optim.no_decay_1d and stage.per_device_batch
        assert cfg.finetune.fc_rescale and cfg.lsq_gradient == "paper"
        assert cfg.finetune.first_layer == "w8" and cfg.finetune.last_layer == "w8a8"
        assert cfg.table_row


def test_paper_alpha_agrees_with_the_transcribed_supplementary():
    """Supplementary Sec. 1: alpha 3.0, 2.0, 1.0 for ResNet-18, ResNet-50, MobileNetV1 (benchmark table)."""
    from benchmarks.schema import load_tables

    table = next(t for t in load_tables(paper="llt")[0].tables if t.id == "supp-sec1")
    transcribed = {r.context["model"]: r.cells[0].value for r in table.rows}
    assert transcribed == PAPER_ALPHA == {"resnet18": 3.0, "resnet50": 2.0, "mobilenet_v1": 1.0}
    assert paper_alpha("resnet50.gluon_in1k") == paper_alpha("gluon_resnet50_v1b") == 2.0
    assert paper_alpha("gluon_resnet18_v1b") == 3.0 and paper_alpha("vgg16") == 2.0


def test_weight_only_search_on_mobilenet_v1():
    model = build_model("mobilenet_v1", num_classes=1000)
    names = [r.name for r in count(model, (3, 64, 64), convention="limpq").rows if r.counted]
    rng = np.random.default_rng(0)
    bits = [6, 5, 4, 3, 2]
    growth = {6: 1.0, 5: 1.6, 4: 2.7, 3: 4.5, 2: 8.0}
    scale = rng.uniform(0.5, 2.0, len(names))
    table = {n: {b: float(s * growth[b] * 0.01) for b in bits} for n, s in zip(names, scale)}
    ind = ImportanceIndicators(bits=bits, layer_names=names, weight=table, act=table)
    settings = SearchSettings(alpha=1.0, w_bits=4, a_bits=8, weight_only_a_bits=8, input_size=[3, 64, 64])
    policy = search_policy(ind, model, settings)
    assert {a for _, a in policy.layers.values()} == {8}
    assert len({w for w, _ in policy.layers.values()}) > 1  # a mixed weight policy
    costs = layer_costs(model, names, (3, 64, 64), "limpq")
    assert policy.meta["bitops"] <= uniform_bitops_budget(costs, 4, 8)

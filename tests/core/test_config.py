"""core.config: typed YAML + overrides, _base_ inheritance, errors naming keys / valid keys / types."""

from __future__ import annotations

import dataclasses
from typing import Literal

import pytest
import yaml

from core.config import (
    DataConfig,
    OptimConfig,
    RunConfig,
    ScheduleConfig,
    config_to_dict,
    load_config,
    parse_overrides,
    require,
    require_range,
    save_config,
)
from core.errors import ConfigError


@dataclasses.dataclass
class Search:
    w_bits: list[int] = dataclasses.field(default_factory=lambda: [1, 2, 3, 4])
    eta: float = 0.00335
    sampling: Literal["softmax", "gumbel_soft"] = "softmax"
    tau: float | None = None
    size: tuple[int, int] = (224, 224)


@dataclasses.dataclass
class Experiment:
    model: str = "resnet18"
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    search: Search = dataclasses.field(default_factory=Search)
    extra: dict[str, float] = dataclasses.field(default_factory=dict)


def _write(path, obj):
    path.write_text(yaml.safe_dump(obj))
    return path


def test_defaults_yaml_and_overrides(tmp_path):
    cfg_file = _write(tmp_path / "c.yaml", {"model": "resnet50",
                                            "optim": {"lr": 0.05, "weight_decay": "1e-4"},
                                            "schedule": {"name": "step", "step_size": 10}})
    cfg = load_config(Experiment, cfg_file, ["optim.lr=0.2", "search.w_bits=[2,3,4]", "data.root=/data/x",
                                             "search.tau=", "search.size=[32,32]", "extra.a=1"])
    assert cfg.model == "resnet50" and cfg.optim.lr == 0.2 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.weight_decay == 1e-4  # "1e-4" is a string to YAML 1.1; coerced for a float field
    assert cfg.schedule.name == "step" and cfg.schedule.step_size == 10 and cfg.schedule.epochs == 90
    assert cfg.search.w_bits == [2, 3, 4] and cfg.search.tau is None and cfg.search.size == (32, 32)
    assert cfg.data.root == "/data/x" and cfg.extra == {"a": 1.0}
    assert load_config(Experiment, None, ["optim.momentum=0"]).optim.momentum == 0.0  # int -> float


def test_base_inheritance(tmp_path):
    (tmp_path / "base").mkdir()
    _write(tmp_path / "base" / "common.yaml", {"optim": {"lr": 0.1, "momentum": 0.8}, "model": "a"})
    _write(tmp_path / "mid.yaml", {"_base_": "base/common.yaml", "optim": {"lr": 0.01}})
    child = _write(tmp_path / "child.yaml", {"_base_": ["mid.yaml"], "model": "b"})
    cfg = load_config(Experiment, child, [])
    assert (cfg.model, cfg.optim.lr, cfg.optim.momentum) == ("b", 0.01, 0.8)
    _write(tmp_path / "loop.yaml", {"_base_": "loop.yaml"})
    with pytest.raises(ConfigError, match="circular"):
        load_config(Experiment, tmp_path / "loop.yaml", [])
    _write(tmp_path / "bad_base.yaml", {"_base_": "nope.yaml"})
    with pytest.raises(ConfigError, match="not found.*nope.yaml"):
        load_config(Experiment, tmp_path / "bad_base.yaml", [])


def test_unknown_key_names_key_and_lists_valid_keys(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_config(Experiment, None, ["optim.lrr=0.1"])
    msg = str(exc.value)
    assert "optim.lrr" in msg and "lr, momentum, weight_decay" in msg
    with pytest.raises(ConfigError, match="unknown config key modle: valid keys are: model, data"):
        load_config(Experiment, _write(tmp_path / "c.yaml", {"modle": "x"}), [])


@pytest.mark.parametrize("override, needle", [
    ("optim.lr=fast", "optim.lr: expected float, got 'fast'"),
    ("schedule.epochs=2.5", "schedule.epochs: expected int, got 2.5"),
    ("run.deterministic=1", "run.deterministic: expected bool"),
    ("search.w_bits=[2,x]", r"search.w_bits\[1\]: expected int"),
    ("search.sampling=hard", r"expected one of \['softmax', 'gumbel_soft'\], got 'hard'"),
    ("search.size=[1,2,3]", r"search.size: expected tuple\[int, int\] \(2 items\)"),
    ("optim=3", r"optim: expected a mapping \(OptimConfig\), got 3"),
    ("data.root=[1]", r"data.root: expected str \| None"),
])
def test_wrong_type_names_key_expected_and_got(override, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(Experiment, None, [override])


def test_malformed_inputs(tmp_path):
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["optim.lr"])
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["a..b=1"])
    (tmp_path / "bad.yaml").write_text("optim: [unclosed\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_config(Experiment, tmp_path / "bad.yaml", [])
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(Experiment, tmp_path / "list.yaml", [])
    with pytest.raises(ConfigError, match="not found"):
        load_config(Experiment, tmp_path / "missing.yaml", [])


def test_required_field():
    @dataclasses.dataclass
    class Needs:
        root: str

    with pytest.raises(ConfigError, match="missing required config key root"):
        load_config(Needs, None, [])
    assert load_config(Needs, None, ["root=/x"]).root == "/x"


def test_save_roundtrip_atomic(tmp_path):
    cfg = load_config(Experiment, None, ["search.size=[32,32]", "optim.grad_clip=1.0"])
    path = tmp_path / "run" / "config.yaml"
    save_config(cfg, path)
    assert [p.name for p in path.parent.iterdir()] == ["config.yaml"]  # no temp file left behind
    data = yaml.safe_load(path.read_text())
    assert data["search"]["size"] == [32, 32] and data == config_to_dict(cfg)
    assert load_config(Experiment, path, []) == cfg


def test_partial_section_keeps_parent_schema_defaults():
    """`outer.sched.epochs=5` must keep the value the parent schema gave `sched.name`, not reset it
    to the sub-schema's own default."""
    import dataclasses

    from core.config import ScheduleConfig, load_config

    @dataclasses.dataclass
    class Outer:
        sched: ScheduleConfig = dataclasses.field(
            default_factory=lambda: ScheduleConfig(name="step", epochs=25, step_size=10))

    cfg = load_config(Outer, None, ["sched.epochs=5"])
    assert (cfg.sched.name, cfg.sched.epochs, cfg.sched.step_size) == ("step", 5, 10)


@pytest.mark.parametrize("override, key", [
    ("schedule.epochs=0", "schedule.epochs"), ("schedule.epochs=-1", "schedule.epochs"),
    ("optim.lr=-1", "optim.lr"), ("optim.lr=0", "optim.lr"),
    ("optim.weight_decay=-1e-4", "optim.weight_decay"),
    ("optim.momentum=1.5", "optim.momentum"), ("optim.betas=[0.9,1.2]", r"optim.betas\[1\]"),
    ("optim.label_smoothing=1", "optim.label_smoothing"), ("optim.grad_clip=0", "optim.grad_clip"),
    ("schedule.step_size=0", "schedule.step_size"), ("schedule.gamma=0", "schedule.gamma"),
    ("schedule.warmup_epochs=-2", "schedule.warmup_epochs"), ("schedule.milestones=[3,-1]",
                                                               r"schedule.milestones\[1\]"),
    ("data.batch_size=0", "data.batch_size"), ("data.workers=-1", "data.workers"),
    ("data.image_size=0", "data.image_size"), ("run.log_every=0", "run.log_every"),
    ("run.dist_timeout_s=0", "run.dist_timeout_s"), ("run.keep_checkpoints=-1", "run.keep_checkpoints"),
])
def test_impossible_values_are_refused_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=rf"config key {key}: must be"):
        load_config(Experiment, None, [override])


@dataclasses.dataclass
class Stage:
    """A paper's section reusing the core checks."""

    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    steps: int = 1
    bits: list[int] = dataclasses.field(default_factory=lambda: [2, 4])

    def validate(self):
        require_range(self, "steps", ge=1)
        require(all(2 <= b <= 8 for b in self.bits), "bits", f"values must lie in 2..8, got {self.bits}")


@dataclasses.dataclass
class Paper:
    search: Stage = dataclasses.field(default_factory=Stage)


def test_value_checks_apply_to_nested_sections_and_paper_schemas():
    with pytest.raises(ConfigError, match=r"config key search\.optim\.lr: must be > 0, got -0\.1"):
        load_config(Paper, None, ["search.optim.lr=-0.1"])
    with pytest.raises(ConfigError, match=r"config key search\.steps: must be >= 1, got 0"):
        load_config(Paper, None, ["search.steps=0"])
    with pytest.raises(ConfigError, match=r"config key search\.bits: values must lie in 2\.\.8"):
        load_config(Paper, None, ["search.bits=[1,4]"])
    assert load_config(Paper, None, ["search.steps=3"]).search.steps == 3


def test_non_utf8_config_is_a_config_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"model: r\xe9snet\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(Experiment, path)

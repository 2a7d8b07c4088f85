"""core.engine pieces: atomic weights_only checkpoints, RNG capture, devices, schedules, metrics, progress."""

from __future__ import annotations

import importlib.util
import json
import math
import random
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn as nn

from core.config import OptimConfig, ScheduleConfig
from core.engine import (
    Checkpointer,
    MetricsLogger,
    Progress,
    RunDir,
    build_optimizer,
    build_scheduler,
    check_plain,
    load_checkpoint,
    resolve_device,
    rng_state,
    seed_everything,
    set_rng_state,
)
from core.errors import CheckpointError, ConfigError


def _state(epoch=1):
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [2, 4])
    return {"model": model.state_dict(), "optimizers": {"weights": opt.state_dict()},
            "schedulers": {"weights": sched.state_dict()}, "epoch": epoch, "step": 10 * epoch,
            "rng": [rng_state()], "extra": {"tau": 1.0, "names": ("a", "b")}}


def test_checkpoint_roundtrip_weights_only(tmp_path):
    ck = Checkpointer(tmp_path)
    state = _state()
    path = ck.save(state, epoch=1)
    assert path.name == "epoch_0001.pt" and ck.latest().name == "last.pt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_0001.pt", "last.pt"]
    loaded = torch.load(tmp_path / "last.pt", weights_only=True)  # plain torch, no allow-listing needed
    assert torch.equal(loaded["model"]["weight"], state["model"]["weight"])
    assert loaded["schedulers"]["weights"]["milestones"] == Counter({2: 1, 4: 1})
    assert loaded["extra"] == {"tau": 1.0, "names": ("a", "b")}
    assert ck.load()["step"] == 10


def test_rng_state_roundtrip_through_checkpoint(tmp_path):
    seed_everything(3)
    Checkpointer(tmp_path).save({"rng": rng_state()}, "r.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.random(), np.random.rand(), torch.rand(5)  # move every generator on
    set_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_save_refuses_objects_that_weights_only_would_reject(tmp_path):
    with pytest.raises(CheckpointError, match=r"state\['extra'\]\['arr'\].*numpy.ndarray"):
        Checkpointer(tmp_path).save({"extra": {"arr": np.zeros(2)}}, "x.pt")
    with pytest.raises(CheckpointError, match="Path"):
        check_plain({"p": tmp_path})
    assert not any(tmp_path.iterdir())


def test_save_is_atomic_when_interrupted(tmp_path, monkeypatch):
    ck = Checkpointer(tmp_path)
    ck.save(_state(1), epoch=1)
    good = (tmp_path / "last.pt").read_bytes()
    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"partial")  # a kill half-way through writing
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        ck.save(_state(2), epoch=2)
    monkeypatch.setattr(torch, "save", real_save)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_0001.pt", "last.pt"]  # no temp file
    assert (tmp_path / "last.pt").read_bytes() == good
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1


def test_keep_latest_and_bad_files(tmp_path):
    ck = Checkpointer(tmp_path, keep=2)
    for e in range(1, 5):
        ck.save({"epoch": e}, epoch=e)
    assert [p.name for p in ck.epoch_files()] == ["epoch_0003.pt", "epoch_0004.pt"]
    assert ck.load()["epoch"] == 4
    (tmp_path / "last.pt").unlink()
    assert ck.latest().name == "epoch_0004.pt"
    (tmp_path / "corrupt.pt").write_bytes(b"\x80\x02garbage")
    with pytest.raises(CheckpointError, match="corrupt.pt"):
        load_checkpoint(tmp_path / "corrupt.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    assert Checkpointer(tmp_path / "empty").latest() is None


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda:0")


def _lrs(cfg, steps_per_epoch=4, lr=1.0):
    opt = build_optimizer(OptimConfig(lr=lr), [nn.Parameter(torch.zeros(1))])
    sched = build_scheduler(cfg, opt, steps_per_epoch)
    assert sched.interval == "step"
    out = []
    for _ in range(cfg.epochs * steps_per_epoch):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_schedules():
    step = _lrs(ScheduleConfig(name="step", epochs=25, step_size=10, gamma=0.1), 2)  # EdMIPS
    assert step[0] == step[19] == 1.0 and step[20] == pytest.approx(0.1) and step[49] == pytest.approx(0.01)
    multi = _lrs(ScheduleConfig(name="multistep", epochs=6, milestones=[2, 4]), 1)
    assert multi == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    cos = _lrs(ScheduleConfig(name="cosine", epochs=10, warmup_epochs=2, min_lr=0.0), 4)
    assert cos[0] == 0.0 and cos[4] == pytest.approx(0.5) and cos[8] == pytest.approx(1.0)
    t = (39 / 4 - 2) / 8
    assert cos[39] == pytest.approx(0.5 * (1 + math.cos(math.pi * t)))
    per_epoch = _lrs(ScheduleConfig(name="cosine", epochs=4, per_step=False), 3)
    assert per_epoch[0] == per_epoch[2] == 1.0
    assert per_epoch[3] == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    with pytest.raises(ConfigError, match="steps_per_epoch"):
        build_scheduler(ScheduleConfig(), build_optimizer(OptimConfig(), [nn.Parameter(torch.zeros(1))]), 0)


def test_optimizers():
    p = [nn.Parameter(torch.zeros(2))]
    assert isinstance(build_optimizer(OptimConfig(name="adamw", lr=1e-3), p), torch.optim.AdamW)
    sgd = build_optimizer(OptimConfig(nesterov=True), [{"params": p, "weight_decay": 0.0}])
    assert sgd.param_groups[0]["weight_decay"] == 0.0 and sgd.defaults["nesterov"]
    with pytest.raises(ConfigError, match="no parameters"):
        build_optimizer(OptimConfig(), [])


def test_run_dir_metrics_and_truncate(tmp_path):
    run = RunDir(tmp_path / "run")
    run.save_config({"a": 1})
    assert (run.path / "config.yaml").is_file()  # checkpoints/ appears with the first checkpoint
    m = MetricsLogger(run)
    for s in (1, 2, 3):
        m.log(step=s, epoch=0, loss=torch.tensor(0.5 * s), bad=float("nan"))
    lines = (run.path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[1])["loss"] == 1.0 and json.loads(lines[0])["bad"] == "nan"
    m.truncate_after(2)
    assert [r["step"] for r in m.read()] == [1, 2]
    run.write_json("results.json", {"top1": torch.tensor(1.5)})
    assert json.loads((run.path / "results.json").read_text()) == {"top1": 1.5}


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None, reason="tensorboard installed")
def test_tensorboard_missing_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="tensorboard"):
        MetricsLogger(tmp_path, tensorboard=True)


def test_progress_plain_lines_when_not_a_tty(capsys):
    p = Progress(range(7), desc="epoch 1", every=3)
    seen = []
    for i in p:
        seen.append(i)
        p.set_postfix(loss=0.25)
    out = capsys.readouterr().out.splitlines()
    assert seen == list(range(7))
    assert [line.split()[2] for line in out] == ["[3/7]", "[6/7]", "[7/7]"] and "loss 0.25" in out[-1]


def test_a_missing_detection_extra_is_one_clear_error(monkeypatch):
    """Without mmengine (plain `pip install -e .`) the mmengine helpers say exactly what to install."""
    import sys

    from core.engine.mmengine_compat import mmengine_safe_globals
    from core.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "mmengine.logging.history_buffer", None)  # makes the import fail
    with pytest.raises(MissingDependencyError, match=r"'det' extra .*python tools/install_mmcv.py && "
                                                     r"pip install -e '\.\[det\]'"):
        mmengine_safe_globals()

"""Run directories that cannot lie: resume only the same run (identity), resume=none sets the old run
aside, stage outputs carry their producer's identity, and one writer per directory (the lock)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch.nn as nn
from torch.utils.data import Subset

from core.config import DataConfig, OptimConfig, RunConfig, ScheduleConfig, load_config
from core.data import build_dataset, build_loader
from core.engine import (
    RunDir,
    Trainer,
    build_optimizer,
    build_scheduler,
    check_producer,
    config_identity,
    load_checkpoint,
    seed_everything,
    trainer_kwargs,
)
from core.engine.identity import identity_diff
from core.errors import CheckpointError, RunDirError
from core.policy import BitPolicy


@dataclasses.dataclass
class Cfg:
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(lr=0.2))
    schedule: ScheduleConfig = dataclasses.field(default_factory=lambda: ScheduleConfig(epochs=2))
    train: ScheduleConfig = dataclasses.field(default_factory=lambda: ScheduleConfig(epochs=5))
    data: DataConfig = dataclasses.field(default_factory=lambda: DataConfig(batch_size=32, workers=0))
    run: RunConfig = dataclasses.field(default_factory=lambda: RunConfig(log_every=100))


class StopAt(Exception):
    pass


class Stoppable(Trainer):
    stop_at: int | None = None

    def train_step(self, batch):
        if self.stop_at is not None and self.step == self.stop_at:
            raise StopAt
        return super().train_step(batch)


def _trainer(out: Path, *overrides: str, stop_at: int | None = None, identity=None, run_dir=None
             ) -> Stoppable:
    cfg = load_config(Cfg, None, [f"run.out_dir={out}", *overrides])
    seed_everything(cfg.run.seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    train = Subset(build_dataset("digits", split="train", image_size=8), range(320))
    loader = build_loader(train, cfg.data.batch_size, train=True, workers=cfg.data.workers, seed=0)
    opt = build_optimizer(cfg.optim, model.parameters())
    sched = build_scheduler(cfg.schedule, opt, len(loader))
    kwargs = trainer_kwargs(cfg.run, cfg.optim)
    kwargs["run_dir"] = run_dir or kwargs["run_dir"]
    trainer = Stoppable(model, opt, loader, epochs=cfg.schedule.epochs, schedulers=sched, config=cfg,
                        identity=identity, **kwargs)
    trainer.stop_at = stop_at
    return trainer


def _snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_resume_with_another_config_is_refused_and_writes_nothing(tmp_path):
    _trainer(tmp_path).fit()
    before = _snapshot(tmp_path)
    with pytest.raises(RunDirError) as err:
        _trainer(tmp_path, "optim.lr=1e9").fit()
    msg = str(err.value)
    assert "optim.lr: 0.2 -> 1000000000.0" in msg and "1 key(s) differ" in msg
    assert "run.out_dir" in msg and "run.resume=none" in msg
    assert _snapshot(tmp_path) == before  # config.yaml, run.json, checkpoints, metrics untouched
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["identity"]["optim.lr"] == 0.2 and record["progress"]["finished"] is True


def test_keys_that_cannot_change_results_do_not_block_a_resume(tmp_path):
    first = _trainer(tmp_path, stop_at=15)
    with pytest.raises(StopAt):
        first.fit()
    resumed = _trainer(tmp_path, "run.log_every=3", "data.workers=1", "run.keep_checkpoints=1")
    resumed.fit()
    assert resumed.step == 20
    record = json.loads((tmp_path / "run.json").read_text())
    assert [s["resume"] for s in record["starts"]] == ["auto", "auto"]
    ident = config_identity(load_config(Cfg, None, ["run.out_dir=/x", "data.root=/data"]))
    assert "run.out_dir" not in ident and "data.workers" not in ident and "run.log_every" not in ident
    assert ident["data.root"] == "/data" and ident["optim.lr"] == 0.2 and ident["run.seed"] == 0


def test_a_trained_policy_joins_the_identity_layer_by_layer():
    cfg = load_config(Cfg, None, [])
    ident = config_identity(cfg, policy=BitPolicy({"layer1.0.conv1": (2, 3), "fc": (4, 4)}))
    assert ident["policy.layer1.0.conv1"] == [2, 3] and ident["policy.fc"] == [4, 4]
    assert config_identity(ident) == ident  # stable when normalised again (Trainer, check_producer)
    other = config_identity(cfg, policy=BitPolicy({"layer1.0.conv1": (2, 2), "fc": (4, 4)}))
    assert identity_diff(ident, other) == [("policy.layer1.0.conv1", [2, 3], [2, 2])]


def test_resume_none_sets_the_old_run_aside_and_never_picks_it_up(tmp_path):
    _trainer(tmp_path).fit()  # a finished run: last.pt at epoch 2
    fresh = _trainer(tmp_path, "optim.lr=0.05", "run.resume=none", stop_at=3)
    with pytest.raises(StopAt):  # killed before its first checkpoint
        fresh.fit()
    previous = list((tmp_path / ".previous").iterdir())
    assert len(previous) == 1 and (previous[0] / "checkpoints" / "last.pt").is_file()
    assert not (tmp_path / "checkpoints").exists()
    again = _trainer(tmp_path, "optim.lr=0.05")  # resume=auto: the new run, from scratch
    again.fit()
    assert again.step == 20 and load_checkpoint(tmp_path / "checkpoints" / "last.pt")["identity"][
        "optim.lr"] == 0.05
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [0, 1]


def test_resume_force_continues_and_records_the_change(tmp_path):
    first = _trainer(tmp_path, stop_at=15)
    with pytest.raises(StopAt):
        first.fit()
    with pytest.warns(UserWarning, match="schedule.epochs: 2 -> 3"):
        longer = _trainer(tmp_path, "schedule.epochs=3", "run.resume=force")
        longer.fit()
    assert longer.step == 30
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["starts"][-1]["changed"] == {"schedule.epochs": [2, 3]}
    assert record["identity"]["schedule.epochs"] == 3 and record["progress"]["epochs_done"] == 3


def test_a_stage_identity_ignores_later_stages(tmp_path):
    """A search stage must not disown its run when only the later training stage's keys change."""
    cfg = load_config(Cfg, None, [])
    first = _trainer(tmp_path, stop_at=15, identity=config_identity(cfg, exclude=["train"]))
    with pytest.raises(StopAt):
        first.fit()
    changed = load_config(Cfg, None, ["train.epochs=90"])
    resumed = _trainer(tmp_path, "train.epochs=90", identity=config_identity(changed, exclude=["train"]))
    resumed.fit()
    assert resumed.step == 20
    with pytest.raises(RunDirError, match="optim.lr"):
        _trainer(tmp_path, "optim.lr=0.3", identity=config_identity(
            load_config(Cfg, None, ["optim.lr=0.3"]), exclude=["train"])).fit()


def test_checkpoint_of_another_run_and_unrecorded_checkpoints_are_refused(tmp_path):
    _trainer(tmp_path / "a").fit()
    ckpt = tmp_path / "a" / "checkpoints" / "epoch_0001.pt"
    with pytest.raises(RunDirError, match="belongs to another run.*\n.*optim.lr: 0.2 -> 0.3"):
        _trainer(tmp_path / "b", "optim.lr=0.3", f"run.resume={ckpt}").fit()
    same = _trainer(tmp_path / "c", f"run.resume={ckpt}")  # the same run, continued elsewhere
    same.fit()
    assert same.step == 20
    (tmp_path / "a" / "run.json").unlink()  # an older mpq's directory, or a copied one
    with pytest.raises(RunDirError, match="checkpoints but no run.json"):
        _trainer(tmp_path / "a").fit()
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="holds no mpq run"):
        _trainer(tmp_path / "foreign", "run.resume=none").fit()
    assert (tmp_path / "foreign" / "notes.txt").read_text() == "mine"


def test_stage_outputs_carry_and_check_their_producer(tmp_path):
    cfg = load_config(Cfg, None, [])
    search = config_identity(cfg, exclude=["train"])
    part = _trainer(tmp_path / "search", stop_at=15, identity=search)
    with pytest.raises(StopAt):
        part.fit()
    with pytest.warns(UserWarning, match="stopped early.*epoch 1 of 2"):
        check_producer(tmp_path / "search", search, what="search")
    _trainer(tmp_path / "search", identity=search).fit()
    record = check_producer(tmp_path / "search", search, what="search")
    assert record["progress"]["finished"] is True
    other = config_identity(load_config(Cfg, None, ["optim.lr=0.5"]), exclude=["train"])
    with pytest.raises(RunDirError, match=r"(?s)search in .* was made by another run.*optim.lr: 0.2 -> 0.5"
                                          r".*re-run the search"):
        check_producer(tmp_path / "search", other, what="search", fix="re-run the search")
    # a record that travels inside an output (e.g. a policy's meta)
    carried = RunDir(tmp_path / "search").producer_record()
    checked = check_producer(json.loads(json.dumps(carried)), search, what="policy")
    assert checked["run_dir"].endswith("search")
    with pytest.raises(RunDirError, match="carries no run record"):
        check_producer(tmp_path / "nothing", search, what="search")


def test_a_stage_without_trainer_opens_the_directory(tmp_path):
    cfg = load_config(Cfg, None, [])
    with RunDir(tmp_path).open(config_identity(cfg), "auto", cfg) as run:
        run.write_json("policy.json", {"layers": []})
        with pytest.raises(RunDirError, match="in use by pid"):
            RunDir(tmp_path).claim({}, "auto")  # a second writer, even in the same process
    assert not (tmp_path / ".lock").exists() and (tmp_path / "config.yaml").is_file()
    with pytest.raises(RunDirError, match="optim.lr: 0.2 -> 0.4"):
        RunDir(tmp_path).open(config_identity(load_config(Cfg, None, ["optim.lr=0.4"])), "auto")
    with RunDir(tmp_path).open(config_identity(cfg), "auto"):
        pass


def test_a_stage_holds_its_directory_across_fit_and_its_own_writes(tmp_path):
    cfg = load_config(Cfg, None, [f"run.out_dir={tmp_path}"])
    with RunDir(tmp_path).open(config_identity(cfg), "auto", cfg) as run:
        trainer = _trainer(tmp_path, run_dir=run)
        trainer.fit()
        assert (tmp_path / ".lock").exists()  # still ours: results are written under the lock
        run.write_json("results.json", {"wall_time_s": trainer.wall_time_s})
    assert not (tmp_path / ".lock").exists()
    record = json.loads((tmp_path / "run.json").read_text())
    assert len(record["starts"]) == 1 and record["progress"]["finished"]


_HOLDER = textwrap.dedent("""
    import sys, time
    from core.engine import RunDir
    run = RunDir(sys.argv[1]).open({"optim.lr": 0.1}, "auto")
    print("ready", flush=True)
    time.sleep(120)
""")


def test_one_writer_per_directory_and_stale_lock_taken_over(tmp_path, capsys):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path)], stdout=subprocess.PIPE, env=env,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(RunDirError, match=rf"in use by pid {holder.pid} on host .*another run.out_dir"):
            _trainer(tmp_path).fit()
        assert not (tmp_path / "config.yaml").exists()  # refused at once, nothing written
    finally:
        holder.send_signal(signal.SIGKILL)  # kill -9: the lock file stays, the lock does not
        holder.wait()
    assert (tmp_path / ".lock").is_file()
    capsys.readouterr()
    with RunDir(tmp_path).open({"optim.lr": 0.1}, "auto"):
        pass
    assert f"took over the lock of the run directory {tmp_path} left by pid {holder.pid}" in \
        capsys.readouterr().out


def test_the_lock_is_released_on_errors_and_ctrl_c(tmp_path):
    with pytest.raises(StopAt):
        _trainer(tmp_path, stop_at=3).fit()
    assert not (tmp_path / ".lock").exists()

    class CtrlC(Trainer):
        def train_step(self, batch):
            raise KeyboardInterrupt

    trainer = _trainer(tmp_path)
    trainer.__class__ = CtrlC
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    with RunDir(tmp_path).open(trainer.identity, "auto"):  # free again
        pass
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        _trainer(tmp_path, f"run.resume={tmp_path / 'nope.pt'}").fit()
    assert not (tmp_path / ".lock").exists()

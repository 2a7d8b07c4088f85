"""Trainer: interrupted + resumed run == uninterrupted run (exactly, on CPU); NaN stops the run and
keeps the last good checkpoint; named optimizers; evaluate."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
from torch.utils.data import Subset

from core.config import OptimConfig, ScheduleConfig
from core.data import build_dataset, build_loader
from core.engine import (
    Checkpointer,
    Trainer,
    build_optimizer,
    build_scheduler,
    evaluate,
    load_checkpoint,
    seed_everything,
)
from core.errors import CheckpointError, TrainingDivergedError

EPOCHS = 3


class StopAt(Exception):
    pass


class Interruptible(Trainer):
    """Raises (like a kill) when the global step reaches ``stop_at``."""

    stop_at: int | None = None

    def train_step(self, batch):
        if self.stop_at is not None and self.step == self.stop_at:
            raise StopAt
        return super().train_step(batch)


def _make(run_dir, resume="auto", stop_at=None, cls=Interruptible, epochs=EPOCHS, workers=0):
    seed_everything(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 32), nn.ReLU(), nn.Dropout(0.2),
                          nn.Linear(32, 10))
    train = Subset(build_dataset("digits", split="train", image_size=8, augment=True), range(320))
    val = build_dataset("digits", split="val", image_size=8)
    loader = build_loader(train, 32, train=True, workers=workers, seed=0)
    opt = build_optimizer(OptimConfig(lr=0.2, weight_decay=1e-4), model.parameters())
    sched = build_scheduler(ScheduleConfig(name="cosine", epochs=epochs, warmup_epochs=1), opt, len(loader))
    trainer = cls(model, opt, loader, build_loader(val, 100, train=False, workers=0), epochs=epochs,
                  schedulers=sched, run_dir=run_dir, resume=resume, log_every=4, label_smoothing=0.1)
    trainer.stop_at = stop_at
    return trainer


def _records(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in ("time", "epoch_time")} for line in lines]


def test_resume_reproduces_uninterrupted_run(tmp_path):
    full = _make(tmp_path / "full")
    full.fit()
    # interrupted mid-epoch 2 (10 steps per epoch), after the epoch-1 checkpoint
    cut = _make(tmp_path / "cut", stop_at=15)
    with pytest.raises(StopAt):
        cut.fit()
    assert Checkpointer(tmp_path / "cut" / "checkpoints").latest().name == "last.pt"
    resumed = _make(tmp_path / "cut", resume="auto")
    resumed.fit()
    assert resumed.step == full.step == 30
    assert _records(tmp_path / "cut") == _records(tmp_path / "full")
    for (name, a), (_, b) in zip(full.module.state_dict().items(), resumed.module.state_dict().items()):
        assert torch.equal(a, b), name
    opt_a = full.optimizers["weights"].state_dict()["state"]
    opt_b = resumed.optimizers["weights"].state_dict()["state"]
    assert all(torch.equal(opt_a[k]["momentum_buffer"], opt_b[k]["momentum_buffer"]) for k in opt_a)


def test_resume_from_explicit_path_and_none(tmp_path):
    first = _make(tmp_path / "a", epochs=1)
    first.fit()
    ckpt = tmp_path / "a" / "checkpoints" / "epoch_0001.pt"
    cont = _make(tmp_path / "b", resume=str(ckpt), epochs=2)
    assert cont._resume() == 1 and cont.step == 10
    fresh = _make(tmp_path / "a", resume="none", epochs=1)
    assert fresh._resume() == 0 and fresh.step == 0
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        _make(tmp_path / "c", resume=str(tmp_path / "missing.pt"))._resume()


class Diverging(Trainer):
    """The loss becomes NaN from step 14 on (epoch 2)."""

    def compute_loss(self, images, targets):
        loss, scalars = super().compute_loss(images, targets)
        if self.step >= 14:
            loss = loss * float("nan")
            scalars["loss"] = loss.detach()
        return loss, scalars


def test_nan_loss_raises_and_keeps_last_good_checkpoint(tmp_path):
    trainer = _make(tmp_path, cls=Diverging)
    with pytest.raises(TrainingDivergedError, match="epoch 2.*last good checkpoint is .*last.pt"):
        trainer.fit()
    ckpts = tmp_path / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["epoch_0001.pt", "last.pt"]
    state = load_checkpoint(ckpts / "last.pt")
    assert state["epoch"] == 1 and state["step"] == 10
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    # the diverged in-memory model is not what was saved
    assert not all(torch.isfinite(p).all() for p in trainer.module.parameters())
    resumed = _make(tmp_path, resume="auto")
    assert resumed._resume() == 1


class TwoOptimizers(Trainer):
    """EdMIPS-style: weights and architecture parameters step on one backward, plus an extra loss."""

    def compute_loss(self, images, targets):
        loss, scalars = super().compute_loss(images, targets)
        extra = 0.01 * self.module.alpha.softmax(0)[0]
        scalars["complexity"] = extra.detach()
        return loss + extra, scalars


def test_named_optimizers_and_extra_loss(tmp_path):
    seed_everything(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    model.alpha = nn.Parameter(torch.full((3,), 0.01))
    train = Subset(build_dataset("digits", split="train", image_size=8), range(64))
    loader = build_loader(train, 32, train=True, workers=0)
    weights = build_optimizer(OptimConfig(lr=0.1), [p for n, p in model.named_parameters() if n != "alpha"])
    arch = build_optimizer(OptimConfig(lr=0.5, weight_decay=0.0), [model.alpha])
    trainer = TwoOptimizers(model, {"weights": weights, "arch": arch}, loader, epochs=2, run_dir=tmp_path,
                            log_every=1, grad_clip=1.0, config={"run": {"seed": 0}})
    before = model.alpha.detach().clone()
    out = trainer.fit()
    assert not torch.equal(before, model.alpha.detach())
    assert out["train_complexity"] > 0 and "lr_arch" in _records(tmp_path)[0]
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert set(state["optimizers"]) == {"weights", "arch"}
    assert (tmp_path / "config.yaml").read_text() == "run:\n  seed: 0\n"


def test_evaluate_counts():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    val = build_dataset("digits", split="val", image_size=8)
    out = evaluate(model, build_loader(val, 50, train=False, workers=0))
    assert out["count"] == 397
    assert 0 <= out["top1"] <= out["top5"] <= 100 and out["loss"] > 0
    logits = model(val.images)
    assert out["top1"] == pytest.approx((logits.argmax(1) == val.targets).float().mean().item() * 100)

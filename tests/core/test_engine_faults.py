"""Records that survive faults and one clear message per failure: torn metrics lines, bit-flipped or
corrupt checkpoints (fallback), orphaned temp files, file modes, accumulated wall time, full or
read-only disks, an optimizer that changed kind, hostile checkpoints, corrupt images behind workers."""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch.utils.data import Subset

from core.cli import main
from core.config import OptimConfig, ScheduleConfig
from core.data import build_dataset, build_loader, skipped_files
from core.engine import (
    Checkpointer,
    MetricsLogger,
    RunDir,
    Trainer,
    build_optimizer,
    build_scheduler,
    load_checkpoint,
    seed_everything,
)
from core.errors import CheckpointError, DataError, OutputError
from core.io import atomic_write_text, print_json
from tests.fixtures import IMAGENET_CLASSES, write_corrupt_jpeg, write_imagenet


class StopAt(Exception):
    pass


class Slow(Trainer):
    """Sleeps ``pause`` s per step (measurable wall time); raises at ``stop_at`` like a kill."""

    stop_at: int | None = None
    pause = 0.0

    def train_step(self, batch):
        if self.stop_at is not None and self.step == self.stop_at:
            raise StopAt
        time.sleep(self.pause)
        return super().train_step(batch)


def _make(run_dir, epochs=3, stop_at=None, pause=0.0, optimizer="sgd", resume="auto", keep=None):
    seed_everything(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    train = Subset(build_dataset("digits", split="train", image_size=8), range(320))
    loader = build_loader(train, 32, train=True, workers=0, seed=0)
    opt = build_optimizer(OptimConfig(name=optimizer, lr=0.1), model.parameters())
    sched = build_scheduler(ScheduleConfig(name="cosine", epochs=epochs), opt, len(loader))
    trainer = Slow(model, opt, loader, epochs=epochs, schedulers=sched, run_dir=run_dir, log_every=4,
                   resume=resume, keep_checkpoints=keep)
    trainer.stop_at, trainer.pause = stop_at, pause
    return trainer


def _records(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in ("time", "epoch_time")}
            for line in path.read_text().splitlines()]


def test_torn_metrics_line_is_cut_with_a_warning_and_the_run_resumes(tmp_path):
    full = _make(tmp_path / "full")
    full.fit()
    cut = _make(tmp_path / "cut", stop_at=15)
    with pytest.raises(StopAt):
        cut.fit()
    with open(tmp_path / "cut" / "metrics.jsonl", "a") as fh:
        fh.write('{"time": 17.5, "step": 16, "tr')  # a full disk stopped this line half-way
    with pytest.warns(UserWarning, match="unreadable line"):
        _make(tmp_path / "cut").fit()
    assert _records(tmp_path / "cut" / "metrics.jsonl") == _records(tmp_path / "full" / "metrics.jsonl")
    # a logger appending after a torn tail first cuts it back to the last whole line
    log_path = tmp_path / "m" / "metrics.jsonl"
    log_path.parent.mkdir()
    log_path.write_text('{"step": 1}\n{"step": 2, "lo')
    with pytest.warns(UserWarning, match="torn last line"):
        MetricsLogger(log_path.parent).log(step=3)
    assert [r["step"] for r in MetricsLogger(log_path.parent).read()] == [1, 3]


def _flip_tensor_byte(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` with one bit flipped inside the stored tensor data."""
    data = bytearray(src.read_bytes())
    marker = data.find(b"/data/0")  # the zip entry of the first tensor storage
    assert marker > 0
    data[marker + 200] ^= 0x10
    dst.write_bytes(bytes(data))


def test_bit_flips_are_detected_and_resume_falls_back_to_an_intact_checkpoint(tmp_path):
    trainer = _make(tmp_path, epochs=3, stop_at=25)  # epochs 1 and 2 checkpointed
    with pytest.raises(StopAt):
        trainer.fit()
    ckpts = tmp_path / "checkpoints"
    flipped = tmp_path / "flipped.pt"
    _flip_tensor_byte(ckpts / "last.pt", flipped)
    assert torch.load(flipped, weights_only=True)["epoch"] == 2  # torch alone loads it without a word
    with pytest.raises(CheckpointError, match="flipped.pt is corrupt: its content does not match the SHA"):
        load_checkpoint(flipped)
    os.replace(flipped, ckpts / "last.pt")  # a corrupt last.pt beside an intact epoch_0002.pt
    resumed = _make(tmp_path, epochs=3)
    with pytest.warns(UserWarning, match=r"last.pt is corrupt.*resuming from .*epoch_0002.pt"):
        assert resumed._resume() == 2
    resumed.close()
    # the same bytes flipped in place: last.pt and epoch_0002.pt are one file (a hard link) -> epoch 1
    _flip_tensor_byte(ckpts / "epoch_0002.pt", flipped)
    with open(ckpts / "epoch_0002.pt", "r+b") as fh:
        fh.write(flipped.read_bytes())
    os.link(ckpts / "epoch_0002.pt", ckpts / "last.tmp")
    os.replace(ckpts / "last.tmp", ckpts / "last.pt")
    again = _make(tmp_path, epochs=3)
    with pytest.warns(UserWarning, match=r"resuming from .*epoch_0001.pt"):
        again.fit()
    assert again.step == 30
    (ckpts / "epoch_0001.pt").write_bytes(b"junk")
    (ckpts / "epoch_0002.pt").write_bytes(b"junk")
    (ckpts / "epoch_0003.pt").unlink()
    (ckpts / "last.pt").unlink()
    with pytest.raises(CheckpointError, match="no usable checkpoint.*run.resume=none"):
        _make(tmp_path, epochs=3).fit()


def test_orphaned_temp_files_are_removed_at_the_next_start(tmp_path):
    trainer = _make(tmp_path, epochs=1)
    trainer.fit()
    orphans = [tmp_path / "checkpoints" / ".epoch_0002.pt.1a2b3c4d.mpq-tmp.pt",  # this version's names
               tmp_path / ".results.json.9f8e7d6c.mpq-tmp.json",
               tmp_path / "checkpoints" / ".last.pt.4242.tmp",  # older versions' names
               tmp_path / ".config.k2j3h4.tmp.yaml"]
    for p in orphans:
        p.write_bytes(b"half")
    keep = tmp_path / "notes.tmp.txt"
    keep.write_text("not ours")
    _make(tmp_path, epochs=1).fit()
    assert not any(p.exists() for p in orphans) and keep.exists()


def test_print_json_prints_and_writes_the_same_document(tmp_path, capsys):
    print_json({"ratio": 1.25, "runs": [1, 2]}, tmp_path / "perf.json")
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "perf.json").read_text()) == {"ratio": 1.25, "runs": [1, 2]}
    print_json({"x": 1})  # no path: printed only
    assert json.loads(capsys.readouterr().out) == {"x": 1}


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_atomic_writes_honour_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "results.json", "{}\n")
        Checkpointer(tmp_path / "ck").save({"epoch": 1}, epoch=1)
    finally:
        os.umask(old)
    assert (tmp_path / "results.json").stat().st_mode & 0o777 == mode
    assert (tmp_path / "ck" / "last.pt").stat().st_mode & 0o777 == mode


def test_wall_time_accumulates_across_resumes(tmp_path):
    cut = _make(tmp_path, epochs=3, stop_at=15, pause=0.02)  # 10 steps per epoch: >= 0.2 s each
    with pytest.raises(StopAt):
        cut.fit()
    first = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["wall_time_s"]
    assert first >= 0.2
    resumed = _make(tmp_path, epochs=3, pause=0.02)
    t0 = time.perf_counter()
    resumed.fit()
    this_process = time.perf_counter() - t0
    assert resumed.wall_time_s >= first + 0.4  # two more epochs on top of the first one
    assert resumed.wall_time_s > this_process  # not just the last process's time
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["progress"]["wall_time_s"] == pytest.approx(resumed.wall_time_s, abs=0.05)


def test_run_record_time_is_the_checkpoints_own(tmp_path, monkeypatch):
    """run.json's progress names the checkpoint a resume continues from: its wall time must be the one
    stored in that checkpoint, not the time after a slow write (a resume would then go back in time)."""
    save = Checkpointer.save

    def slow_save(self, state, epoch):
        time.sleep(0.3)
        return save(self, state, epoch=epoch)

    monkeypatch.setattr(Checkpointer, "save", slow_save)
    _make(tmp_path, epochs=1).fit()
    record = json.loads((tmp_path / "run.json").read_text())["progress"]["wall_time_s"]
    stored = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["wall_time_s"]
    assert record == pytest.approx(stored, abs=1e-3)


def test_an_optimizer_of_another_kind_is_a_clear_error(tmp_path):
    _make(tmp_path / "sgd", epochs=1).fit()
    adam = _make(tmp_path / "adam", epochs=2, optimizer="adam",
                 resume=str(tmp_path / "sgd" / "checkpoints" / "last.pt"))
    with pytest.raises(CheckpointError, match=r"optimizer\(s\) \{'weights': 'SGD'\}, this run has "
                                              r"\{'weights': 'Adam'\}"):
        adam.fit()


def test_full_read_only_and_misplaced_outputs_name_path_and_cause(tmp_path, monkeypatch, capsys):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputError, match=rf"cannot create directory {tmp_path}/afile/run: {tmp_path}/afile "
                                          "is a file, not a directory"):
        RunDir(tmp_path / "afile" / "run")

    def disk_full(obj, f, *a, **k):  # what torch's zip writer raises when the disk fills up
        Path(f).write_bytes(b"x" * 100)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 102656 vs 102576")

    monkeypatch.setattr(torch, "save", disk_full)
    monkeypatch.setattr("shutil.disk_usage", lambda p: type("U", (), {"free": 0})())
    ck = Checkpointer(tmp_path / "ck")
    with pytest.raises(OutputError, match=r"cannot write checkpoint .*epoch_0001.pt: no space left on the "
                                          r"device \(the disk is full; RuntimeError: .*unexpected pos"):
        ck.save({"epoch": 1}, epoch=1)
    assert list((tmp_path / "ck").iterdir()) == []  # no temp file left

    log = MetricsLogger(tmp_path)
    log.log(step=1, loss=0.5)
    real_write = os.write

    def short_then_enospc(fd, data):
        real_write(fd, bytes(data[:7]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", short_then_enospc)
    with pytest.raises(OutputError, match=r"cannot append to .*metrics.jsonl: no space left"):
        log.log(step=2, loss=0.25)
    monkeypatch.setattr(os, "write", real_write)
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 1 and log.read()[0]["step"] == 1

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(OutputError, match=r"cannot write .*results.json: the file system is read-only"):
        atomic_write_text(tmp_path / "results.json", "{}")
    monkeypatch.undo()
    monkeypatch.setattr("core.data.check_dataset", lambda *a, **k: (_ for _ in ()).throw(
        PermissionError(errno.EACCES, "Permission denied", "/data/imagenet/train")))
    assert main(["data", "check", "imagenet", "--root", "/data/imagenet"]) == 2
    assert capsys.readouterr().err == "error: Permission denied: /data/imagenet/train\n"


def test_a_hostile_checkpoint_is_refused_in_mpqs_own_words(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    torch.save({"model": {}, "x": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"refused to load checkpoint .*evil.pt: it holds a pickled "
                                              r"object \(posix.mkdir\)") as err:
        load_checkpoint(tmp_path / "evil.pt")
    assert "weights_only" not in str(err.value) and not marker.exists()


@pytest.fixture
def imagenet_with_corrupt(tmp_path):
    root = write_imagenet(tmp_path / "imagenet", per_class=2, size=(40, 40))
    bad = write_corrupt_jpeg(root / "train" / IMAGENET_CLASSES[0] / "zz_corrupt.JPEG")
    return root, bad


def test_a_corrupt_image_in_a_worker_gives_one_line(imagenet_with_corrupt):
    root, bad = imagenet_with_corrupt
    ds = build_dataset("imagenet", root, "train", image_size=16)
    loader = build_loader(ds, 4, train=False, workers=1)
    with pytest.raises(DataError) as err:
        for _ in loader:
            pass
    msg = str(err.value)
    assert msg.startswith(f"imagenet: cannot decode {bad}") and "Traceback" not in msg and "worker" not in msg


def test_skipped_files_are_counted_across_workers_and_reported(imagenet_with_corrupt, tmp_path, capsys):
    root, bad = imagenet_with_corrupt
    ds = build_dataset("imagenet", root, "train", image_size=16, skip_corrupt=True)
    loader = build_loader(ds, 4, train=False, workers=2)
    for _ in loader:  # the decoding (and the warning) happens in the worker processes
        pass
    assert ds.skipped == {str(bad)} and skipped_files(loader) == {str(bad)}  # seen by the main process
    digits = build_loader(build_dataset("digits", split="val"), 4, train=False, workers=0)
    assert skipped_files(digits) is None  # a dataset that never skips
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 3))
    fresh = build_dataset("imagenet", root, "train", image_size=16, skip_corrupt=True)
    trainer = Trainer(model, build_optimizer(OptimConfig(), model.parameters()),
                      build_loader(fresh, 1, train=True, workers=1), epochs=1, run_dir=tmp_path / "run")
    record = trainer.fit()
    assert record["data_skipped"] == 1 and trainer.data_skipped == [str(bad)]
    out = capsys.readouterr().out
    assert f"data: skipped 1 corrupt file(s) so far (data.skip_corrupt=true); new: {bad}" in out


def test_data_check_verify_fails_on_corrupt_files(imagenet_with_corrupt, capsys):
    root, bad = imagenet_with_corrupt
    assert main(["data", "check", "imagenet", "--root", str(root), "--verify"]) == 2
    out, err = capsys.readouterr()
    assert "corrupt: 1" in out and err.startswith("error: imagenet: 1 file(s)") and str(bad) in err
    bad.unlink()
    assert main(["data", "check", "imagenet", "--root", str(root), "--verify"]) == 0


def test_non_integer_cifar_labels_name_the_file(tmp_path):
    import pickle

    from tests.fixtures import write_cifar10

    d = write_cifar10(tmp_path, 1)
    with open(d / "test_batch", "rb") as fh:
        batch = pickle.load(fh)
    for labels in (["cat"] * 10, [0.5] * 10, [[1, 2]] * 10):
        batch["labels"] = labels
        with open(d / "test_batch", "wb") as fh:
            pickle.dump(batch, fh, protocol=2)
        with pytest.raises(DataError, match=r"test_batch: 'labels' must be a list of integer class indices"):
            build_dataset("cifar10", tmp_path, "val")

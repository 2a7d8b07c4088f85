"""Each EdMIPS stage is one run directory that only its own run continues (issue #10), through the CLI on
digits with tiny schedules: a changed key is one error naming it and writes nothing, a later stage's key
never disowns an earlier stage, a consumer checks its producer, `run.resume=none` starts clean, wall times
accumulate over resumes, and a second run into a directory in use stops at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.cli import main
from core.engine import Trainer
from core.results import load_results

STAGES = ("search", "discretize", "train")


def _fast(out: Path, *extra: str) -> list[str]:
    return ["-c", "digits", f"run.out_dir={out}", "data.image_size=8", "data.batch_size=32",
            "model.kwargs={widths: [4, 8, 8], blocks: 1}", "search.eta=0.002", "search.schedule.epochs=1",
            "search.max_steps_per_epoch=2", "train.schedule.epochs=1", "train.schedule.milestones=[1]",
            "train.max_steps_per_epoch=2", "run.log_every=100", *extra]


def _records(out: Path) -> dict[str, bytes]:
    """Every file the stages wrote (a refused command must leave them as they were)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _starts(stage_dir: Path) -> int:
    return len(json.loads((stage_dir / "run.json").read_text())["starts"])


def test_a_changed_search_key_is_refused_by_every_stage_that_reads_the_search(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["edmips", "run", *_fast(out)]) == 0
    before = _records(out)
    capsys.readouterr()
    # `edmips run search.eta=0.05` once printed eta 0.05 and reused the eta 0.002 search
    assert main(["edmips", "run", *_fast(out, "search.eta=0.05")]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "search.eta: 0.002 -> 0.05" in err
    assert "another run.out_dir" in err and "run.resume=none" in err
    # the later stages run alone: discretize's own run reads the search keys too, and even when told to
    # start afresh it checks the search it consumes; train checks the policy it consumes
    assert main(["edmips", "discretize", *_fast(out, "search.eta=0.05")]) == 2
    assert "search.eta: 0.002 -> 0.05" in capsys.readouterr().err
    assert main(["edmips", "discretize", *_fast(out, "search.eta=0.05", "run.resume=none")]) == 2
    err = capsys.readouterr().err
    assert f"EdMIPS search in {out / 'search'} was made by another run" in err
    assert "search.eta: 0.002 -> 0.05" in err and "mpq edmips search" in err
    assert main(["edmips", "train", *_fast(out, "search.eta=0.05")]) == 2
    err = capsys.readouterr().err
    assert f"policy {out / 'discretize' / 'policy.json'} was made by another run" in err
    assert "search.eta: 0.002 -> 0.05" in err and "mpq edmips discretize" in err
    assert _records(out) == before  # refused: nothing written
    # keys of the later stages are not the search's: it is continued (finished: nothing retrained)
    assert main(["edmips", "search", *_fast(out, "train.optim.lr=0.05", "discretize.rule=multinomial")]) == 0
    assert _starts(out / "search") == 2
    assert "resumed from" in capsys.readouterr().out


def test_train_continues_only_the_same_training_and_resume_none_starts_clean(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    results = out / "train" / "results.json"
    assert main(["edmips", "train", *_fast(out, "train.policy=uniform")]) == 0  # W2A2
    old = results.read_bytes()
    # a finished W2A2 directory rerun with W4A4 once wrote results.json with the W2A2 model's accuracy
    assert main(["edmips", "train", *_fast(out, "train.policy=uniform", "train.uniform_w_bits=4",
                                           "train.uniform_a_bits=4")]) == 2
    err = capsys.readouterr().err
    assert "train.uniform_w_bits: 2 -> 4" in err and "train.uniform_a_bits: 2 -> 4" in err
    assert "policy.layer1.0.conv1: [2, 2] -> [4, 4]" in err
    # lr=1e9 on resume was once ignored while config.yaml recorded it
    assert main(["edmips", "train", *_fast(out, "train.policy=uniform", "train.optim.lr=1e9")]) == 2
    assert "train.optim.lr: 0.1 -> 1000000000.0" in capsys.readouterr().err
    assert results.read_bytes() == old

    # resume=none, killed before its first checkpoint: the old run is set aside, results.json included...
    w4a4 = ["train.policy=uniform", "train.uniform_w_bits=4", "train.uniform_a_bits=4"]

    def killed(self, epoch):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(Trainer, "train_one_epoch", killed)
        assert main(["edmips", "train", *_fast(out, *w4a4, "run.resume=none")]) == 130
    assert not results.exists() and not (out / "train" / "checkpoints").exists()
    (previous,) = (out / "train" / ".previous").iterdir()
    assert (previous / "results.json").read_bytes() == old
    assert (previous / "checkpoints" / "last.pt").is_file()
    # ...and never picked up again: the next start of that run trains from scratch
    capsys.readouterr()
    assert main(["edmips", "train", *_fast(out, *w4a4)]) == 0
    assert "resumed from" not in capsys.readouterr().out
    fresh = load_results(results)
    assert fresh.counts.avg_bits == pytest.approx(4.0) and fresh.method == "uniform"


def test_wall_times_accumulate_over_resumes(tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = _fast(out, "train.policy=uniform", "train.schedule.epochs=2", "train.schedule.milestones=[2]")
    on_epoch_start = Trainer.on_epoch_start

    def stop_in_epoch_2(self, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        on_epoch_start(self, epoch)

    with monkeypatch.context() as m:
        m.setattr(Trainer, "on_epoch_start", stop_in_epoch_2)
        assert main(["edmips", "train", *args]) == 130
    first = json.loads((out / "train" / "run.json").read_text())["progress"]["wall_time_s"]
    assert main(["edmips", "train", *args]) == 0
    train = load_results(out / "train" / "results.json").wall_time_s["train"]
    last = json.loads((out / "train" / "run.json").read_text())["progress"]["wall_time_s"]
    assert 0 < first < last <= train + 1e-3  # both processes' training, not only the last one's

    assert main(["edmips", "search", *_fast(out)]) == 0
    assert main(["edmips", "discretize", *_fast(out)]) == 0
    assert main(["edmips", "train", *_fast(out, "run.resume=none")]) == 0
    times = load_results(out / "train" / "results.json").wall_time_s
    search = json.loads((out / "search" / "run.json").read_text())["progress"]["wall_time_s"]
    assert set(times) == {"search", "discretize", "train"} and times["search"] == pytest.approx(search)


@pytest.mark.slow  # a second Python process (~10-30 s to import torch on a loaded machine)
def test_a_second_run_into_a_directory_in_use_stops_at_once(tmp_path, capsys):
    out = tmp_path / "run"
    args = _fast(out, "search.schedule.epochs=1000")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    first = subprocess.Popen([sys.executable, "-m", "core.cli", "edmips", "search", *args], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (out / "search" / "checkpoints").is_dir():  # the first run is training
            assert first.poll() is None, first.stderr.read()
            assert time.monotonic() < deadline, "the first run did not start training within 300 s"
            time.sleep(0.2)
        assert main(["edmips", "search", *args]) == 2
        err = capsys.readouterr().err
        assert f"the run directory {out / 'search'} is in use by pid {first.pid}" in err
        assert first.poll() is None  # the first run goes on
    finally:
        first.kill()
        first.wait()

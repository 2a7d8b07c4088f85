"""DDP: 2 processes (gloo on CPU) with batch B/2 each == 1 process with batch B.

Per-step training loss, validation metrics (sharded without padding, counts reduced over ranks) and
the final parameters must agree within 1e-5 (float32 summation order is the only difference).
With BatchNorm this holds only under ``run.sync_bn`` (statistics over the global batch): the BN test
checks 2 ranks == 1 rank within 1e-5 with it, and that without it the runs differ by far more (each
rank normalises its B/2 samples with their own statistics). The fast tests fork the two ranks from the
test process with torchrun's environment variables; the ``slow`` one launches them with ``torchrun``
itself (this file is then the worker script). ``run.dist_timeout_s`` bounds how long a rank waits for
a stalled one.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch.utils.data import Subset

from core.config import OptimConfig, ScheduleConfig
from core.data import build_dataset, build_loader
from core.engine import (
    RunDir,
    Trainer,
    barrier,
    build_optimizer,
    build_scheduler,
    destroy_distributed,
    init_distributed,
    is_main,
    seed_everything,
)
from core.errors import RunDirError

GLOBAL_BATCH = 32
TOL = 1e-5
TOL_SYNC_BN = 1e-5  # BatchNorm: a two-pass mean/variance over all-reduced sums vs torch's kernel


def run(out_dir: Path) -> None:
    torch.set_num_threads(1)
    info = init_distributed("cpu")
    seed_everything(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, 10))
    train = Subset(build_dataset("digits", split="train", image_size=8), range(256))
    val = build_dataset("digits", split="val", image_size=8)
    loader = build_loader(train, GLOBAL_BATCH // info.world_size, train=True, workers=0, seed=0)
    opt = build_optimizer(OptimConfig(lr=0.2), model.parameters())
    sched = build_scheduler(ScheduleConfig(name="cosine", epochs=2), opt, len(loader))
    trainer = Trainer(model, opt, loader, build_loader(val, 50, train=False, workers=0), epochs=2,
                      schedulers=sched, run_dir=out_dir, log_every=1, resume="none")
    trainer.fit()
    if is_main():
        torch.save({k: v.clone() for k, v in trainer.module.state_dict().items()}, out_dir / "params.pt")
    destroy_distributed()


def _bn_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 10))


def run_bn(out_dir: Path, sync_bn: bool) -> None:
    """Two epochs of a BatchNorm model; writes metrics.jsonl and params.pt (with BN running stats)."""
    info = init_distributed("cpu")
    seed_everything(0)
    model = _bn_model()
    train = Subset(build_dataset("digits", split="train", image_size=8), range(256))
    val = build_dataset("digits", split="val", image_size=8)
    loader = build_loader(train, GLOBAL_BATCH // info.world_size, train=True, workers=0, seed=0)
    opt = build_optimizer(OptimConfig(lr=0.2), model.parameters())
    trainer = Trainer(model, opt, loader, build_loader(val, 50, train=False, workers=0), epochs=2,
                      run_dir=out_dir, log_every=1, resume="none", sync_bn=sync_bn)
    trainer.fit()
    if is_main():
        torch.save({k: v.clone() for k, v in trainer.module.state_dict().items()}, out_dir / "params.pt")


def _forked_rank(rank: int, out_dir: Path, port: int, what: str = "plain") -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    if what == "plain":
        run(out_dir)
    elif what == "bn":
        run_bn(out_dir / "ddp_sync", sync_bn=True)
        run_bn(out_dir / "ddp_plain", sync_bn=False)
        destroy_distributed()
    elif what == "refusal":  # rank 0 holds the lock and refuses; every rank must raise, none may wait
        info = init_distributed("cpu")
        model = nn.Linear(4, 2)
        trainer = Trainer(model, build_optimizer(OptimConfig(), model.parameters()), [], epochs=1,
                          run_dir=out_dir / "run", resume="auto", identity={"optim.lr": 0.2})
        try:
            trainer.fit()
            error = None
        except RunDirError as exc:
            error = str(exc)
        (out_dir / f"rank{info.rank}.json").write_text(json.dumps({"error": error}))
        destroy_distributed()
    elif what == "timeout":
        init_distributed("cpu", timeout_s=2)
        if rank == 0:
            t0 = time.perf_counter()
            try:
                barrier()  # rank 1 never arrives
                error = None
            except Exception as exc:  # noqa: BLE001 - gloo's timeout error
                error = type(exc).__name__
            (out_dir / "timeout.json").write_text(json.dumps({"error": error,
                                                              "waited": time.perf_counter() - t0}))
        else:
            deadline = time.time() + 60
            while not (out_dir / "timeout.json").exists() and time.time() < deadline:
                time.sleep(0.1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_process_gloo_matches_one_process(tmp_path):
    run(tmp_path / "single")  # first: the forked ranks then inherit an initialised torch (fast start)
    torch.multiprocessing.start_processes(_forked_rank, args=(tmp_path / "ddp", _free_port()), nprocs=2,
                                          start_method="fork", join=True)
    _compare(tmp_path)


def _max_diff(a: dict, b: dict) -> float:
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def test_sync_batchnorm_two_processes_match_one_process(tmp_path):
    """``run.sync_bn``: 2 ranks x 16 == 1 rank x 32 with BatchNorm (losses, accuracy, parameters and
    BN running statistics within 1e-5); without it, BN sees half batches and the runs differ."""
    run_bn(tmp_path / "single", sync_bn=True)  # one process: plain BatchNorm whatever the flag
    torch.multiprocessing.start_processes(_forked_rank, args=(tmp_path, _free_port(), "bn"), nprocs=2,
                                          start_method="fork", join=True)
    single = _records(tmp_path / "single")
    p_one = torch.load(tmp_path / "single" / "params.pt", weights_only=True)
    synced = _records(tmp_path / "ddp_sync")
    assert len(synced) == len(single) == 2 * 8 + 2
    for a, b in zip(synced, single):
        for key in ("train_loss", "train_top1", "val_loss", "val_top1"):
            if key in b:
                assert a[key] == pytest.approx(b[key], abs=TOL_SYNC_BN), (key, a, b)
    p_sync = torch.load(tmp_path / "ddp_sync" / "params.pt", weights_only=True)
    assert _max_diff(p_sync, p_one) < TOL_SYNC_BN
    assert torch.equal(p_sync["1.num_batches_tracked"], p_one["1.num_batches_tracked"])
    p_plain = torch.load(tmp_path / "ddp_plain" / "params.pt", weights_only=True)
    plain = _records(tmp_path / "ddp_plain")
    loss_gap, sync_gap = (max(abs(a["train_loss"] - b["train_loss"]) for a, b in zip(run, single)
                              if "train_loss" in b) for run in (plain, synced))
    print(f"2 ranks vs 1, max |train loss difference| / max |parameter or BN-statistic difference|: with "
          f"sync_bn {sync_gap:.3g} / {_max_diff(p_sync, p_one):.3g}, without {loss_gap:.3g} / "
          f"{_max_diff(p_plain, p_one):.3g}")
    assert _max_diff(p_plain, p_one) > 100 * TOL_SYNC_BN  # per-rank statistics: another computation


def test_a_refusal_on_rank_0_reaches_every_rank(tmp_path):
    with RunDir(tmp_path / "run").open({"optim.lr": 0.1}, "auto"):
        pass
    torch.multiprocessing.start_processes(_forked_rank, args=(tmp_path, _free_port(), "refusal"), nprocs=2,
                                          start_method="fork", join=True)
    errors = [json.loads((tmp_path / f"rank{r}.json").read_text())["error"] for r in (0, 1)]
    assert errors[0] == errors[1] and "optim.lr: 0.1 -> 0.2" in errors[0]
    assert not (tmp_path / "run" / ".lock").exists()


def test_a_stalled_rank_fails_after_the_configured_timeout(tmp_path):
    t0 = time.perf_counter()
    torch.multiprocessing.start_processes(_forked_rank, args=(tmp_path, _free_port(), "timeout"), nprocs=2,
                                          start_method="fork", join=True)
    result = json.loads((tmp_path / "timeout.json").read_text())
    assert result["error"] is not None and 1.5 < result["waited"] < 30, result  # 2 s, not 30 minutes
    assert time.perf_counter() - t0 < 60


@pytest.mark.slow  # three python start-ups (torch import); ~10 s on an idle 2-core machine
def test_torchrun_two_processes_match_one_process(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           __file__, str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run(tmp_path / "single")
    _compare(tmp_path)


def _compare(tmp_path: Path) -> None:

    ddp, single = _records(tmp_path / "ddp"), _records(tmp_path / "single")
    assert len(ddp) == len(single) == 2 * 8 + 2  # 8 steps per epoch + one epoch line each
    for a, b in zip(ddp, single):
        assert a["step"] == b["step"] and a["kind"] == b["kind"]
        for key in ("train_loss", "train_top1", "val_loss", "val_top1", "val_count"):
            if key in b:
                assert a[key] == pytest.approx(b[key], abs=TOL), (key, a, b)
    assert single[-1]["val_count"] == ddp[-1]["val_count"] == 397
    p_ddp = torch.load(tmp_path / "ddp" / "params.pt", weights_only=True)
    p_one = torch.load(tmp_path / "single" / "params.pt", weights_only=True)
    for name in p_one:
        assert torch.allclose(p_ddp[name], p_one[name], atol=TOL, rtol=0), name
    # the run really trained: parameters moved far more than the tolerance
    seed_everything(0)
    init = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, 10)).state_dict()
    assert max((p_one[k] - init[k]).abs().max().item() for k in init) > 100 * TOL


if __name__ == "__main__":
    run(Path(sys.argv[1]))

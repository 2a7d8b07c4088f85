"""The search never leaves the feasible domain (E(SN) < B_max at every step), in both path modes, also when
the architecture steps are made to overshoot; resume keeps the architecture record."""

from __future__ import annotations

import pytest
import torch

from core.config import load_config
from core.data import CappedLoader, build_dataset, build_loader
from papers.bpnas.config import BpnasConfig
from papers.bpnas.search import build_search_trainer, prepare_supernet

FAST = ["model.name=digits_resnet", "model.kwargs={widths: [4, 8, 8], blocks: 1}", "data.name=digits",
        "data.image_size=8", "data.batch_size=32", "search.warmup_epochs=0", "search.b_max=3.2",
        "run.log_every=1000", "run.device=cpu"]


def _search(tmp_path, *overrides, steps=6, run_dir=None):
    cfg = load_config(BpnasConfig, None, [*FAST, *overrides])
    torch.manual_seed(0)
    model, selectors, cost, init = prepare_supernet(cfg, 10, (3, 8, 8), torch.device("cpu"))
    train = build_dataset("digits", split="train", image_size=8)
    loader = CappedLoader(build_loader(train, 32, train=True, workers=0, distributed=False), steps)
    trainer = build_search_trainer(cfg, model, selectors, cost, loader, None, torch.device("cpu"), run_dir)
    return cfg, trainer, cost, init


@pytest.mark.parametrize("paths", ["sample", "mixture"])
def test_feasible_at_every_step_with_huge_architecture_steps(tmp_path, paths):
    """Start 0.02 bits below B_max and take huge architecture steps: E(SN) stays below B_max - boundary_eps
    after every one of them."""
    cfg, trainer, cost, init = _search(
        tmp_path, f"search.paths={paths}", "search.init_margin=0.02", "search.mu=0.0001",
        "search.arch_optim={name: sgd, lr: 300.0, momentum: 0.0}", "search.schedule.epochs=2")
    assert init["expected_avg_bits"] == pytest.approx(3.2 - 0.02, abs=1e-6)
    trainer.fit()
    assert len(trainer.trace) == 12  # one architecture step per training step
    assert max(trainer.trace) <= 3.2 - cfg.search.boundary_eps
    assert cost.value() < 3.2
    assert [e["epoch"] for e in trainer.arch_history] == [0, 1, 2]
    assert all(e["expected_avg_bits"] < 3.2 for e in trainer.arch_history)


def test_steps_that_would_cross_are_backtracked(tmp_path, monkeypatch):
    """An objective that pulls E(SN) up as hard as it can (a reversed barrier): every architecture step
    aims beyond B_max, is backtracked, and the search ends at the boundary, never beyond it."""
    import papers.bpnas.search as search

    monkeypatch.setattr(search, "barrier_penalty", lambda expected, b_max, mu: -100.0 * expected)
    cfg, trainer, cost, _ = _search(tmp_path, "search.paths=mixture", "search.prob1_weight=0",
                                    "search.arch_optim={name: sgd, lr: 50.0, momentum: 0.9}",
                                    "search.schedule.epochs=1")
    trainer.fit()
    assert max(trainer.trace) <= 3.2 - cfg.search.boundary_eps
    assert trainer.arch_history[-1]["backtracks"] > 0
    assert cost.value() == pytest.approx(3.2 - cfg.search.boundary_eps, abs=0.05)


def test_default_search_moves_the_architecture_within_the_budget(tmp_path):
    cfg, trainer, cost, init = _search(tmp_path, "search.paths=sample", "search.arch_optim.lr=0.05",
                                       "search.schedule.epochs=2", steps=8)
    start = [s.alpha.detach().clone() for s in trainer.selectors]
    trainer.fit()
    assert any(not torch.equal(s.alpha, a) for s, a in zip(trainer.selectors, start))
    assert max(trainer.trace) < 3.2 and trainer.baseline is not None


def test_warmup_epochs_leave_the_architecture_alone(tmp_path):
    _, trainer, _, _ = _search(tmp_path, "search.warmup_epochs=1", "search.schedule.epochs=1", steps=3)
    start = [s.alpha.detach().clone() for s in trainer.selectors]
    trainer.fit()
    assert trainer.trace == [] and all(torch.equal(s.alpha, a) for s, a in zip(trainer.selectors, start))


def test_resume_keeps_the_architecture_record(tmp_path):
    run = tmp_path / "search"
    _, trainer, _, _ = _search(tmp_path, "search.schedule.epochs=1", steps=3, run_dir=run)
    trainer.fit()
    alpha = [s.alpha.detach().clone() for s in trainer.selectors]
    _, again, _, _ = _search(tmp_path, "search.schedule.epochs=2", "run.resume=force", steps=3, run_dir=run)
    with pytest.warns(UserWarning, match="run.resume=force"):  # one more epoch: a changed identity key
        again.fit()
    assert [e["epoch"] for e in again.arch_history] == [0, 1, 2]
    assert again.arch_history[1]["probs"] == trainer.arch_history[1]["probs"]
    assert any(not torch.equal(s.alpha, a) for s, a in zip(again.selectors, alpha))


def _ddp_rank(rank: int, out_dir, port: int, paths: str) -> None:
    import os

    from core.engine import destroy_distributed, init_distributed

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    init_distributed("cpu")
    torch.manual_seed(rank)  # different data order and initial weights per rank: DDP must reconcile them
    cfg = load_config(BpnasConfig, None, [*FAST, f"search.paths={paths}", "search.schedule.epochs=1",
                                          "search.arch_optim.lr=0.3"])
    model, selectors, cost, _ = prepare_supernet(cfg, 10, (3, 8, 8), torch.device("cpu"))
    train = build_dataset("digits", split="train", image_size=8)
    loader = CappedLoader(build_loader(train, 16, train=True, workers=0, seed=0), 4)
    trainer = build_search_trainer(cfg, model, selectors, cost, loader, None, torch.device("cpu"), None)
    trainer.fit()
    torch.save({"alpha": [s.alpha.detach().clone() for s in selectors], "trace": trainer.trace,
                "weights": {k: v.detach().clone() for k, v in trainer.module.named_parameters()}},
               out_dir / f"rank{rank}.pt")
    destroy_distributed()


@pytest.mark.parametrize("paths", ["sample", "mixture"])
def test_two_ranks_keep_one_architecture(tmp_path, paths):
    """Under DDP (2 gloo ranks) the logits stay out of DDP's buckets and are averaged by the trainer:
    both ranks end with the same architecture (and weights), feasible at every step."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.start_processes(_ddp_rank, args=(tmp_path, port, paths), nprocs=2,
                                          start_method="fork", join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert len(r0["trace"]) == 4 and max(r0["trace"]) < 3.2 and r0["trace"] == r1["trace"]
    assert all(torch.equal(a, b) for a, b in zip(r0["alpha"], r1["alpha"]))
    assert any(float(a.abs().max()) > 0 for a in r0["alpha"])  # the architecture did move
    assert all(torch.equal(r0["weights"][k], r1["weights"][k]) for k in r0["weights"])

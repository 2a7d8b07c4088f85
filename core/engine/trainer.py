"""The generic classification trainer that paper trainers subclass.

``Trainer.fit()`` runs epochs of :meth:`Trainer.train_step` with per-iteration / per-epoch schedulers,
evaluation, metrics logging, per-epoch checkpoints and ``resume``. A paper overrides only what its
algorithm changes:

- EdMIPS search: ``compute_loss`` adds the complexity loss; the two named optimizers (``weights``,
  ``arch``) both step after the one backward of the default ``train_step``.
- LLT indicator training: ``train_step`` runs one forward/backward per candidate bit-width, gradients
  accumulating, then calls ``clip_gradients()`` and ``step_optimizers()`` once.

A non-finite value in what ``train_step`` returns stops the run with ``TrainingDivergedError``; no
checkpoint is written after the divergence, so the last good one stays (parameters are also checked
before every save).

The run directory (``run_dir``) belongs to one run: ``fit()`` takes its lock, refuses to continue a
run of another identity (``identity``, by default the whole ``config``; see
:mod:`core.engine.identity`), loads the newest intact checkpoint, and only then writes ``run.json``
and ``config.yaml``. The lock is released when ``fit()`` returns or raises. ``wall_time_s`` is the
training wall time accumulated over every process that contributed to the run (resumes included).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from core.engine.checkpoint import Checkpointer, load_checkpoint
from core.engine.dist import (
    all_reduce_mean,
    all_reduce_sum,
    barrier,
    get_info,
    is_distributed,
    is_main,
    on_main,
    unwrap,
    wrap_ddp,
)
from core.engine.identity import config_identity, format_diff, identity_diff
from core.engine.rundir import RESUME_MODES, MetricsLogger, Progress, RunDir, log
from core.engine.seed import rng_state, set_rng_state
from core.errors import CheckpointError, ConfigError, RunDirError, TrainingDivergedError

__all__ = ["Trainer", "ClassificationTrainer", "evaluate", "accuracy", "move_to", "trainer_kwargs"]


def move_to(batch: Any, device: torch.device) -> Any:
    """Tensors in (nested) lists/tuples/dicts moved to ``device`` (non-blocking)."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: move_to(v, device) for k, v in batch.items()}
    return batch


def accuracy(logits: torch.Tensor, targets: torch.Tensor, topk: int = 1) -> torch.Tensor:
    """Top-k accuracy in percent (a 0-dim tensor)."""
    k = min(topk, logits.shape[1])
    hit = logits.topk(k, dim=1).indices.eq(targets[:, None]).any(dim=1)
    return hit.float().mean() * 100.0


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device | str | None = None,
             desc: str = "eval", every: int = 50) -> dict[str, float]:
    """Top-1 / top-5 (percent) and mean cross-entropy over ``loader``. Distributed-aware: counts are
    summed over ranks (use a non-padding shard sampler, as ``build_loader(train=False)`` does)."""
    model = unwrap(model)  # DDP's forward would need the same number of calls on every rank
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss_sum, top1, top5, n
    for batch in Progress(loader, desc=desc, every=every):
        images, targets = move_to(batch, device)[:2]
        logits = model(images)
        k = min(5, logits.shape[1])
        hits = logits.topk(k, dim=1).indices.eq(targets[:, None])
        totals += torch.stack([F.cross_entropy(logits.float(), targets, reduction="sum").double(),
                               hits[:, :1].sum().double(), hits.sum().double(),
                               torch.tensor(float(targets.numel()), dtype=torch.float64, device=device)])
    model.train(was_training)
    loss_sum, c1, c5, n = all_reduce_sum(totals).tolist()
    if n == 0:
        raise ConfigError("evaluate: the loader yielded no samples")
    return {"top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n, "loss": loss_sum / n, "count": int(n)}


def trainer_kwargs(run: Any = None, optim: Any = None) -> dict:
    """Trainer keyword arguments from a ``RunConfig`` and an ``OptimConfig`` (either may be None)."""
    kw: dict = {}
    if run is not None:
        kw.update(run_dir=run.out_dir, resume=run.resume, log_every=run.log_every,
                  eval_every=run.eval_every, keep_checkpoints=run.keep_checkpoints,
                  tensorboard=run.tensorboard, compile_quantizers=run.compile, sync_bn=run.sync_bn)
    if optim is not None:
        kw.update(label_smoothing=optim.label_smoothing, grad_clip=optim.grad_clip,
                  grad_clip_mode=optim.grad_clip_mode)
    return kw


class Trainer:
    """Classification training loop with named optimizers and schedulers.

    ``optimizers``: one optimizer or ``{"weights": ..., "arch": ...}``. ``schedulers``: one or a dict;
    each is stepped per iteration if its ``interval`` attribute is ``"step"`` (every schedule from
    :func:`core.engine.build_scheduler`), else once per epoch. ``resume``: ``"auto"``, ``"none"``,
    ``"force"`` or a checkpoint path (see :data:`core.engine.rundir.RESUME_MODES`). ``run_dir=None``
    keeps nothing on disk (no checkpoints, no metrics file). ``config``: the resolved config, written
    as ``config.yaml``; ``identity``: the mapping a resumed run must match (default: the identity of
    ``config``, see :func:`core.engine.identity.config_identity`; ``{}`` without a config). A stage
    that later stages follow passes its own, e.g. ``config_identity(cfg, exclude=["train"])``.
    ``sync_bn``: BatchNorm statistics over all ranks under DDP (``run.sync_bn``).
    """

    def __init__(self, model: nn.Module, optimizers: torch.optim.Optimizer | dict, train_loader: Iterable,
                 val_loader: Iterable | None = None, *, epochs: int, schedulers: Any = None,
                 run_dir: RunDir | str | os.PathLike | None = None, device: torch.device | str | None = None,
                 resume: str = "none", label_smoothing: float = 0.0, grad_clip: float | None = None,
                 grad_clip_mode: str = "norm", log_every: int = 50, eval_every: int = 1,
                 keep_checkpoints: int | None = None, tensorboard: bool = False,
                 find_unused_parameters: bool = False, sync_bn: bool = False, config: Any = None,
                 identity: Mapping[str, Any] | None = None, compile_quantizers: bool | None = None):
        if compile_quantizers is not None:  # `run.compile`: the quantizers' torch.compile'd kernels
            from core.quant import set_compiled

            set_compiled(compile_quantizers)
        self.device = torch.device(device) if device is not None else get_info().device
        self.module = model.to(self.device)
        self.model = wrap_ddp(self.module, find_unused_parameters=find_unused_parameters, sync_bn=sync_bn)
        self.module = unwrap(self.model)
        self.optimizers = optimizers if isinstance(optimizers, dict) else {"weights": optimizers}
        if schedulers is None:
            schedulers = {}
        self.schedulers = schedulers if isinstance(schedulers, dict) else {"weights": schedulers}
        self.train_loader, self.val_loader = train_loader, val_loader
        if int(epochs) < 1:
            raise ConfigError(f"epochs must be >= 1, got {epochs}")
        self.epochs, self.resume = int(epochs), str(resume or "none")
        if grad_clip_mode not in ("norm", "value"):
            raise ConfigError(f"grad_clip_mode must be 'norm' or 'value', got {grad_clip_mode!r}")
        self.grad_clip, self.grad_clip_mode = grad_clip, grad_clip_mode
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.log_every, self.eval_every = max(1, log_every), max(1, eval_every)
        if run_dir is not None and not isinstance(run_dir, RunDir):
            run_dir = RunDir(run_dir)
        self.run_dir = run_dir
        self.metrics = MetricsLogger(self.run_dir, tensorboard) if self.run_dir else None
        self.checkpointer = Checkpointer(self.run_dir.checkpoints, keep_checkpoints) if self.run_dir else None
        self.config = config
        if identity is None:
            identity = config_identity(config) if config is not None else {}
        self.identity = config_identity(dict(identity))  # JSON types, like its copy in run.json
        self._holding = False  # this trainer holds a claim on run_dir
        self.epoch, self.step = 0, 0
        self.history: list[dict] = []
        self.data_skipped: list[str] = []  # files skipped as corrupt (data.skip_corrupt), all ranks
        self._time_base, self._t0 = 0.0, None

    # ----------------------------------------------------------------- overridable pieces
    def compute_loss(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Forward and loss. Returns ``(loss to backpropagate, scalars to log)``."""
        logits = self.model(images)
        loss = self.criterion(logits, targets)
        return loss, {"loss": loss.detach(), "top1": accuracy(logits.detach(), targets)}

    def train_step(self, batch: Any) -> dict[str, Any]:
        """One iteration: forward, backward, optional clipping, every optimizer steps. Returns scalars."""
        images, targets = move_to(batch, self.device)[:2]
        loss, scalars = self.compute_loss(images, targets)
        self.zero_grad()
        loss.backward()
        self.clip_gradients()
        self.step_optimizers()
        return scalars

    def validate(self, epoch: int) -> dict[str, float]:
        """Evaluation after an epoch (logged with a ``val_`` prefix); override e.g. to evaluate
        several bit-widths."""
        return evaluate(self.model, self.val_loader, self.device, desc=f"val {epoch + 1}",
                        every=self.log_every)

    def on_epoch_start(self, epoch: int) -> None:
        """Called before each training epoch (0-based ``epoch``)."""

    def on_epoch_end(self, epoch: int, record: dict) -> dict | None:
        """Called after training + evaluation, before logging/checkpointing; may return extra scalars."""
        return None

    def state_extra(self) -> dict:
        """Extra plain-typed state to checkpoint (e.g. a temperature schedule)."""
        return {}

    def load_extra(self, extra: dict) -> None:
        """Restore what :meth:`state_extra` returned."""

    # ----------------------------------------------------------------- helpers for train_step
    def zero_grad(self) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)

    def step_optimizers(self, names: Iterable[str] | None = None) -> None:
        for name in names if names is not None else self.optimizers:
            self.optimizers[name].step()

    def parameters_to_clip(self) -> list[torch.Tensor]:
        return [p for opt in self.optimizers.values() for g in opt.param_groups for p in g["params"]
                if p.grad is not None]

    def clip_gradients(self) -> torch.Tensor | None:
        """Clip gradients of all optimized parameters (by global norm or by value); returns the norm."""
        if self.grad_clip is None:
            return None
        params = self.parameters_to_clip()
        if self.grad_clip_mode == "value":
            torch.nn.utils.clip_grad_value_(params, self.grad_clip)
            return None
        return torch.nn.utils.clip_grad_norm_(params, self.grad_clip)

    def lrs(self) -> dict[str, float]:
        return {f"lr_{name}": opt.param_groups[0]["lr"] for name, opt in self.optimizers.items()}

    # ----------------------------------------------------------------- loop
    def fit(self) -> dict:
        """Train from scratch or resume; returns the last epoch's record. The run directory is held
        for the call (released however it ends)."""
        try:
            start = self._resume()
            self._t0 = time.perf_counter()
            self._epochs(start)
        finally:
            self._stop_clock()
            self.close()
        return self.history[-1] if self.history else {}

    def close(self) -> None:
        """Close the metrics file and give up this trainer's claim on the run directory."""
        if self.metrics is not None:
            self.metrics.close()
        if self._holding:
            self._holding = False
            self.run_dir.close()

    @property
    def wall_time_s(self) -> float:
        """Training wall time of the run so far, accumulated over resumes (the time a killed process
        spent after its last checkpoint is not counted: that work was redone)."""
        running = time.perf_counter() - self._t0 if self._t0 is not None else 0.0
        return self._time_base + running

    def _stop_clock(self) -> None:
        self._time_base, self._t0 = self.wall_time_s, None

    def _epochs(self, start: int) -> None:
        for epoch in range(start, self.epochs):
            self.epoch = epoch
            _set_loader_epoch(self.train_loader, epoch)
            self.on_epoch_start(epoch)
            t0 = time.perf_counter()
            record = {f"train_{k}": v for k, v in self.train_one_epoch(epoch).items()}
            record["epoch_time"] = time.perf_counter() - t0
            lrs = self.lrs()  # the rates in use at the end of the epoch
            due = (epoch + 1) % self.eval_every == 0 or epoch + 1 == self.epochs
            if self.val_loader is not None and due:
                record.update({f"val_{k}": v for k, v in self.validate(epoch).items()})
            for sched in self.schedulers.values():
                if getattr(sched, "interval", "epoch") != "step":
                    sched.step()
            record.update(self.on_epoch_end(epoch, record) or {})
            record.update(self._count_skipped())
            self._check_parameters(epoch)
            record = {"kind": "epoch", **record}
            if self.metrics is not None:
                self.metrics.log(step=self.step, epoch=epoch, **lrs, **record)
            self.history.append(record)
            log(f"epoch {epoch + 1}/{self.epochs} " + " ".join(
                f"{k} {v:.4g}" for k, v in record.items() if isinstance(v, float)))
            self.save_checkpoint()

    def _count_skipped(self) -> dict:
        """``{"data_skipped": n}`` when a loader's dataset skips corrupt files (``data.skip_corrupt``),
        with a log line when the count grew; ``{}`` otherwise."""
        from core.data import skipped_files

        tracked = [s for s in (skipped_files(self.train_loader), skipped_files(self.val_loader))
                   if s is not None]
        if not tracked:
            return {}
        files = set().union(*tracked)
        if is_distributed():
            gathered: list = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, sorted(files))
            files = set().union(*map(set, gathered))
        if len(files) > len(self.data_skipped):
            new = sorted(files - set(self.data_skipped))
            log(f"data: skipped {len(files)} corrupt file(s) so far (data.skip_corrupt=true); new: "
                + ", ".join(new[:5]) + (" ..." if len(new) > 5 else ""))
        self.data_skipped = sorted(files)
        return {"data_skipped": len(files)}

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        epoch_sums: dict[str, torch.Tensor] = {}
        window: dict[str, torch.Tensor] = {}
        n_epoch = n_window = 0
        progress = Progress(self.train_loader, desc=f"epoch {epoch + 1}/{self.epochs}", every=self.log_every)
        for batch in progress:
            scalars = self.train_step(batch)
            self.step += 1
            for sched in self.schedulers.values():
                if getattr(sched, "interval", "epoch") == "step":
                    sched.step()
            for k, v in scalars.items():
                v = torch.as_tensor(v.detach() if isinstance(v, torch.Tensor) else v).to(self.device).double()
                epoch_sums[k] = epoch_sums.get(k, 0) + v
                window[k] = window.get(k, 0) + v
            n_epoch += 1
            n_window += 1
            if self.step % self.log_every == 0:
                means = self._reduce(window, n_window, epoch)
                progress.set_postfix(**means)
                if self.metrics is not None:
                    self.metrics.log(step=self.step, epoch=epoch, kind="step", **self.lrs(), **means)
                window, n_window = {}, 0
        if n_epoch == 0:
            raise ConfigError("the training loader yielded no batches (dataset smaller than one batch "
                              "with drop_last?)")
        return self._reduce(epoch_sums, n_epoch, epoch)

    def _reduce(self, sums: dict[str, torch.Tensor], count: int, epoch: int) -> dict[str, float]:
        keys = sorted(sums)
        if not keys:
            return {}
        values = all_reduce_mean(torch.stack([sums[k] for k in keys]) / count).tolist()
        means = dict(zip(keys, values))
        bad = {k: v for k, v in means.items() if not math.isfinite(v)}
        if bad:
            self._diverged(epoch, f"{', '.join(f'{k}={v}' for k, v in bad.items())}")
        return means

    def _check_parameters(self, epoch: int) -> None:
        checks = [torch.isfinite(p).all() for p in self.module.parameters()]
        flags = torch.stack(checks).all() if checks else torch.tensor(True, device=self.device)
        if is_distributed():
            flags = all_reduce_sum(flags.float()) == dist.get_world_size()
        if not bool(flags):
            self._diverged(epoch, "non-finite model parameters")

    def _diverged(self, epoch: int, what: str) -> None:
        last = self.checkpointer.latest() if self.checkpointer is not None else None
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint had been written yet"
        raise TrainingDivergedError(
            f"training diverged at epoch {epoch + 1}, step {self.step}: {what}; {kept}. Lower the learning "
            "rate, enable gradient clipping (optim.grad_clip), or check the data and the loss")

    # ----------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        states = rng_state()
        if is_distributed():
            gathered: list = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, states)
            states = gathered
        else:
            states = [states]
        return {
            "model": self.module.state_dict(),
            "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
            "optimizer_types": {n: type(o).__name__ for n, o in self.optimizers.items()},
            "schedulers": {n: s.state_dict() for n, s in self.schedulers.items()},
            "epoch": self.epoch + 1,  # epochs completed
            "step": self.step,
            "rng": states,  # one entry per rank
            "extra": self.state_extra(),
            "identity": self.identity,
            "wall_time_s": self.wall_time_s,
            "data_skipped": self.data_skipped,
        }

    def load_state_dict(self, state: dict, source: str = "checkpoint") -> None:
        saved = state.get("optimizer_types")
        mine = {n: type(o).__name__ for n, o in self.optimizers.items()}
        if saved is not None and set(saved) == set(mine) and saved != mine:
            raise CheckpointError(
                f"{source} was written with the optimizer(s) {saved}, this run has {mine}: an optimizer's "
                "state cannot be carried over to another kind of optimizer. Resume with the same optimizer, "
                "or start afresh (run.resume=none or another run.out_dir)")
        try:
            self.module.load_state_dict(state["model"])
            for group in ("optimizers", "schedulers"):
                mine = getattr(self, group)
                if set(state[group]) != set(mine):
                    raise CheckpointError(f"{source}: {group} {sorted(state[group])} do not match this "
                                          f"trainer's {sorted(mine)}")
                for name, obj in mine.items():
                    obj.load_state_dict(state[group][name])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{source} does not fit this model/trainer: {exc}") from None
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        rank = get_info().rank
        set_rng_state(state["rng"][min(rank, len(state["rng"]) - 1)])
        self._time_base = float(state.get("wall_time_s", 0.0))
        self.data_skipped = list(state.get("data_skipped", []))
        self.load_extra(state.get("extra", {}))

    def save_checkpoint(self) -> Path | None:
        if self.checkpointer is None:
            return None
        state = self.state_dict()  # collective (RNG gather): every rank builds it

        def write() -> Path:
            path = self.checkpointer.save(state, epoch=self.epoch + 1)
            if self.metrics is not None:
                self.metrics.sync()
            if self._holding:  # what a consuming stage checks (core.engine.rundir.check_producer)
                done = self.epoch + 1
                self.run_dir.update_record(progress={
                    "epochs_done": done, "epochs": self.epochs, "finished": done >= self.epochs,
                    "step": self.step, "wall_time_s": round(self.wall_time_s, 3)})
            return path

        return on_main(write)

    def _resume(self) -> int:
        """Claim the run directory, load the checkpoint to continue from (validated), then write the
        run's records; returns the first epoch to train."""
        spec = self.resume
        if spec not in RESUME_MODES and not Path(spec).is_file():
            raise CheckpointError(f"resume={spec}: no such checkpoint file; use resume=auto, none, force or "
                                  "a path to a .pt file")
        if self.run_dir is not None:
            self.run_dir.claim(self.identity, spec)  # lock + identity check; writes nothing
            self._holding = True
        try:
            found = self._find_checkpoint(spec)
            if found is not None:
                path, state = found
                self._check_identity(state, path)
                self.load_state_dict(state, str(path))
            if self.run_dir is not None:
                self.run_dir.start(self.config)  # validated: now run.json and config.yaml are written
        except BaseException:
            self.close()
            raise
        if found is None:
            if self.metrics is not None:
                self.metrics.reset()
            return 0
        if self.metrics is not None:
            self.metrics.truncate_after(self.step)
            barrier()
            self.history = [r for r in self.metrics.read() if r.get("kind") == "epoch"]
        log(f"resumed from {path} (epoch {self.epoch}, step {self.step})")
        return self.epoch

    def _find_checkpoint(self, spec: str) -> tuple[Path, dict] | None:
        """The checkpoint ``spec`` names: ``auto``/``force``: the newest intact one in the run directory
        (rank 0 chooses, falling back past corrupt files; every rank loads the same file)."""
        if spec == "none":
            return None
        if spec not in RESUME_MODES:
            return Path(spec), load_checkpoint(spec, map_location=self.device)
        if self.checkpointer is None:
            return None
        found = None

        def choose() -> str | None:
            nonlocal found
            found = self.checkpointer.load_latest(map_location=self.device)
            return None if found is None else str(found[0])

        path = on_main(choose)  # only the path travels to the other ranks
        if path is None or is_main():
            return found
        return Path(path), load_checkpoint(path, map_location=self.device)

    def _check_identity(self, state: dict, path: Path) -> None:
        recorded = state.get("identity")
        if recorded is None or self.resume == "force":
            return
        diff = identity_diff(recorded, self.identity)
        if diff:
            raise RunDirError(f"checkpoint {path} belongs to another run: {len(diff)} key(s) differ (its run "
                              f"-> now):\n{format_diff(diff)}\nStart afresh (run.resume=none or another "
                              "run.out_dir), or continue it under the new values with run.resume=force")


ClassificationTrainer = Trainer


def _set_loader_epoch(loader: Any, epoch: int) -> None:
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
        return
    for holder in (getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None),
                                                             "sampler", None)):
        if hasattr(holder, "set_epoch"):
            holder.set_epoch(epoch)
            return

"""torchrun / DDP helpers: gloo on CPU, nccl on CUDA; rank-0-only side effects.

A plain ``python train.py`` is the one-process case: every helper then works without a process group.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from core.engine.seed import resolve_device
from core.errors import ConfigError, MpqError

__all__ = ["DistInfo", "init_distributed", "get_info", "is_main", "barrier", "all_reduce_mean",
           "all_reduce_sum", "broadcast_object", "on_main", "wrap_ddp", "unwrap", "no_sync",
           "destroy_distributed", "is_distributed"]


@dataclasses.dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


_INFO: DistInfo | None = None  # None until init_distributed(): one process on resolve_device("auto")


def init_distributed(device: str | torch.device = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group described by torchrun's env (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR``/``MASTER_PORT``). Without them: one process on ``resolve_device(device)``.
    On CUDA each process takes ``cuda:LOCAL_RANK`` and nccl; otherwise gloo. ``timeout_s``
    (``run.dist_timeout_s``): how long a collective waits for a stalled rank before failing."""
    if timeout_s <= 0:
        raise ConfigError(f"run.dist_timeout_s must be > 0, got {timeout_s}")
    global _INFO
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    base = resolve_device(device)
    if base.type == "cuda" and base.index is None and world > 1:
        base = torch.device("cuda", local)
    if base.type == "cuda":
        torch.cuda.set_device(base)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if base.type == "cuda" else "gloo"
        kwargs = {"device_id": base} if backend == "nccl" else {}
        dist.init_process_group(backend, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    _INFO = DistInfo(rank=rank, world_size=world, local_rank=local, device=base)
    return _INFO


def destroy_distributed() -> None:
    global _INFO
    if dist.is_initialized():
        dist.destroy_process_group()
    _INFO = DistInfo(device=get_info().device)


def get_info() -> DistInfo:
    """This process's rank / world size / device (one process on the best device if
    :func:`init_distributed` was not called)."""
    return _INFO if _INFO is not None else DistInfo(device=resolve_device("auto"))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main() -> bool:
    """True on rank 0 (and in a one-process run): the process that logs and writes files."""
    return not is_distributed() or dist.get_rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over ranks (a new tensor; ``t`` unchanged)."""
    t = t.detach().clone()
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of ``t`` over ranks (a new tensor; ``t`` unchanged)."""
    t = all_reduce_sum(t)
    return t / dist.get_world_size() if is_distributed() else t


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` (picklable) on every rank; ``obj`` itself in a one-process run."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def on_main(fn: Callable[[], Any]) -> Any:
    """``fn()`` run on rank 0 only; every rank returns its result or raises its error, so a failure on
    rank 0 (a refused resume, a full disk) never leaves the other ranks waiting at a collective."""
    result, err = None, None
    if is_main():
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - re-raised below, on every rank
            err = exc
    shared = err if err is None or isinstance(err, (MpqError, OSError)) else \
        RuntimeError(f"rank 0 failed: {type(err).__name__}: {err}")
    result, shared = broadcast_object((result, shared))
    if err is not None:
        raise err  # rank 0: the original, with its traceback
    if shared is not None:
        raise shared
    return result


def wrap_ddp(model: nn.Module, find_unused_parameters: bool = False, sync_bn: bool = False) -> nn.Module:
    """``DistributedDataParallel`` around ``model`` when distributed; ``model`` itself otherwise.
    ``sync_bn`` (``run.sync_bn``) first makes every BatchNorm synchronised over the ranks (torch's
    SyncBatchNorm on CUDA, :class:`core.engine.syncbn.GlobalBatchNorm` elsewhere)."""
    if not is_distributed():
        return model
    device = next(model.parameters()).device
    if sync_bn:
        from core.engine.syncbn import convert_sync_batchnorm

        model = convert_sync_batchnorm(model)
    ids = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids,
                                               find_unused_parameters=find_unused_parameters)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP / ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def no_sync(model: nn.Module):
    """DDP's ``no_sync()`` (skip the gradient all-reduce of this backward) or a null context."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()

"""Training engine: seeds/devices, torchrun + DDP, process setup, run directory, metrics, progress,
checkpoints with resume, optimizers/schedules, BN re-estimation and the generic classification
:class:`Trainer`."""

from core.engine.bn import reestimate_bn_statistics
from core.engine.checkpoint import Checkpointer, check_plain, load_checkpoint
from core.engine.dist import (
    DistInfo,
    all_reduce_mean,
    all_reduce_sum,
    barrier,
    destroy_distributed,
    get_info,
    init_distributed,
    is_distributed,
    is_main,
    no_sync,
    unwrap,
    wrap_ddp,
)
from core.engine.mmengine_compat import mmengine_safe_globals, mmengine_safe_loading
from core.engine.optim import build_optimizer, build_scheduler, lr_factor
from core.engine.process import (
    ClassificationData,
    build_model_from_config,
    classification_data,
    input_size_of,
    num_classes_for,
    per_rank_batch,
    setup_process,
)
from core.engine.rundir import MetricsLogger, Progress, RunDir, log
from core.engine.seed import resolve_device, rng_state, seed_everything, set_rng_state
from core.engine.trainer import ClassificationTrainer, Trainer, accuracy, evaluate, move_to, trainer_kwargs
from core.io import atomic_write_text

__all__ = [
    "Checkpointer", "check_plain", "load_checkpoint", "DistInfo", "all_reduce_mean", "all_reduce_sum",
    "barrier", "destroy_distributed", "get_info", "init_distributed", "is_distributed", "is_main", "no_sync",
    "unwrap", "wrap_ddp", "build_optimizer", "build_scheduler", "lr_factor", "MetricsLogger", "Progress",
    "RunDir", "atomic_write_text", "log", "resolve_device", "rng_state", "seed_everything", "set_rng_state",
    "ClassificationTrainer", "Trainer", "accuracy", "evaluate", "move_to", "trainer_kwargs",
    "mmengine_safe_globals", "mmengine_safe_loading", "reestimate_bn_statistics", "setup_process",
    "per_rank_batch", "num_classes_for", "build_model_from_config", "input_size_of", "ClassificationData",
    "classification_data",
]

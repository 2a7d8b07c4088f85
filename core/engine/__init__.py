"""Training engine: seeds/devices, torchrun + DDP, process setup, run directory (identity, lock, records),
metrics, progress, checkpoints with resume, optimizers/schedules, BN re-estimation and the generic
classification :class:`Trainer`."""

from core.engine.bn import reestimate_bn_statistics
from core.engine.checkpoint import Checkpointer, check_plain, load_checkpoint, safe_torch_load, state_digest
from core.engine.dist import (
    DistInfo,
    all_reduce_mean,
    all_reduce_sum,
    barrier,
    broadcast_object,
    destroy_distributed,
    get_info,
    init_distributed,
    is_distributed,
    is_main,
    no_sync,
    on_main,
    unwrap,
    wrap_ddp,
)
from core.engine.identity import NON_IDENTITY_KEYS, code_version, config_identity
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
from core.engine.rundir import RESUME_MODES, MetricsLogger, Progress, RunDir, check_producer, log
from core.engine.seed import resolve_device, rng_state, seed_everything, set_rng_state
from core.engine.syncbn import GlobalBatchNorm, convert_sync_batchnorm
from core.engine.trainer import ClassificationTrainer, Trainer, accuracy, evaluate, move_to, trainer_kwargs
from core.io import atomic_write_text

__all__ = [
    "Checkpointer", "check_plain", "load_checkpoint", "safe_torch_load", "state_digest", "DistInfo",
    "all_reduce_mean", "all_reduce_sum", "barrier", "broadcast_object", "destroy_distributed", "get_info",
    "init_distributed", "is_distributed", "is_main", "no_sync", "on_main", "unwrap", "wrap_ddp",
    "NON_IDENTITY_KEYS",
    "check_producer", "code_version", "config_identity", "build_optimizer", "build_scheduler", "lr_factor",
    "RESUME_MODES", "MetricsLogger", "Progress", "RunDir", "atomic_write_text", "log", "resolve_device",
    "rng_state", "seed_everything", "set_rng_state", "GlobalBatchNorm", "convert_sync_batchnorm",
    "ClassificationTrainer", "Trainer", "accuracy", "evaluate", "move_to", "trainer_kwargs",
    "mmengine_safe_globals", "mmengine_safe_loading", "reestimate_bn_statistics", "setup_process",
    "per_rank_batch", "num_classes_for", "build_model_from_config", "input_size_of", "ClassificationData",
    "classification_data",
]

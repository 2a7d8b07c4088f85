"""BatchNorm statistics re-estimation: recompute every BN's running mean / variance on training images
with the final (quantized) weights, as LLT's recipe does before its final evaluation (OneMPS and BASQ
re-calibrate the same way after choosing a sub-network)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn

from core.engine.dist import all_reduce_mean, get_info, unwrap
from core.engine.trainer import move_to

__all__ = ["reestimate_bn_statistics"]


@torch.no_grad()
def reestimate_bn_statistics(model: nn.Module, loader: Iterable, num_images: int,
                             device: torch.device | str | None = None) -> int:
    """Reset every BatchNorm's running statistics and recompute them as the plain average, over the
    batches of ``loader``, of the batch mean and (unbiased) batch variance, using the first
    ``num_images`` images (split over the ranks; the last batch is cut to fit). Under DDP the result is
    averaged over ranks so the replicas stay identical. Returns the images used on this rank (0 when
    the model has no BatchNorm or ``num_images <= 0``: nothing is changed then).

    With batches of equal size this is the mean over all the images (``momentum=None`` in torch is a
    cumulative average over batches). Parameters and the train/eval mode are left as they were.
    """
    module = unwrap(model)
    device = torch.device(device) if device is not None else next(module.parameters()).device
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or num_images <= 0:
        return 0
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average = plain mean over batches
    was_training = module.training
    module.train()
    seen, target = 0, max(1, num_images // get_info().world_size)
    try:
        for batch in loader:
            images = move_to(batch, device)[0]
            module(images[: target - seen])
            seen += min(len(images), target - seen)
            if seen >= target:
                break
    finally:
        for bn, momentum in zip(bns, saved):
            bn.momentum = momentum
        module.train(was_training)
    for bn in bns:
        bn.running_mean.copy_(all_reduce_mean(bn.running_mean))
        bn.running_var.copy_(all_reduce_mean(bn.running_var))
    return seen

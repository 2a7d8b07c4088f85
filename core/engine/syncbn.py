"""Synchronised BatchNorm on any device: training statistics over the global batch of all ranks.

``torch.nn.SyncBatchNorm`` needs CUDA (torch 2.14: its kernels ``batch_norm_stats`` etc. have no CPU
implementation, and its forward refuses CPU tensors), so DDP on CPU (gloo) would normalise each rank's
B/N samples with their own statistics and N processes would not train like one. :class:`GlobalBatchNorm`
computes the batch mean and variance from sums all-reduced over the ranks (two-pass: the sum and count,
then the sum of squared deviations) with an all-reduce whose backward all-reduces the gradient, so the
gradient is that of the global-batch objective, as in torch's SyncBatchNorm. Outside training, or
without a process group, it is a plain BatchNorm. :func:`convert_sync_batchnorm` picks torch's
implementation on CUDA and this one elsewhere.
"""

from __future__ import annotations

import itertools

import torch
import torch.distributed as dist
import torch.nn as nn

__all__ = ["GlobalBatchNorm", "convert_sync_batchnorm"]


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the gradient of every rank's input is the sum of the ranks' output gradients."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # noqa: D102
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm (1d/2d/3d inputs) whose training statistics cover the batch of every rank."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        out_dtype = x.dtype
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()  # statistics in float32, as torch's BatchNorm does under autocast
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.full((1,), x.numel() / x.shape[1], dtype=x.dtype, device=x.device)
        sums = _AllReduceSum.apply(torch.cat([x.sum(dims), count]))
        n = sums[-1]
        mean = sums[:-1] / n
        centred = x - mean.view(shape)
        var = _AllReduceSum.apply((centred * centred).sum(dims)) / n
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                f = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - f).add_(mean.detach(), alpha=f)
                unbiased = var.detach() * (n / (n - 1).clamp(min=1))
                self.running_var.mul_(1 - f).add_(unbiased, alpha=f)
        return y.to(out_dtype)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm1d/2d/3d`` in ``module`` by a synchronised one (torch's
    ``SyncBatchNorm`` for parameters on CUDA, :class:`GlobalBatchNorm` otherwise), keeping parameters,
    buffers and mode. Subclasses of BatchNorm with their own forward are left alone."""
    plain = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    if type(module) in plain:
        ref = next(itertools.chain(module.parameters(), module.buffers()), None)
        cls = nn.SyncBatchNorm if ref is not None and ref.device.type == "cuda" else GlobalBatchNorm
        new = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        if module.affine:
            with torch.no_grad():
                new.weight = module.weight
                new.bias = module.bias
        new.running_mean, new.running_var = module.running_mean, module.running_var
        new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        new_child = convert_sync_batchnorm(child)
        if new_child is not child:
            setattr(module, name, new_child)
    return module

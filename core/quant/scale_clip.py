"""Scale-Clip distribution reshaping + uniform quantization: the ``scale_clip`` quantizer.

Yu et al., "Low-bit Quantization Needs Good Distribution" (CVPR-W 2020; GDRQ, arXiv:1908.01477): a uniform
quantizer loses least on a uniform-like distribution, so weights and activations are clipped at ``k``
times a statistic of the tensor itself, which turns their bell-shaped distributions into uniform-like ones
"in a dynamic manner" (the bound follows the tensor). BP-NAS (ECCV 2020, supplementary section 5) trains
its mixed-precision networks with it ("distribution reshaping", "uniformization"). Our reading, with every
constant an option (``papers/bpnas/README.md`` explains the choices):

- weights: ``T = k * stat(W)`` (``stat`` = ``mean_abs`` by default, also ``std`` / ``max``), computed from
  the current weights at every forward and not differentiated; ``W_c = clamp(W, -T, T)``; ``2^b``
  mid-rise levels ``(i + 1/2) * 2T / 2^b`` spanning ``[-T, T]`` (the MSE-optimal uniform quantizer of a
  uniform distribution on ``[-T, T]``). ``stat="max", k=1`` is plain linear quantization over the full
  range (no reshaping).
- activations: ``T = k * stat(x)``, the statistic of the current batch in training (tracked as a running
  average with ``momentum``, as BatchNorm does) and the running average in evaluation; unsigned inputs are
  clipped to ``[0, T]`` with ``2^b - 1`` steps (zero is a level), signed inputs (``signed=True``, or
  ``signed=None``: decided on the first training batch) like the weights. The activation statistic is
  unstable during training, so a large ``k`` is used.

Gradients: straight-through inside the clip range, zero outside (the clipped elements do not move). At
32 bits the quantizer is the identity (not quantized, not clipped), as every ``core.quant`` quantizer.

A layer that quantizes one input at several bit-widths (a searchable layer) shares ONE :class:`RunningStat`
between its activation quantizers (:func:`share_running_stat`), so every candidate sees the same range.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from core.errors import ConfigError, ExportError
from core.quant.base import Quantizer, kernel, register_quantizer
from core.quant.grid import IntegerGrid, check_bits, require_tensor

STATS = ("mean_abs", "std", "max")
#: defaults: weights clipped at 2.5 mean|W| (about 2 sigma for a Gaussian), activations at 6 mean|x|
#: (about 2.4 sigma for a rectified unit Gaussian); see the README for the reasoning.
DEFAULT_W_K, DEFAULT_A_K = 2.5, 6.0


def tensor_stat(x: torch.Tensor, stat: str) -> torch.Tensor:
    """The statistic the clip bound is a multiple of (a 0-dim tensor, no gradient)."""
    x = x.detach()
    if stat == "mean_abs":
        return x.abs().mean()
    if stat == "std":
        return x.float().std().to(x.dtype) if x.numel() > 1 else x.abs().mean()
    if stat == "max":
        return x.abs().max()
    raise ConfigError(f"unknown scale_clip statistic {stat!r}; choose one of {list(STATS)}")


def symmetric_midrise(x: torch.Tensor, bound: torch.Tensor, levels: int) -> torch.Tensor:
    """Clip to ``[-bound, bound]`` and round to ``levels`` (= 2^b) mid-rise levels; STE inside the clip."""
    xc = torch.clamp(x, -bound, bound)
    with torch.no_grad():
        step = 2 * bound / levels
        idx = torch.clamp(torch.floor(xc / step), -levels // 2, levels // 2 - 1)
        q = (idx + 0.5) * step
    return q + (xc - xc.detach())


def unsigned_midtread(x: torch.Tensor, bound: torch.Tensor, steps: int) -> torch.Tensor:
    """Clip to ``[0, bound]`` and round to ``steps + 1`` levels ``i * bound / steps``; STE inside the clip."""
    xc = torch.clamp(x, torch.zeros_like(bound), bound)
    with torch.no_grad():
        step = bound / steps
        q = torch.round(xc / step) * step
    return q + (xc - xc.detach())


class RunningStat(nn.Module):
    """The activation statistic: the current batch's in training (and its running average), the running
    average in evaluation. ``signed``: None = decided by the first training batch (any negative input)."""

    def __init__(self, stat: str = "mean_abs", momentum: float = 0.1, signed: bool | None = False) -> None:
        super().__init__()
        if stat not in STATS:
            raise ConfigError(f"unknown scale_clip statistic {stat!r}; choose one of {list(STATS)}")
        if not 0 < momentum <= 1:
            raise ConfigError(f"scale_clip momentum must be in (0, 1], got {momentum}")
        self.stat, self.momentum = stat, float(momentum)
        self.register_buffer("running", torch.zeros(()))
        self.register_buffer("tracked", torch.zeros((), dtype=torch.long))
        # -1: undecided, 0: unsigned, 1: signed
        self.register_buffer("sign_mode", torch.tensor(-1 if signed is None else int(bool(signed))))
        self.update = True  # False: training uses the batch statistic without updating the average
        self._sign: bool | None = None  # host copies of the buffers (no device sync per forward)
        self._tracked: bool | None = None

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._sign = self._tracked = None
        super()._load_from_state_dict(*args, **kwargs)

    def is_tracked(self) -> bool:
        """Whether a training batch has set the running statistic."""
        if self._tracked is None:
            self._tracked = bool(int(self.tracked) > 0)
        return self._tracked

    def signed(self, x: torch.Tensor) -> bool:
        """Whether the input is treated as signed (undecided: any negative value in ``x``, recorded in
        training)."""
        if self._sign is None:
            mode = int(self.sign_mode)
            if mode >= 0:
                self._sign = bool(mode)
            else:
                decided = bool((x.detach() < 0).any())
                if not self.training:
                    return decided
                self.sign_mode.fill_(int(decided))
                self._sign = decided
        return self._sign

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            value = tensor_stat(x, self.stat)
            if not self.update:
                return value
            with torch.no_grad():
                if not self.is_tracked():
                    self.running.copy_(value)
                else:
                    self.running.mul_(1 - self.momentum).add_(value * self.momentum)
                self.tracked.add_(1)
            self._tracked = True
            return value
        if not self.is_tracked():  # evaluated before any training batch: the batch's own statistic
            return tensor_stat(x, self.stat)
        return self.running

    def extra_repr(self) -> str:
        return f"stat={self.stat}, momentum={self.momentum}"


@register_quantizer("scale_clip")
class ScaleClipQuantizer(Quantizer):
    """Scale-Clip distribution reshaping + uniform quantization (see the module docstring).

    Options: ``k`` (clip bound in units of ``stat``; default 2.5 for weights, 6 for activations), ``stat``
    (``mean_abs`` | ``std`` | ``max``), ``momentum`` (activations' running statistic, 0.1), ``signed``
    (activations: False, True or None = decided on the first training batch; weights are always signed).

    >>> q = ScaleClipQuantizer(2, role="weight", k=1.0, stat="max")  # plain linear, range [-max, max]
    >>> q(torch.tensor([-1.0, -0.4, 0.1, 1.0])).tolist()
    [-0.75, -0.25, 0.25, 0.75]
    """

    def __init__(self, bits: int, role: str = "activation", k: float | None = None, stat: str = "mean_abs",
                 momentum: float = 0.1, signed: bool | None = False) -> None:
        super().__init__(bits, role)
        self.k = float(k if k is not None else DEFAULT_W_K if role == "weight" else DEFAULT_A_K)
        if self.k <= 0:
            raise ConfigError(f"scale_clip k must be > 0, got {self.k}")
        if stat not in STATS:
            raise ConfigError(f"unknown scale_clip statistic {stat!r}; choose one of {list(STATS)}")
        self.stat = stat
        self.running_stat = RunningStat(stat, momentum, signed) if role == "activation" else None

    def bound(self, x: torch.Tensor) -> torch.Tensor:
        """The clip bound ``T = k * stat`` for ``x`` (updates the running statistic in training)."""
        value = tensor_stat(x, self.stat) if self.running_stat is None else self.running_stat(x)
        return torch.clamp(value * self.k, min=torch.finfo(x.dtype).tiny)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        bound = self.bound(x).to(x.dtype)
        if self.running_stat is None or self.running_stat.signed(x):
            return kernel(symmetric_midrise)(x, bound, 2**self.bits)
        return kernel(unsigned_midtread)(x, bound, 2**self.bits - 1)

    def grid(self, x: torch.Tensor | None = None) -> IntegerGrid:
        """Weights (and signed activations): the odd integers ``[-(2^b - 1), 2^b - 1]`` at scale
        ``T / 2^b`` (mid-rise, stores constants only); unsigned activations: integers ``[0, 2^b - 1]`` at
        step ``T / (2^b - 1)`` with the running bound of evaluation. Exact (the forward multiplies the same
        integers by the same float32 scale)."""
        check_bits(self.bits, self.name)
        stat = self.running_stat
        if stat is None:
            bound = self.bound(require_tensor(x, self.name)).float()
        elif not stat.is_tracked():
            raise ExportError("scale_clip activation bound was never tracked (no training batch or "
                              "checkpoint); load the trained weights first")
        else:
            bound = (stat.running * self.k).float()
        if stat is None or int(stat.sign_mode) == 1:  # signed (an undecided input was never seen)
            levels = 2**self.bits
            return IntegerGrid(2 * bound / levels / 2, -(levels - 1), levels - 1, odd_only=True)
        return IntegerGrid(bound / (2**self.bits - 1), 0, 2**self.bits - 1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, k={self.k}, stat={self.stat}"


@contextmanager
def stats_frozen(quantizer: nn.Module) -> Iterator[None]:
    """Within the block, a ``scale_clip`` activation quantizer does not update its running statistic (a
    layer quantizing one input at several bit-widths in one forward updates it once)."""
    stat = getattr(quantizer, "running_stat", None)
    if stat is None:
        yield
        return
    stat.update = False
    try:
        yield
    finally:
        stat.update = True


def share_running_stat(quantizers: list[nn.Module]) -> None:
    """Make every ``scale_clip`` activation quantizer of ``quantizers`` use the first one's statistic
    (the candidates of one searchable layer quantize the same input)."""
    scq = [q for q in quantizers if isinstance(q, ScaleClipQuantizer) and q.running_stat is not None]
    for q in scq[1:]:
        q.running_stat = scq[0].running_stat

"""LSQ: learned step size quantization (Esser et al., ICLR 2020), with LLT's per-bit steps."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from core.errors import ConfigError, ExportError
from core.quant import functional as F
from core.quant.base import FULL_PRECISION, Quantizer, kernel, register_quantizer
from core.quant.grid import IntegerGrid, check_bits

LSQ_INITS = ("limpq", "lsq")
LSQ_GRAD_SCALES = ("per_step", "tensor")

#: ``paper``: the LSQ paper's gradients (eq. 3; the official LIMPQ code's, x/s clamped before rounding);
#: ``native``: those of torch's ``_fake_quantize_learnable_per_tensor_affine`` (range decided after rounding)
LSQ_GRADIENTS = {"paper": F.lsq_fake_quant, "native": F.lsq_fake_quant_native}
_MIN_STEP = 1e-8


@register_quantizer("lsq")
class LSQQuantizer(Quantizer):
    """LSQ fake quantizer ``y = clamp(round(x / s), Q_n, Q_p) * s`` with a learned step ``s``.

    Args:
        bits: current bit-width (32: identity).
        role: ``"weight"`` or ``"activation"``; sets the defaults of ``signed`` and ``ch_axis``.
        signed: levels ``[-2^(b-1), 2^(b-1) - 1]`` (default for weights) or ``[0, 2^b - 1]``
            (default for activations).
        symmetric: signed levels ``[-(2^(b-1) - 1), 2^(b-1) - 1]`` instead (BASQ's weights; b >= 2).
        per_channel: one step per channel along ``ch_axis`` (0 for weights, 1 for NCHW / NC
            activations); needs ``channels``.
        candidate_bits: e.g. ``[6, 5, 4, 3, 2]``: one learnable step per candidate, the current
            ``bits`` picks which is used (LLT: these steps are the importance indicators, see
            :meth:`step_for`); ``bits`` must then be a candidate or 32.
        init: weight-step initialisation, ``"limpq"`` (LLT official: ``max(|mu - 3 sigma|,
            |mu + 3 sigma|) / 2^(b-1)``, unbiased sigma) or ``"lsq"`` (the LSQ paper:
            ``2 mean|w| / sqrt(Q_p)``). Activations always use ``2 mean|x| / sqrt(Q_p)``.
        gradient: ``"paper"`` (default: LSQ eq. 3 and the official LIMPQ quantizer; ``x / s`` clamped
            before rounding, so in the half-step band just outside the range ``x`` gets 0 and the step
            ``Q_n`` / ``Q_p``) or ``"native"`` (torch's learnable fake-quant op, which decides the range
            after rounding: gradient 1 to ``x`` and ``round(x/s) - x/s`` to the step in that band).

    Every step is initialised from the data on the first forward at its bit-width (per-channel
    statistics are taken over all other dimensions); an ``initialized`` buffer records which
    steps are, so the state survives a ``state_dict`` round trip. Under ``torch.distributed`` the
    initial step is averaged over ranks so replicas stay identical.

    Gradient scale ``g = 1 / sqrt(Q_p * N)`` with ``N = x.numel()`` (the whole tensor, batch
    included, as in LLT's code); per-channel uses ``N = x.numel() / C``, the elements that share one
    step, so each channel's step sees the same scaling a per-tensor step of that size would
    (``grad_scale="per_step"``, the default). ``grad_scale="tensor"`` keeps ``N = x.numel()`` for
    per-channel steps too (BASQ's official code; the step gradients are then ``sqrt(C)`` times smaller).
    """

    def __init__(
        self,
        bits: int,
        role: str = "activation",
        signed: bool | None = None,
        symmetric: bool = False,
        per_channel: bool = False,
        channels: int | None = None,
        ch_axis: int | None = None,
        candidate_bits: Sequence[int] | None = None,
        init: str = "limpq",
        grad_scale: str = "per_step",
        gradient: str = "paper",
    ) -> None:
        super().__init__(FULL_PRECISION, role)
        if init not in LSQ_INITS:
            raise ConfigError(f"lsq init must be one of {LSQ_INITS}, got {init!r}")
        if grad_scale not in LSQ_GRAD_SCALES:
            raise ConfigError(f"lsq grad_scale must be one of {LSQ_GRAD_SCALES}, got {grad_scale!r}")
        if gradient not in LSQ_GRADIENTS:
            raise ConfigError(f"lsq gradient must be one of {sorted(LSQ_GRADIENTS)}, got {gradient!r}")
        self.gradient = gradient
        if per_channel and not channels:
            raise ConfigError("lsq per_channel=True needs channels=<number of channels>")
        self.signed = (role == "weight") if signed is None else bool(signed)
        self.symmetric = bool(symmetric)
        if self.symmetric and not self.signed:
            raise ConfigError("lsq symmetric=True only applies to signed quantizers")
        self.per_channel = bool(per_channel)
        self.ch_axis = (0 if role == "weight" else 1) if ch_axis is None else int(ch_axis)
        self.init = init
        self.grad_scale = grad_scale
        low = 2 if self.signed else 1
        if candidate_bits is not None:
            cands = [int(b) for b in candidate_bits]
            bad = [b for b in cands if not low <= b <= 8]
            if bad or not cands or len(set(cands)) != len(cands):
                raise ConfigError(f"lsq candidate_bits must be distinct values in {low}..8, got {cands}")
            self.candidate_bits: list[int] | None = cands
            self.supported_bits = (*cands, FULL_PRECISION)
        else:
            self.candidate_bits = None
            self.supported_bits = (*range(low, 9), FULL_PRECISION)
        n_slots = len(self.candidate_bits) if self.candidate_bits else 1
        width = int(channels) if self.per_channel else 1
        self.step = nn.Parameter(torch.ones(n_slots, width))
        self.register_buffer("initialized", torch.zeros(n_slots, dtype=torch.bool))
        self._ready: set[int] = set()
        self.bits = bits

    # -- levels -------------------------------------------------------------------------------
    def qrange(self, bits: int) -> tuple[int, int]:
        """``(Q_n, Q_p)`` for ``bits`` (integers; ``y / s`` lies in ``[Q_n, Q_p]``)."""
        if not self.signed:
            return 0, 2**bits - 1
        if self.symmetric:
            return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1

    def _slot(self, bits: int) -> int:
        if self.candidate_bits is None:
            return 0
        if bits not in self.candidate_bits:
            raise ConfigError(f"lsq has no step for {bits} bits; candidate_bits={self.candidate_bits}")
        return self.candidate_bits.index(bits)

    def step_for(self, bits: int) -> torch.Tensor:
        """The learned step used at ``bits`` (0-d, or ``(C,)`` per-channel); LLT's importance indicator."""
        s = self.step[self._slot(bits)]
        return s if self.per_channel else s[0]

    def importance_indicators(self) -> dict[int, torch.Tensor]:
        """LLT: ``{bits: step}`` for every candidate (or the single step at the current bits)."""
        bits = self.candidate_bits or [self.bits]
        return {b: self.step_for(b) for b in bits}

    # -- forward ------------------------------------------------------------------------------
    def _reduce_dims(self, x: torch.Tensor) -> list[int]:
        return [d for d in range(x.dim()) if d != self.ch_axis % x.dim()]

    @torch.no_grad()
    def _init_step(self, x: torch.Tensor, slot: int, bits: int) -> None:
        _, qp = self.qrange(bits)
        x = x.detach()
        dims: list[int] = []
        if self.per_channel:
            dims = self._reduce_dims(x)
            if x.shape[self.ch_axis] != self.step.shape[1]:
                raise ConfigError(
                    f"lsq per-channel quantizer has {self.step.shape[1]} channels but the input has "
                    f"{x.shape[self.ch_axis]} along axis {self.ch_axis}"
                )
        if self.role == "weight" and self.init == "limpq":
            mu = x.mean(dim=dims) if self.per_channel else x.mean()
            sigma = x.std(dim=dims) if self.per_channel else x.std()
            value = torch.maximum((mu - 3 * sigma).abs(), (mu + 3 * sigma).abs()) / 2 ** (bits - 1)
        else:
            mean_abs = x.abs().mean(dim=dims) if self.per_channel else x.abs().mean()
            value = 2 * mean_abs / math.sqrt(qp)
        value = value.to(self.step.dtype).clamp_min(_MIN_STEP).reshape(-1)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(value)
            value /= dist.get_world_size()
        self.step[slot].copy_(value.expand_as(self.step[slot]))
        self.initialized[slot] = True

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        bits = self.bits
        slot = self._slot(bits)
        if slot not in self._ready:
            if not bool(self.initialized[slot]):
                self._init_step(x, slot, bits)
            self._ready.add(slot)
        qn, qp = self.qrange(bits)
        step = self.step[slot]
        if self.per_channel:
            shape = [1] * x.dim()
            shape[self.ch_axis] = -1
            step = step.reshape(shape)
            numel = x.numel() // x.shape[self.ch_axis] if self.grad_scale == "per_step" else x.numel()
        else:
            step = step[0]
            numel = x.numel()
        grad_scale = 1.0 / math.sqrt(qp * numel)
        return kernel(LSQ_GRADIENTS[self.gradient])(x, step, qn, qp, grad_scale)

    def grid(self, x: torch.Tensor | None = None) -> IntegerGrid:
        """Step ``s`` (per-channel along ``ch_axis``), zero point 0, integers ``[Q_n, Q_p]``; exact."""
        check_bits(self.bits, self.name)
        if not bool(self.initialized[self._slot(self.bits)]):
            raise ExportError(f"lsq step for {self.bits} bits was never initialised (no forward pass or "
                              "checkpoint at these bits); load the trained weights first")
        qn, qp = self.qrange(self.bits)
        return IntegerGrid(self.step_for(self.bits), qn, qp, axis=self.ch_axis if self.per_channel else None)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        self._ready = set()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        extra = f", candidate_bits={self.candidate_bits}" if self.candidate_bits else ""
        pc = f", per_channel(axis={self.ch_axis})" if self.per_channel else ""
        grad = "" if self.gradient == "paper" else f", gradient={self.gradient}"
        return f"{super().extra_repr()}, signed={self.signed}{pc}{extra}{grad}"

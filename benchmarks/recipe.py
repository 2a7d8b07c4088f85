"""The one training recipe every policy of the cross-method benchmark is trained with.

Methods differ only in the policy they return: the network and its initialisation (one seeded init
per seed, the same one every search receives through ``SearchRequest.build_model``), the quantizers
(core ``QConv2d`` with LSQ weights and activations; first conv and last linear float), the optimizer,
schedule, epochs, batch size and seed handling below are the same for every method, for the uniform
baselines and for the float reference. Every network is trained from that initialisation (as EdMIPS
trains its final models from scratch): on the small benchmark data this separates bit-widths by
several points, where fine-tuning a converged float model leaves them within noise.

Runs are paired by seed: :func:`train_policy` fingerprints the float initialisation it starts from and the
training data it sees in the first epoch (order included), and the suite checks that every run of one seed
has the same two fingerprints.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from core.engine import seed_everything
from core.errors import PolicyError
from core.nn import QuantSpec, quantize_model
from core.policy import BitPolicy


@dataclass
class Recipe:
    """Hyper-parameters of the shared recipe (one instance per benchmark run)."""

    epochs: int = 6
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64
    quantizer: str = "lsq"

    def to_dict(self) -> dict:
        return asdict(self)


def _loader(dataset: Dataset, batch_size: int, seed: int, train: bool) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=train, drop_last=train, generator=g,
                      num_workers=0)


def train_epochs(model: nn.Module, train_set: Dataset, epochs: int, lr: float, recipe: Recipe, seed: int,
                 device: torch.device | str) -> str:
    """SGD (momentum, weight decay) with a per-step cosine schedule, cross-entropy loss. Returns a hash
    of the first epoch's batches, in order (targets and the first 16 values of every image: enough to
    tell two orders or two augmentations apart at no cost, even on ImageNet)."""
    order = hashlib.sha256()
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    loader = _loader(train_set, recipe.batch_size, seed, train=True)
    total = max(1, epochs * len(loader))
    step = 0
    for epoch in range(epochs):
        for images, targets in loader:
            if epoch == 0:
                order.update(images.reshape(len(images), -1)[:, :16].contiguous().numpy().tobytes())
                order.update(targets.numpy().tobytes())
            for group in opt.param_groups:
                group["lr"] = 0.5 * lr * (1 + math.cos(math.pi * step / total))
            images, targets = images.to(device), targets.to(device)
            loss = F.cross_entropy(model(images), targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    return order.hexdigest()[:16]


@torch.no_grad()
def val_top1(model: nn.Module, val_set: Dataset, device: torch.device | str, batch_size: int = 256) -> float:
    """Top-1 (percent) on the whole validation split, in eval mode."""
    was_training = model.training
    model.to(device).eval()
    correct = total = 0
    for images, targets in _loader(val_set, batch_size, 0, train=False):
        logits = model(images.to(device))
        correct += int((logits.argmax(1) == targets.to(device)).sum())
        total += int(targets.numel())
    model.train(was_training)
    return 100.0 * correct / max(1, total)


def seeded_builder(build: Callable[[], nn.Module], seed: int) -> Callable[[], nn.Module]:
    """``build`` made deterministic: every call returns a fresh model with the same init for ``seed``
    (the global RNG state is left untouched)."""

    def fresh() -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build()

    return fresh


def quantized_model(build: Callable[[], nn.Module], policy: BitPolicy | None, recipe: Recipe) -> nn.Module:
    """A fresh model; with a policy, its searchable layers become LSQ ``QConv2d``/``QLinear`` at the
    policy's bits (first conv and last linear stay float, as in the search request)."""
    model = build()
    if policy is None:
        return model
    spec = QuantSpec(kind="fixed", w_quant=recipe.quantizer, a_quant=recipe.quantizer, first="float",
                     last="float")
    names = quantize_model(model, spec)
    missing = [n for n in names if n not in policy]
    if missing:
        raise PolicyError(f"the policy has no bits for layer(s) {missing[:4]}; a search must return every "
                          f"searchable layer ({len(names)} layers)")
    policy.apply(model)
    return model


def state_hash(model: nn.Module) -> str:
    """A short hash of a model's state (parameters and buffers, by name)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class TrainResult:
    """One trained network: val top-1 (%), seconds, and the fingerprints that pair runs by seed."""

    top1: float
    seconds: float  # wall time
    cpu_seconds: float  # this process's CPU time (robust to other load on the machine)
    init_hash: str  # the float initialisation ``build()`` returned
    order_hash: str  # the first epoch's training batches, in order


def train_policy(build: Callable[[], nn.Module], policy: BitPolicy | None, train_set: Dataset,
                 val_set: Dataset, recipe: Recipe, seed: int, device: torch.device | str) -> TrainResult:
    """Train ``policy`` (None: float) with the shared recipe from ``build``'s initialisation; evaluate."""
    seed_everything(seed)
    start, cpu = time.perf_counter(), time.process_time()
    init_hash = state_hash(build())
    model = quantized_model(build, policy, recipe)
    order_hash = train_epochs(model, train_set, recipe.epochs, recipe.lr, recipe, seed, device)
    top1 = val_top1(model, val_set, device)
    return TrainResult(top1, time.perf_counter() - start, time.process_time() - cpu, init_hash, order_hash)

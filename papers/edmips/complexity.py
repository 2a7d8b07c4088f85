"""The complexity risk R_C of the Lagrangian (eq. 6-9, 12-13) and its "user-defined" variants.

For a searchable layer l with input x (channels C_x, size h_x x w_x), weight tensor f and stride s:

- ``bops`` (default, eq. 12):  c_l = E[b_w,l] E[b_a,l] |f| w_x h_x / s^2
  (|f| = C_out C_in / groups k_h k_w; the "input size over stride squared" count of the official code);
- ``size`` (model size):       c_l = E[b_w,l] |f|
- ``memory`` (activation memory read by the layer): c_l = E[b_a,l] C_x h_x w_x

Section 4.1 says the complexity "is user-defined, and could address computation, memory, model size ...";
``bops`` is the one every experiment of the paper uses, ``size`` and ``memory`` are the two other costs the
official code tracks (its ``bitw`` / ``bita``). Each is divided by the bit-free base of the FIRST searchable
layer (section 4.2: "normalized by the value of (8) for the first layer to search"; official ``normalizer =
size_product[0]``), so eta is comparable across networks as in the official recipe.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn as nn

from core.bops.conventions import input_over_stride_macs
from core.errors import ConfigError

COMPLEXITIES = ("bops", "size", "memory")


@dataclass(frozen=True)
class LayerCost:
    """The bit-free cost bases of one searchable layer (counted once, at the search input size)."""

    name: str
    macs: float  # |f| w_x h_x / s^2 (eq. 8, official input-size convention)
    params: float  # |f|
    activations: float  # C_x h_x w_x (elements of the layer input)

    def base(self, complexity: str) -> float:
        return {"bops": self.macs, "size": self.params, "memory": self.activations}[complexity]


def measure_layer_costs(model: nn.Module, layers: Iterable[tuple[str, nn.Module]],
                        input_size: tuple[int, int, int]) -> list[LayerCost]:
    """Run one dummy forward of ``model`` at ``input_size`` and record each layer's cost bases."""
    layers = list(layers)
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, n=n: shapes.__setitem__(n, tuple(inp[0].shape)))
             for n, m in layers]
    param = next(model.parameters())
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_size, device=param.device, dtype=param.dtype))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    costs = []
    for name, m in layers:
        if name not in shapes:
            raise ConfigError(f"layer {name!r} was not called in a forward pass at input size {input_size}; "
                              "the complexity loss cannot count it")
        shape = shapes[name]
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            raise ConfigError(f"layer {name!r} of type {type(m).__name__} has no EdMIPS cost; "
                              "only Conv2d and Linear layers are searchable")
        macs = float(input_over_stride_macs(m, shape, ()))
        activations = float(math.prod(shape[1:]))
        params = float(m.weight.numel())
        costs.append(LayerCost(name, macs, params, activations))
    return costs


def layer_complexity(layer: nn.Module, base: float, complexity: str) -> torch.Tensor:
    """One term c_l of eq. 7 with the expectations of eq. 13 (differentiable in alpha)."""
    if complexity == "bops":
        return base * layer.expected_w_bits() * layer.expected_a_bits()
    if complexity == "size":
        return base * layer.expected_w_bits()
    if complexity == "memory":
        return base * layer.expected_a_bits()
    raise ConfigError(f"unknown search.complexity {complexity!r}; choose one of {', '.join(COMPLEXITIES)}")


class ComplexityLoss(nn.Module):
    """R_C[F] of eq. 7, normalised by the first searchable layer; ``forward`` returns eta-free R_C.

    ``layers`` are the searchable (mixed) layers in model order, ``costs`` their :class:`LayerCost`.
    The modules are held by reference only (not registered as children), so the loss adds no parameters.
    """

    def __init__(self, layers: list[tuple[str, nn.Module]], costs: list[LayerCost], complexity: str = "bops"):
        super().__init__()
        if complexity not in COMPLEXITIES:
            raise ConfigError(f"unknown search.complexity {complexity!r}; "
                              f"choose one of {', '.join(COMPLEXITIES)}")
        if not layers:
            raise ConfigError("the search model has no searchable layers; check the model name and QuantSpec")
        if [n for n, _ in layers] != [c.name for c in costs]:
            raise ConfigError("layer costs do not match the searchable layers (order or names differ)")
        self.complexity = complexity
        self._layers = [m for _, m in layers]
        self.names = [n for n, _ in layers]
        self.bases = [c.base(complexity) for c in costs]
        self.normaliser = self.bases[0]
        if self.normaliser <= 0:
            raise ConfigError(f"the first searchable layer {self.names[0]!r} has zero {complexity}; "
                              "cannot normalise the complexity loss")

    def per_layer(self) -> list[torch.Tensor]:
        return [layer_complexity(m, b / self.normaliser, self.complexity)
                for m, b in zip(self._layers, self.bases)]

    def forward(self) -> torch.Tensor:
        return torch.stack(self.per_layer()).sum()

    def expected_total(self) -> float:
        """The un-normalised expected complexity (e.g. expected BitOps, eq. 12-13)."""
        with torch.no_grad():
            return float(self.forward()) * self.normaliser

    def discrete_total(self, bits: dict[str, tuple[int, int]]) -> float:
        """The complexity of a discrete choice ``{name: (w_bits, a_bits)}`` (eq. 9 and its variants)."""
        total = 0.0
        for name, base in zip(self.names, self.bases):
            w, a = bits[name]
            total += base * {"bops": w * a, "size": w, "memory": a}[self.complexity]
        return total

"""Minimal stand-ins for core.nn's layers, exposing only the attributes the BOPs counter and BitPolicy
read: counting and policy tests then do not depend on the quantizers' numerics."""

import torch
from torch import nn


class FixedConv(nn.Conv2d):
    """A fixed-bit layer as core.nn exposes it: a Conv2d with settable .w_bits / .a_bits."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.w_bits, self.a_bits = 32, 32


class MixedConv(nn.Conv2d):
    """A searchable layer as core.nn exposes it: candidates, pi_w/pi_a and expected bits (eq. 13)."""

    def __init__(self, *args, w_candidates=(1, 2, 3, 4), a_candidates=(2, 3, 4), **kwargs):
        super().__init__(*args, **kwargs)
        self.w_candidates, self.a_candidates = list(w_candidates), list(a_candidates)
        self.alpha_w = nn.Parameter(torch.full((len(self.w_candidates),), 0.01))
        self.alpha_a = nn.Parameter(torch.full((len(self.a_candidates),), 0.01))

    def pi_w(self):
        return torch.softmax(self.alpha_w, 0)

    def pi_a(self):
        return torch.softmax(self.alpha_a, 0)

    def expected_w_bits(self):
        return (self.pi_w() * torch.tensor(self.w_candidates, dtype=torch.float)).sum()

    def expected_a_bits(self):
        return (self.pi_a() * torch.tensor(self.a_candidates, dtype=torch.float)).sum()

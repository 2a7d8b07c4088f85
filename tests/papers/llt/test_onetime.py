"""Algorithm 1 (supplementary): every step runs the n key policies, then K=1 random policy, one update."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from core.nn import SwitchableBatchNorm2d
from papers.llt.onetime import ImportanceTrainer, build_indicator_model
from tests.papers.llt.helpers import tiny_net

BITS = [6, 4, 2]


def _trainer(model, names, data, **kw):
    loader = DataLoader(data, batch_size=16, shuffle=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    return ImportanceTrainer(model, opt, loader, None, epochs=1, device="cpu", bits=BITS, layer_names=names,
                             grad_clip=1.0, grad_clip_mode="value", label_smoothing=0.1, **kw)


def test_each_step_visits_every_key_policy_then_one_random_policy(tiny_data):
    model = tiny_net()
    names = build_indicator_model(model, BITS)
    bns = [m for m in model.modules() if isinstance(m, SwitchableBatchNorm2d)]
    assert len(bns) == len(names) == 2
    calls: list[list[tuple[int, int, int]]] = []
    model.register_forward_pre_hook(lambda mod, inp: calls.append(
        [(mod.get_submodule(n).w_bits, mod.get_submodule(n).a_bits, bn.bits) for n, bn in zip(names, bns)]))
    trainer = _trainer(model, names, tiny_data)
    updates = []
    step = trainer.optimizers["weights"].step
    trainer.optimizers["weights"].step = lambda *a, **k: (updates.append(len(calls)), step(*a, **k))[1]
    trainer.fit()
    steps = len(tiny_data) // 16
    assert len(calls) == steps * (len(BITS) + 1)  # (n + K) forward passes per step
    assert updates == [(s + 1) * (len(BITS) + 1) for s in range(steps)]  # one update after all of them
    for s in range(steps):
        per_step = calls[s * 4:(s + 1) * 4]
        for b, layers in zip(BITS, per_step[:3]):  # key policies, in Bit-list order
            assert layers == [(b, b, b)] * len(names)
        for w, a, bn in per_step[3]:  # the random policy: candidate bits, BN switched with the layer
            assert w in BITS and a == w and bn == w
    # every step size of every candidate was learned (initialised and moved by the updates)
    for n in names:
        q = model.get_submodule(n).act_quantizer
        assert bool(q.initialized.all())


def test_random_policies_are_seeded_by_step_and_cover_the_candidates(tiny_data):
    model = tiny_net()
    names = build_indicator_model(model, BITS)
    trainer = _trainer(model, names, tiny_data, random_policy="independent", seed=3)
    draws = []
    for step in range(60):
        trainer.step = step
        draws.append(trainer.sample_policy())
    trainer.step = 7
    assert trainer.sample_policy() == draws[7]  # a resumed run draws the same policy
    seen_w = {p[n][0] for p in draws for n in names}
    seen_a = {p[n][1] for p in draws for n in names}
    assert seen_w == seen_a == set(BITS)
    assert any(w != a for p in draws for w, a in p.values())  # independent W/A draws


def test_k_random_policies(tiny_data):
    model = tiny_net()
    names = build_indicator_model(model, BITS)
    count = []
    model.register_forward_pre_hook(lambda *_: count.append(1))
    trainer = _trainer(model, names, tiny_data, random_policies=3)
    trainer.train_step(next(iter(trainer.train_loader)))
    assert len(count) == len(BITS) + 3

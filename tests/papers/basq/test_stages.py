"""BASQ's training stages on a small supernet: the supernet step (sampling, distillation, zero_grad
modes, param groups), fine-tuning (only BN and clip parameters change), reporting."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.engine import Trainer
from core.nn import quantize_model
from papers.basq.finetune import FinetuneTrainer, finetune_param_groups, reported_accuracy
from papers.basq.layers import LAMBDAS, BranchBatchNorm2d, current_selection, searchable_blocks, set_selection
from papers.basq.models import basq_spec, build_network
from papers.basq.report import fold_average, fold_table
from papers.basq.supernet import SupernetTrainer, supernet_param_groups

SMALL = {"setting": [[1, 8, 1, 1], [1, 8, 1, 1], [4, 8, 2, 1], [4, 12, 1, 2]], "last_channels": 16}


def _supernet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = build_network("basq_mobilenet_v2", 10, **SMALL)
    quantize_model(model, basq_spec(2, lambdas=LAMBDAS))
    return model


def _batch(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


class Teacher(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :10] * 3


def _supernet_trainer(model: nn.Module, zero_grad: str = "none") -> SupernetTrainer:
    opt = torch.optim.Adam(supernet_param_groups(model, 5e-6), lr=1e-2)
    return SupernetTrainer(model, opt, [_batch()], epochs=1, device="cpu", grad_clip=10.0, teacher=Teacher(),
                           zero_grad=zero_grad, seed=3)


def test_param_groups_follow_the_official_code():
    model = _supernet()
    groups = {g["name"]: g for g in supernet_param_groups(model, 5e-6)}
    assert groups["conv_weights"]["weight_decay"] == 5e-6
    assert all(p.dim() == 4 for p in groups["conv_weights"]["params"])
    assert [groups[f"clips_lambda{j}"]["weight_decay"] for j in range(7)] == list(LAMBDAS)
    other = groups["bn_fc_steps"]
    assert other["weight_decay"] == 0.0 and id(model.classifier[1].weight) in {id(p) for p in other["params"]}
    total = sum(len(g["params"]) for g in groups.values())
    assert total == len(list(model.parameters()))


def test_supernet_step_samples_a_selection_per_step_reproducibly():
    trainer = _supernet_trainer(_supernet())
    seen = []
    for step in range(4):
        trainer.step = step
        seen.append(trainer.sample())
    assert len(set(seen)) > 1 and all(len(s) == 4 and all(0 <= j < 7 for j in s) for s in seen)
    trainer.step = 2
    assert trainer.sample() == seen[2]  # (seed, stage, step): the same after a resume / on every rank
    scalars = trainer.train_step(_batch())
    assert torch.isfinite(scalars["loss"]) and current_selection(trainer.module) == seen[2]


@pytest.mark.parametrize("mode", ["none", "zeros"])
def test_zero_grad_modes(mode):
    """``none``: Adam leaves the parameters of unselected branches alone (no gradient, no decay);
    ``zeros`` (torch 1.x's ``zero_grad``): a parameter that had a gradient once keeps a zero one, so Adam
    keeps moving an unselected branch's clip (momentum and its L2 decay)."""
    model = _supernet()
    trainer = _supernet_trainer(model, mode)
    for _ in range(12):  # most branches get selected at least once
        trainer.train_step(_batch())
        trainer.step += 1
    blocks = [m for _, m in searchable_blocks(model)]
    had_grad = [[c.alpha.grad is not None for c in m.clips] for m in blocks]
    before = [[c.alpha.item() for c in m.clips] for m in blocks]
    selection = trainer.sample()
    trainer.train_step(_batch())
    checked = 0
    for b, m in enumerate(blocks):
        for j, clip in enumerate(m.clips):
            if j != selection[b] and had_grad[b][j]:
                assert (clip.alpha.item() != before[b][j]) == (mode == "zeros")
                checked += 1
    assert checked > 0


def test_finetuning_changes_only_batchnorm_and_clip_parameters():
    model = _supernet()
    with torch.no_grad():
        model(_batch()[0])  # a trained supernet's LSQ steps are initialised
    set_selection(model, (1, 4, 6, 2))
    state0 = {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    groups = finetune_param_groups(model, "paper")
    assert [g["weight_decay"] for g in groups[1:]] == [LAMBDAS[j] for j in (1, 2, 4, 6)]  # the selected clips
    opt = torch.optim.SGD(groups, lr=0.1, momentum=0.9, nesterov=True)
    trainer = FinetuneTrainer(model, opt, [_batch()], epochs=1, device="cpu", grad_clip=10.0)
    for _ in range(3):
        trainer.train_step(_batch())
    selected = {id(m.selected) for m in model.modules() if isinstance(m, BranchBatchNorm2d)}
    unselected = {id(bn) for m in model.modules() if isinstance(m, BranchBatchNorm2d)
                  for bn in m.bns} - selected
    allowed, changed = set(), set()
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d) and id(module) not in unselected:
            allowed |= {f"{name}.{k}" for k in ("weight", "bias", "running_mean", "running_var",
                                                "num_batches_tracked")}
    for name, conv in searchable_blocks(model):
        allowed.add(f"{name}.clips.{conv.selector.index}.alpha")
    for k, v in model.state_dict().items():
        if isinstance(v, torch.Tensor) and not torch.equal(v, state0[k]):
            changed.add(k)
    assert changed and changed <= allowed  # everything else bit-identical
    assert any(k.endswith(".alpha") for k in changed) and any(k.endswith(".weight") for k in changed)


def test_official_finetuning_trains_bn_biases_and_the_classifier_bias_only():
    model = _supernet()
    groups = finetune_param_groups(model, "official")
    trainable = {id(p) for g in groups for p in g["params"]}
    assert id(model.classifier[1].bias) in trainable and id(model.classifier[1].weight) not in trainable
    bn = model.features[2].expand.bn
    assert id(bn.bias) in trainable and id(bn.weight) not in trainable
    assert all(p.requires_grad == (id(p) in trainable) for p in model.parameters())


def test_reported_accuracy_rules():
    before = {"top1": 60.0, "top5": 80.0}
    epochs = [{"top1": 62.0, "top5": 81.0}, {"top1": 61.0, "top5": 82.0}]
    assert reported_accuracy(before, epochs, "final") == epochs[-1]
    assert reported_accuracy(before, epochs, "best_of_epochs") == epochs[0]
    assert reported_accuracy({"top1": 70.0, "top5": 90.0}, epochs, "best_of_epochs")["top1"] == 70.0


def test_fold_table_like_supplementary_table2():
    folds = [63.95, 64.02, 64.28, 63.89, 65.46, 65.1, 65.23, 65.32, 65.4, 64.49]
    assert fold_average(folds) == pytest.approx(64.714)
    text = fold_table([("A2/W2", folds)])
    head, row = text.splitlines()
    assert head.split() == ["Bit", *[f"set-{i}" for i in range(1, 11)], "Average"]
    assert row.split() == ["A2/W2", *[f"{v:.2f}" for v in folds], "64.71"]


def test_plain_lsq_trainer_and_supernet_agree_without_branches():
    """With one lambda the supernet is a plain LSQ + clip network: the supernet step runs the same
    forward as a plain step (the selection is always 0)."""
    model = build_network("basq_mobilenet_v2", 10, **SMALL)
    quantize_model(model, basq_spec(2, lambdas=[1e-4]))
    trainer = _supernet_trainer(model)
    assert trainer.sample() == (0, 0, 0, 0)
    plain = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.0), [_batch()], epochs=1, device="cpu")
    assert torch.isfinite(plain.train_step(_batch())["loss"])

"""mmengine Runner checkpoints load (and resume) under weights_only=True with the exact allow-list."""

from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

mmengine = pytest.importorskip("mmengine", reason="mmengine not installed: the 'det' extra "
                               "(python tools/install_mmcv.py && pip install -e '.[det]')")

from core.engine.mmengine_compat import mmengine_safe_loading  # noqa: E402


def _collate(batch):
    return {"x": torch.stack([b[0] for b in batch]), "y": torch.stack([b[1] for b in batch])}


def _runner(work_dir, epochs, resume):
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    class Tiny(BaseModel):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x, y, mode="tensor"):
            out = self.fc(x)
            return {"loss": nn.functional.cross_entropy(out, y)} if mode == "loss" else out

    data = TensorDataset(torch.randn(8, 4), torch.randint(0, 2, (8,)))
    return Runner(model=Tiny(), work_dir=str(work_dir), resume=resume, launcher="none",
                  train_dataloader=dict(dataset=data, batch_size=4, collate_fn=_collate,
                                        sampler=dict(type="DefaultSampler", shuffle=True)),
                  train_cfg=dict(by_epoch=True, max_epochs=epochs),
                  optim_wrapper=dict(optimizer=dict(type="SGD", lr=0.1)),
                  default_hooks=dict(checkpoint=dict(type="CheckpointHook", interval=1), logger=None),
                  log_level="WARNING")


class _Sneaky:
    def __reduce__(self):
        from mmengine.logging.history_buffer import HistoryBuffer

        return (getattr, (HistoryBuffer, "__init__"))


def test_runner_checkpoint_resume_under_weights_only(tmp_path):
    _runner(tmp_path, 1, False).train()
    ckpt = tmp_path / "epoch_1.pth"
    with pytest.raises(pickle.UnpicklingError):
        torch.load(ckpt, weights_only=True)  # the stack fact this module works around
    with mmengine_safe_loading():
        state = torch.load(ckpt, weights_only=True)
        assert state["meta"]["epoch"] == 1
        runner = _runner(tmp_path, 2, True)
        runner.train()
    assert runner.epoch == 2 and (tmp_path / "epoch_2.pth").is_file()


def test_allow_list_stays_narrow(tmp_path):
    torch.save({"x": _Sneaky()}, tmp_path / "bad.pt")
    with mmengine_safe_loading(), pytest.raises(pickle.UnpicklingError, match="refusing getattr"):
        torch.load(tmp_path / "bad.pt", weights_only=True)

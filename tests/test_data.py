"""The shipped-data readers."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from ocnna_fast.data import cifar10_jpeg, data_root, foolbox_samples, imagenet_sample, torchvision_cifar


def test_lossless_and_jpeg_cifar10_agree(data_dir):
    x, y = foolbox_samples("cifar10", data_dir)
    assert x.shape == (20, 3, 32, 32) and x.dtype == torch.uint8
    assert y.tolist()[:5] == [3, 8, 8, 0, 6]  # PROVENANCE: the canonical test order
    jx, jy = cifar10_jpeg("test", data_dir, limit=50, seed=0)
    assert jx.shape == (50, 3, 32, 32) and torch.bincount(jy, minlength=10).tolist() == [5] * 10


def test_imagenet_sample(data_dir):
    x, y = imagenet_sample(data_dir, limit=3)
    assert x.shape == (3, 3, 224, 224) and x.dtype == torch.uint8
    assert y.tolist() == [0, 1, 2]
    assert x.float().std() > 10  # real pictures, not blank


def test_torchvision_layout_without_download(tmp_path, monkeypatch):
    pytest.importorskip("torchvision")
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": [1, 2, 3, 4]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [str(i) for i in range(10)]}, f)
    import torchvision.datasets.cifar as tv_cifar

    # torchvision checks md5 sums of the real files; this fake layout only exercises the reader
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    monkeypatch.setattr(tv_cifar.CIFAR10, "_check_integrity", lambda self: True)
    x, y = torchvision_cifar(tmp_path, "cifar10", train=False)
    assert x.shape == (4, 3, 32, 32) and y.tolist() == [1, 2, 3, 4]
    assert torch.equal(x[0], torch.from_numpy(data[0].reshape(3, 32, 32)))  # CHW, as stored
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        torchvision_cifar(tmp_path, "cifar100")


def test_missing_data_says_what_to_put_where(tmp_path):
    with pytest.raises(FileNotFoundError, match="OCNNA_DATA_DIR"):
        cifar10_jpeg("test", tmp_path)
    with pytest.raises(ValueError, match="split"):
        cifar10_jpeg("val", tmp_path)
    assert data_root(tmp_path) == tmp_path


def test_default_data_root_is_found_from_the_checkout(tmp_path, monkeypatch):
    """An installed (not editable) package must still find ../shared/data from the checkout."""
    monkeypatch.delenv("OCNNA_DATA_DIR", raising=False)
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "checkout").mkdir()
    monkeypatch.chdir(tmp_path / "checkout")
    assert data_root() == tmp_path / "shared" / "data"
    monkeypatch.setenv("OCNNA_DATA_DIR", str(tmp_path))
    assert data_root() == tmp_path

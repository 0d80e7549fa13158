"""The shipped-data readers."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from ocnna_fast.data import places as datapaths
from ocnna_fast.data.fetch import REMOTES, sha256_of
from ocnna_fast.data.local import (
    balanced_subset,
    cifar10_jpeg,
    data_places,
    foolbox_samples,
    imagenet_sample,
    load_split,
    pretrained_weights,
    torchvision_cifar,
)


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No data place but the ones a test makes: no checkout, an empty cache,
    no shared/ folder, no OCNNA_DATA_DIR."""
    monkeypatch.delenv("OCNNA_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(datapaths, "checkout_data_dir", lambda: None)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    return tmp_path


def test_lossless_and_jpeg_cifar10_agree(data_dir):
    x, y = foolbox_samples("cifar10", data_dir)
    assert x.shape == (20, 3, 32, 32) and x.dtype == torch.uint8
    assert y.tolist()[:5] == [3, 8, 8, 0, 6]  # PROVENANCE: the canonical test order
    jx, jy = cifar10_jpeg("test", data_dir, limit=50, seed=0)
    assert jx.shape == (50, 3, 32, 32) and torch.bincount(jy, minlength=10).tolist() == [5] * 10


def test_imagenet_sample(imagenet_sample_tar):
    x, y = imagenet_sample(imagenet_sample_tar.parent.parent, limit=3)
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


def test_missing_data_says_where_it_looked_and_how_to_get_it(isolated, monkeypatch):
    import urllib.request

    def no_network(*a, **k):
        raise AssertionError("a data reader tried to download")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(FileNotFoundError, match="OCNNA_DATA_DIR") as err:
        cifar10_jpeg("test", isolated / "mine")
    assert str(isolated / "mine") in str(err.value)
    with pytest.raises(FileNotFoundError, match="ocnna-fast fetch resnet56"):
        pretrained_weights("resnet56")
    with pytest.raises(FileNotFoundError, match="ocnna-fast fetch cifar100"):
        torchvision_cifar(None, "cifar100")
    with pytest.raises(ValueError, match="split"):
        cifar10_jpeg("val", isolated)
    with pytest.raises(ValueError, match="unknown dataset"):
        load_split("mnist", "test")


def test_places_in_order(isolated, monkeypatch):
    """--data-dir / OCNNA_DATA_DIR, the checkout's data/, the user cache, shared/data."""
    checkout = isolated / "repo" / "data"
    for p in (checkout, isolated / "cache" / "ocnna-fast", isolated / "shared" / "data", isolated / "mine"):
        p.mkdir(parents=True)
    monkeypatch.setattr(datapaths, "checkout_data_dir", lambda: checkout)
    want = [checkout, isolated / "cache" / "ocnna-fast", isolated / "shared" / "data"]
    assert data_places() == want
    assert data_places(isolated / "mine") == [isolated / "mine", *want]
    monkeypatch.setenv("OCNNA_DATA_DIR", str(isolated / "env"))
    assert data_places() == [isolated / "env", *want]  # listed even when missing, so errors can name it
    assert data_places(isolated / "mine")[0] == isolated / "mine"  # the argument beats the variable
    # the first place holding the file wins
    for place in (checkout, isolated / "shared" / "data"):
        (place / "x.bin").write_bytes(place.name.encode())
    assert datapaths.find_data("x.bin") == checkout / "x.bin"


def test_an_installed_package_finds_the_checkout_it_runs_in(isolated, monkeypatch):
    """A non-editable install (code in site-packages) run from inside a clone
    still finds the clone's data/; outside any clone it does not."""
    monkeypatch.undo()  # the real checkout_data_dir, with a fake install location
    monkeypatch.delenv("OCNNA_DATA_DIR", raising=False)
    monkeypatch.setattr(datapaths, "__file__", str(isolated / "site-packages" / "ocnna_fast" / "data" / "places.py"))
    clone = isolated / "clone"
    (clone / "data").mkdir(parents=True)
    (clone / "src").mkdir()
    (clone / "pyproject.toml").write_text('[project]\nname = "ocnna-fast"\n')
    monkeypatch.chdir(clone / "src")
    assert datapaths.checkout_data_dir() == clone / "data"
    (isolated / "other").mkdir()
    (isolated / "other" / "pyproject.toml").write_text('[project]\nname = "something-else"\n')
    (isolated / "other" / "data").mkdir()
    monkeypatch.chdir(isolated / "other")
    assert datapaths.checkout_data_dir() is None


def test_the_checkout_data_is_found_without_configuration(monkeypatch):
    """README's commands need no OCNNA_DATA_DIR: the repository's own copy is found."""
    from conftest import REPO

    monkeypatch.delenv("OCNNA_DATA_DIR", raising=False)
    assert data_places()[0] == REPO / "data"
    assert pretrained_weights("resnet20") == REPO / "data" / "resnet-cifar10-akamaster" / "resnet20-12fca82f.th"


@pytest.mark.parametrize("name", ["resnet20", "resnet32", "resnet44", "resnet56"])
def test_shipped_files_match_their_pinned_sha256(name, data_dir):
    remote = REMOTES[name]
    path = data_dir / remote.relpath
    assert path.stat().st_size == remote.size
    assert sha256_of(path) == remote.sha256


def test_balanced_subsets_are_seeded_and_balanced():
    labels = np.repeat(np.arange(7), 30)
    a, b = balanced_subset(labels, 50, 3), balanced_subset(labels, 50, 3)
    assert np.array_equal(a, b) and len(a) == 50 and np.all(np.diff(a) > 0)
    counts = np.bincount(labels[a], minlength=7)
    assert counts.max() - counts.min() <= 1
    assert not np.array_equal(a, balanced_subset(labels, 50, 4))
    assert np.array_equal(balanced_subset(labels, None, 0), np.arange(len(labels)))


def test_fewer_images_than_classes_are_drawn_from_all_classes():
    """One image a class (the ImageNet sample's halves; a small --score-images on
    ImageNet): which classes give an image is drawn too, not the first ones in label order."""
    labels = np.arange(100)
    draws = [balanced_subset(labels, 40, seed) for seed in range(8)]
    assert all(len(d) == 40 and len(set(d)) == 40 for d in draws)
    assert len({tuple(d) for d in draws}) == 8
    assert len(set(np.concatenate(draws))) > 90  # over eight draws nearly every class
    assert np.mean(np.concatenate(draws)) > 35  # the first classes would give 19.5


def test_a_class_short_of_its_share_is_made_up_from_the_others():
    labels = np.array([0] * 2 + [1] * 50 + [2] * 50)
    got = balanced_subset(labels, 60, 0)
    counts = np.bincount(labels[got], minlength=3)
    assert len(got) == 60 and len(set(got)) == 60 and counts[0] == 2 and abs(counts[1] - counts[2]) <= 10


def test_divisible_draws_are_the_ones_recorded():
    """A subset whose size the classes divide draws what it always drew (the recorded runs' images)."""
    labels = np.repeat(np.arange(10), 300)
    rng = np.random.default_rng(5)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in range(10)]
    want = np.sort(np.concatenate([p[:100] for p in per_class]))
    assert np.array_equal(balanced_subset(labels, 1000, 5), want)


def test_imagenet_sample_halves(imagenet_sample_tar):
    """Scoring/training and evaluation never share an image: even and odd positions."""
    root = imagenet_sample_tar.parent.parent
    tr_x, tr_y = load_split("imagenet-sample", "train", root, size=64, crop_fraction=0.875)
    te_x, te_y = load_split("imagenet-sample", "test", root, size=64)
    assert tr_y.tolist() == list(range(0, 1000, 2)) and te_y.tolist() == list(range(1, 1000, 2))
    assert tr_x.shape == (500, 3, 64, 64) and te_x.shape == (500, 3, 64, 64)
    sub_x, sub_y = load_split("imagenet-sample", "train", root, limit=10, seed=3, size=64)
    assert len(sub_y) == 10 and set(sub_y.tolist()) <= set(tr_y.tolist())


def test_jobs_on_the_jpeg_images_start_from_the_adapted_base(data_dir):
    """``--arch resnetN`` on the shipped JPEG images loads the shipped
    JPEG-adapted weights (pinned by sha256); on lossless CIFAR-10,
    akamaster's, which were trained on lossless images."""
    from ocnna_fast.cli.loading import load_model
    from ocnna_fast.data.local import ADAPTED, ADAPTED_FOLDER, ADAPTED_SHA256, PRETRAINED

    assert set(ADAPTED) == set(ADAPTED_SHA256) == set(PRETRAINED)
    for arch in PRETRAINED:
        assert sha256_of(data_dir / ADAPTED_FOLDER / ADAPTED[arch]) == ADAPTED_SHA256[arch], arch
        _, jpeg = load_model(arch, None, str(data_dir), "cifar10-jpeg")
        _, lossless = load_model(arch, None, str(data_dir), "cifar10")
        assert jpeg.endswith(ADAPTED[arch]) and "akamaster" in lossless, arch

"""Links in image folders (docs/reliability.md, "Links"): followed as users
expect, yet no folder visited twice and no image read under two classes."""

from __future__ import annotations

import os

import numpy as np
import pytest

from ocnna_fast.data.imagefolder import FolderImages

MEAN, STD = (0.5,) * 3, (0.25,) * 3


def _class(folder, name, n, seed):
    from PIL import Image

    d = folder / name
    d.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(d / f"{name}_{i}.png")
    return d


def _split(tmp_path, per_class=(3, 4)):
    split = tmp_path / "val"
    for i, n in enumerate(per_class):
        _class(split, f"c{i}", n, i)
    return split


def _read(split):
    images = FolderImages(split, 8, MEAN, STD)
    return [(os.path.basename(p), label) for p, label in (images.folder.samples[i] for i in images.indices)]


def test_a_link_back_up_the_tree_is_not_followed(tmp_path):
    """The hostile pass: `ln -s .. loop` in a class folder made 12 images count as 492."""
    split = _split(tmp_path)
    plain = _read(split)
    os.symlink("..", split / "c0" / "loop")
    os.symlink("../../val", split / "c1" / "split-again")
    assert _read(split) == plain and len(plain) == 7


def test_no_image_is_read_under_two_classes(tmp_path):
    """A link from one class into another (train/ mislabelled images through it)."""
    split = _split(tmp_path)
    plain = _read(split)
    os.symlink("../c1", split / "c0" / "borrowed")  # a folder of c1 seen from c0
    os.symlink("../c1/c1_0.png", split / "c0" / "also.png")  # an image of c1 seen from c0
    assert _read(split) == plain


def test_class_folders_that_are_links_keep_working(tmp_path):
    """A data set whose class folders are links to real folders elsewhere (common)."""
    store = tmp_path / "store"
    _class(store, "real-a", 2, 0)
    _class(store, "real-b", 3, 1)
    nested = _class(store / "real-b", "more", 2, 2)  # a real subfolder is read too
    split = tmp_path / "val"
    split.mkdir()
    os.symlink(store / "real-a", split / "a")
    os.symlink(store / "real-b", split / "b")
    os.symlink(nested, store / "real-a" / "twice")  # another class's subfolder: read under b only
    got = _read(split)
    assert sorted(label for _, label in got) == [0, 0, 1, 1, 1, 1, 1]
    assert {name for name, label in got if label == 1} >= {"more_0.png", "more_1.png"}


def test_two_class_folders_linking_one_folder_are_refused(tmp_path):
    store = _class(tmp_path / "store", "x", 2, 0)
    split = tmp_path / "val"
    split.mkdir()
    os.symlink(store, split / "a")
    os.symlink(store, split / "b")
    with pytest.raises(ValueError, match="share images"):
        FolderImages(split, 8, MEAN, STD)


def test_a_link_to_a_folder_seen_once_is_read_once(tmp_path):
    split = _split(tmp_path)
    extra = _class(tmp_path / "elsewhere", "extra", 2, 5)
    os.symlink(extra, split / "c0" / "one")
    os.symlink(extra, split / "c0" / "two")  # the same folder twice in one class
    got = _read(split)
    assert len(got) == 7 + 2 and sum(1 for name, _ in got if name.startswith("extra")) == 2

"""Shared fixtures: where the shipped data lives, and the devices to test on."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import ocnna_fast

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    """OCNNA_DATA_DIR, else the repository's own data/ folder."""
    env = os.environ.get("OCNNA_DATA_DIR")
    return Path(env) if env else REPO / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    root = data_root()
    if not root.is_dir():
        msg = f"shipped data not found at {root} (set OCNNA_DATA_DIR)"
        if os.environ.get("OCNNA_REQUIRE_DATA"):
            pytest.fail(msg)
        pytest.skip(msg)
    return root


@pytest.fixture(scope="session")
def imagenet_sample_tar() -> Path:
    """The 1000-image ImageNet sample, which is kept outside the repository:
    found over the package's data places, else the test is skipped (even
    under OCNNA_REQUIRE_DATA, which asks only for the repository's data)."""
    from ocnna_fast.data.places import find_data

    try:
        return find_data("imagenet-sample-1000-eli/imagenet_sample_1000.tar", data_root())
    except FileNotFoundError as exc:
        pytest.skip(f"optional data absent: {exc}")


def _devices():
    devs = ["cpu"]
    if ocnna_fast.build_info()["cuda_available"] and torch.cuda.is_available():
        devs.append("cuda")
    return devs


DEVICES = _devices()

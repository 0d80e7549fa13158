"""HRank's rank statistic, streamed by the native core: exact against the literal oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import SPARSE_KINDS, make_maps  # noqa: E402
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ocnna_fast import FilterStats, Scores, score
from ocnna_fast.scoring import reference


def native_ranks(a: torch.Tensor) -> np.ndarray:
    from ocnna_fast import _native

    ptr, code, shape, strides = _native.batch_args(a)
    out = np.empty(shape[0] * shape[1])
    _native._C.energies(ptr, code, shape, strides, _native.MODE_RANK, 0, 0.0, out)
    return out.reshape(shape[:2])


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    h=st.integers(1, 36),
    w=st.integers(1, 36),
    kind=st.sampled_from(["normal", "relu", "zero", "low_rank", "constant", "constant_columns"] + SPARSE_KINDS),
    dtype=st.sampled_from([np.float64, np.float32]),
    channels_last=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_ranks_equal_matrix_rank(h, w, kind, dtype, channels_last, seed):
    a = make_maps(np.random.default_rng(seed), kind, 2, 5, h, w).astype(dtype)
    t = torch.from_numpy(a)
    if channels_last:
        t = t.to(memory_format=torch.channels_last)
    np.testing.assert_array_equal(native_ranks(t), reference.ranks(a))


def test_real_post_relu_ranks_and_scores(data_dir):
    """Average ranks of the pretrained ResNet-20's post-activation maps, from
    score(statistic='rank', tap='post_activation'), equal the per-map oracle."""
    from ocnna_fast import models
    from ocnna_fast.data import local as data
    from ocnna_fast.models.cifar_resnet import CIFAR_MEAN, CIFAR_STD

    model = models.load_weights(
        models.build("resnet20"), data_dir / "resnet-cifar10-akamaster" / "resnet20-12fca82f.th"
    ).eval()
    x, _ = data.cifar10_jpeg("train", root=data_dir, limit=16, seed=1)
    x = data.normalize(x, CIFAR_MEAN, CIFAR_STD)
    with pytest.warns(UserWarning):
        s = score(model, [x[:7], x[7:]], tap="post_activation", statistic="rank", progress=False)
    assert s.statistic == "rank"
    with torch.no_grad():
        maps = torch.relu(
            model.layer2[1].bn1(
                model.layer2[1].conv1(model.layer2[0](model.layer1(torch.relu(model.bn1(model.conv1(x))))))
            )
        )
    want = reference.scores_from_energies(reference.ranks(maps))
    np.testing.assert_allclose(s["layer2.1.conv1"].mean.numpy(), want["mean"], rtol=1e-12)
    np.testing.assert_allclose(s["layer2.1.conv1"].score.numpy(), want["score"], rtol=1e-9, atol=1e-12)


def test_rank_state_merges_saves_and_refuses_mixing(tmp_path):
    a = torch.from_numpy(make_maps(np.random.default_rng(1), "low_rank", 6, 3, 9, 9))
    whole = FilterStats(3, statistic="rank").update(a)
    part = FilterStats(3, statistic="rank").update(a[:2]).merge(FilterStats(3, statistic="rank").update(a[2:]))
    assert torch.allclose(whole.result().mean, part.result().mean, rtol=1e-15)
    assert torch.equal(whole.result().mean, torch.full((3,), 2.0, dtype=torch.float64))  # rank-2 maps
    with pytest.raises(ValueError, match="statistic"):
        FilterStats(3).load_state_dict(whole.state_dict())
    with pytest.raises(ValueError, match="no n_components"):
        FilterStats(3, 0.9, statistic="rank")
    with pytest.raises(ValueError, match="statistic must be"):
        FilterStats(3, statistic="median")
    res = Scores({"l": whole.result()}, statistic="rank")
    res.save(tmp_path / "r.safetensors")
    assert Scores.load(tmp_path / "r.safetensors").statistic == "rank"

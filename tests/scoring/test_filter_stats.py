"""FilterStats: streaming exactness, merging, invariances, state and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import DEVICES

from ocnna_fast import FilterStats
from ocnna_fast._native import parse_n_components

MODES = [None, 2, 0.9]


def acts(n=24, c=5, h=9, w=11, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(n, c, h, w, generator=g, dtype=dtype) + 0.2)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs() / b.abs().clamp_min(1e-300)).max())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n_components", MODES)
def test_batch_size_does_not_matter(device, n_components):
    x = acts().to(device)
    whole = FilterStats(5, n_components).update(x).result()
    for sizes in ([1] * 24, [7, 7, 7, 3], [23, 1], [5, 0, 19]):
        st = FilterStats(5, n_components)
        start = 0
        for s in sizes:
            st.update(x[start : start + s])
            start += s
        r = st.result()
        assert r.count == 24
        assert rel(r.score, whole.score) <= 1e-12
        assert rel(r.mean, whole.mean) <= 1e-12


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n_components", MODES)
def test_sharded_then_merged_equals_one_pass(device, n_components):
    x = acts(seed=1).to(device)
    whole = FilterStats(5, n_components).update(x).result()
    shards = [FilterStats(5, n_components).update(x[i::3]) for i in range(3)]
    merged = shards[0].merge(shards[1]).merge(shards[2]).result()
    assert merged.count == 24
    assert rel(merged.score, whole.score) <= 1e-12
    # merging into an empty accumulator is the identity
    one = FilterStats(5, n_components).update(x)
    ref = one.result()
    assert rel(FilterStats(5, n_components).merge(one).result().score, ref.score) == 0


def assert_rejected_whole(st: FilterStats, first, bad, later, match: str) -> None:
    """After ``first``, the batch ``bad`` (holding NaN or Inf) is refused with an
    error matching ``match`` and changes nothing; ``later`` is then folded in as
    if ``bad`` had never come."""
    st.update(first)
    before = st.state_dict()
    with pytest.raises(ValueError, match=match):
        st.update(bad)
        st.result()  # CUDA reports at result()
    after = st.state_dict()
    assert after["images"] == before["images"]
    for k in ("count", "mean", "m2"):
        assert torch.equal(after[k], before[k]), k
    # the stream goes on: later good batches are accumulated as usual
    st.update(later)
    ref = FilterStats(st.num_channels, st.n_components).update(torch.cat([first, later])).result()
    assert rel(st.result().score, ref.score) <= 1e-12


# Map widths that split into chunks differently (CUDA: 1 to 14 column chunks,
# uneven last chunks, NCHW rows wider than a block), channel counts that leave
# a partial tile of 32, and enough channels for several merge blocks.
REPRO_SHAPES = [(3, 70, 112, 112), (5, 33, 7, 7), (4, 40, 28, 29), (2, 3, 5, 300), (6, 64, 14, 14), (2, 600, 3, 3)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", REPRO_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_none_path_is_bit_reproducible_and_matches_float64(device, channels_last, shape):
    """Summation orders are fixed on every device: the same batches give
    bit-identical accumulators, whatever the scheduling."""
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=g) * 3 + 1  # float32
    ref = FilterStats(shape[1]).update(x.double()).update(x.double() * 0.5).result()
    xd = x.to(device)
    if channels_last:
        xd = xd.contiguous(memory_format=torch.channels_last)
    runs = [FilterStats(shape[1]).update(xd).update(xd * 0.5) for _ in range(2)]
    first, second = (r.state_dict() for r in runs)
    for k in ("count", "mean", "m2"):
        assert torch.equal(first[k], second[k]), k
    got = runs[0].result()
    assert rel(got.mean, ref.mean) <= 1e-6
    assert rel(got.score, ref.score) <= 1e-5


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n_components", MODES)
def test_non_finite_batch_is_rejected_whole_across_many_channels(device, n_components):
    """600 channels: on CUDA the verdict on a batch spans every block of the merge."""
    g = torch.Generator().manual_seed(9)
    x = torch.randn(12, 600, 4, 5, generator=g, dtype=torch.float64).to(device)
    bad = x[4:8].clone()
    bad[1, 517, 2, 3] = float("nan")
    bad[3, 598, 0, 0] = float("inf")
    assert_rejected_whole(FilterStats(600, n_components), x[:4], bad, x[8:], "channel 517")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n_components", MODES)
def test_positive_channel_scaling_and_shift_leave_scores_unchanged(device, n_components):
    """docs/scoring.md §1: an eval-mode BatchNorm (per-channel positive scale + shift) changes nothing."""
    x = acts(seed=2).to(device)
    scale = torch.tensor([0.001, 1.0, 3.0, 250.0, 7.5], dtype=torch.float64, device=device).view(1, 5, 1, 1)
    shift = torch.tensor([5.0, -2.0, 0.0, 1e3, 0.1], dtype=torch.float64, device=device).view(1, 5, 1, 1)
    a = FilterStats(5, n_components).update(x).result()
    b = FilterStats(5, n_components).update(x * scale + shift).result()
    assert rel(b.score, a.score) <= 1e-9


def test_scores_follow_the_definition_by_hand():
    """A case small enough to do by hand: 1x2 maps, n_components=None."""
    # each map is a single row: centring leaves zeros, so every F is 0 -> dead
    x = torch.tensor([[[[1.0, 2.0]]], [[[3.0, 5.0]]]], dtype=torch.float64)
    r = FilterStats(1).update(x).result()
    assert r.dead.tolist() == [True] and r.score.tolist() == [0.0]
    # 2x1 maps [a, b]: F = |a - b| / sqrt(2); over images F = [1, 3]/sqrt(2)
    x = torch.tensor([[[[0.0], [1.0]]], [[[4.0], [1.0]]]], dtype=torch.float64)
    r = FilterStats(1).update(x).result()
    f = np.array([1.0, 3.0]) / math.sqrt(2)
    assert r.mean.item() == pytest.approx(f.mean(), rel=1e-15)
    assert r.score.item() == pytest.approx(f.std() / f.mean(), rel=1e-15)  # 0.5


def test_state_dict_round_trip_and_resume():
    x = acts(seed=3)
    full = FilterStats(5, 0.9).update(x).result()
    first = FilterStats(5, 0.9).update(x[:10])
    resumed = FilterStats(5, 0.9)
    resumed.load_state_dict(first.state_dict())
    resumed.update(x[10:])
    r = resumed.result()
    assert r.count == 24 and rel(r.score, full.score) <= 1e-12


def test_state_dict_mismatch_is_refused():
    st = FilterStats(5, 0.9).update(acts())
    with pytest.raises(ValueError, match="channels"):
        FilterStats(4, 0.9).load_state_dict(st.state_dict())
    with pytest.raises(ValueError, match="n_components"):
        FilterStats(5, None).load_state_dict(st.state_dict())
    with pytest.raises(ValueError, match="malformed"):
        FilterStats(5, 0.9).load_state_dict({"version": 1})


@pytest.mark.parametrize("bad", [0, -1, 1.0, 0.0, 1.5, -0.2, True, "mle", float("nan"), [3]])
def test_invalid_n_components(bad):
    with pytest.raises(ValueError, match="n_components"):
        FilterStats(3, bad)


def test_valid_n_components_parse():
    assert parse_n_components(None)[0] == 0
    assert parse_n_components(np.int64(3))[:2] == (1, 3)
    assert parse_n_components(np.float32(0.5))[0] == 2


@pytest.mark.parametrize("device", DEVICES)
def test_wrong_shape_is_refused(device):
    st = FilterStats(5)
    with pytest.raises(ValueError, match="expected 5 channels"):
        st.update(torch.zeros(2, 4, 3, 3, device=device))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        st.update(torch.zeros(5, 3, 3, device=device))
    with pytest.raises(ValueError, match="empty maps"):
        st.update(torch.zeros(2, 5, 0, 3, device=device))
    with pytest.raises(ValueError, match="float32, float64"):
        st.update(torch.zeros(2, 5, 3, 3, dtype=torch.int32, device=device))
    with pytest.raises(TypeError):
        st.update([[1.0]])
    with pytest.raises(ValueError, match="no images"):
        st.result()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("poison", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("n_components", MODES)
def test_non_finite_batch_is_rejected_whole(device, poison, n_components):
    x = acts(seed=4).to(device)
    bad = x[8:16].clone()
    bad[3, 2, 4, 5] = poison
    st = FilterStats(5, n_components, name="layer3.0.conv1")
    assert_rejected_whole(st, x[:8], bad, x[16:], r"layer3\.0\.conv1.*channel 2")


def test_numpy_input_and_negative_strides():
    x = acts(seed=5).numpy()
    a = FilterStats(5, 0.9).update(x).result()
    b = FilterStats(5, 0.9).update(np.ascontiguousarray(x[:, :, ::-1, :])).result()
    c = FilterStats(5, 0.9).update(x[:, :, ::-1, :]).result()  # a negative-stride view
    assert rel(c.score, b.score) == 0
    # flipping rows is a permutation of PCA samples: same energies
    assert rel(b.score, a.score) <= 1e-12
    with pytest.raises(ValueError, match="floating-point"):
        FilterStats(5).update(x.astype(np.int64))


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_native_core_works_in_a_forked_child():
    """A child forked after the thread pool started must not wait for the parent's threads."""
    import os
    import signal
    import time

    x = acts(seed=7)
    want = FilterStats(5, 0.9).update(x).result().score  # starts the pool in the parent
    pid = os.fork()
    if pid == 0:  # child: score again, exit 0 on a match
        try:
            got = FilterStats(5, 0.9).update(x).result().score
            os._exit(0 if torch.equal(got, want) else 3)
        except BaseException:
            os._exit(4)
    deadline = time.time() + 60
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.time() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung in the native core")
        time.sleep(0.05)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0

"""Per-map energies of the native cores against the scikit-learn oracle (docs/scoring.md §2, 5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import DEVICES
from helpers import SPARSE_KINDS, make_maps
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ocnna_fast import _native
from ocnna_fast.scoring import reference
from ocnna_fast.scoring.stats import FilterStats

pytest.importorskip("sklearn")

TOL = {np.float64: 1e-9, np.float32: 1e-4}


def native_energies(a: torch.Tensor, n_components) -> np.ndarray:
    """F[n, c] from the core that matches the tensor's device."""
    return _native.map_energies(a, n_components)


n_components_st = st.one_of(
    st.none(),
    st.integers(min_value=1, max_value=45),
    st.floats(min_value=0.05, max_value=0.99),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    kind=st.sampled_from(
        ["normal", "relu", "constant", "zero", "low_rank", "offset", "constant_columns"] + SPARSE_KINDS
    ),
    dtype=st.sampled_from([np.float64, np.float32]),
    channels_last=st.booleans(),
    n_components=n_components_st,
    seed=st.integers(0, 2**31 - 1),
    device=st.sampled_from(DEVICES),
)
def test_energies_match_oracle(h, w, kind, dtype, channels_last, n_components, seed, device):
    rng = np.random.default_rng(seed)
    a = make_maps(rng, kind, 2, 3, h, w).astype(dtype)
    t = torch.from_numpy(a).to(device)
    if channels_last:
        t = t.to(memory_format=torch.channels_last)
    got = native_energies(t, n_components)
    want = reference.energies(a, n_components)
    scale = np.sqrt(np.sum(np.square(a - a.mean(axis=2, keepdims=True)), axis=(2, 3))) + 1e-300
    tol = TOL[dtype]
    # relative to F, with an absolute floor relative to the map's own energy
    np.testing.assert_array_less(np.abs(got - want), tol * np.maximum(np.abs(want), 1e-3 * scale) + 1e-300)
    if kind in ("constant", "zero", "constant_columns"):
        assert np.all(got == 0.0), "zero-variance maps must give exactly 0"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n_components", [None, 3, 0.9])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_types_read_exactly(device, n_components, dtype):
    """float16/bfloat16 maps give the same F as their exact float32 upcast."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 5, 9, 7, generator=g).to(dtype).to(device)
    got = native_energies(x, n_components)
    want = native_energies(x.float(), n_components)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
    oracle = reference.energies(x.float().cpu().numpy(), n_components)
    np.testing.assert_allclose(got, oracle, rtol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_strided_views_need_no_copy(device):
    """A non-contiguous view (every other channel, a crop) scores like its copy."""
    g = torch.Generator().manual_seed(2)
    base = torch.randn(4, 10, 20, 24, generator=g, dtype=torch.float64).to(device)
    view = base[:, ::2, 3:17, 1:23:2]
    assert not view.is_contiguous()
    for nc in (None, 0.8):
        np.testing.assert_allclose(
            native_energies(view, nc), native_energies(view.contiguous(), nc), rtol=1e-13, atol=0
        )


@pytest.mark.parametrize("device", DEVICES)
def test_larger_maps_match_oracle(device):
    """Sizes of real networks (56x56, 112 wide), and maps past the shared
    memory of a GPU block, where the CUDA core falls back to global memory:
    130x140 in float64, 200x210 in float32 too (float maps take half the room)."""
    rng = np.random.default_rng(3)
    for h, w in ((56, 56), (112, 20), (20, 112), (130, 140), (200, 210)):
        a = np.maximum(rng.standard_normal((1, 2, h, w)), 0)
        for nc in (0.95, 10):
            want = reference.energies(a, nc)
            np.testing.assert_allclose(native_energies(torch.from_numpy(a).to(device), nc), want, rtol=1e-9)
            # float input takes the float compute path (CPU: >128 is reduced map by map)
            got32 = native_energies(torch.from_numpy(a.astype(np.float32)).to(device), nc)
            np.testing.assert_allclose(got32, want, rtol=1e-4)


def test_filter_stats_matches_oracle_scores():
    """End of the chain: FilterStats.result() equals the oracle's std/mean per channel."""
    rng = np.random.default_rng(4)
    a = np.maximum(rng.standard_normal((12, 6, 10, 13)), 0).astype(np.float32)
    a[:, 2] = 0.0  # a dead channel
    for nc in (None, 4, 0.9):
        res = FilterStats(6, nc).update(a).result()
        ora = reference.score_activations(a, nc)
        np.testing.assert_allclose(res.score.numpy(), ora["score"], rtol=1e-4)
        np.testing.assert_allclose(res.mean.numpy(), ora["mean"], rtol=1e-4)
        np.testing.assert_allclose(res.std.numpy(), ora["std"], rtol=1e-4, atol=1e-7)
        assert res.dead.tolist() == ora["dead"].tolist() == [False, False, True, False, False, False]
        assert res.count == 12


@pytest.mark.parametrize("tau, kept", [(0.4, 8.0), (0.5, 12.0), (0.75, 14.0), (0.8, 14.0), (0.875, 16.0)])
def test_ratio_rule_is_strictly_greater(tau, kept):
    """docs/scoring.md §2, step 3 on a map whose explained ratios are exact binary fractions.

    Orthogonal zero-mean columns with squared norms 8, 4, 2, 2: ratios 1/2, 1/4,
    1/8, 1/8, cumulative 0.5, 0.75, 0.875, 1.  At tau equal to a cumulative
    value the rule keeps one more component ("strictly greater")."""
    cols = np.array(
        [
            [1, 1, 1, 1, -1, -1, -1, -1],
            [1, -1, 1, -1, 0, 0, 0, 0],
            [0, 0, 0, 0, 1, -1, 0, 0],
            [0, 0, 0, 0, 0, 0, 1, -1],
        ],
        dtype=np.float64,
    ).T  # 8 rows (samples) x 4 columns (features)
    x = torch.from_numpy(cols + 3.0).reshape(1, 1, 8, 4)  # the offset is centred away
    got = native_energies(x, tau)[0, 0]
    assert got == np.sqrt(kept)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("size", [(14, 14), (9, 30), (56, 56)])
def test_groups_mixing_easy_and_hard_maps(device, dtype, layout, size):
    """The CPU core solves 16 (float) or 8 (float64) maps per SIMD register and
    two such groups together; maps that need no eigen-solve (constant, zero,
    all columns constant) leave their lane to the next map.  Mix them into
    every group, with a channel count that leaves the last group part-empty."""
    rng = np.random.default_rng(sum(size))
    h, w = size
    kinds = ["relu", "constant", "low_rank", "zero", "relu", "constant_columns", "offset"]
    c = 53
    a = np.concatenate([make_maps(rng, kinds[k % len(kinds)], 2, 1, h, w) for k in range(c)], axis=1)
    a = a.astype(dtype)
    x = torch.from_numpy(a)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    for nc in (0.9, 4):
        got = native_energies(x.to(device), nc)
        want = reference.energies(a.astype(np.float64), nc)
        np.testing.assert_allclose(got, want, rtol=TOL[dtype], atol=1e-9 * max(1.0, np.abs(want).max()))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_extreme_scales_keep_their_energy(dtype):
    """F scales with the activations (F(s X) = s F(X)) down to tiny and up to
    huge float32 values, whose squares would underflow or overflow float32."""
    rng = np.random.default_rng(9)
    a = np.maximum(rng.standard_normal((2, 20, 14, 14)), 0)
    for nc in (0.9, 3):
        want = reference.energies(a, nc)
        for s in (1e-30, 1e-20, 1e20, 1e30):
            got = native_energies(torch.from_numpy((a * s).astype(dtype)), nc) / s
            np.testing.assert_allclose(got, want, rtol=TOL[dtype], err_msg=f"scale {s}")


# ---- exact-zero structure (post-activation maps) -----------------------------------


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    h=st.integers(2, 40),
    w=st.integers(2, 40),
    kind=st.sampled_from(SPARSE_KINDS),
    dtype=st.sampled_from([np.float64, np.float32]),
    n_components=st.one_of(st.integers(1, 8), st.floats(min_value=0.05, max_value=0.99)),
    seed=st.integers(0, 2**31 - 1),
    device=st.sampled_from(DEVICES),
)
def test_sparse_maps_match_oracle(h, w, kind, dtype, n_components, seed, device):
    """Sparse and rank-deficient maps through FilterStats, as a user feeds them:
    the truncated path once turned their exact zeros into NaN (or, on CUDA,
    into wrong energies).  Every batch must be accepted and match the oracle."""
    rng = np.random.default_rng(seed)
    a = make_maps(rng, kind, 3, 17, h, w).astype(dtype)
    got = native_energies(torch.from_numpy(a).to(device), n_components)
    want = reference.energies(a, n_components)
    scale = np.sqrt(np.sum(np.square(a - a.mean(axis=2, keepdims=True)), axis=(2, 3))) + 1e-300
    np.testing.assert_array_less(np.abs(got - want), TOL[dtype] * np.maximum(np.abs(want), 1e-3 * scale) + 1e-300)
    FilterStats(17, n_components).update(torch.from_numpy(a).to(device)).result()  # accepted, no error


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n_components", [0.95, 3, 0.5])
def test_shipped_sparse_relu_map(dtype, n_components):
    """tests/fixtures/sparse_relu_map_32x32_f64.npy: 27 non-zeros in 3 columns,
    rank 3; alone as a batch it was rejected as non-finite input."""
    from conftest import REPO

    path = REPO / "tests" / "fixtures" / "sparse_relu_map_32x32_f64.npy"
    m = np.load(path).astype(dtype)[None, None]
    got = native_energies(torch.from_numpy(m), n_components)
    want = reference.energies(m, n_components)
    np.testing.assert_allclose(got, want, rtol=TOL[dtype])
    FilterStats(1, n_components).update(m)


@pytest.mark.parametrize("arch", ["resnet20", "resnet56"])
def test_real_post_relu_maps_match_oracle(arch, data_dir):
    """relu(bn(conv(x))) of the pretrained CIFAR ResNets on shipped images: every
    layer is accepted in float32 and float64, all truncated modes; a sample of
    layers and channels matches the oracle."""
    from ocnna_fast import models
    from ocnna_fast.data import local as data
    from ocnna_fast.models.cifar_resnet import CIFAR_MEAN, CIFAR_STD

    weights = sorted((data_dir / "resnet-cifar10-akamaster").glob(f"{arch}-*.th"))
    if not weights:
        pytest.skip(f"no {arch} checkpoint under {data_dir}")
    model = models.load_weights(models.build(arch), weights[0]).eval()
    x, _ = data.cifar10_jpeg("train", root=data_dir, limit=24)
    acts = {}
    hooks = [
        m.register_forward_hook(lambda _m, _i, o, n=n: acts.__setitem__(n, torch.relu(o)))
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.BatchNorm2d)
    ]
    with torch.no_grad():
        model(data.normalize(x, CIFAR_MEAN, CIFAR_STD))
    for h in hooks:
        h.remove()
    names = list(acts)
    for nc in (0.95, 3, 0.5):
        for dtype, tol in ((torch.float32, 1e-4), (torch.float64, 1e-9)):
            for name in names:
                FilterStats(acts[name].shape[1], nc, name=name).update(acts[name].to(dtype))
            for name in names[:: max(1, len(names) // 4)]:
                a = acts[name][:6, :6].to(dtype)
                want = reference.energies(a, nc)
                np.testing.assert_allclose(
                    native_energies(a, nc),
                    want,
                    rtol=tol,
                    atol=1e-12 * want.max(),
                    err_msg=f"{arch} {name} n_components={nc} {dtype}",
                )


def test_own_failures_are_internal_errors_not_bad_input():
    """A status code of the core that flags our own failed solve becomes an
    InternalError naming layer, channel and map shape, never the ValueError of
    bad input; a real NaN stays a ValueError."""
    from ocnna_fast._native import _C
    from ocnna_fast.errors import InternalError

    st_ = FilterStats(4, 0.9, name="block.conv")
    x = torch.rand(2, 4, 5, 6)
    err = st_._rejection(int(_C.INTERNAL_FLAG) + 2, x, "this batch was not accumulated")
    assert isinstance(err, InternalError) and not isinstance(err, ValueError)
    assert "block.conv" in str(err) and "channel 2" in str(err) and "(5, 6)" in str(err)
    x[1, 3, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="non-finite .* channel 3"):
        FilterStats(4, 0.9).update(x)
    # on CUDA the batch is gone when the error surfaces: both causes are named
    cuda_err = st_._rejection(1, None, "the offending batches were not accumulated")
    assert isinstance(cuda_err, ValueError) and "non-finite" in str(cuda_err) and "overflow" in str(cuda_err)


@pytest.mark.parametrize("n_components", [None, 0.9])
def test_huge_finite_activations_are_not_called_non_finite(n_components):
    """float64 maps near 1e160 are finite; their squares overflow.  The error
    says so (and what to do), instead of blaming NaN/Inf input."""
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64) * 1e160
    with pytest.raises(ValueError, match="finite but too large"):
        FilterStats(3, n_components).update(x)

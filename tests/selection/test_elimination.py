"""The ``reconstruction`` criterion (``elimination``): the downdated greedy
elimination equals a brute-force greedy search that refits every candidate
subset by least squares (dense and 3x3 consumers, one and two consumers),
the streamed moments equal those of all rows at once, and on a network a
channel no reader uses is ranked lowest whatever its own weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ocnna_fast.selection.criteria import Context, criterion_values
from ocnna_fast.selection.elimination import ConsumerStats, _columns, collect, eliminate, removal_residuals


def _residual(x: np.ndarray, y: np.ndarray, cols: list) -> float:
    """Unexplained variance of y after a least-squares fit with intercept on x[:, cols]."""
    yc = y - y.mean(0)
    if not cols:
        return float((yc**2).sum() / len(y))
    xc = x[:, cols] - x[:, cols].mean(0)
    w, *_ = np.linalg.lstsq(xc, yc, rcond=None)
    return float(((yc - xc @ w) ** 2).sum() / len(y))


def _brute_greedy(pairs, width: int, block: int) -> np.ndarray:
    """Greedy removal, each step refitting every candidate from scratch."""
    alive, values = list(range(width)), np.empty(width)
    total = [_residual(x, y, []) for x, y in pairs]
    while alive:
        best = None
        for j in alive:
            cols = [c * block + b for c in alive if c != j for b in range(block)]
            r = np.mean([_residual(x, y, cols) / t for (x, y), t in zip(pairs, total)])
            if best is None or r < best[0]:
                best = (r, j)
        values[best[1]] = best[0]
        alive.remove(best[1])
    return values - np.mean([_residual(x, y, list(range(width * block))) / t for (x, y), t in zip(pairs, total)])


def _stats(x: np.ndarray, y: np.ndarray, block: int, chunks: int = 3) -> ConsumerStats:
    s = ConsumerStats(block=block)
    for xs, ys in zip(np.array_split(x, chunks), np.array_split(y, chunks)):
        s.add(torch.from_numpy(xs), torch.from_numpy(ys))
    return s


@pytest.mark.parametrize("block,consumers", [(1, 1), (1, 2), (4, 1), (4, 2)])
def test_downdated_elimination_equals_brute_force_refits(block, consumers):
    rng = np.random.default_rng(block * 10 + consumers)
    width, n = 5, 400
    base = rng.normal(size=(n, 3))
    pairs = []
    for c in range(consumers):
        # correlated channels (so the order matters) and a noisy target
        x = np.concatenate([base @ rng.normal(size=(3, width * block)), rng.normal(size=(n, width * block))], 1)
        x = x[:, : width * block] + 0.3 * x[:, width * block :] + 2.0
        y = x @ rng.normal(size=(width * block, 3)) + 0.5 * rng.normal(size=(n, 3))
        pairs.append((x, y))
    got = eliminate([_stats(x, y, block) for x, y in pairs], width, ridge=0.0)
    want = _brute_greedy(pairs, width, block)
    np.testing.assert_allclose(got, want, atol=1e-8)
    assert np.argsort(got).tolist() == np.argsort(want).tolist()


@pytest.mark.parametrize("block,consumers", [(1, 1), (1, 2), (4, 2)])
def test_the_residual_of_any_removal_order_equals_brute_force_refits(block, consumers):
    rng = np.random.default_rng(7 + block + consumers)
    width, n = 6, 400
    pairs = []
    for _ in range(consumers):
        x = rng.normal(size=(n, 3)) @ rng.normal(size=(3, width * block)) + 0.4 * rng.normal(size=(n, width * block))
        pairs.append((x, x @ rng.normal(size=(width * block, 2)) + 0.3 * rng.normal(size=(n, 2))))
    order = rng.permutation(width)
    got = removal_residuals([_stats(x, y, block) for x, y in pairs], order, ridge=0.0)
    total = [_residual(x, y, []) for x, y in pairs]
    full = np.mean([_residual(x, y, list(range(width * block))) / t for (x, y), t in zip(pairs, total)])
    for i in range(width):
        left = [c * block + b for c in range(width) if c not in order[: i + 1] for b in range(block)]
        want = np.mean([_residual(x, y, left) / t for (x, y), t in zip(pairs, total)]) - full
        assert got[i] == pytest.approx(want, abs=1e-8)
    greedy = eliminate([_stats(x, y, block) for x, y in pairs], width, ridge=0.0)  # its own order, its values
    np.testing.assert_allclose(
        removal_residuals([_stats(x, y, block) for x, y in pairs], np.argsort(greedy), 0.0), np.sort(greedy), atol=1e-8
    )


def test_streamed_moments_equal_all_rows_at_once():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(300, 6)) + 1.0, rng.normal(size=(300, 2)) - 3.0
    cxx, cxy, vy = _stats(x, y, 1, chunks=7).covariances()
    np.testing.assert_allclose(cxx.numpy(), np.cov(x.T, bias=True), atol=1e-12)
    np.testing.assert_allclose(cxy.numpy(), (x - x.mean(0)).T @ (y - y.mean(0)) / 300, atol=1e-12)
    assert vy == pytest.approx(float(y.var(0).sum()))


def test_conv_columns_are_unfold_blocks():
    conv = nn.Conv2d(4, 2, 3, padding=1)
    assert _columns(conv, [2, 0]).tolist() == [18, 19, 20, 21, 22, 23, 24, 25, 26, 0, 1, 2, 3, 4, 5, 6, 7, 8]
    x = torch.randn(2, 4, 5, 5)
    got = collect(nn.Sequential(conv), [x], {"g": [(conv, [0, 1, 2, 3])]})["g"][0]
    assert got.n == 2 * 25 and got.block == 9


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(6, 5, 3, padding=1)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        x = torch.relu(self.b(torch.relu(self.a(x))))
        return self.fc(x.mean((2, 3)))


def test_a_channel_no_reader_uses_is_ranked_lowest():
    torch.manual_seed(0)
    net = _Net().eval()
    with torch.no_grad():
        net.a.weight[4] *= 10  # the largest filter by far (L1 keeps it) ...
        net.a.bias[4] = 1.0
        net.b.weight[:, 4] = 0  # ... but its reader ignores it
    batches = [torch.randn(16, 3, 8, 8) for _ in range(3)]
    ctx = Context(model=net, batches=batches, labels=[], example_inputs=batches[0][:1], ignored_layers=[net.fc])
    values = criterion_values("reconstruction", ctx)
    l1 = criterion_values("l1", ctx)
    assert set(values) == set(l1) == {"a", "b"}
    assert int(np.argmin(values["a"])) == 4 and int(np.argmax(l1["a"])) == 4
    assert all(np.all(np.isfinite(v)) and np.all(v >= 0) for v in values.values())
    # the last channel left explains everything that remained: values end at 1 (one reader each)
    assert max(values["a"]) == pytest.approx(1.0, abs=1e-3) and max(values["b"]) == pytest.approx(1.0, abs=1e-3)


def test_values_increase_along_the_removal_order():
    # values strictly increase along the removal order (no two channels share a step)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 4))
    got = eliminate([_stats(x, x @ rng.normal(size=(4, 2)), 1)], 4)
    assert np.all(np.diff(np.sort(got)) > 0)


class _Flat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(torch.relu(self.a(x))), 1))


def test_a_group_read_only_through_a_flatten_falls_back_to_l1():
    torch.manual_seed(0)
    net = _Flat().eval()
    batches = [torch.randn(8, 3, 6, 6) for _ in range(2)]
    ctx = Context(model=net, batches=batches, labels=[], example_inputs=batches[0][:1], ignored_layers=[net.fc])
    np.testing.assert_allclose(criterion_values("reconstruction", ctx)["a"], criterion_values("l1", ctx)["a"])


def test_constant_outputs_rank_without_nans():
    # a reader whose outputs never vary on the images loses nothing: all values 0, none NaN
    rng = np.random.default_rng(2)
    x = rng.normal(size=(50, 3))
    got = eliminate([_stats(x, np.ones((50, 2)), 1)], 3)
    assert np.all(got == 0)

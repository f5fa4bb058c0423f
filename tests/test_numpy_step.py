"""The numpy linear step: the blocked path (X in row blocks that stay in cache between the two
products) against an independent float64 formula, and the checks that look at the results
instead of X (labels always, NaN/Inf in X found through J, dW, db)."""
import os

import numpy as np
import pytest

import gpugrad as gg
from gpugrad.backends import numpy_backend as nb
from gpugrad.backends.numpy_backend import NumpyBackend


@pytest.fixture
def blocked(monkeypatch):
    """blocked(loss_rows, rows, threads=1, x_first=False): every numpy backend (the public
    functions' too) steps every X in blocks, ``loss_rows`` rows per loss evaluation, products
    over ``rows`` rows, ``threads`` row ranges side by side, the weight gradient as (X^T G)^T
    when ``x_first``. Returns a NumpyBackend."""
    def setup(loss_rows, rows, threads=1, x_first=False):
        for name, value in (("blocked_from", 0), ("loss_rows", loss_rows), ("threads", threads),
                            ("worker_rows", 1), ("plan", (rows, x_first))):
            monkeypatch.setattr(NumpyBackend, name, value)
        return NumpyBackend()
    return setup


def reference(X, y, W, b, lam, loss, x_mean=None, x_std=None, sample_weight=None):
    """J, dW, db in float64, written from the formulas (not through gpugrad):
    S = Xn W^T + b, J = (1/n) sum_i w_i l_i + lam ||W||^2, G = w_i dl_i/dS_i / n,
    dW = G^T Xn + 2 lam W, db = sum_i G_i."""
    X, W, b = (np.asarray(a, np.float64) for a in (X, W, b))
    if x_mean is not None:
        X = (X - np.asarray(x_mean, np.float64)) / np.asarray(x_std, np.float64)
    n, C = X.shape[0], W.shape[0]
    w = np.ones(n) if sample_weight is None else np.asarray(sample_weight, np.float64)
    S = X @ W.T + b
    Y = np.eye(C)[y]
    s_y = S[np.arange(n), y]
    if loss == "softmax":
        lse = np.log(np.exp(S - S.max(1, keepdims=True)).sum(1)) + S.max(1)
        rows, dl = lse - s_y, np.exp(S - lse[:, None]) - Y
    else:
        margins = np.where(Y == 1, 0.0, S - s_y[:, None] + 1)
        active = (margins > 0).astype(np.float64)
        rows, dl = np.maximum(margins, 0).sum(1), active - Y * active.sum(1, keepdims=True)
    G = w[:, None] * dl / n
    return (w * rows).sum() / n + lam * (W ** 2).sum(), G.T @ X + 2 * lam * W, G.sum(0)


def problem(rng, n, d, C, dtype=np.float32, pixels=False):
    """X (float, or uint8 pixels with x_mean/x_std a few units off the column means), y, W, b,
    x_mean, x_std; drawn again while a hinge margin is within 1e-3 of its kink, where float32
    scores could fall on the other side of it than the float64 reference's."""
    for _ in range(100):
        X, y, W, b, mean, std = _draw(rng, n, d, C, dtype, pixels)
        Xn = X if mean is None else (X - mean.astype(np.float64)) / std.astype(np.float64)
        S = Xn.astype(np.float64) @ W.T.astype(np.float64) + b
        margins = S - S[np.arange(n), y][:, None] + 1
        margins[np.arange(n), y] = 1
        if np.abs(margins).min() > 1e-3:
            return X, y, W, b, mean, std
    raise AssertionError("no draw without a margin at its kink")


def _draw(rng, n, d, C, dtype, pixels):
    y = rng.integers(0, C, n)
    W = (rng.standard_normal((C, d)) * 0.1).astype(dtype)
    b = (rng.standard_normal(C) * 0.1).astype(dtype)
    if not pixels:
        return rng.standard_normal((n, d)).astype(dtype), y, W, b, None, None
    X = rng.integers(0, 256, (n, d), dtype=np.uint8)
    mean = (X.mean(0) + rng.uniform(-3, 3, d)).astype(dtype)
    std = (X.std(0) + 1).astype(dtype)
    return X, y, W, b, mean, std


def assert_step_close(got, want, dtype):
    """float32: a few ulps of the magnitudes being summed; float64: near round-off."""
    J, dW, db = got
    rtol, atol = (2e-5, 2e-6) if dtype == np.float32 else (1e-11, 1e-13)
    assert dW.dtype == dtype and db.dtype == dtype and J.dtype == dtype and J.shape == ()
    assert dW.flags.c_contiguous
    np.testing.assert_allclose(float(J), want[0], rtol=rtol)
    np.testing.assert_allclose(dW, want[1], rtol=rtol, atol=atol * np.abs(want[1]).max())
    np.testing.assert_allclose(db, want[2], rtol=rtol, atol=atol)


@pytest.mark.parametrize("loss", ["softmax", "svm"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,loss_rows,rows,threads", [
    (50, 14, 3, 1),  # ragged blocks and loss evaluations
    (48, 16, 8, 2),  # exact ones, two ranges
    (61, 20, 4, 3),  # three ranges, the last one short
    (5, 16, 8, 2),  # n smaller than a block: one range, one block
])
def test_blocked_step_matches_the_float64_formulas(rng, blocked, loss, dtype, n, loss_rows, rows, threads):
    X, y, W, b, _, _ = problem(rng, n, 33, 4, dtype)
    be = blocked(min(loss_rows, n), rows, threads)
    got = be.linear_grad(X, y, W, b, 0.05, loss)
    assert_step_close(got, reference(X, y, W, b, 0.05, loss), dtype)


@pytest.mark.parametrize("loss", ["softmax", "svm"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_blocked_step_normalises_uint8_pixels_block_by_block(rng, blocked, loss, dtype):
    X, y, W, b, mean, std = problem(rng, 61, 27, 5, dtype, pixels=True)
    got = blocked(16, 8, 2).linear_grad(X, y, W, b, 0.01, loss, mean, std)
    assert_step_close(got, reference(X, y, W, b, 0.01, loss, mean, std), dtype)


@pytest.mark.parametrize("loss", ["softmax", "svm"])
def test_blocked_step_normalises_float_x(rng, blocked, loss):
    X, y, W, b, _, _ = problem(rng, 45, 20, 3)
    mean = rng.standard_normal(20).astype(np.float32)
    std = rng.uniform(0.5, 2, 20).astype(np.float32)
    got = blocked(10, 5, 2).linear_grad(X, y, W, b, 0.0, loss, mean, std)
    assert_step_close(got, reference(X, y, W, b, 0.0, loss, mean, std), np.float32)


@pytest.mark.parametrize("loss", ["softmax", "svm"])
def test_blocked_step_weights_rows_by_sample_weight(rng, blocked, loss):
    X, y, W, b, mean, std = problem(rng, 70, 16, 4, np.float64, pixels=True)
    w = rng.uniform(0, 3, 70)
    w[::9] = 0  # rows that do not count at all
    got = blocked(12, 4, 2).linear_grad(X, y, W, b, 0.2, loss, mean, std, sample_weight=w)
    assert_step_close(got, reference(X, y, W, b, 0.2, loss, mean, std, w), np.float64)


def test_blocked_and_whole_steps_agree(rng, blocked):
    """The same sums in another order: the two paths agree to float32 round-off."""
    X, y, W, b, mean, std = problem(rng, 300, 40, 6, pixels=True)
    whole = NumpyBackend().linear_grad(X, y, W, b, 0.1, "softmax", mean, std)
    got = blocked(64, 16, 2).linear_grad(X, y, W, b, 0.1, "softmax", mean, std)
    for g, w in zip(got, whole):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("x_first", [False, True])
def test_both_product_shapes_give_the_weight_gradient(rng, blocked, x_first):
    """Whichever product shape the timing picks, dW is G^T X in (C, d) layout."""
    X, y, W, b, _, _ = problem(rng, 37, 19, 3, np.float64)
    for be in (blocked(10, 3, 2, x_first), blocked(37, 37, 1, x_first)):
        assert_step_close(be.linear_grad(X, y, W, b, 0.0, "svm"), reference(X, y, W, b, 0.0, "svm"), np.float64)


def test_plan_is_timed_once_per_shape_and_is_a_candidate(monkeypatch):
    timed = []
    time_plans = nb._time_plans
    monkeypatch.setattr(nb, "_PLANS", {})
    monkeypatch.setattr(nb, "_time_plans", lambda *key: timed.append(key) or nb._Plan(8, True))
    assert nb._step_plan(np.float32, 10, 64, 2) == (8, True, 0)
    assert nb._step_plan("float32", 10, 64, 2) == (8, True, 0)
    nb._step_plan(np.float64, 10, 64, 2)
    assert timed == [(np.dtype(np.float32), 10, 64, 2), (np.dtype(np.float64), 10, 64, 2)]
    plan = time_plans(np.dtype(np.float32), 3, 16, 2, rows=32)
    assert plan.rows in nb._PLAN_ROWS and plan.rows <= 32 and isinstance(plan.x_first, bool)
    assert plan.workers == 2
    assert time_plans(np.dtype(np.float64), 2, 100_000, 1).rows == 8  # rows of 0.8 MB: 8 are timed


def test_blocking_follows_the_sizes_and_spares_other_array_modules():
    X = np.zeros((1000, 256), np.float32)
    W = np.zeros((10, 256), np.float32)
    be = NumpyBackend()
    be.blocked_from, be.loss_rows = 512 << 10, 300
    assert be._block_rows(X, W) == 300
    assert be._block_rows(X[:100], W) == 0  # 100 KiB of X: stepped whole
    assert be._block_rows(X[:400], W.astype(np.float64)) == 300  # uint8/float X counted as W's dtype
    assert be._block_rows(X[:600], W) == 300 and be._block_rows(X[:550], W) == 300
    be.loss_rows = 5000
    assert be._block_rows(X, W) == 1000
    be.loss_rows = None  # about 12 MiB of rows, 8 to 4096 of them
    assert be._block_rows(np.zeros((10000, 3072), np.uint8), np.zeros((10, 3072), np.float32)) == 1024
    assert be._block_rows(np.zeros((10000, 64), np.float32), np.zeros((10, 64), np.float32)) == 4096
    assert be._block_rows(np.zeros((300, 10 ** 5), np.uint8), np.zeros((10, 10 ** 5), np.float32)) == 31
    assert be._block_rows(np.zeros((300, 10 ** 6), np.uint8), np.zeros((10, 10 ** 6), np.float32)) == 8
    other = type("OnAnotherArrayModule", (NumpyBackend,), {"xp": object()})()
    other.blocked_from = 0
    assert other._block_rows(X, W) == 0  # CuPy: never a loop of small products on a GPU


def test_each_worker_gets_enough_rows():
    be = NumpyBackend()
    be.threads, be.worker_rows = 4, 256
    assert be._workers(10000) == 4 and be._workers(600) == 2 and be._workers(5) == 1
    be.threads = None
    assert 1 <= be._workers(10 ** 6) == nb._cpu_count()


def test_side_by_side_keeps_the_order_of_the_ranges():
    ranges = [(i, i + 1) for i in range(5)]
    assert nb._run_side_by_side(lambda lo, hi: (lo, hi), ranges) == ranges
    assert nb._run_side_by_side(lambda lo, hi: lo * 10, [(3, 4)]) == [30]


def test_public_linear_grad_takes_the_blocked_path(rng, monkeypatch, blocked):
    calls = []
    real = NumpyBackend._blocked_loss_grads
    monkeypatch.setattr(NumpyBackend, "_blocked_loss_grads", lambda self, *a: calls.append(a[-1]) or real(self, *a))
    blocked(16, 4, 2)
    X, y, W, b, mean, std = problem(rng, 100, 24, 4, pixels=True)
    got = gg.linear_grad(X, y, W, b, 0.03, "softmax", x_mean=mean, x_std=std)
    assert calls == [16]
    assert_step_close(got, reference(X, y, W, b, 0.03, "softmax", mean, std), np.float32)


# ---- checks: labels always, X through the results ----------------------------------------------
@pytest.mark.parametrize("validate", [True, False])
@pytest.mark.parametrize("label", [-1, 4])
def test_labels_out_of_range_are_refused_even_without_validation(rng, validate, label):
    X, y, W, b, _, _ = problem(rng, 30, 8, 4)
    y[11] = label
    with pytest.raises(ValueError, match=rf"label y\[11\] = {label} is outside \[0, 4\)"):
        gg.linear_grad(X, y, W, b, validate=validate)


@pytest.mark.parametrize("rows", [None, 8])  # the whole step and the blocked one
@pytest.mark.parametrize("loss", ["softmax", "svm"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_in_x_is_found_through_the_results(rng, blocked, rows, loss, bad):
    if rows:
        blocked(rows, 3, 2)
    X, y, W, b, _, _ = problem(rng, 40, 6, 3)
    X[21, 4] = bad
    kind = "NaN" if np.isnan(bad) else ("inf" if bad > 0 else "-inf")
    with pytest.raises(ValueError, match=rf"X contains {kind} at index \[21, 4\]"):
        gg.linear_grad(X, y, W, b, loss=loss)
    with np.errstate(all="ignore"):
        J, dW, db = gg.linear_grad(X, y, W, b, loss=loss, check_finite=False)
    assert not np.isfinite(dW).all()  # what the check relies on: X's NaN/Inf reaches dW


def test_nan_in_x_reaches_dw_through_a_row_whose_gradient_is_zero(rng):
    """A hinge row with no active margin has G_i = 0 and a finite loss, yet 0 * NaN = NaN: the
    NaN still shows in dW, so looking at the results finds it."""
    X = np.ones((3, 2), np.float32)
    W = np.array([[10, 10], [0, 0]], np.float32)
    y = np.array([0, 0, 0])
    X[1, 1] = np.nan  # row 1's scores are NaN: its margins compare false, G_1 = 0
    with np.errstate(all="ignore"):
        J, dW, db = gg.linear_grad(X, y, W, np.zeros(2, np.float32), loss="svm", check_finite=False)
    assert np.isfinite(J) and np.isfinite(db).all() and np.isnan(dW[:, 1]).all()
    with pytest.raises(ValueError, match=r"X contains NaN at index \[1, 1\]"):
        gg.linear_grad(X, y, W, np.zeros(2, np.float32), loss="svm")


def test_x_is_named_before_w_when_both_hold_nan(rng):
    X, y, W, b, _, _ = problem(rng, 20, 5, 3)
    X[3, 1] = W[2, 2] = np.nan
    with pytest.raises(ValueError, match=r"X contains NaN at index \[3, 1\]"):
        gg.linear_grad(X, y, W, b)
    X[3, 1] = 0
    with pytest.raises(ValueError, match=r"W contains NaN at index \[2, 2\]"):
        gg.linear_grad(X, y, W, b)


def test_inf_in_b_is_refused_where_the_results_stay_finite(rng):
    """b = -inf for a class that no row has, hinge loss: that class's scores are -inf, its
    margins inactive and every result finite; b (like W) is checked on its own, before the step."""
    X = rng.uniform(1, 2, (6, 3)).astype(np.float32)
    y = np.zeros(6, np.int64)
    W = np.zeros((2, 3), np.float32)
    b = np.array([0, -np.inf], np.float32)
    with np.errstate(all="ignore"):
        J, dW, db = gg.linear_grad(X, y, W, b, loss="svm", check_finite=False)
    assert np.isfinite(J) and np.isfinite(dW).all() and np.isfinite(db).all()
    with pytest.raises(ValueError, match=r"b contains -inf at index 1"):
        gg.linear_grad(X, y, W, b, loss="svm")


def test_nan_in_x_raises_the_value_error_under_numpy_raise_mode(rng):
    X, y, W, b, _, _ = problem(rng, 20, 5, 3)
    X[0, 0] = np.inf
    with np.errstate(all="raise"), pytest.raises(ValueError, match=r"X contains inf at index \[0, 0\]"):
        gg.linear_grad(X, y, W, b)


def test_finite_inputs_whose_step_overflows_are_returned(rng):
    """Finite inputs are not an error even when float32 overflows (as before the results were
    looked at): the check names inputs, it does not judge results."""
    X = np.full((4, 2), 3e38, np.float32)
    W = np.ones((2, 2), np.float32)
    with np.errstate(all="ignore"):
        J, dW, db = gg.linear_grad(X, np.array([0, 1, 0, 1]), W, np.zeros(2, np.float32))
    assert not np.isfinite(dW).all()


def test_workers_follow_the_callers_numpy_error_state(rng, blocked):
    """numpy's error state is per thread: the rows stepped in workers obey the caller's."""
    blocked(8, 4, 3)
    X, y, W, b, _, _ = problem(rng, 48, 6, 3)
    X[45, 2] = np.inf  # in the last range, which a worker steps: inf - inf in the softmax
    with np.errstate(all="raise"), pytest.raises(FloatingPointError):
        gg.linear_grad(X, y, W, b, check_finite=False)
    with np.errstate(all="ignore"):
        J, dW, db = gg.linear_grad(X, y, W, b, check_finite=False)
    assert np.isnan(J)


def test_without_a_fixed_plan_the_timed_one_is_used(rng, monkeypatch):
    monkeypatch.setattr(nb, "_step_plan", lambda *key: nb._Plan(4, True))
    be = NumpyBackend()
    be.blocked_from, be.threads = 0, 2
    X, y, W, b, _, _ = problem(rng, 600, 9, 3, np.float64)
    assert_step_close(be.linear_grad(X, y, W, b, 0.0, "svm"), reference(X, y, W, b, 0.0, "svm"), np.float64)


def test_more_workers_than_before_get_a_larger_pool():
    assert nb._run_side_by_side(lambda lo, hi: lo, [(0, 1), (1, 2)]) == [0, 1]
    assert nb._run_side_by_side(lambda lo, hi: lo, [(i, i + 1) for i in range(6)]) == list(range(6))
    assert nb._POOL["size"] >= 5


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_child_steps_with_workers_of_its_own(rng, blocked):
    """The parent's worker threads do not exist in a forked child: it makes its own."""
    import multiprocessing
    blocked(16, 4, 2)
    X, y, W, b, _, _ = problem(rng, 64, 5, 3, np.float64)
    want = gg.linear_grad(X, y, W, b)[1]  # the parent's pool exists now
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        got = pool.apply_async(_step_dw, (X, y, W, b)).get(timeout=60)
    np.testing.assert_array_equal(got, want)


def _step_dw(X, y, W, b):
    NumpyBackend.blocked_from, NumpyBackend.loss_rows, NumpyBackend.threads = 0, 16, 2
    NumpyBackend.worker_rows, NumpyBackend.plan = 1, (4, False)
    return gg.linear_grad(X, y, W, b)[1]


@pytest.mark.parametrize("layout", ["fortran", "every other column"])
def test_blocked_step_takes_x_in_any_layout(rng, blocked, layout):
    X, y, W, b, _, _ = problem(rng, 40, 24, 3, np.float64)
    if layout == "fortran":
        X = np.asfortranarray(X)
    else:
        X = np.repeat(X, 2, axis=1)[:, ::2]
    assert not X.flags.c_contiguous
    got = blocked(12, 5, 2).linear_grad(X, y, W, b, 0.1, "softmax")
    assert_step_close(got, reference(X, y, W, b, 0.1, "softmax"), np.float64)


def test_a_plan_of_one_range_steps_in_one_range(rng, monkeypatch, blocked):
    """A plan timed best as one range with BLAS's own threads keeps the step to one range."""
    ranges = []
    real = nb._run_side_by_side
    monkeypatch.setattr(nb, "_run_side_by_side", lambda fn, r: ranges.append(r) or real(fn, r))
    be = blocked(16, 8, 4)
    be.plan = (8, False, 1)
    X, y, W, b, _, _ = problem(rng, 64, 5, 3, np.float64)
    assert_step_close(be.linear_grad(X, y, W, b, 0.0, "svm"), reference(X, y, W, b, 0.0, "svm"), np.float64)
    assert ranges == [[(0, 64)]]

"""The numpy linear step against an independent float64 formula, and the checks that look at the
results instead of X (labels always, NaN/Inf in X found through J, dW, db)."""
import numpy as np
import pytest

import gpugrad as gg
from gpugrad.backends.numpy_backend import NumpyBackend

NP = NumpyBackend()


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
@pytest.mark.parametrize("n", [1, 5, 61])
def test_step_matches_the_float64_formulas(rng, loss, dtype, n):
    X, y, W, b, _, _ = problem(rng, n, 33, 4, dtype)
    got = NP.linear_grad(X, y, W, b, 0.05, loss)
    assert_step_close(got, reference(X, y, W, b, 0.05, loss), dtype)


@pytest.mark.parametrize("loss", ["softmax", "svm"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_step_normalises_uint8_pixels(rng, loss, dtype):
    X, y, W, b, mean, std = problem(rng, 61, 27, 5, dtype, pixels=True)
    got = NP.linear_grad(X, y, W, b, 0.01, loss, mean, std)
    assert_step_close(got, reference(X, y, W, b, 0.01, loss, mean, std), dtype)


@pytest.mark.parametrize("loss", ["softmax", "svm"])
def test_step_normalises_float_x(rng, loss):
    X, y, W, b, _, _ = problem(rng, 45, 20, 3)
    mean = rng.standard_normal(20).astype(np.float32)
    std = rng.uniform(0.5, 2, 20).astype(np.float32)
    got = NP.linear_grad(X, y, W, b, 0.0, loss, mean, std)
    assert_step_close(got, reference(X, y, W, b, 0.0, loss, mean, std), np.float32)


@pytest.mark.parametrize("loss", ["softmax", "svm"])
def test_step_weights_rows_by_sample_weight(rng, loss):
    X, y, W, b, mean, std = problem(rng, 70, 16, 4, np.float64, pixels=True)
    w = rng.uniform(0, 3, 70)
    w[::9] = 0  # rows that do not count at all
    got = NP.linear_grad(X, y, W, b, 0.2, loss, mean, std, sample_weight=w)
    assert_step_close(got, reference(X, y, W, b, 0.2, loss, mean, std, w), np.float64)


# ---- checks: labels always, X through the results ----------------------------------------------
@pytest.mark.parametrize("validate", [True, False])
@pytest.mark.parametrize("label", [-1, 4])
def test_labels_out_of_range_are_refused_even_without_validation(rng, validate, label):
    X, y, W, b, _, _ = problem(rng, 30, 8, 4)
    y[11] = label
    with pytest.raises(ValueError, match=rf"label y\[11\] = {label} is outside \[0, 4\)"):
        gg.linear_grad(X, y, W, b, validate=validate)


@pytest.mark.parametrize("loss", ["softmax", "svm"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_in_x_is_found_through_the_results(rng, loss, bad):
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


@pytest.mark.parametrize("layout", ["fortran", "every other column"])
def test_step_takes_x_in_any_layout(rng, layout):
    X, y, W, b, _, _ = problem(rng, 40, 24, 3, np.float64)
    if layout == "fortran":
        X = np.asfortranarray(X)
    else:
        X = np.repeat(X, 2, axis=1)[:, ::2]
    assert not X.flags.c_contiguous
    got = NP.linear_grad(X, y, W, b, 0.1, "softmax")
    assert_step_close(got, reference(X, y, W, b, 0.1, "softmax"), np.float64)



# ---- the product's shape by BLAS threads, and the benchmark against the step by hand -----------

@pytest.mark.parametrize("loss", ["softmax", "svm"])
def test_one_and_two_blas_threads_give_the_same_step(rng, loss):
    """dW is G^T X on one BLAS thread and (X^T G)^T on more (numpy_backend.blas_threads): both
    match the float64 formulas, C-contiguous."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from gpugrad.backends.numpy_backend import blas_threads
    X, y, W, b, _, _ = problem(rng, 300, 70, 5)
    want = reference(X, y, W, b, 0.05, loss)
    for threads in (1, 2):
        with threadpoolctl.threadpool_limits(threads, user_api="blas"):
            assert blas_threads() in (threads, 0)
            assert_step_close(NP.linear_grad(X, y, W, b, 0.05, loss), want, np.float32)


def test_the_numpy_step_benchmark_runs_its_peers_at_a_small_size(capsys):
    """benchmarks/test_numpy_step.py's side-by-side run: by hand, gpugrad and, where PyTorch is
    installed, its CPU eager mode, at a small size (that they compute the same step is its own
    test, run at a small size by tests/test_benchmarks.py)."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "test_numpy_step.py"
    spec = importlib.util.spec_from_file_location("bench_numpy_step", path)  # this file's name too
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.side_by_side(2, one_core=False, n=64, d=32)
    torch = importlib.util.find_spec("torch") is not None
    peers = {"numpy by hand", "gpugrad linear_grad"} | ({"torch cpu eager"} if torch else set())
    assert set(out) == peers and all(t > 0 for t, _ in out.values())
    assert "gpugrad linear_grad" in capsys.readouterr().out

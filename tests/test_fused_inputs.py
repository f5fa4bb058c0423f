"""The fused functions' contract: clear errors for bad input, stability, dtypes, array types."""
import inspect

import numpy as np
import pytest

import deps

import gpugrad as gg
from gpugrad.backends.numpy_backend import NumpyBackend


def _problem(backend, rng, n=6, d=4, C=3, dtype=np.float64):
    xp = backend.xp
    return (xp.asarray(rng.standard_normal((n, d)).astype(dtype)), xp.asarray(rng.integers(0, C, n)),
            xp.asarray(rng.standard_normal((C, d)).astype(dtype)), xp.asarray(rng.standard_normal(C).astype(dtype)))


# ---- bad input: ValueError / TypeError naming the problem ---------------------------------
def test_label_out_of_range_names_first_position_and_value(backend, rng):
    X, y, W, b = _problem(backend, rng)
    y[2], y[4] = 7, -1
    with pytest.raises(ValueError, match=r"label y\[2\] = 7 is outside \[0, 3\)"):
        gg.linear_grad(X, y, W, b)
    with pytest.raises(ValueError, match=r"y\[2\] = 7"):
        gg.softmax_cross_entropy_grad(X @ W.T, y)


def test_non_integer_labels(backend, rng):
    X, y, W, b = _problem(backend, rng)
    with pytest.raises(TypeError, match="labels y must be integers.*float64"):
        gg.linear_grad(X, y.astype(np.float64), W, b)


def test_labels_and_rows_of_different_length(backend, rng):
    X, y, W, b = _problem(backend, rng)
    with pytest.raises(ValueError, match="labels y has 5 entries but there are 6 rows of X"):
        gg.linear_grad(X, y[:5], W, b)


@pytest.mark.parametrize("what,match", [
    ("W_cols", r"W has shape \(3, 5\) but X has shape \(6, 4\)"),
    ("b_len", r"b has shape \(4,\) but W has shape \(3, 4\)"),
    ("X_ndim", r"X must be 2-D \(n, d\).*got shape \(24,\)"),
    ("W_ndim", r"W must be 2-D \(C, d\), got shape \(12,\)"),
    ("b_ndim", r"b must be 1-D \(C,\), got shape \(3, 1\)"),
])
def test_mismatched_shapes_name_the_shapes(backend, rng, what, match):
    xp = backend.xp
    X, y, W, b = _problem(backend, rng)
    if what == "W_cols":
        W = xp.ones((3, 5))
    elif what == "b_len":
        b = xp.ones(4)
    elif what == "X_ndim":
        X = X.ravel()
    elif what == "W_ndim":
        W = W.ravel()
    else:
        b = b.reshape(3, 1)
    with pytest.raises(ValueError, match=match):
        gg.linear_grad(X, y, W, b)


@pytest.mark.parametrize("name", ["X", "W", "b"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_is_refused_and_located(backend, rng, name, bad):
    X, y, W, b = _problem(backend, rng)
    arrays = dict(X=X, W=W, b=b)
    target = arrays[name]
    index = (1, 2) if target.ndim == 2 else (1,)
    target[index] = bad
    kind = "NaN" if np.isnan(bad) else ("inf" if bad > 0 else "-inf")
    where = list(index) if len(index) == 2 else index[0]
    with pytest.raises(ValueError, match=rf"{name} contains {kind} at index {where}".replace("[", r"\[").replace("]", r"\]")):
        gg.linear_grad(X, y, W, b)
    with np.errstate(all="ignore"):
        J, dW, db = gg.linear_grad(X, y, W, b, check_finite=False)  # the caller opted out: no error
    assert dW.shape == W.shape


def test_empty_batch(backend, rng):
    X, y, W, b = _problem(backend, rng)
    with pytest.raises(ValueError, match="empty batch: X has 0 rows"):
        gg.linear_grad(X[:0], y[:0], W, b)
    with pytest.raises(ValueError, match="empty batch"):
        gg.svm_grad(X[:0] @ W.T, y[:0])


@pytest.mark.parametrize("lam", [-0.1, float("nan"), float("inf")])
def test_bad_lambda(backend, rng, lam):
    X, y, W, b = _problem(backend, rng)
    with pytest.raises(ValueError, match="lam must be a finite number >= 0"):
        gg.linear_grad(X, y, W, b, lam=lam)


def test_unknown_loss_name(backend, rng):
    X, y, W, b = _problem(backend, rng)
    with pytest.raises(ValueError, match="unknown loss 'hinge'; expected one of 'softmax', 'svm'"):
        gg.linear_grad(X, y, W, b, loss="hinge")


def test_non_array_input(rng):
    X, y, W, b = _problem(gg.get_backend("numpy"), rng)
    with pytest.raises(TypeError, match="X must be a numpy.ndarray or cupy.ndarray, got list"):
        gg.linear_grad(X.tolist(), y, W, b)
    with pytest.raises(TypeError, match="labels y must be a numpy.ndarray or cupy.ndarray, got list"):
        gg.softmax_cross_entropy_grad(X @ W.T, list(y))


def test_dtype_mismatch_and_uint8_without_normalisation(backend, rng):
    X, y, W, b = _problem(backend, rng)
    with pytest.raises(TypeError, match=r"W \(float32\) and b \(float64\) must have X's dtype \(float64\)"):
        gg.linear_grad(X, y, W.astype(np.float32), b)
    with pytest.raises(TypeError, match="uint8 pixels need x_mean and x_std"):
        gg.linear_grad(X.astype(np.uint8), y, W, b)


def test_zero_std_is_named(backend, rng):
    xp = backend.xp
    X, y, W, b = _problem(backend, rng)
    std = xp.ones(4)
    std[3] = 0
    with pytest.raises(ValueError, match=r"x_std contains 0 at index 3"):
        gg.linear_grad(X, y, W, b, x_mean=xp.zeros(4), x_std=std)


# ---- numerics -------------------------------------------------------------------------------
def _logsumexp_reference(S, y):
    m = S.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(S - m).sum(axis=1, keepdims=True)))[:, 0]
    P = np.exp(S - lse[:, None])
    Y = np.eye(S.shape[1])[y]
    return (lse - S[np.arange(len(y)), y]).mean(), (P - Y) / len(y)


@pytest.mark.parametrize("scale", [1.0, 1e2, 1e4])
def test_cross_entropy_is_stable_for_huge_scores(backend, rng, scale):
    S = rng.standard_normal((50, 7)) * scale
    y = rng.integers(0, 7, 50)
    loss, dS = gg.softmax_cross_entropy_grad(backend.xp.asarray(S), backend.xp.asarray(y))
    ref_loss, ref_dS = _logsumexp_reference(S, y)
    loss, dS = float(loss), backend.to_numpy(dS)
    assert np.isfinite(loss) and np.isfinite(dS).all()
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
    # atol: the reference's p_y - 1 comes from a rounded p_y (off by ~1e-17 where p_y ~ 1)
    np.testing.assert_allclose(dS, ref_dS, rtol=1e-10, atol=1e-14)


def test_target_gradient_survives_p_y_rounding_to_one(backend):
    """p_y - 1 computed from a rounded p_y would be exactly 0 here; the true value is -e^-30/n."""
    S = np.array([[30.0, 0.0]], dtype=np.float32)
    loss, dS = gg.softmax_cross_entropy_grad(backend.xp.asarray(S), backend.xp.asarray([0]))
    dS = backend.to_numpy(dS)
    want = -np.exp(-30.0) / (1 + np.exp(-30.0))
    assert dS[0, 0] != 0
    np.testing.assert_allclose(dS[0, 0], want, rtol=1e-6)
    np.testing.assert_allclose(float(loss), np.log1p(np.exp(-30.0)), rtol=1e-6)


def test_svm_closed_form_on_a_lecture_sized_example(backend):
    S = backend.xp.asarray([[3.2, 5.1, -1.7], [1.3, 4.9, 2.0], [2.2, 2.5, -3.1]])
    y = backend.xp.asarray([0, 1, 2])
    loss, dS = gg.svm_grad(S, y)
    # CS231n's worked example: per-row losses 2.9, 0, 12.9
    np.testing.assert_allclose(float(loss), (2.9 + 0.0 + 12.9) / 3, rtol=1e-12)
    np.testing.assert_allclose(backend.to_numpy(dS), np.array([[-1, 1, 0], [0, 0, 0], [1, 1, -2]]) / 3)


@pytest.mark.parametrize("loss", ["softmax", "svm"])
def test_float32_matches_float64(backend, rng, loss):
    X, y, W, b = _problem(backend, rng, n=40, d=30, C=5)
    J64, dW64, db64 = gg.linear_grad(X, y, W, b, 0.1, loss)
    J32, dW32, db32 = gg.linear_grad(X.astype(np.float32), y, W.astype(np.float32), b.astype(np.float32), 0.1, loss)
    assert dW32.dtype == np.float32 and J32.dtype == np.float32 and J32.shape == ()
    to = backend.to_numpy
    np.testing.assert_allclose(to(dW32), to(dW64), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(to(db32), to(db64), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(J32), float(J64), rtol=1e-5)


def softmax_ce_reference(S, y):
    """(loss, dS) of the mean softmax cross-entropy written out in float64: dS = (P - Y) / n."""
    n, C = S.shape
    P = np.exp(S - np.logaddexp.reduce(S, axis=1, keepdims=True))
    return -np.log(P[np.arange(n), y]).mean(), (P - np.eye(C)[y]) / n


def softmax_linear_reference(X, y, W, b, lam):
    """(J, dW, db) of the softmax linear classifier by the chain rule, in float64 numpy."""
    L, dS = softmax_ce_reference(X @ W.T + b, y)
    return L + lam * (W ** 2).sum(), dS.T @ X + 2 * lam * W, dS.sum(axis=0)


def test_uint8_pixels_with_normalisation_equal_float_normalised(backend, rng):
    xp = backend.xp
    Xu = rng.integers(0, 256, (20, 12), dtype=np.uint8)
    mean, std = Xu.mean(0), Xu.std(0) + 1
    y = rng.integers(0, 4, 20)
    W, b = rng.standard_normal((4, 12)), rng.standard_normal(4)
    got = gg.linear_grad(xp.asarray(Xu), xp.asarray(y), xp.asarray(W), xp.asarray(b), 0.01,
                         x_mean=xp.asarray(mean), x_std=xp.asarray(std))
    want = softmax_linear_reference((Xu - mean) / std, y, W, b, 0.01)
    for g, w in zip(got, want):
        # an entry of dW that is a sum of cancelling terms keeps 1e-12 of the array's scale, not of itself
        np.testing.assert_allclose(backend.to_numpy(g), w, rtol=1e-12, atol=1e-12 * np.abs(w).max())


def test_results_come_back_in_the_callers_array_type(backend, rng):
    X, y, W, b = _problem(backend, rng)
    J, dW, db = gg.linear_grad(X, y, W, b)
    assert type(dW) is type(X) and type(db) is type(X) and type(J) is type(X) and J.shape == ()


def test_int32_and_int64_labels_agree(backend, rng):
    X, y, W, b = _problem(backend, rng)
    a = gg.linear_grad(X, y.astype(np.int32), W, b)[1]
    c = gg.linear_grad(X, y.astype(np.int64), W, b)[1]
    np.testing.assert_array_equal(backend.to_numpy(a), backend.to_numpy(c))


# ---- one interface ----------------------------------------------------------------------------
def test_cupy_backend_overrides_keep_the_reference_signatures():
    """The CuPy backend is a list of overrides: each keeps the numpy backend's signature."""
    deps.require("cupy", "CuPy is needed")
    from gpugrad.backends import cupy_backend  # imports without a GPU
    for name, member in vars(cupy_backend.CupyBackend).items():
        base = getattr(NumpyBackend, name, None)
        if callable(member) and base is not None and not name.startswith("__"):
            assert inspect.signature(member) == inspect.signature(base), name


def test_get_backend_names_and_errors():
    assert gg.get_backend("numpy").name == "numpy"
    assert gg.get_backend("auto").name in ("numpy", "cupy")
    assert gg.why_backend().startswith("auto -> ")
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        gg.get_backend("tpu")
    if not gg.cupy_available():
        with pytest.raises(RuntimeError, match="the cupy backend is not usable"):
            gg.get_backend("cupy")


# ---- out=: dS into the caller's buffer ---------------------------------------------------------
@pytest.mark.parametrize("fn", [gg.softmax_cross_entropy_grad, gg.svm_grad])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_out_receives_ds_and_is_returned(backend, rng, fn, dtype):
    S = backend.xp.asarray((rng.standard_normal((37, 11)) * 3).astype(dtype))
    y = backend.xp.asarray(rng.integers(0, 11, 37))
    loss, dS = fn(S, y)
    out = backend.xp.asarray(np.full((37, 11), np.nan, dtype))  # poisoned: every entry must be written
    loss_out, dS_out = fn(S, y, out=out)
    assert dS_out is out
    np.testing.assert_array_equal(backend.to_numpy(out), backend.to_numpy(dS))
    assert float(loss_out) == float(loss)


def test_out_on_another_backend_than_the_caller_is_filled_in_place(backend, rng):
    """numpy arrays run on the backend asked for; dS still lands in the caller's numpy out."""
    S, y = rng.standard_normal((5, 3)), rng.integers(0, 3, 5)
    out = np.full((5, 3), np.nan)
    loss, dS = gg.softmax_cross_entropy_grad(S, y, out=out, backend=backend)
    assert dS is out and type(loss) is np.ndarray
    np.testing.assert_allclose(out, softmax_ce_reference(S, y)[1], rtol=1e-12, atol=1e-17)


@pytest.mark.parametrize("bad,err,match", [
    (lambda S, xp: xp.empty((7, 3)), ValueError, r"out has shape \(7, 3\), but dS has S's shape \(6, 3\)"),
    (lambda S, xp: xp.empty((6, 3), np.float32), TypeError, "out has dtype float32, but dS has S's dtype float64"),
    (lambda S, xp: xp.empty((3, 6)).T, ValueError, "out must be C-contiguous"),
    (lambda S, xp: S, ValueError, "out overlaps S"),
    (lambda S, xp: [[0.0] * 3] * 6, TypeError, "out must be a numpy.ndarray or cupy.ndarray, got list"),
])
def test_bad_out_is_refused_by_name(backend, rng, bad, err, match):
    X, y, W, b = _problem(backend, rng)
    S = X @ W.T
    with pytest.raises(err, match=match):
        gg.softmax_cross_entropy_grad(S, y, out=bad(S, backend.xp))


def test_out_of_another_array_kind_than_s_is_refused(backend, rng):
    if backend.xp is np:
        pytest.skip("needs a CUDA backend's array kind next to numpy's")
    X, y, W, b = _problem(backend, rng)
    with pytest.raises(TypeError, match="out must be the same kind of array as S"):
        gg.svm_grad(X @ W.T, y, out=np.empty((6, 3)))

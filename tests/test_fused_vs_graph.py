"""The fused mini-batch gradients against the graph path, and the losses' numerics and checks.

Graph path: S = X @ W.T + b, J = loss(S, y) + lam * (W ** 2).sum(), J.backward().
Fused path: ``gg.linear_grad`` (and ``softmax_cross_entropy_grad`` / ``svm_grad`` on S).
"""
import numpy as np
import pytest

import gpugrad as gg

LOSSES = {"softmax": gg.cross_entropy, "svm": gg.svm_loss}


def npy(backend, a):
    return np.asarray(backend.to_numpy(a), dtype=np.float64)


def rel_err(a, b):
    """max |a - b| / max |b|: the error relative to the size of the reference."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def problem(backend, rng, n=20, d=7, C=5, dtype=np.float64):
    """X (n, d), y (n,), W (C, d), b (C,) on the backend, in ``dtype``."""
    xp = backend.xp
    X, W, b = (xp.asarray(rng.standard_normal(s), dtype=dtype) for s in ((n, d), (C, d), (C,)))
    return X, xp.asarray(rng.integers(0, C, n)), W, b


def graph_J(X, y, W, b, lam, loss):
    """J, dJ/dW, dJ/db by the graph: the lecture's computational graph and BackOp."""
    W_t, b_t = gg.tensor(W, requires_grad=True), gg.tensor(b, requires_grad=True)
    J = LOSSES[loss](X @ W_t.T + b_t, y) + lam * (W_t ** 2).sum()
    J.backward()
    return J.value, W_t.grad, b_t.grad


# ---- fused == graph ----------------------------------------------------------------------------

@pytest.mark.parametrize("lam", [0.0, 0.37])
@pytest.mark.parametrize("loss", ["softmax", "svm"])
def test_linear_grad_fused_equals_graph_in_float64(backend, rng, loss, lam):
    X, y, W, b = problem(backend, rng)
    fused = gg.linear_grad(X, y, W, b, lam=lam, loss=loss)
    graph = graph_J(X, y, W, b, lam, loss)
    for name, f, g in zip(("J", "dW", "db"), fused, graph):
        assert rel_err(npy(backend, g), npy(backend, f)) <= 1e-12, name


@pytest.mark.parametrize("loss", ["softmax", "svm"])
def test_fused_score_gradients_equal_graph(backend, rng, loss):
    xp = backend.xp
    S_arr = xp.asarray(rng.standard_normal((12, 6)))
    y = xp.asarray(rng.integers(0, 6, 12))
    fused = {"softmax": gg.softmax_cross_entropy_grad, "svm": gg.svm_grad}[loss]
    L_fused, dS_fused = fused(S_arr, y)
    S = gg.tensor(S_arr, requires_grad=True)
    L = LOSSES[loss](S, y)
    L.backward()
    assert rel_err(npy(backend, L.value), npy(backend, L_fused)) <= 1e-12
    assert rel_err(npy(backend, S.grad), npy(backend, dS_fused)) <= 1e-12


@pytest.mark.parametrize("loss", ["softmax", "svm"])
def test_graph_in_float32_agrees_with_float64(backend, rng, loss):
    X64, y, W64, b64 = problem(backend, rng)
    X32, W32, b32 = (a.astype(np.float32) for a in (X64, W64, b64))
    J32, dW32, db32 = graph_J(X32, y, W32, b32, 0.1, loss)
    J64, dW64, db64 = graph_J(X32.astype(np.float64), y, W32.astype(np.float64),
                              b32.astype(np.float64), 0.1, loss)
    assert J32.dtype == dW32.dtype == db32.dtype == np.float32
    for a32, a64 in ((J32, J64), (dW32, dW64), (db32, db64)):
        assert rel_err(npy(backend, a32), npy(backend, a64)) <= 1e-5


# ---- numerical stability ----------------------------------------------------------------------

def lse_reference(S, y):
    """Loss and gradient of mean softmax cross-entropy in float64 from np.logaddexp.reduce."""
    n, C = S.shape
    lse = np.logaddexp.reduce(S, axis=1)
    loss = np.mean(lse - S[np.arange(n), y])
    return loss, (np.exp(S - lse[:, None]) - np.eye(C)[y]) / n


@pytest.mark.parametrize("scale", [1e2, 1e3, 1e4])
def test_cross_entropy_of_huge_scores_matches_log_sum_exp_reference(backend, rng, scale):
    n, C = 8, 5
    S_np = rng.uniform(-scale, scale, (n, C))
    y_np = rng.integers(0, C, n)
    ref_loss, ref_grad = lse_reference(S_np, y_np)
    for labels in (backend.xp.asarray(y_np), backend.xp.asarray(np.eye(C)[y_np])):
        S = gg.tensor(backend.xp.asarray(S_np), requires_grad=True)
        J = gg.cross_entropy(S, labels)
        J.backward()
        assert np.isfinite(npy(backend, J.value)) and np.isfinite(npy(backend, S.grad)).all()
        assert rel_err(npy(backend, J.value), ref_loss) <= 1e-12
        # The reference's own error: logsumexp of scores of size `scale` is rounded to about
        # scale * eps, and exp(S - lse) - 1 keeps that absolute error where p_y is near 1 (the
        # fused rule forms p_y - 1 = -others / total exactly and is far more accurate there).
        np.testing.assert_allclose(npy(backend, S.grad), ref_grad, rtol=1e-12,
                                   atol=scale * np.finfo(np.float64).eps)


def test_softmax_of_huge_scores_is_finite_and_matches_reference(backend, rng):
    S_np = rng.uniform(-1e4, 1e4, (6, 4))
    p = npy(backend, gg.softmax(gg.tensor(backend.xp.asarray(S_np))).value)
    ref = np.exp(S_np - np.logaddexp.reduce(S_np, axis=1, keepdims=True))
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p, ref, rtol=1e-12, atol=1e-300)


def test_float32_huge_scores_give_a_finite_loss_and_gradient(backend, rng):
    S_np = rng.uniform(-1e4, 1e4, (8, 5)).astype(np.float32)
    y_np = rng.integers(0, 5, 8)
    S = gg.tensor(backend.xp.asarray(S_np), requires_grad=True)
    J = gg.cross_entropy(S, backend.xp.asarray(y_np))
    J.backward()
    ref_loss, ref_grad = lse_reference(S_np.astype(np.float64), y_np)
    assert np.isfinite(npy(backend, S.grad)).all()
    assert rel_err(npy(backend, J.value), ref_loss) <= 1e-5
    np.testing.assert_allclose(npy(backend, S.grad), ref_grad, atol=1e-6)


# ---- label forms -------------------------------------------------------------------------------

def test_cross_entropy_with_one_hot_rows_equals_integer_labels(backend, rng):
    n, C = 9, 4
    S_np, y_np = rng.standard_normal((n, C)), rng.integers(0, C, n)
    results = []
    for labels in (backend.xp.asarray(y_np), np.eye(C)[y_np]):  # numpy rows on any backend
        S = gg.tensor(backend.xp.asarray(S_np), requires_grad=True)
        J = gg.cross_entropy(S, labels)
        J.backward()
        results.append((npy(backend, J.value), npy(backend, S.grad)))
    (J_int, g_int), (J_hot, g_hot) = results
    assert rel_err(J_hot, J_int) <= 1e-13
    assert rel_err(g_hot, g_int) <= 1e-13


def test_cross_entropy_with_probability_rows_matches_the_definition(backend, rng):
    """J = (1/n) sum_ij -Y_ij log p_ij and dJ/dS = (P - Y) / n for rows summing to 1."""
    n, C = 6, 3
    S_np = rng.standard_normal((n, C))
    Y = rng.uniform(0.1, 1.0, (n, C))
    Y /= Y.sum(axis=1, keepdims=True)
    P = np.exp(S_np - np.logaddexp.reduce(S_np, axis=1, keepdims=True))
    S = gg.tensor(backend.xp.asarray(S_np), requires_grad=True)
    J = gg.cross_entropy(S, backend.xp.asarray(Y))
    J.backward()
    assert rel_err(npy(backend, J.value), -(Y * np.log(P)).sum() / n) <= 1e-13
    assert rel_err(npy(backend, S.grad), (P - Y) / n) <= 1e-13


def test_one_score_vector_is_a_batch_of_one(backend, rng):
    s_np = rng.standard_normal(5)
    for loss, fused in ((gg.cross_entropy, gg.softmax_cross_entropy_grad),
                        (gg.svm_loss, gg.svm_grad)):
        s = gg.tensor(backend.xp.asarray(s_np), requires_grad=True)
        J = loss(s, 2)
        J.backward()
        L_ref, dS_ref = fused(backend.xp.asarray(s_np[None, :]), backend.xp.asarray([2]))
        assert J.shape == () and s.grad.shape == (5,)
        assert rel_err(npy(backend, J.value), npy(backend, L_ref)) <= 1e-15
        assert rel_err(npy(backend, s.grad), npy(backend, dS_ref)[0]) <= 1e-15


# ---- bad inputs ---------------------------------------------------------------------------------

def bad_input_cases(xp):
    S = xp.zeros((3, 4))
    y = xp.asarray([0, 1, 2])
    return [
        ("label out of range", gg.cross_entropy, (S, xp.asarray([0, 1, 7])), ValueError,
         r"y\[2\] = 7 is outside \[0, 4\)"),
        ("negative label", gg.svm_loss, (S, xp.asarray([-1, 1, 2])), ValueError, r"y\[0\] = -1"),
        ("labels as a list", gg.cross_entropy, (S, [0, 1, 2]), TypeError, "list"),
        ("too few labels", gg.svm_loss, (S, xp.asarray([0, 1])), ValueError, "2 entries"),
        ("2-D integer labels", gg.cross_entropy, (S, xp.zeros((3, 4), dtype=np.int64)),
         ValueError, "1-D"),
        ("rows of the wrong shape", gg.cross_entropy, (S, xp.zeros((3, 5))), ValueError,
         r"\(3, 4\).*\(3, 5\)"),
        ("negative probabilities", gg.cross_entropy, (S, -xp.ones((3, 4))), ValueError, ">= 0"),
        ("float labels for the svm", gg.svm_loss, (S, xp.zeros((3, 4))), TypeError, "integer"),
        ("integer scores", gg.cross_entropy, (xp.zeros((3, 4), dtype=np.int64), y), TypeError,
         "float32 or float64"),
        ("3-D scores", gg.svm_loss, (xp.zeros((2, 3, 4)), y), ValueError, r"\(n, C\)"),
        ("vector scores, vector labels", gg.cross_entropy, (xp.zeros(4), y), ValueError,
         "scalar class index"),
        ("empty batch", gg.cross_entropy, (xp.zeros((0, 4)), xp.asarray([], dtype=np.int64)),
         ValueError, "empty"),
        ("labels requiring grad", gg.cross_entropy,
         (S, gg.tensor(xp.zeros((3, 4)), requires_grad=True)), TypeError, "require grad"),
        ("scores of junk", gg.svm_loss, ("scores", y), TypeError, "str"),
    ]


@pytest.mark.parametrize("case", [c[0] for c in bad_input_cases(np)])
def test_bad_loss_inputs_raise_errors_naming_the_problem(backend, case):
    _, loss, args, error, match = next(c for c in bad_input_cases(backend.xp) if c[0] == case)
    with pytest.raises(error, match=match):
        loss(*args)

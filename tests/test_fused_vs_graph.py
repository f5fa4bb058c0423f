"""The fused mini-batch gradients and the graph path, each against the lecture's formulas written
out here, and the losses' numerics and checks.

Graph path: S = X @ W.T + b, J = loss(S, y) + lam * (W ** 2).sum(), J.backward().
Fused path: ``gg.linear_grad`` (and ``softmax_cross_entropy_grad`` / ``svm_grad`` on S).
The graph's losses take dS from the fused functions, so comparing the two paths with each other
cannot catch a wrong dS: both are compared with ``reference`` instead, in float64 numpy.
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


def reference_dS(S, y, loss):
    """(loss, dS) of a score matrix by the lecture's formulas, in float64 numpy: softmax
    cross-entropy: L = -(1/n) sum_i log p_i,y_i, dS = (P - Y) / n; multi-class SVM: m_ij =
    max(0, s_ij - s_iy_i + 1) for j != y_i, L = (1/n) sum m_ij, dS_ij = [m_ij > 0] / n and
    dS_iy_i = -(number of j with m_ij > 0) / n."""
    S = np.asarray(S, dtype=np.float64)
    n, C = S.shape
    rows = np.arange(n)
    Y = np.eye(C)[y]
    if loss == "softmax":
        E = np.exp(S - S.max(axis=1, keepdims=True))
        P = E / E.sum(axis=1, keepdims=True)
        return -np.log(P[rows, y]).mean(), (P - Y) / n
    M = np.maximum(0.0, S - S[rows, y][:, None] + 1)
    M[rows, y] = 0
    active = (M > 0).astype(np.float64)
    return M.sum() / n, (active - Y * active.sum(axis=1, keepdims=True)) / n


def reference(X, y, W, b, lam, loss):
    """(J, dJ/dW, dJ/db) of J = L(X W^T + b, y) + lam ||W||^2 by the chain rule written out:
    dW = dS^T X + 2 lam W, db = sum of dS over rows (float64 numpy)."""
    X, W, b = (np.asarray(a, dtype=np.float64) for a in (X, W, b))
    L, dS = reference_dS(X @ W.T + b, np.asarray(y), loss)
    return L + lam * (W ** 2).sum(), dS.T @ X + 2 * lam * W, dS.sum(axis=0)


def graph_J(X, y, W, b, lam, loss):
    """J, dJ/dW, dJ/db by the graph: the lecture's computational graph and BackOp."""
    W_t, b_t = gg.tensor(W, requires_grad=True), gg.tensor(b, requires_grad=True)
    J = LOSSES[loss](X @ W_t.T + b_t, y) + lam * (W_t ** 2).sum()
    J.backward()
    return J.value, W_t.grad, b_t.grad


# ---- fused and graph, each against the formulas ------------------------------------------------

@pytest.mark.parametrize("lam", [0.0, 0.37])
@pytest.mark.parametrize("loss", ["softmax", "svm"])
def test_linear_grad_fused_and_graph_equal_the_formulas_in_float64(backend, rng, loss, lam):
    X, y, W, b = problem(backend, rng)
    want = reference(npy(backend, X), backend.to_numpy(y), npy(backend, W), npy(backend, b), lam, loss)
    fused = gg.linear_grad(X, y, W, b, lam=lam, loss=loss)
    graph = graph_J(X, y, W, b, lam, loss)
    for name, f, g, r in zip(("J", "dW", "db"), fused, graph, want):
        assert rel_err(npy(backend, f), r) <= 1e-12, f"fused {name}"
        assert rel_err(npy(backend, g), r) <= 1e-12, f"graph {name}"


@pytest.mark.parametrize("loss", ["softmax", "svm"])
def test_fused_and_graph_score_gradients_equal_the_formulas(backend, rng, loss):
    xp = backend.xp
    S_np, y_np = rng.standard_normal((12, 6)), rng.integers(0, 6, 12)
    L_ref, dS_ref = reference_dS(S_np, y_np, loss)
    fused = {"softmax": gg.softmax_cross_entropy_grad, "svm": gg.svm_grad}[loss]
    L_fused, dS_fused = fused(xp.asarray(S_np), xp.asarray(y_np))
    S = gg.tensor(xp.asarray(S_np), requires_grad=True)
    L = LOSSES[loss](S, xp.asarray(y_np))
    L.backward()
    for what, value, grad in (("fused", L_fused, dS_fused), ("graph", L.value, S.grad)):
        assert rel_err(npy(backend, value), L_ref) <= 1e-12, what
        assert rel_err(npy(backend, grad), dS_ref) <= 1e-12, what


def test_the_formulas_are_the_derivatives_of_the_losses(rng):
    """The reference itself, against central differences in float64: the tests above compare
    with a dS that is the derivative, not merely one written the same way as the code."""
    S, y = rng.standard_normal((5, 4)), rng.integers(0, 4, 5)
    h = 1e-6
    for loss in ("softmax", "svm"):
        _, dS = reference_dS(S, y, loss)
        num = np.zeros_like(S)
        for i, j in np.ndindex(S.shape):
            E = np.zeros_like(S)
            E[i, j] = h
            num[i, j] = (reference_dS(S + E, y, loss)[0] - reference_dS(S - E, y, loss)[0]) / (2 * h)
        np.testing.assert_allclose(dS, num, rtol=1e-6, atol=1e-9, err_msg=loss)


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
    L_ref, dS_ref = reference_dS(S_np, y_np, "softmax")
    for J, g in results:  # integer labels and one-hot rows: both the formula's values
        assert rel_err(J, L_ref) <= 1e-13
        assert rel_err(g, dS_ref) <= 1e-13


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
    for loss, name in ((gg.cross_entropy, "softmax"), (gg.svm_loss, "svm")):
        s = gg.tensor(backend.xp.asarray(s_np), requires_grad=True)
        J = loss(s, 2)
        J.backward()
        L_ref, dS_ref = reference_dS(s_np[None, :], np.array([2]), name)
        assert J.shape == () and s.grad.shape == (5,)
        assert rel_err(npy(backend, J.value), L_ref) <= 1e-15
        assert rel_err(npy(backend, s.grad), dS_ref[0]) <= 1e-15


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

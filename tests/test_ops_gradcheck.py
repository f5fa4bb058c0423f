"""Every op's VJP against central differences (``gg.gradcheck``), in float64.

Each op's output is reduced to a scalar with random weights R, J = sum(op(inputs) * R), so the
upstream gradient reaching the op's rule is R (not all ones) and every entry is exercised.

The bound is a relative error of 1e-7 per entry. Central differences in float64 carry an
absolute error of about 1e-10 (round-off ~1e-16 |f| / h plus truncation ~h^2 |f'''|, balanced
by the step H = 1e-5), so an entry's relative error measures the rule only where |g| is well
above that: inputs are redrawn until every gradient entry is at least G_MIN = 3e-3 in
magnitude. Where a test says zeros are structural (an entry behind a dead relu, not indexed, or
in an inactive hinge term: f does not change at all, so both sides are exactly 0), exact zeros
are allowed too; elsewhere an exact 0 is a cancellation (e.g. +1/n - 1/n in an SVM bias
gradient) that the numerical side sees as round-off, and is redrawn. It is the same idea as
keeping the SVM away from its kinks.
"""
import numpy as np
import pytest

import gpugrad as gg

TOL = 1e-7
H = 1e-5
G_MIN = 3e-3


def well_conditioned(f, inputs, zeros_ok):
    """Every gradient entry of f at ``inputs`` is at least G_MIN in magnitude (or exactly 0,
    when ``zeros_ok``)."""
    ts = [gg.tensor(x, requires_grad=True) for x in inputs]
    f(*ts).backward()
    return all(bool(((abs(t.grad) >= G_MIN) | ((t.grad == 0) & zeros_ok)).all()) for t in ts)


def gradcheck_errors(rng, make, zeros_ok=False):
    """``gg.gradcheck`` of the (f, inputs) drawn by ``make(rng)``, redrawing ill-conditioned
    draws (see the module docstring)."""
    for _ in range(100):
        f, inputs = make(rng)
        if well_conditioned(f, inputs, zeros_ok):
            return gg.gradcheck(f, inputs, h=H)
    pytest.fail("no draw with all gradient entries >= G_MIN in 100 tries")


def draw(rng, shape, kind):
    """Inputs away from the places where an op is not smooth or not defined."""
    if kind == "positive":          # log, division, the base of a power
        return rng.uniform(0.5, 2.0, shape)
    x = rng.standard_normal(shape)
    if kind == "away_from_0":       # relu's kink
        x[np.abs(x) < 1e-3] = 0.5
    return x


# name, input shapes, how to draw them, the op
OPS = [
    ("add_broadcast", [(3, 4), (4,)], "normal", lambda a, b: a + b),
    ("add_python_constant", [(3, 4)], "normal", lambda a: 2.5 + a),
    ("sub_broadcast", [(3, 4), (3, 1)], "normal", lambda a, b: a - b),
    ("rsub", [(3,)], "normal", lambda a: 1 - a),
    ("mul_broadcast", [(2, 3, 4), (3, 1)], "normal", lambda a, b: a * b),
    ("mul_self", [(3, 4)], "normal", lambda a: a * a),
    ("div_broadcast", [(3, 4), (4,)], "positive", lambda a, b: a / b),
    ("rdiv", [(3,)], "positive", lambda a: 2 / a),
    ("pow_constant_exponent", [(3, 4)], "positive", lambda a: a ** 3),
    ("pow_both", [(3, 4), (4,)], "positive", lambda a, b: a ** b),
    ("rpow", [(3,)], "normal", lambda a: 2 ** a),
    ("neg", [(3, 2)], "normal", lambda a: -a),
    ("matmul_matrix_matrix", [(3, 4), (4, 2)], "normal", lambda a, b: a @ b),
    ("matmul_vector_matrix", [(4,), (4, 2)], "normal", lambda a, b: a @ b),
    ("matmul_matrix_vector", [(3, 4), (4,)], "normal", lambda a, b: a @ b),
    ("matmul_vector_vector", [(4,), (4,)], "normal", lambda a, b: a @ b),
    ("matmul_X_W_transpose_plus_b", [(5, 4), (3, 4), (3,)], "normal",
     lambda X, W, b: X @ W.T + b),
    ("exp", [(3, 4)], "normal", gg.exp),
    ("log", [(3, 4)], "positive", gg.log),
    ("relu", [(4, 5)], "away_from_0", gg.relu),
    ("softmax_rows", [(3, 5)], "normal", gg.softmax),
    ("softmax_axis0", [(3, 5)], "normal", lambda s: gg.softmax(s, axis=0)),
    ("softmax_vector", [(5,)], "normal", gg.softmax),
    ("sum_all", [(3, 4)], "normal", lambda a: a.sum()),
    ("sum_axis0", [(3, 4)], "normal", lambda a: a.sum(axis=0)),
    ("sum_last_axis_keepdims", [(3, 4)], "normal", lambda a: a.sum(axis=-1, keepdims=True)),
    ("sum_axes_tuple", [(2, 3, 4)], "normal", lambda a: a.sum(axis=(0, 2))),
    ("mean_all", [(3, 4)], "normal", lambda a: a.mean()),
    ("mean_axis1", [(3, 4)], "normal", lambda a: a.mean(axis=1)),
    ("transpose", [(3, 4)], "normal", lambda a: a.T),
    ("reshape", [(3, 4)], "normal", lambda a: a.reshape(6, 2)),
    ("getitem_slices", [(3, 4)], "normal", lambda a: a[1:, ::2]),
    ("getitem_int", [(3, 4)], "normal", lambda a: a[2]),
    ("getitem_newaxis", [(3, 4)], "normal", lambda a: a[None, :, 1]),
    ("getitem_repeated_int_array", [(3, 4)], "normal", lambda a: a[[0, 2, 0]]),
    ("getitem_rows_and_columns", [(3, 4)], "normal",
     lambda a: a[np.array([0, 1, 2, 1]), np.array([3, 0, 3, 3])]),
    # Training mode, through the batch mean and variance; inference mode is in test_batch_norm.py.
    ("batch_norm_training", [(5, 3), (3,), (3,)], "normal", gg.ops.batch_norm),
    ("linear_layer", [(5, 4), (3, 4), (3,)], "normal", gg.linear),
]


@pytest.mark.parametrize("name, shapes, kind, op", OPS, ids=[c[0] for c in OPS])
def test_op_vjp_matches_central_differences(backend, rng, name, shapes, kind, op):
    xp = backend.xp

    def make(rng):
        inputs = [xp.asarray(draw(rng, s, kind)) for s in shapes]
        with gg.no_grad():
            out_shape = op(*map(gg.tensor, inputs)).shape
        R = xp.asarray(rng.standard_normal(out_shape))
        return (lambda *ts: (op(*ts) * R).sum()), inputs

    # Entries behind a dead relu or not indexed: no output depends on them.
    errors = gradcheck_errors(rng, make, zeros_ok=name.startswith(("relu", "getitem")))
    assert len(errors) == len(shapes)
    assert max(errors) <= TOL, f"{name}: relative errors {errors}"


# ---- the losses ------------------------------------------------------------------------------

def hinge_margins(S, y):
    """s_j - s_y + 1 for j != y (numpy, (n, C)); 1 at j = y so it never counts as a kink."""
    rows = np.arange(S.shape[0])
    margins = S - S[rows, y][:, None] + 1
    margins[rows, y] = 1.0
    return margins


def svm_scores_away_from_kinks(rng, n, C, y):
    """Scores whose margins are all at least 1e-3 away from 0, so a finite-difference step
    never crosses a kink of the hinge."""
    while True:
        S = rng.standard_normal((n, C))
        if np.abs(hinge_margins(S, y)).min() > 1e-3:
            return S


def probability_rows(rng, n, C):
    P = rng.uniform(0.1, 1.0, (n, C))
    return P / P.sum(axis=1, keepdims=True)


def test_cross_entropy_with_class_indices(backend, rng):
    xp = backend.xp

    def make(rng):
        y = xp.asarray(rng.integers(0, 4, 6))
        return (lambda s: gg.cross_entropy(s, y)), [xp.asarray(rng.standard_normal((6, 4)))]

    assert max(gradcheck_errors(rng, make)) <= TOL


def test_cross_entropy_with_probability_rows(backend, rng):
    xp = backend.xp

    def make(rng):
        Y = xp.asarray(probability_rows(rng, 6, 4))
        return (lambda s: gg.cross_entropy(s, Y)), [xp.asarray(rng.standard_normal((6, 4)))]

    assert max(gradcheck_errors(rng, make)) <= TOL


def test_cross_entropy_with_unnormalised_weight_rows(backend, rng):
    """Rows not summing to 1 use the general fused rule dS = (P rowsum(Y) - Y) / n."""
    xp = backend.xp

    def make(rng):
        Y = xp.asarray(rng.uniform(0.0, 2.0, (5, 3)))
        return (lambda s: gg.cross_entropy(s, Y)), [xp.asarray(rng.standard_normal((5, 3)))]

    assert max(gradcheck_errors(rng, make)) <= TOL


def test_cross_entropy_of_one_score_vector(backend, rng):
    xp = backend.xp

    def make_index(rng):
        return (lambda t: gg.cross_entropy(t, 3)), [xp.asarray(rng.standard_normal(5))]

    def make_row(rng):
        p = xp.asarray(probability_rows(rng, 1, 5)[0])
        return (lambda t: gg.cross_entropy(t, p)), [xp.asarray(rng.standard_normal(5))]

    assert max(gradcheck_errors(rng, make_index)) <= TOL
    assert max(gradcheck_errors(rng, make_row)) <= TOL


def test_svm_loss_away_from_its_kinks(backend, rng):
    xp = backend.xp

    def make(rng):
        y = rng.integers(0, 5, 6)
        S = svm_scores_away_from_kinks(rng, 6, 5, y)
        return (lambda s: gg.svm_loss(s, xp.asarray(y))), [xp.asarray(S)]

    assert max(gradcheck_errors(rng, make, zeros_ok=True)) <= TOL  # inactive hinge terms


def test_svm_loss_of_one_score_vector(backend, rng):
    xp = backend.xp

    def make(rng):
        s = svm_scores_away_from_kinks(rng, 1, 5, np.array([2]))[0]
        return (lambda t: gg.svm_loss(t, 2)), [xp.asarray(s)]

    assert max(gradcheck_errors(rng, make, zeros_ok=True)) <= TOL  # inactive hinge terms


@pytest.mark.parametrize("loss", [gg.cross_entropy, gg.svm_loss], ids=["softmax", "svm"])
def test_linear_classifier_cost_J_with_regularisation(backend, rng, loss):
    """The lecture's J = (1/n) sum_i l(W x_i + b, y_i) + lam ||W||^2; gradients for X, W, b."""
    n, d, C, lam = 5, 4, 3, 0.2
    xp = backend.xp

    def make(rng):
        while True:
            y = rng.integers(0, C, n)
            X, W, b = (rng.standard_normal(s) for s in ((n, d), (C, d), (C,)))
            if loss is gg.cross_entropy or np.abs(hinge_margins(X @ W.T + b, y)).min() > 1e-3:
                break
        y = xp.asarray(y)
        J = lambda X, W, b: loss(X @ W.T + b, y) + lam * (W ** 2).sum()  # noqa: E731
        return J, [xp.asarray(a) for a in (X, W, b)]

    errors = gradcheck_errors(rng, make)
    assert max(errors) <= TOL, errors


def test_two_layer_network_through_relu(backend, rng):
    """Ops composed: relu(X W1^T + b1) W2^T + b2, then cross-entropy."""
    n, d, m, C = 4, 3, 5, 3
    xp = backend.xp

    def make(rng):
        while True:
            X, W1, b1, W2, b2 = (rng.standard_normal(s)
                                 for s in ((n, d), (m, d), (m,), (C, m), (C,)))
            if np.abs(X @ W1.T + b1).min() > 1e-3:  # no hidden unit at relu's kink
                break
        X, y = xp.asarray(X), xp.asarray(rng.integers(0, C, n))

        def J(W1, b1, W2, b2):
            return gg.cross_entropy(gg.relu(X @ W1.T + b1) @ W2.T + b2, y)
        return J, [xp.asarray(a) for a in (W1, b1, W2, b2)]

    assert max(gradcheck_errors(rng, make, zeros_ok=True)) <= TOL  # dead hidden units


# ---- gradcheck itself -------------------------------------------------------------------------

def test_gradcheck_reports_a_wrong_rule(monkeypatch):
    """The check can fail: a deliberately wrong exp rule is caught."""
    from gpugrad.engine import graph
    monkeypatch.setitem(graph.VJPS, "exp", (lambda g, ans, a: 2 * g * ans,))
    errors = gg.gradcheck(lambda a: gg.exp(a).sum(), [np.zeros(3)])
    assert errors[0] > 0.3


def test_gradcheck_casts_float32_inputs_to_float64(backend):
    x = backend.xp.ones(3, dtype=np.float32)
    seen = []
    gg.gradcheck(lambda t: seen.append(t.dtype) or (t * t * t).sum(), [x])
    assert set(seen) == {np.dtype(np.float64)}
    assert x.dtype == np.float32  # the caller's array is left alone


def test_gradcheck_default_step_on_a_smooth_function(backend):
    """The documented default h = 1e-6 is accurate where gradients are O(1)."""
    x = backend.xp.asarray([0.5, 1.0, 1.5])
    assert max(gg.gradcheck(lambda t: (gg.exp(t) * t).sum(), [x])) <= TOL


def test_linear_is_x_w_transpose_plus_b_on_the_graph(backend, rng):
    """The fused layer op gives the value and gradients of its composite spelling X @ W.T + b."""
    xp = backend.xp
    X, W, b, G = (xp.asarray(rng.standard_normal(s)) for s in ((6, 4), (3, 4), (3,), (6, 3)))
    fused = [gg.tensor(a, requires_grad=True) for a in (X, W, b)]
    plain = [gg.tensor(a, requires_grad=True) for a in (X, W, b)]
    S1 = gg.linear(*fused)
    S2 = plain[0] @ plain[1].T + plain[2]
    np.testing.assert_allclose(backend.to_numpy(S1.value), backend.to_numpy(S2.value), rtol=1e-14)
    S1.backward(G)
    S2.backward(G)
    for f, p in zip(fused, plain):
        np.testing.assert_allclose(backend.to_numpy(f.grad), backend.to_numpy(p.grad), rtol=1e-13, atol=1e-15)
    with pytest.raises(ValueError, match=r"linear: x must be \(n, d\), W \(C, d\)"):
        gg.linear(X, W.T, b)

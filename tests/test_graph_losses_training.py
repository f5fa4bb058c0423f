"""The graph's losses in a training loop: ``validate=False`` and the loss-only path of ``no_grad()``.

Inside ``no_grad()`` (and for scores that do not require grad) ``cross_entropy`` and ``svm_loss``
compute the loss alone, from the backend's ``row_losses``; these tests prove that no dS is
formed there and that the value is the one the differentiating path gives. ``validate=False``
skips the label-value check (on CuPy a device-to-host read every step) but keeps the checks of
shapes and dtypes.
"""
import numpy as np
import pytest

import gpugrad as gg
from gpugrad.engine import ops


def npy(backend, a):
    return np.asarray(backend.to_numpy(a))


def rel_err(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(a) + np.abs(b), 1e-300)))


def lse_cross_entropy(S, Y):
    """(1/n) sum_ij Y_ij (logsumexp(S_i) - S_ij) in float64 from np.logaddexp.reduce."""
    lse = np.logaddexp.reduce(S, axis=1, keepdims=True)
    return float((Y * (lse - S)).sum() / S.shape[0])


def hinge(S, y):
    """(1/n) sum_i sum_{j != y_i} max(0, S_ij - S_i,y_i + 1) in float64."""
    rows = np.arange(S.shape[0])
    margins = np.maximum(S - S[rows, y][:, None] + 1, 0)
    margins[rows, y] = 0
    return float(margins.sum() / S.shape[0])


def cases(rng, n=6, C=4):
    """(name, loss function, scores, labels as numpy, the float64 reference value)."""
    S = rng.standard_normal((n, C))
    y = rng.integers(0, C, n)
    P = rng.uniform(0.1, 1.0, (n, C))
    P /= P.sum(axis=1, keepdims=True)
    return [
        ("cross_entropy, class indices", gg.cross_entropy, S, y, lse_cross_entropy(S, np.eye(C)[y])),
        ("cross_entropy, probability rows", gg.cross_entropy, S, P, lse_cross_entropy(S, P)),
        ("svm_loss", gg.svm_loss, S, y, hinge(S, y)),
    ]


# ---- no_grad: the loss alone ----------------------------------------------------------------

@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-13), (np.float32, 1e-6)])
def test_loss_values_are_equal_with_and_without_no_grad(backend, rng, dtype, tol):
    xp = backend.xp
    for name, loss, S_np, labels, ref in cases(rng):
        S = gg.tensor(xp.asarray(S_np, dtype=dtype), requires_grad=True)
        y = xp.asarray(labels, dtype=dtype) if labels.dtype.kind == "f" else xp.asarray(labels)
        J = loss(S, y)
        with gg.no_grad():
            J_eval = loss(S, y)
        assert J.requires_grad and not J_eval.requires_grad
        assert J_eval.dtype == J.dtype == dtype and J_eval.shape == ()
        assert rel_err(npy(backend, J_eval.value), npy(backend, J.value)) <= tol, name
        assert rel_err(npy(backend, J_eval.value), ref) <= tol, name


def _refuse(*args, **kwargs):
    raise AssertionError("dS was computed for a loss that is not differentiated")


def test_no_grad_computes_the_loss_without_any_dS(backend, rng, monkeypatch):
    xp = backend.xp
    monkeypatch.setattr(backend, "softmax_cross_entropy_grad", _refuse)
    monkeypatch.setattr(backend, "svm_grad", _refuse)
    soft = ops._soft_cross_entropy

    def soft_loss_only(S, Y, grad=True):
        assert not grad, "dS was computed for probability rows that are not differentiated"
        return soft(S, Y, grad)

    monkeypatch.setattr(ops, "_soft_cross_entropy", soft_loss_only)
    for name, loss, S_np, labels, ref in cases(rng):
        S = gg.tensor(xp.asarray(S_np), requires_grad=True)
        with gg.no_grad():
            J = loss(S, xp.asarray(labels))
        assert J._params == {} and J._children == ()  # a constant: nothing to differentiate
        assert rel_err(npy(backend, J.value), ref) <= 1e-13, name
        # Scores that do not require grad: the result is a constant too, so no dS either.
        assert rel_err(npy(backend, loss(xp.asarray(S_np), xp.asarray(labels)).value), ref) <= 1e-13


def reference_grad(loss, S, labels):
    """dJ/dS of the cases' losses, written out in float64: cross-entropy (P - Y) / n, Y the one-hot
    rows of class indices or the probability rows themselves; the hinge: [m_ij > 0] / n for
    j != y_i, and minus their count / n at j = y_i (m_ij = s_ij - s_iy_i + 1)."""
    n, C = S.shape
    rows = np.arange(n)
    if loss is gg.svm_loss:
        active = (S - S[rows, labels][:, None] + 1 > 0).astype(np.float64)
        active[rows, labels] = 0
        active[rows, labels] = -active.sum(axis=1)
        return active / n
    Y = labels if labels.dtype.kind == "f" else np.eye(C)[labels]
    P = np.exp(S - np.logaddexp.reduce(S, axis=1, keepdims=True))
    return (P - Y) / n


def test_the_differentiated_loss_gives_the_formulas_gradient(backend, rng):
    """The dS kept for the backward pass and the gradient that reaches S: the formula's."""
    xp = backend.xp
    for name, loss, S_np, labels, ref in cases(rng):
        S = gg.tensor(xp.asarray(S_np), requires_grad=True)
        J = loss(S, xp.asarray(labels))
        assert J._params["dS"].shape == S.shape, name
        J.backward()
        assert rel_err(npy(backend, S.grad), reference_grad(loss, S_np, labels)) <= 1e-12, name


# ---- validate=False ------------------------------------------------------------------------

def test_validate_false_gives_the_same_value_and_gradient(backend, rng):
    xp = backend.xp
    for name, loss, S_np, labels, ref in cases(rng):
        results = []
        for validate in (True, False):
            S = gg.tensor(xp.asarray(S_np), requires_grad=True)
            J = loss(S, xp.asarray(labels), validate=validate)
            J.backward()
            results.append((npy(backend, J.value), npy(backend, S.grad)))
        (J1, g1), (J2, g2) = results
        np.testing.assert_array_equal(J2, J1, err_msg=name)
        np.testing.assert_array_equal(g2, g1, err_msg=name)
        assert rel_err(J2, ref) <= 1e-13, name
        assert rel_err(g2, reference_grad(loss, S_np, labels)) <= 1e-12, name


def test_validate_false_makes_no_first_invalid_call(backend, rng, monkeypatch):
    xp = backend.xp

    def no_read_back(*args, **kwargs):
        raise AssertionError("first_invalid was called")

    monkeypatch.setattr(backend, "first_invalid", no_read_back)
    S_np, y_np = rng.standard_normal((5, 3)), rng.integers(0, 3, 5)
    for loss, ref in ((gg.cross_entropy, lse_cross_entropy(S_np, np.eye(3)[y_np])),
                      (gg.svm_loss, hinge(S_np, y_np))):
        for grad_enabled in (True, False):
            S = gg.tensor(xp.asarray(S_np), requires_grad=True)
            if grad_enabled:
                J = loss(S, xp.asarray(y_np), validate=False)
            else:
                with gg.no_grad():
                    J = loss(S, xp.asarray(y_np), validate=False)
            assert rel_err(npy(backend, J.value), ref) <= 1e-13
        # The patch is in the path validate=True takes: the check above proves something.
        with pytest.raises(AssertionError, match="first_invalid was called"):
            loss(S, xp.asarray(y_np))


def test_validate_false_skips_the_sign_check_of_probability_rows(backend, rng):
    """Negative weights are a value check too: with validate=False the formula is evaluated."""
    xp = backend.xp
    S_np, Y = rng.standard_normal((4, 3)), rng.uniform(-1.0, 1.0, (4, 3))
    Y[0, 0] = -0.5
    with pytest.raises(ValueError, match=">= 0"):
        gg.cross_entropy(xp.asarray(S_np), xp.asarray(Y))
    J = gg.cross_entropy(xp.asarray(S_np), xp.asarray(Y), validate=False)
    assert rel_err(npy(backend, J.value), lse_cross_entropy(S_np, Y)) <= 1e-12


@pytest.mark.parametrize("loss", [gg.cross_entropy, gg.svm_loss])
@pytest.mark.parametrize("bad", [7, -1])
def test_validate_true_still_names_a_bad_label(backend, loss, bad):
    xp = backend.xp
    S, y = xp.zeros((3, 4)), xp.asarray([0, 1, bad])
    with pytest.raises(ValueError, match=rf"y\[2\] = {bad} is outside \[0, 4\)"):
        loss(S, y)
    with gg.no_grad(), pytest.raises(ValueError, match=rf"y\[2\] = {bad} is outside \[0, 4\)"):
        loss(gg.tensor(S, requires_grad=True), y)


@pytest.mark.parametrize("loss", [gg.cross_entropy, gg.svm_loss])
def test_validate_false_still_checks_shapes_and_dtypes(loss):
    S = np.zeros((3, 4))
    with pytest.raises(ValueError, match="2 entries"):
        loss(S, np.array([0, 1]), validate=False)
    with pytest.raises(TypeError, match="float32 or float64"):
        loss(np.zeros((3, 4), dtype=np.int64), np.array([0, 1, 2]), validate=False)
    with pytest.raises(ValueError, match="1-D"):
        loss(S, np.zeros((3, 1), dtype=np.int64), validate=False)


def test_validate_false_still_checks_the_shape_of_probability_rows():
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(3, 5\)"):
        gg.cross_entropy(np.zeros((3, 4)), np.zeros((3, 5)), validate=False)


def test_a_training_loop_on_losses_without_validation_learns(backend, rng):
    """Gradient descent on W with validate=False, evaluated under no_grad: the loss decreases,
    and the no_grad evaluation equals the training loss at the same W."""
    xp = backend.xp
    n, d, C = 12, 3, 3
    X_np = rng.standard_normal((n, d))
    y_np = rng.integers(0, C, n)
    X, y = xp.asarray(X_np), xp.asarray(y_np)
    for loss in (gg.cross_entropy, gg.svm_loss):
        W = gg.tensor(xp.zeros((C, d)), requires_grad=True)
        values = []
        for _ in range(5):
            J = loss(X @ W.T, y, validate=False)
            with gg.no_grad():
                J_eval = loss(X @ W.T, y, validate=False)
            assert rel_err(npy(backend, J_eval.value), npy(backend, J.value)) <= 1e-13
            values.append(float(npy(backend, J.value)))
            W.zero_grad()
            J.backward()
            with gg.no_grad():
                W.value -= 0.5 * W.grad
        assert values[-1] < values[0]

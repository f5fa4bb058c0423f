"""The lecture's explicit Jacobians, rebuilt from the VJPs by ``gg.jacobian``.

``gg.jacobian(f, x)`` runs one backward pass per output entry with a one-hot upstream
gradient, so each row it returns is e_k^T J: these tests check that the VJP rules, which never
form a Jacobian, agree with the matrices derived on the slides.
"""
import numpy as np
import pytest

import gpugrad as gg

RTOL, ATOL = 1e-12, 1e-15


def npy(backend, a):
    return np.asarray(backend.to_numpy(a))


def softmax_np(s):
    e = np.exp(s - s.max())
    return e / e.sum()


def test_jacobian_of_a_vector_function_is_out_size_by_in_size(backend):
    x = backend.xp.asarray([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    J = gg.jacobian(lambda t: t.sum(axis=1) * 2, x)
    assert J.shape == (2, 6)
    np.testing.assert_array_equal(npy(backend, J), [[2, 2, 2, 0, 0, 0], [0, 0, 0, 2, 2, 2]])


def test_softmax_jacobian_is_diag_p_minus_p_p_transpose(backend, rng):
    """dp/ds = diag(p) - p p^T."""
    s = rng.standard_normal(5)
    p = softmax_np(s)
    J = gg.jacobian(gg.softmax, backend.xp.asarray(s))
    np.testing.assert_allclose(npy(backend, J), np.diag(p) - np.outer(p, p), rtol=RTOL, atol=ATOL)


def test_cross_entropy_of_probabilities_jacobian_is_minus_y_over_y_dot_p(backend, rng):
    """l = -log(y^T p): dl/dp = -y^T / (y^T p)."""
    C = 5
    y = np.eye(C)[2]
    p = softmax_np(rng.standard_normal(C))
    y_t = backend.xp.asarray(y)
    J = gg.jacobian(lambda p: -gg.log((y_t * p).sum()), backend.xp.asarray(p))
    np.testing.assert_allclose(npy(backend, J), (-y / (y @ p))[None, :], rtol=RTOL, atol=ATOL)


def test_score_jacobians_wrt_bias_and_z_are_identities(backend, rng):
    """s = z + b: ds/db = ds/dz = I_C."""
    C = 4
    z, b = (backend.xp.asarray(rng.standard_normal(C)) for _ in range(2))
    np.testing.assert_array_equal(npy(backend, gg.jacobian(lambda b: z + b, b)), np.eye(C))
    np.testing.assert_array_equal(npy(backend, gg.jacobian(lambda z: z + b, z)), np.eye(C))


def test_linear_map_jacobian_wrt_vec_W_is_I_kron_x_transpose(backend, rng):
    """z = W x, vec(W) stacking the rows of W: dz/dvec(W) = I_C (kron) x^T."""
    C, d = 3, 4
    W, x = rng.standard_normal((C, d)), rng.standard_normal(d)
    x_t = backend.xp.asarray(x)
    J = gg.jacobian(lambda W: W @ x_t, backend.xp.asarray(W))
    assert J.shape == (C, C * d)
    np.testing.assert_allclose(npy(backend, J), np.kron(np.eye(C), x[None, :]), rtol=RTOL)


def test_regulariser_jacobian_is_2W(backend, rng):
    """r = sum_ij W_ij^2: dr/dW = 2W (as a 1 x Cd row)."""
    W = rng.standard_normal((3, 4))
    J = gg.jacobian(lambda W: (W ** 2).sum(), backend.xp.asarray(W))
    np.testing.assert_allclose(npy(backend, J), 2 * W.reshape(1, -1), rtol=RTOL)


@pytest.mark.parametrize("lam", [0.0, 0.25])
def test_cost_gradient_for_one_example_is_g_x_transpose_plus_2_lambda_W(backend, rng, lam):
    """J = -log(y^T softmax(W x + b)) + lam sum W^2: dJ/dW = g^T x^T + 2 lam W and
    dJ/db = g, with g = p - y (the lecture's final slide, one example)."""
    C, d, label = 4, 5, 1
    W, b, x = rng.standard_normal((C, d)), rng.standard_normal(C), rng.standard_normal(d)
    g = softmax_np(W @ x + b) - np.eye(C)[label]
    xp = backend.xp
    x_t, b_t, W_t = xp.asarray(x), xp.asarray(b), xp.asarray(W)

    def J_of_W(W):
        return gg.cross_entropy(W @ x_t + b_t, label) + lam * (W ** 2).sum()

    dJ_dW = gg.jacobian(J_of_W, W_t).reshape(C, d)
    np.testing.assert_allclose(npy(backend, dJ_dW), np.outer(g, x) + 2 * lam * W, rtol=RTOL,
                               atol=ATOL)
    dJ_db = gg.jacobian(lambda b: gg.cross_entropy(W_t @ x_t + b, label), b_t)
    np.testing.assert_allclose(npy(backend, dJ_db), g[None, :], rtol=RTOL, atol=ATOL)


def test_chained_jacobians_give_g_equals_p_minus_y(backend, rng):
    """The lecture's g = -y^T/(y^T p) (diag(p) - p p^T), from two Jacobians, is p - y."""
    C = 5
    s, y = rng.standard_normal(C), np.eye(C)[3]
    xp = backend.xp
    p = npy(backend, gg.softmax(gg.tensor(xp.asarray(s))).value)
    dl_dp = npy(backend, gg.jacobian(lambda p: -gg.log((xp.asarray(y) * p).sum()), xp.asarray(p)))
    dp_ds = npy(backend, gg.jacobian(gg.softmax, xp.asarray(s)))
    np.testing.assert_allclose(dl_dp @ dp_ds, (p - y)[None, :], rtol=1e-12, atol=1e-15)


def test_jacobian_of_a_composition_is_the_product_of_jacobians(backend, rng):
    """Vector chain rule: p = softmax(W x) gives dp/dx = dp/ds ds/dx = (diag(p) - p p^T) W."""
    C, d = 3, 4
    W, x = rng.standard_normal((C, d)), rng.standard_normal(d)
    p = softmax_np(W @ x)
    W_t = backend.xp.asarray(W)
    J = gg.jacobian(lambda x: gg.softmax(W_t @ x), backend.xp.asarray(x))
    np.testing.assert_allclose(npy(backend, J), (np.diag(p) - np.outer(p, p)) @ W, rtol=1e-12,
                               atol=1e-15)


def test_jacobian_of_a_function_not_depending_on_x_is_zero(backend):
    c = gg.tensor(backend.xp.ones(2))
    J = gg.jacobian(lambda x: c * 3, backend.xp.ones(3))
    assert J.shape == (2, 3) and not npy(backend, J).any()


def test_jacobian_matches_central_differences_for_a_nonlinear_map(backend, rng):
    """An independent reference: column i of J is (f(x + h e_i) - f(x - h e_i)) / 2h."""
    x = rng.uniform(0.5, 1.5, 4)
    A = rng.standard_normal((3, 4))

    def f_np(x):
        return np.exp(A @ np.log(x))

    A_t = backend.xp.asarray(A)
    J = npy(backend, gg.jacobian(lambda x: gg.exp(A_t @ gg.log(x)), backend.xp.asarray(x)))
    h = 1e-6
    J_num = np.stack([(f_np(x + h * e) - f_np(x - h * e)) / (2 * h) for e in np.eye(4)], axis=1)
    np.testing.assert_allclose(J, J_num, rtol=1e-7, atol=1e-9)

"""batch_norm: forward against a numpy formula, running averages against PyTorch's rule written
out by hand, the fused VJP rules against central differences, PyTorch itself where installed,
and the errors for bad input."""
import numpy as np
import pytest

import deps

import gpugrad as gg
from gpugrad.engine.ops import batch_norm
from test_ops_gradcheck import H, TOL, gradcheck_errors


def npy(backend, a):
    return np.asarray(backend.to_numpy(a))


def reference(x, gamma, beta, rm, rv, training, momentum=0.1, eps=1e-5):
    """(y, new running mean, new running var) in float64, written from the definition."""
    x = x.astype(np.float64)
    n = x.shape[0]
    if training:
        mu = x.sum(axis=0) / n
        var = ((x - mu) ** 2).sum(axis=0) / n
        rm = rm if rm is None else (1 - momentum) * rm + momentum * mu
        rv = rv if rv is None else (1 - momentum) * rv + momentum * ((x - mu) ** 2).sum(axis=0) / (n - 1)
    else:
        mu, var = rm, rv
    return gamma * (x - mu) / np.sqrt(var + eps) + beta, rm, rv


def draw(rng, n=5, m=3):
    """x with columns of different means and scales, gamma away from 0, beta, running stats."""
    x = rng.standard_normal((n, m)) * rng.uniform(0.5, 3.0, m) + rng.uniform(-2, 2, m)
    gamma = rng.uniform(0.5, 2.0, m) * rng.choice([-1, 1], m)
    return x, gamma, rng.standard_normal(m), rng.standard_normal(m), rng.uniform(0.5, 2.0, m)


# ---- forward and running averages ----------------------------------------------------------

@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-13), (np.float32, 1e-5)])
def test_forward_equals_the_numpy_formula(backend, rng, training, dtype, tol):
    xp = backend.xp
    x, gamma, beta, rm, rv = draw(rng)
    rm_dev, rv_dev = xp.array(rm, dtype=dtype), xp.array(rv, dtype=dtype)  # copies: updated in place
    y = batch_norm(gg.tensor(xp.asarray(x, dtype=dtype)), xp.asarray(gamma, dtype=dtype),
                   xp.asarray(beta, dtype=dtype), rm_dev, rv_dev, training=training)
    y_ref, rm_ref, rv_ref = reference(x.astype(dtype), gamma.astype(dtype), beta.astype(dtype),
                                      rm.astype(dtype).astype(np.float64),
                                      rv.astype(dtype).astype(np.float64), training)
    assert y.dtype == dtype and y.shape == x.shape
    np.testing.assert_allclose(npy(backend, y.value), y_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(npy(backend, rm_dev), rm_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(npy(backend, rv_dev), rv_ref, rtol=tol, atol=tol)


def test_training_output_has_zero_mean_and_unit_variance_before_the_affine_step(backend, rng):
    x = draw(rng, n=8, m=4)[0]
    y = npy(backend, batch_norm(backend.xp.asarray(x), backend.xp.ones(4), backend.xp.zeros(4)).value)
    np.testing.assert_allclose(y.mean(axis=0), 0, atol=1e-14)
    np.testing.assert_allclose(y.var(axis=0), x.var(axis=0) / (x.var(axis=0) + 1e-5), rtol=1e-13)


def test_running_stats_follow_pytorchs_update_rule(backend):
    """Column 0 holds 1, 3, 5 (mean 3, unbiased variance 4), column 1 holds 10, 30, 20 (mean 20,
    unbiased variance 100): running = (1 - momentum) running + momentum batch_stat."""
    xp = backend.xp
    x = xp.asarray([[1.0, 10.0], [3.0, 30.0], [5.0, 20.0]])
    rm, rv = xp.asarray([0.5, -1.0]), xp.asarray([2.0, 3.0])
    batch_norm(x, xp.ones(2), xp.zeros(2), rm, rv)  # momentum 0.1
    np.testing.assert_allclose(npy(backend, rm), [0.9 * 0.5 + 0.1 * 3, 0.9 * -1 + 0.1 * 20], rtol=1e-15)
    np.testing.assert_allclose(npy(backend, rm), [0.75, 1.1], rtol=1e-15)
    np.testing.assert_allclose(npy(backend, rv), [2.2, 12.7], rtol=1e-15)
    batch_norm(x, xp.ones(2), xp.zeros(2), rm, rv, momentum=0.5)
    np.testing.assert_allclose(npy(backend, rm), [0.5 * 0.75 + 0.5 * 3, 0.5 * 1.1 + 0.5 * 20], rtol=1e-15)
    np.testing.assert_allclose(npy(backend, rv), [0.5 * 2.2 + 0.5 * 4, 0.5 * 12.7 + 0.5 * 100], rtol=1e-15)


def test_running_stats_are_updated_in_place_in_training_only(backend, rng):
    xp = backend.xp
    x, gamma, beta, rm, rv = (xp.asarray(a) for a in draw(rng))
    rm_before, rv_before = npy(backend, rm).copy(), npy(backend, rv).copy()
    batch_norm(x, gamma, beta, rm, rv, training=False)
    np.testing.assert_array_equal(npy(backend, rm), rm_before)
    np.testing.assert_array_equal(npy(backend, rv), rv_before)
    with gg.no_grad():  # as in PyTorch, the mode decides, not whether gradients are taken
        batch_norm(x, gamma, beta, rm, rv, training=True)
    assert not np.array_equal(npy(backend, rm), rm_before)
    assert not np.array_equal(npy(backend, rv), rv_before)


def test_float64_running_stats_of_a_float32_model_keep_their_dtype(rng):
    x, gamma, beta, rm, rv = draw(rng)
    y = batch_norm(x.astype(np.float32), gamma.astype(np.float32), beta.astype(np.float32), rm, rv,
                   training=False)
    assert y.dtype == np.float32 and rm.dtype == np.float64
    batch_norm(x.astype(np.float32), gamma.astype(np.float32), beta.astype(np.float32), rm, rv)
    assert rm.dtype == rv.dtype == np.float64


def test_inference_takes_one_row(rng):
    """y = gamma (x - mean) / sqrt(var + eps) + beta: where the two terms nearly cancel, y's rounding
    error is that of the terms, not of y, so the tolerance scales with the terms' sizes."""
    x, gamma, beta, rm, rv = draw(rng, n=1)
    y = batch_norm(x, gamma, beta, rm, rv, training=False)
    terms = np.abs(gamma * (x - rm) / np.sqrt(rv + 1e-5)) + np.abs(beta)
    assert np.all(np.abs(y.value - reference(x, gamma, beta, rm, rv, False)[0]) <= 1e-14 * terms)


def test_backward_uses_the_cached_xhat_and_inv_std(rng):
    x, gamma, beta, rm, rv = draw(rng)
    y = batch_norm(gg.tensor(x, requires_grad=True), gamma, beta)
    assert set(y._params) == {"xhat", "inv_std", "training", "momentum", "eps", "running_mean", "running_var"}
    np.testing.assert_allclose(y._params["xhat"] * gamma + beta, y.value, rtol=1e-15)


# ---- gradients ------------------------------------------------------------------------------

@pytest.mark.parametrize("training, with_running_stats", [(True, False), (True, True), (False, True)],
                         ids=["training", "training-updating-running-stats", "inference"])
def test_vjps_of_x_gamma_beta_match_central_differences(backend, rng, training, with_running_stats):
    """In training mode the running stats, updated by every evaluation, must not feed the result."""
    xp = backend.xp

    def make(rng):
        x, gamma, beta, rm, rv = (xp.asarray(a) for a in draw(rng))
        stats = (rm, rv) if with_running_stats else ()
        R = xp.asarray(rng.standard_normal(x.shape))
        return (lambda x, g, b: (batch_norm(x, g, b, *stats, training=training) * R).sum()), [x, gamma, beta]

    errors = gradcheck_errors(rng, make)
    assert len(errors) == 3
    assert max(errors) <= TOL, f"relative errors of x, gamma, beta: {errors}"


def test_gradients_match_the_closed_forms_of_the_batch_norm_backward(rng):
    """dgamma = sum_i g_i xhat_i, dbeta = sum_i g_i; dx from the invariances of batch_norm in x."""
    x, gamma, beta, _, _ = draw(rng, n=7, m=3)
    G = rng.standard_normal(x.shape)
    xt, gt, bt = (gg.tensor(a, requires_grad=True) for a in (x, gamma, beta))
    y = batch_norm(xt, gt, bt)
    (y * G).sum().backward()
    var = x.var(axis=0)
    xhat = (x - x.mean(axis=0)) / np.sqrt(var + 1e-5)
    np.testing.assert_allclose(gt.grad, (G * xhat).sum(axis=0), rtol=1e-13)
    np.testing.assert_allclose(bt.grad, G.sum(axis=0), rtol=1e-13)
    # y does not change when a column of x is shifted, so each column of dx sums to 0; scaling a
    # column by (1 + t) changes y only through eps: d/dt at 0 is sum_i dx_i x_i =
    # sum_i ghat_i xhat_i eps / (var + eps) (ghat = G gamma).
    np.testing.assert_allclose(xt.grad.sum(axis=0), 0, atol=1e-13)
    np.testing.assert_allclose((xt.grad * (x - x.mean(axis=0))).sum(axis=0),
                               (G * gamma * xhat).sum(axis=0) * 1e-5 / (var + 1e-5), rtol=1e-6, atol=1e-13)


def test_float32_gradients_stay_float32(backend, rng):
    xp = backend.xp
    x, gamma, beta, _, _ = (xp.asarray(a, dtype=np.float32) for a in draw(rng))
    ts = [gg.tensor(a, requires_grad=True) for a in (x, gamma, beta)]
    batch_norm(*ts).sum().backward()
    assert [t.grad.dtype for t in ts] == [np.float32] * 3


def test_agrees_with_pytorch_in_both_modes(rng):
    torch = deps.require("torch")
    x, gamma, beta, rm, rv = draw(rng, n=6, m=4)
    G = rng.standard_normal(x.shape)
    for training in (True, False):
        rm_g, rv_g, rm_t, rv_t = rm.copy(), rv.copy(), torch.tensor(rm), torch.tensor(rv)
        xt, gt, bt = (gg.tensor(a, requires_grad=True) for a in (x, gamma, beta))
        (batch_norm(xt, gt, bt, rm_g, rv_g, training=training, momentum=0.3, eps=1e-3) * G).sum().backward()
        xT, gT, bT = (torch.tensor(a, requires_grad=True) for a in (x, gamma, beta))
        yT = torch.nn.functional.batch_norm(xT, rm_t, rv_t, gT, bT, training=training, momentum=0.3, eps=1e-3)
        (yT * torch.tensor(G)).sum().backward()
        for ours, theirs in ((rm_g, rm_t), (rv_g, rv_t), (xt.grad, xT.grad), (gt.grad, gT.grad),
                             (bt.grad, bT.grad)):
            np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=1e-10, atol=1e-12)


# ---- bad input ------------------------------------------------------------------------------

def bad_cases():
    x, g, b, r = np.zeros((4, 3)), np.ones(3), np.zeros(3), np.ones(3)
    return [
        ("1-D x", (np.zeros(3), g, b), {}, ValueError, r"x must be 2-D \(n, m\).*\(3,\)"),
        ("3-D x", (np.zeros((2, 3, 4)), g, b), {}, ValueError, "x must be 2-D"),
        ("integer x", (np.zeros((4, 3), dtype=np.int64), g, b), {}, TypeError, "float32 or float64"),
        ("gamma of the wrong length", (x, np.ones(4), b), {}, ValueError, r"gamma must have shape \(3,\).*\(4,\)"),
        ("beta as a column", (x, g, np.zeros((3, 1))), {}, ValueError, r"beta must have shape \(3,\)"),
        ("gamma of another dtype", (x, g.astype(np.float32), b), {}, TypeError, "gamma has dtype float32"),
        ("running_mean of the wrong length", (x, g, b, np.zeros(2), r), {}, ValueError,
         r"running_mean must have shape \(3,\).*\(2,\)"),
        ("running_var as a list", (x, g, b, r, [1.0, 1.0, 1.0]), {}, TypeError, "running_var.*list"),
        ("integer running_var", (x, g, b, r, np.ones(3, dtype=np.int64)), {}, TypeError,
         "running_var must be float32 or float64"),
        ("only running_mean", (x, g, b, r), {}, ValueError, "given together"),
        ("inference without running stats", (x, g, b), {"training": False}, ValueError,
         "training=False.*both must be given"),
        ("one row in training", (np.zeros((1, 3)), g, b), {}, ValueError,
         r"more than 1 value per channel when training.*\(1, 3\)"),
        ("momentum above 1", (x, g, b, r, r.copy()), {"momentum": 1.5}, ValueError, r"momentum.*\[0, 1\].*1.5"),
        ("momentum None", (x, g, b, r, r.copy()), {"momentum": None}, ValueError, "momentum"),
        ("eps 0", (x, g, b), {"eps": 0.0}, ValueError, "eps must be a finite number > 0"),
    ]


@pytest.mark.parametrize("case", bad_cases(), ids=[c[0] for c in bad_cases()])
def test_bad_input_raises_an_error_naming_it(case):
    _, args, kwargs, error, message = case
    with pytest.raises(error, match=message):
        batch_norm(*args, **kwargs)


def test_running_stats_on_another_backend_are_refused(backend):
    if backend.name == "numpy":
        pytest.skip("needs a second backend")
    xp = backend.xp
    with pytest.raises(TypeError, match="running_mean is a numpy array"):
        batch_norm(xp.zeros((4, 3)), xp.ones(3), xp.zeros(3), np.zeros(3), np.ones(3))

"""The compiled CPU loops (kernels/host.c via gpugrad/backends/host.py) against the numpy code they
replace: the same results bit for bit, on every path (batch norm with and without running
averages, ReLU alone, the result layer; every optimiser rule, with and without the penalty), and
the numpy code where the loops refuse their arguments."""
import numpy as np
import pytest

from gpugrad.backends import host
from gpugrad.backends.numpy_backend import NumpyBackend

from deps import IN_CI

pytestmark = pytest.mark.skipif(not host.available() and not IN_CI, reason="the _gpugrad_host extension is not built")

BE = NumpyBackend()


def test_built_in_ci():
    """pip install ".[test]" builds the extension where a compiler is at hand, as in CI."""
    assert host.available()


def _both(fn, *arrays):
    """fn run on copies of arrays with the loops and with numpy alone: (with, without)."""
    runs = []
    for on in (True, False):
        copies = [None if a is None else a.copy() for a in arrays]
        old, host._ON = host._ON, on
        try:
            fn(*copies)
        finally:
            host._ON = old
        runs.append(copies)
    return runs


def _same(a, b):
    for x, y in zip(a, b):
        if x is not None:
            assert x.dtype == y.dtype
            np.testing.assert_array_equal(x.view(f"u{x.itemsize}"), y.view(f"u{y.itemsize}"))  # bits, NaN too


def _layer(rng, n, m, dtype, scale=1.0):
    s = (rng.standard_normal((n, m)) * scale * 10.0 ** rng.integers(-3, 3, m)).astype(dtype)
    vec = lambda: rng.standard_normal(m).astype(dtype)  # noqa: E731
    return s, vec(), vec(), vec(), vec(), np.abs(vec()) + 1


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n,m", [(100, 50), (2, 3), (7, 2), (257, 10)])
@pytest.mark.parametrize("kind", ["batch norm", "batch norm, no running averages", "relu"])
def test_layer_forward_and_backward_bit_for_bit(dtype, n, m, kind):
    rng = np.random.default_rng(n * m)
    s, b, gamma, beta, rm, rv = _layer(rng, n, m, dtype)
    h, xhat, inv = np.empty_like(s), np.zeros_like(s), np.zeros(m, dtype)
    if kind == "relu":
        gamma = beta = rm = rv = None
    elif "no running" in kind:
        rm = rv = None
    fwd = lambda *a: BE.layer_forward(*a[:6], 0.1, 1e-5, tuple(a[6:]))  # noqa: E731
    on, off = _both(fwd, s, b, gamma, beta, rm, rv, h, xhat, inv)
    _same(on, off)
    s, b, gamma, beta, rm, rv, h, xhat, inv = off
    dh = rng.standard_normal((n, m)).astype(dtype)
    grads = [np.zeros(m, dtype) if kind != "relu" else None for _ in range(2)] + [np.zeros(m, dtype)]
    bwd = lambda dh_, *out: BE.layer_backward(dh_, h, xhat if gamma is not None else None, gamma, inv, out)  # noqa: E731
    on, off = _both(bwd, dh, *grads)
    _same(on, off)
    # the result layer: no ReLU mask, no batch norm, only the bias's column sums
    on, off = _both(lambda dh_, db: BE.layer_backward(dh_, None, None, None, None, (None, None, db)), dh, grads[2])
    _same(on, off)


def test_nan_and_inf_go_where_numpy_puts_them():
    rng = np.random.default_rng(0)
    s, b, gamma, beta, rm, rv = _layer(rng, 6, 4, "float32")
    s[2, 1], s[4, 3], beta[0] = np.nan, np.inf, -np.inf
    h, xhat, inv = np.empty_like(s), np.zeros_like(s), np.zeros(4, np.float32)
    on, off = _both(lambda *a: BE.layer_forward(*a[:6], 0.1, 1e-5, tuple(a[6:])), s, b, gamma, beta, rm, rv, h,
                    xhat, inv)
    _same(on, off)
    assert np.isnan(on[6]).any()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("rule", [("sgd", (0.05,)), ("momentum", (0.05, 0.9)), ("nesterov", (0.05, 0.9)),
                                  ("adam", (0.9, 0.1, 0.999, 0.001, 0.0031, 1e-8))])
@pytest.mark.parametrize("lam", [0.0, 1e-3])
def test_optimizer_update_bit_for_bit(dtype, rule, lam):
    rng = np.random.default_rng(1)
    size, n_decay = 1001, 700
    p, g = rng.standard_normal(size).astype(dtype), rng.standard_normal(size).astype(dtype)
    slots = [rng.standard_normal(size).astype(dtype) for _ in range({"sgd": 0, "adam": 2}.get(rule[0], 1))]
    if rule[0] == "adam":
        slots[1] = np.abs(slots[1])
    for _ in range(3):  # a few steps, so the slots carry what the previous steps left
        on, off = _both(lambda r, p_, g_, *s_: BE.optimizer_update(rule, p_, g_, list(s_), lam, n_decay, 1.5, r, 1),
                        np.zeros((2, 3)), p, g, *slots)
        _same(on[1:], off[1:])
        # the step's cost, J = loss + lam ||W||^2: ||W||^2 summed in double on one side, by BLAS on the other
        want = 1.5 + lam * np.sum(p[:n_decay].astype(np.float64) ** 2)
        np.testing.assert_allclose([on[0][0, 1], off[0][0, 1]], want, rtol=1e-6)
        assert on[0][1, 1] == off[0][1, 1] == 1.5
        r, p, g, *slots = off


def test_refused_arguments_run_on_numpy():
    """A one-column layer (numpy sums it pairwise), another dtype or a strided array: the loops say
    no before writing anything, and the numpy code gives the answer."""
    rng = np.random.default_rng(2)
    one = rng.standard_normal((50, 1)).astype(np.float32)
    assert not host.layer_forward(one, np.zeros(1, np.float32), None, None, None, None, 0.1, 1e-5,
                                  np.empty_like(one), None, None)
    s = rng.standard_normal((8, 4)).astype(np.float32)
    before = s.copy()
    assert not host.layer_forward(s, np.zeros(4, np.float64), None, None, None, None, 0.1, 1e-5,
                                  np.empty_like(s), None, None)
    np.testing.assert_array_equal(s, before)  # untouched
    strided = rng.standard_normal((8, 8)).astype(np.float32)[:, ::2]
    assert not host.layer_backward(strided, None, None, None, None, None, None, np.zeros(4, np.float32))
    p = np.ones(4, np.float16)
    assert not host.update("sgd", (0.1,), p, p.copy(), [], 0.0, 0)


@pytest.mark.parametrize("dtype,rtol", [("float32", 2e-6), ("float64", 1e-14)])
@pytest.mark.parametrize("case", ["random", "confident", "huge scores", "one class"])
def test_softmax_cross_entropy_within_an_ulp_of_numpy(dtype, rtol, case):
    """exp and log are the C library's: the loss and dS within rounding of the numpy code's, and of
    a float64 reference where the label's probability rounds to 1 (dS_y = -others/total stays exact)."""
    rng = np.random.default_rng(3)
    n, C = (64, 1) if case == "one class" else (64, 10)
    S = rng.standard_normal((n, C)) * {"random": 3.0, "confident": 1.0, "huge scores": 1e4, "one class": 1.0}[case]
    y = rng.integers(0, C, n)
    if case == "confident":
        S[np.arange(n), y] += 40.0  # p_y rounds to 1 in float32 and float64
    S = S.astype(dtype)
    (L_on, dS_on), = [BE.softmax_cross_entropy_grad(S, y)]
    old, host._ON = host._ON, False
    try:
        L_off, dS_off = BE.softmax_cross_entropy_grad(S, y)
    finally:
        host._ON = old
    assert L_on.dtype == L_off.dtype == S.dtype and dS_on.dtype == S.dtype
    np.testing.assert_allclose(L_on, L_off, rtol=rtol, atol=1e-30)
    np.testing.assert_allclose(dS_on, dS_off, rtol=rtol, atol=np.abs(dS_off).max() * rtol)
    S64 = S.astype(np.float64)
    E = np.exp(S64 - S64.max(axis=1, keepdims=True))
    e_y, E[np.arange(n), y] = E[np.arange(n), y], 0
    others = E.sum(axis=1)
    want = E / (others + e_y)[:, None] / n
    want[np.arange(n), y] = -others / (others + e_y) / n
    np.testing.assert_allclose(dS_on, want, rtol=50 * rtol, atol=np.finfo(dtype).tiny)  # (float32 underflows)


def test_softmax_labels_out_of_range_are_the_numpy_codes_error():
    S, y = np.zeros((3, 4), np.float32), np.array([0, 4, 1])
    with pytest.raises(IndexError):
        BE.softmax_cross_entropy_grad(S, y)
    assert host.softmax_ce(S, y, None) is None

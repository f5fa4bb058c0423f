"""The compiled CPU loops (kernels/host.c via gpugrad/backends/host.py) against the numpy code they
replace: the layers and the optimiser's update bit for bit on every path (batch norm with and
without running averages, ReLU alone, the result layer; every rule, with and without the
penalty), the softmax loss within an ulp (and against float64), the sparse momentum step within
rounding of numpy's lazy step; the numpy code where the loops refuse their arguments; the
switch GPUGRAD_HOST=0."""
import os
import subprocess
import sys

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
    with np.errstate(invalid="ignore"):  # (inf - inf, as numpy says it)
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
        _same(on, off)  # the record too: J = loss + lam ||W||^2 from p before the step
        np.testing.assert_allclose(on[0][0, 1], 1.5 + lam * np.sum(p[:n_decay].astype(np.float64) ** 2), rtol=1e-6)
        r, p, g, *slots = off


def test_refused_arguments_run_on_numpy():
    """A one-column layer (numpy sums it pairwise), another dtype or a strided array: the loops say
    no before writing anything, and the numpy code gives the answer."""
    rng = np.random.default_rng(2)
    one = rng.standard_normal((50, 1)).astype(np.float32)
    assert not host.call("layer_forward", (one, np.zeros(1, np.float32), None, None, None, None, 0.1, 1e-5,
                                           (np.empty_like(one), None, None)))
    s = rng.standard_normal((8, 4)).astype(np.float32)
    before = s.copy()
    assert not host.call("layer_forward", (s, np.zeros(4, np.float64), None, None, None, None, 0.1, 1e-5,
                                           (np.empty_like(s), None, None)))
    np.testing.assert_array_equal(s, before)  # untouched
    strided = rng.standard_normal((8, 8)).astype(np.float32)[:, ::2]
    assert not host.call("layer_backward", (strided, None, None, None, None, (None, None, np.zeros(4, np.float32))))
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


@pytest.mark.parametrize("loss", ["softmax", "svm"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("nesterov,C", [(False, 5), (True, 5), (False, 19)])
def test_sparse_momentum_step_is_the_numpy_lazy_step(loss, dtype, nesterov, C, monkeypatch):
    """gpugrad.sparse_sgd's lazy momentum steps in one compiled call each against its numpy steps:
    the same per-step costs, weights and velocities within rounding, over two windows' catch-ups,
    with sample weights, x_std, duplicate entries and an empty row; 5 classes (a row of the step
    in a few vectors) and 19 (padded, and past 8 vectors in float64)."""
    import scipy.sparse as sp

    from gpugrad.training import sparse_sgd
    monkeypatch.setattr(sparse_sgd, "WINDOW", 4)
    rng = np.random.default_rng(4)
    n, d = 90, 300
    cols = [rng.choice(d, size=rng.integers(1, 25), replace=False) for _ in range(n)]
    cols[3] = cols[3][:0]                           # an empty row
    cols[7] = np.r_[cols[7], cols[7][0]]            # a duplicate entry (their sum is the value)
    X = sp.csr_matrix((rng.uniform(0.1, 1, sum(map(len, cols))).astype(dtype), np.concatenate(cols).astype(np.int32),
                       np.r_[0, np.cumsum(list(map(len, cols)))].astype(np.int32)), shape=(n, d))
    y, w = rng.integers(0, C, n), rng.uniform(0.5, 2, n).astype(dtype)
    std = rng.uniform(0.5, 2, d).astype(dtype)
    order = rng.permutation(n)
    calls = []
    real = host.sparse_step
    monkeypatch.setattr(host, "sparse_step", lambda *a, **k: calls.append(1) or real(*a, **k))
    out = []
    for on in (True, False):
        W, b = (np.random.default_rng(6).standard_normal((C, d)) * 0.1).astype(dtype), np.zeros(C, dtype)
        vel = (np.zeros_like(W), np.zeros_like(b))
        monkeypatch.setattr(host, "_ON", on)
        cost, _, _ = sparse_sgd.run(BE, X, y, w, W, b, loss=loss, lam=0.01, schedule=lambda t: 0.3 / (1 + 0.1 * t),
                                    t=0, order=order, batch_size=20, batches=range(5), x_std=std, momentum=0.9,
                                    nesterov=nesterov, velocity=vel)
        out.append((cost, W, b, vel[0], vel[1]))
    assert len(calls) == 5  # the compiled step ran, once a batch
    tol = {"float32": 2e-5, "float64": 1e-12}[dtype]
    for got, want in zip(out[0], out[1]):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_sparse_step_checks_its_batch_before_writing():
    """A row, label or column out of range is refused with the reason, and nothing is written."""
    import scipy.sparse as sp
    X = sp.csr_matrix(np.array([[1.0, 0, 2.0], [0, 3.0, 0]]))
    X.indices, X.indptr = X.indices.astype(np.int32), X.indptr.astype(np.int32)
    d, C = 3, 2
    Z, _ = host.records(np.ones((d, C)), np.zeros((d, C)))
    before = Z.copy()
    marks, groups = np.zeros(1, np.uint64), np.zeros((3, 3))
    args = lambda rows, y: (X, np.array(rows, np.int64), np.array(y, np.int64), None, np.zeros(C), None, Z, marks,  # noqa: E731
                            np.zeros(d, np.int32), np.stack([np.eye(2)] * 2), 0, groups, 0.1, 0.9, 0.0, False, True,
                            np.zeros(64), np.zeros(16, np.int64), np.zeros(C))
    for (rows, y), what in ((([0, 2], [0, 1]), "row 2"), (([0, 1], [0, 5]), "row 1")):
        with pytest.raises(ValueError, match=what):
            host.sparse_step(*args(rows, y))
        np.testing.assert_array_equal(Z, before)
        assert not marks.any() and not groups.any()
    X.indices[1] = 7  # a column past d
    with pytest.raises(ValueError, match="column 7 of row 0"):
        host.sparse_step(*args([0], [0, 1]))
    np.testing.assert_array_equal(Z, before)
    X.indices[1] = 2
    marks[0] = 8  # (a bit for a column the batch does not have)
    with pytest.raises(ValueError, match="marks must be zeros"):
        host.sparse_step(*args([0], [0, 1]))
    np.testing.assert_array_equal(Z, before)
    marks[0] = 0
    one_map = list(args([0], [0, 1]))
    one_map[9] = np.eye(2)[None]  # (the step writes the next step's map too)
    with pytest.raises(ValueError, match="groups and A need 2 rows"):
        host.sparse_step(*one_map)
    np.testing.assert_array_equal(Z, before)
    with pytest.raises(ValueError, match="Z: expected at least 384 values, got 192"):  # records of 2 classes, not 3
        host.sparse_catch_up(Z, 3, np.float64, np.eye(2)[None], 0)
    with pytest.raises(ValueError, match="sparse_scratch: C >= 1"):
        host.sparse_scratch(0, np.float64, 2, 3, d)
    with pytest.raises(ValueError, match="record_layout: C >= 1 and itemsize 4 or 8"):
        host._ext.record_layout(C, 2)
    Z[0, -64:].view(np.int64)[-1] = 7  # (the last step of column 0, past r)
    with pytest.raises(ValueError, match="column 0's last step 7 is not in 0..0"):
        host.sparse_catch_up(Z, C, np.float64, np.eye(2)[None], 0)


def test_sparse_step_leaves_columns_without_a_data_term_lazy():
    """Hinge rows with no margin violated add nothing to dW: a column only they use keeps its record
    (weights, velocities, last step) for the lazy catch-up, while a column of a violating row is
    updated; the cost and the next catch-up are those of the numpy lazy step (within rounding)."""
    import scipy.sparse as sp
    # row 0 (label 0) uses columns 0, 1, scored far ahead of the other classes; row 1 (label 1) columns 2, 3
    X = sp.csr_matrix((np.ones(4), np.array([0, 1, 2, 3], np.int32), np.array([0, 2, 4], np.int32)), shape=(2, 5))
    W = np.zeros((5, 3))
    W[:2, 0] = 5.0
    V = np.full((5, 3), 0.25)
    Z, (Wv, Vv, gram, last) = host.records(W, V)
    groups = np.zeros((3, 3))
    groups[0] = [np.sum(W * W), np.sum(W * V), np.sum(V * V)]
    for j in range(5):
        gram[j] = W[j] @ W[j], W[j] @ V[j], V[j] @ V[j]
    before = Z.copy()
    M = np.array([[1 - 0.1 * 0.02, 0.9], [-0.1 * 0.02, 0.9]])  # the step's map (lr 0.1, 2 lam 0.02, mu 0.9)
    marks, count = np.zeros(1, np.uint64), np.full(5, -3, np.int32)  # (count: scratch, any values)
    maps = np.full((3, 2, 2), 5.0)  # (the window's maps: A[0] = I at step 0; A[1], A[2] written by the step)
    maps[0] = np.eye(2)
    L, norm2, k = host.sparse_step(X, np.array([0, 1]), np.array([0, 1]), None, np.zeros(3), None, Z, marks, count,
                                   maps, 0, groups, 0.1, 0.9, 0.02, False, True, np.zeros(256),
                                   np.zeros(64, np.int64), np.zeros(3))
    assert k == 4 and L == pytest.approx(2.0 / 2) and norm2 == pytest.approx(np.sum(W * W))
    assert not marks.any()  # (the next step's: left clear)
    np.testing.assert_allclose(maps[:2], [M, np.eye(2)], rtol=1e-15)  # moved on to step 1
    assert (maps[2] == 5.0).all()
    np.testing.assert_array_equal(Z[:2], before[:2])  # columns 0 and 1: untouched, still at step 0
    assert (last[2:4] == 1).all() and (last[4] == 0)
    assert not np.array_equal(Z[2:4], before[2:4])
    # brought to step 1 by the map, as the catch-up will: the numpy step's weights for them
    A = np.stack([M, np.eye(2)])
    host.sparse_catch_up(Z, 3, np.float64, A, 1)
    np.testing.assert_allclose(Wv[:2], M[0, 0] * W[:2] + M[0, 1] * V[:2], rtol=1e-15)
    np.testing.assert_allclose(Vv[:2], M[1, 0] * W[:2] + M[1, 1] * V[:2], rtol=1e-15)
    np.testing.assert_allclose(gram[:, 0], np.einsum("ij,ij->i", Wv, Wv), rtol=1e-14)


def test_gpugrad_host_0_turns_the_loops_off():
    code = "import gpugrad.backends.host as h; print(h.available())"
    for value, want in (("0", "False"), ("1", str(host._ext is not None))):
        env = {**os.environ, "GPUGRAD_HOST": value}
        got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        assert got.stdout.strip() == want, got.stderr


def test_records_given_back_are_filled_again_from_zero(monkeypatch):
    """``release``: the next records of that size take the same buffer (no fresh pages), every
    byte written afresh (the padding, gram and last zero again); a buffer over SPARE_BYTES is not
    kept."""
    rng = np.random.default_rng(0)
    W, V = rng.standard_normal((50, 5)).astype(np.float32), rng.standard_normal((50, 5)).astype(np.float32)
    Z, (_, _, gram, last) = host.records(W, V)
    gram[...], last[...] = 7.0, 3
    Z[:, -1] = 255  # (the records' padding)
    want = host.records(W, V)[0].copy()
    host.release(Z)
    Z2, (W2, V2, gram2, last2) = host.records(W, V)
    assert np.shares_memory(Z2, Z) and Z2.ctypes.data % 64 == 0
    np.testing.assert_array_equal(Z2, want)
    np.testing.assert_array_equal(W2, W)
    assert not gram2.any() and not last2.any()
    monkeypatch.setattr(host, "SPARE_BYTES", Z2.nbytes - 1)
    host.release(Z2)
    assert not np.shares_memory(host.records(W, V)[0], Z2)

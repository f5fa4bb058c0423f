"""Comparisons shared by the kernel tests (tests/test_gpu_kernels.py on a GPU, tests/test_emulated_kernels.py
on the CPU emulator): the kernels against the float64 numpy backend."""
import numpy as np

import gpugrad as gg

NP = gg.get_backend("numpy")


def host(a):
    """a as a numpy array: a device array (cupy.ndarray, or the emulator's) through ``.get()``, as
    CuPy requires (it refuses np.asarray of a device array); None stays None."""
    if a is None:
        return None
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


# Relative error bounds of the kernels against the float64 reference, by compute dtype.
TOL = {np.float32: 1e-5, np.float64: 1e-12}


def rel(got, ref, scale=0.0):
    """||got - ref|| / max(||ref||, scale): the relative error, or the error against `scale` where
    the reference is smaller (cancelled sums). Every entry of `got` must be finite (outputs start
    as NaN: one left unwritten shows)."""
    got, ref = host(got).astype(np.float64), host(ref).astype(np.float64)
    assert np.isfinite(got).all(), "an output entry was left unwritten (NaN poison) or is not finite"
    return np.linalg.norm(got - ref) / max(np.linalg.norm(ref), scale, 1e-300)


def db_scale(X, y, W, b, loss, mean=None, std=None, sample_weight=None):
    """The size db's float32 rounding is measured against: the norm of the per-class sums of |dL/dS|
    (rows times |w_r| when weighted). db = sum_r dL/dS_r cancels to exactly 0 for some labels
    (2-class hinge rows that balance), where the float64 reference is rounding noise and a relative
    error means nothing."""
    Xn = X if mean is None else (X - mean) / std
    dS = (NP.softmax_cross_entropy_grad if loss == "softmax" else NP.svm_grad)(Xn @ W.T + b, y)[1]
    if sample_weight is not None:
        dS = dS * np.abs(sample_weight)[:, None]
    return np.linalg.norm(np.abs(dS).sum(axis=0))


def f32(a):
    """a as the float32 kernels get it, back in float64: the reference then solves the same problem
    (a handful of rows whose gradients cancel can amplify input rounding far past 1e-5)."""
    return np.asarray(a, np.float32).astype(np.float64)


# Kinds of X the fused linear step takes (cupy_backend.CupyBackend._fused_x), with the compute
# dtype and whether x_mean/x_std normalise X on the fly.
LINEAR_KINDS = {"f32": (np.float32, False), "f32n": (np.float32, True), "u8": (np.float32, True),
                "f64": (np.float64, False), "f64n": (np.float64, True), "u8f64": (np.float64, True)}


def linear_case(rng, kind, n, d, C, wscale=0.05, mean=None):
    """Inputs of a fused linear step of `kind`: (float64 reference args, the kernels' numpy args),
    each (X, y, W, b, x_mean, x_std); the reference gets the values the kernels see (float32
    rounding included), so the two solve the same problem."""
    dtype, norm = LINEAR_KINDS[kind]
    rnd = f32 if dtype == np.float32 else np.asarray
    W, b, y = rnd(rng.standard_normal((C, d)) * wscale), rnd(rng.standard_normal(C) * 0.1), rng.integers(0, C, n)
    if kind.startswith("u8"):
        X = rng.integers(0, 256, (n, d), dtype=np.uint8)
        # Means a few units off the column means: much closer, and for a few rows whose gradients
        # are alike dW ~ sum_r (x_r - m) cancels beyond what float32 inputs resolve.
        mean = X.mean(0) + rng.standard_normal(d) * 3 if mean is None else mean
        std = X.std(0) + 1
    else:
        X = rnd(rng.standard_normal((n, d)) * (3 if norm else 1) + (5 if norm else 0))
        mean = X.mean(0) + rng.standard_normal(d) if norm else None
        std = X.std(0) * rng.uniform(0.5, 2, d) + 0.1 if norm else None
    if norm:
        mean, std = rnd(mean), rnd(std)
    ref = (X, y, W, b, mean, std)
    as_kernel = (lambda a: a if a is None or a.dtype == np.uint8 else a.astype(dtype))
    return ref, tuple(as_kernel(a) if i != 1 else a for i, a in enumerate(ref))


def sample_weights(rng, n, kind, zeros=0.25):
    """Per-row weights for a weighted step of `kind`: (float64 reference weights, the kernels'
    weights in the compute dtype), the same values. Uniform in [0, 3), with about a fraction
    `zeros` of them exactly 0 (rows that must drop out of J, dW and db)."""
    dtype = LINEAR_KINDS[kind][0]
    w = rng.uniform(0, 3, n) * (rng.uniform(size=n) >= zeros)
    w = f32(w) if dtype == np.float32 else w
    return w, w.astype(dtype)


def check_linear_step(ref_args, got, loss, lam, sample_weight=None):
    """The fused step's (J, dW, db), as numpy, against the float64 numpy backend on ref_args (with
    the float64 per-row weights `sample_weight` when given): within 1e-5 relative for float32
    results, 1e-12 for float64 (db against db_scale where it cancels)."""
    X, y, W, b, mean, std = ref_args
    J, dW, db = got
    tol = TOL[dW.dtype.type]
    J_ref, dW_ref, db_ref = NP.linear_grad(X, y, W, b, lam, loss, mean, std, sample_weight=sample_weight)
    assert rel(dW, dW_ref) <= tol
    assert rel(db, db_ref, db_scale(X, y, W, b, loss, mean, std, sample_weight)) <= tol
    assert abs(float(J) - J_ref) <= tol * abs(J_ref)


# Row lengths that select every row-loss kernel between them (with every `ce_long_rows` variant for
# the long rows): short rows for each width of lane team, then block-per-row, streamed,
# prefetched and online kernels.
ROW_LENGTHS = (5, 13, 29, 50, 100, 200, 700, 1500, 3000, 6000, 9000, 17000, 33000)


def row_kernel_shapes(loss, dtype):
    """{kernel name: (C, long-row variant)}: for each row-loss kernel of `loss` ("softmax" or
    "svm") and `dtype`, the first row length C of ROW_LENGTHS (and the `ce_long_rows` variant, None
    for the default) for which the CuPy backend's own planning (ce_kernel_config,
    svm_kernel_config) picks it."""
    from gpugrad.backends import cupy_backend as cb  # imports cupy (no GPU needed): only when asked
    shapes = {}
    for C in ROW_LENGTHS:
        for variant in (None, "stream", "prefetch", "block"):
            if loss == "softmax":
                name = cb.ce_kernel_config(C, dtype, variant).name
            else:
                name = cb.svm_kernel_config(C, dtype).name
            shapes.setdefault(name, (C, variant))
    return shapes


def sparse_case(rng, n, d, C, dtype, idx64=False, long_row=0, wscale=0.3):
    """Inputs of a sparse step: (scipy CSR X with every awkward feature, y, W, b, x_std) with values
    as the kernels see them (float32-rounded for float32). X has an empty row (row 1), an empty
    column (column 0 is never stored), duplicate entries (summed, as scipy reads them) and each
    row's indices in shuffled order (not canonical); int64 indices when idx64; with long_row > 0,
    row 0 holds that many entries (past what a warp keeps in registers: the re-read path)."""
    import scipy.sparse as sp
    rnd = f32 if dtype == np.float32 else np.asarray
    rows = []
    for i in range(n):
        k = 0 if i == 1 else (long_row if i == 0 and long_row else int(rng.integers(1, min(12, d - 1) + 1)))
        if i == 0 and not long_row:
            k = max(k, 3)  # (a duplicate entry, below, whatever the draws: X is never canonical)
        cols = rng.integers(1, d, k)
        if k > 2:
            cols[-1] = cols[0]  # a duplicate entry
        rows.append(cols)
    indptr = np.concatenate([[0], np.cumsum([len(c) for c in rows])])
    indices = np.concatenate(rows).astype(np.int32) if indptr[-1] else np.zeros(0, np.int32)
    data = rnd(rng.standard_normal(indptr[-1]) * 2)
    X = sp.csr_matrix((data, indices, indptr), shape=(n, d))
    if idx64:
        X.indices, X.indptr = X.indices.astype(np.int64), X.indptr.astype(np.int64)
    assert not X.has_canonical_format or indptr[-1] < 3
    W, b = rnd(rng.standard_normal((C, d)) * wscale), rnd(rng.standard_normal(C) * 0.1)
    std = rnd(rng.uniform(0.5, 2.0, d))
    return X, rng.integers(0, C, n), W, b, std


def check_sparse_step(X, y, W, b, got, loss, lam, x_mean=None, x_std=None, sample_weight=None):
    """The sparse step's (J, dW, db), as numpy, against the float64 numpy backend on X made dense:
    within TOL of the compute dtype (db against db_scale where it cancels)."""
    Xd = X.toarray().astype(np.float64)
    J, dW, db = (host(a) for a in got)
    tol = TOL[dW.dtype.type]
    J_ref, dW_ref, db_ref = NP.linear_grad(Xd, y, W, b, lam, loss, None if x_std is None else
                                           (np.zeros(X.shape[1]) if x_mean is None else x_mean), x_std,
                                           sample_weight=sample_weight)
    assert rel(dW, dW_ref) <= tol, rel(dW, dW_ref)
    mean = None if x_std is None else (np.zeros(X.shape[1]) if x_mean is None else x_mean)
    assert rel(db, db_ref, db_scale(Xd, y, W, b, loss, mean, x_std, sample_weight)) <= tol
    assert abs(float(J) - J_ref) <= tol * abs(J_ref)


# ---- the compiled step's kernels (kernels/mlp.cuh), each against the numpy backend's function ----
# Each check runs the backend's method on device copies of float inputs (`dev`: numpy -> device
# array), the numpy backend's on the same values in float64, and compares; it returns the device
# results as numpy (for the thread-order tests). The kernels take float32 or float64 values.
GATHER_KINDS = {"f32": (np.float32, np.float32), "f64": (np.float64, np.float64), "u8": (np.uint8, np.float32),
                "u8f64": (np.uint8, np.float64)}


def check_gather(be, dev, rng, kind, N=11, n=6, d=9, normalised=True, weighted=True):
    """gather_rows: rows idx (repeats included) of X, normalised, with their labels and weights."""
    xdtype, dtype = GATHER_KINDS[kind]
    X = rng.integers(0, 256, (N, d)).astype(np.uint8) if xdtype == np.uint8 else rng.standard_normal((N, d)).astype(xdtype)
    normalised = normalised or xdtype == np.uint8
    mean = (rng.standard_normal(d) * 50 + 100).astype(dtype) if normalised else None
    std = rng.uniform(0.5, 60, d).astype(dtype) if normalised else None
    y, w = rng.integers(0, 5, N).astype(np.int32), rng.uniform(0, 2, N).astype(dtype)
    idx = rng.integers(0, N, n)
    out = (dev(np.full((n, d), np.nan, dtype)), dev(np.zeros(n, np.int64)),
           dev(np.full(n, np.nan, dtype)) if weighted else None)
    on = (lambda a: None if a is None else dev(a))
    be.gather_rows(dev(X), dev(idx), on(mean), on(std), dev(y), on(w) if weighted else None, out)
    ref = NP.gather_rows(X, idx, mean, std, y, w if weighted else None,
                         (np.empty((n, d), dtype), np.empty(n, np.int64), np.empty(n, dtype) if weighted else None))
    got = [host(a) for a in out]
    assert np.array_equal(got[0], ref[0]) and np.array_equal(got[1], ref[1])  # one rounding, as numpy's
    if weighted:
        assert np.array_equal(got[2], ref[2])
    return got


def check_layer(be, dev, rng, dtype, batchnorm, n=13, m=40, s=None, dh=None):
    """layer_forward then layer_backward (m > 32 columns: two column blocks, one partly used),
    against numpy in float64 on the same values. Returns the device results."""
    s = rng.standard_normal((n, m)) * 2 + 1 if s is None else s
    dh = rng.standard_normal((n, m)) if dh is None else dh
    b, gamma, beta = rng.standard_normal(m), rng.uniform(0.5, 2, m) * rng.choice([-1, 1], m), rng.standard_normal(m)
    rm, rv = rng.standard_normal(m), rng.uniform(0.5, 2, m)
    vals = [f32(a) if dtype == np.float32 else a for a in (s, dh, b, gamma, beta, rm, rv)]
    s, dh, b, gamma, beta, rm, rv = vals
    bn = (gamma, beta, rm, rv) if batchnorm else (None, None, None, None)
    d_s, d_rm, d_rv = dev(s.astype(dtype)), dev(rm.astype(dtype)), dev(rv.astype(dtype))
    d_bn = (dev(gamma.astype(dtype)), dev(beta.astype(dtype)), d_rm, d_rv) if batchnorm else bn
    out = (dev(np.full((n, m), np.nan, dtype)), dev(np.full((n, m), np.nan, dtype)) if batchnorm else None,
           dev(np.full(m, np.nan, dtype)) if batchnorm else None)
    be.layer_forward(d_s, dev(b.astype(dtype)), *d_bn, 0.1, 1e-5, out)
    r_rm, r_rv = rm.copy(), rv.copy()
    ref = (np.empty((n, m)), np.empty((n, m)), np.empty(m))
    NP.layer_forward(s.copy(), b, *((gamma, beta, r_rm, r_rv) if batchnorm else bn), 0.1, 1e-5,
                     ref if batchnorm else (ref[0], None, None))
    h, xhat, inv = (host(a) for a in out)
    tol = TOL[dtype]
    assert rel(h, ref[0]) <= tol
    if batchnorm:
        assert rel(xhat, ref[1]) <= tol and rel(inv, ref[2]) <= tol
        assert rel(host(d_rm), r_rm) <= tol and rel(host(d_rv), r_rv) <= tol
    grads = tuple(dev(np.full(m, np.nan, dtype)) if batchnorm or i == 2 else None for i in range(3))
    d_dh = dev(dh.astype(dtype))
    ds = be.layer_backward(d_dh, out[0], out[1], d_bn[0], out[2], grads)
    r_grads = (np.empty(m), np.empty(m), np.empty(m))
    r_ds = NP.layer_backward(dh.copy(), ref[0], ref[1] if batchnorm else None, gamma if batchnorm else None,
                             ref[2] if batchnorm else None, r_grads)
    assert ds is d_dh  # written in place
    ds = host(ds)
    # With batch norm ds = inv_std / n (n ghat - sum ghat - xhat sum ghat xhat) cancels to ~0 where
    # few rows are far apart (two rows: xhat = +-1, exactly 0): its rounding is measured against
    # the size of the terms it came from, inv_std |ghat|.
    terms = np.linalg.norm(ref[2] * np.abs(dh * (ref[0] > 0) * gamma)) if batchnorm else 0.0
    assert rel(ds, r_ds, terms) <= 3 * tol
    dgamma, dbeta, db = (host(a) for a in grads)
    if batchnorm:
        assert rel(dgamma, r_grads[0]) <= tol and rel(dbeta, r_grads[1]) <= tol
        # sum_i ds_i cancels to 0: its rounding is measured against the sums it came from (and
        # against the terms of ds, where ds itself cancelled)
        sums = np.linalg.norm((ref[2] * np.abs(dh * (ref[0] > 0) * gamma)).sum(0))
        assert rel(db, r_grads[2], max(np.linalg.norm(np.abs(r_ds).sum(0)), sums)) <= 3 * tol
    else:
        assert rel(db, r_grads[2], np.linalg.norm(np.abs(r_ds).sum(0))) <= tol
    return [h, xhat, inv, host(d_rm), host(d_rv), ds, dgamma, dbeta, db]


def check_scores_loss(be, dev, rng, dtype, C, loss, weighted, n=11, S=None, y=None, b=None):
    """scores_loss (the bias, the loss and dL/dS) against numpy in float64 on the same values."""
    S = np.round(rng.standard_normal((n, C)) * 3 * 64) / 64 if S is None else S  # exact margins in float32
    n = S.shape[0]
    y = rng.integers(0, C, n) if y is None else y
    b = np.round(rng.standard_normal(C) * 64) / 64 if b is None else b
    w = f32(rng.uniform(0, 2, n)) if weighted else None
    dS, L = dev(np.full((n, C), np.nan, dtype)), dev(np.full((), np.nan, dtype))
    be.scores_loss(dev(S.astype(dtype)), dev(b.astype(dtype)), dev(y), None if w is None else dev(w.astype(dtype)),
                   loss, (dS, L))
    r_dS, r_L = np.empty((n, C)), np.empty(())
    NP.scores_loss(S.astype(dtype).astype(np.float64), b.astype(dtype).astype(np.float64), y, w, loss, (r_dS, r_L))
    tol = TOL[dtype]
    dS, L = host(dS), host(L)
    assert rel(dS, r_dS) <= tol
    assert abs(float(L) - float(r_L)) <= tol * max(abs(float(r_L)), 1e-30)
    return [dS, L]


def check_update(be, dev, rng, dtype, rule, N=700, n_decay=450, lam=0.01, steps=5):
    """optimizer_update over a flat buffer (several blocks), with the penalty's gradient on the
    first n_decay entries and the step's cost and loss recorded, against numpy in float64."""
    p, g = f32(rng.standard_normal(N)), f32(rng.standard_normal(N))
    nslots = {"sgd": 0, "momentum": 1, "nesterov": 1, "adam": 2}[rule]
    hyper = {"sgd": (0.1,), "momentum": (0.1, 0.9), "nesterov": (0.1, 0.9),
             "adam": (0.9, 0.1, 0.999, 1 - 0.999, 0.01, 1e-8)}[rule]
    slots = [f32(np.abs(rng.standard_normal(N))) for _ in range(nslots)]  # Adam's v must be >= 0
    loss = f32(np.array(rng.uniform(0.5, 2)))
    d_p, d_g, d_slots = dev(p.astype(dtype)), dev(g.astype(dtype)), [dev(s.astype(dtype)) for s in slots]
    d_rec, rec = dev(np.full((2, steps), np.nan)), np.full((2, steps), np.nan)
    be.optimizer_update((rule, hyper), d_p, d_g, d_slots, lam, n_decay, dev(loss.astype(dtype)), d_rec, 2)
    r_p, r_g, r_slots = p.copy(), g.copy(), [s.copy() for s in slots]
    NP.optimizer_update((rule, hyper), r_p, r_g, r_slots, lam, n_decay, loss, rec, 2)
    tol = TOL[dtype]
    d_p, d_slots = host(d_p), [host(s) for s in d_slots]
    assert rel(d_p, r_p) <= tol
    for a, r in zip(d_slots, r_slots):
        assert rel(a, r) <= tol
    got = host(d_rec)
    assert np.isnan(got[:, [0, 1, 3, 4]]).all()  # only step 2's entries written
    assert abs(got[0, 2] - rec[0, 2]) <= tol * rec[0, 2] and got[1, 2] == float(loss)
    return [d_p] + d_slots + [got]

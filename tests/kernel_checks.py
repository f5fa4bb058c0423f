"""Comparisons shared by the kernel tests (tests/test_gpu_kernels.py on a GPU, tests/test_emulated_kernels.py
on the CPU emulator): the kernels against the float64 numpy backend."""
import numpy as np

import gpugrad as gg

NP = gg.get_backend("numpy")


def host(a):
    """a as a numpy array: a device array (cupy.ndarray, or the emulator's) through ``.get()``, as
    CuPy requires (it refuses np.asarray of a device array)."""
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

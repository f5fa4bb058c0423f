"""The fused mini-batch gradients: the fast path every backend implements.

These functions check their inputs (clear errors naming the problem), pick the backend, move
arrays to it and return results in the caller's array type (numpy in -> numpy out, cupy in ->
cupy out). The mathematics lives in the backends (``gpugrad.backends.numpy_backend`` is the
reference; ``cupy_backend`` fuses it into CUDA kernels).
"""
from __future__ import annotations

import contextlib

import numpy as np

from . import _validation
from . import sparse as _sparse
from ..backends import get_backend, is_cupy_array

__all__ = ["linear_grad", "softmax_cross_entropy_grad", "svm_grad"]


def _same(a):
    """Results already in the caller's array type: returned as they are."""
    return a


def _placement(backend, *arrays, extra=()):
    """(be, back): the backend to run on (the one asked for, else the one owning the arrays: CuPy
    for any cupy.ndarray among arrays and extra) and a function turning its results into the
    caller's array type, which `arrays` decide (numpy in -> numpy out, CuPy in -> CuPy out, with
    an explicit copy where the backend is the other one). A small call's cost is its Python, so
    each array is looked at once."""
    caller_on_gpu = any(map(is_cupy_array, arrays))
    if backend is None:
        backend = "cupy" if caller_on_gpu or any(map(is_cupy_array, extra)) else "numpy"
    be = get_backend(backend)
    if caller_on_gpu == (be.xp is not np):
        return be, _same
    return be, (get_backend("cupy").asarray if caller_on_gpu else be.to_numpy)


def _check_values(be, y, C, named):
    """Labels in [0, C) and every (name, array) in ``named`` finite: one backend call."""
    label_pos, bad = be.first_invalid(y, C, [a for _, a in named])
    _validation.raise_first_invalid(label_pos, bad, y, C, named)


def _score_loss(method, S, y, out, backend, check_finite, validate):
    """Check (S, y, out), run the backend's fused loss ``method`` on them, return (loss, dS)."""
    _validation.check_scores(S, y)
    if out is not None:
        _validation.check_out(out, S)
    be, back = _placement(backend, S, y)
    S, y = be.asarray(S), be.asarray(y)
    if validate:
        _check_values(be, y, S.shape[1], [("S", S)] if check_finite else [])
    if back is _same:  # out, if any, is the backend's own array: the kernels write into it
        return getattr(be, method)(S, y, out=out)
    loss, dS = getattr(be, method)(S, y)
    if out is None:
        return back(loss), back(dS)
    out[...] = back(dS)
    return back(loss), out


def softmax_cross_entropy_grad(S, y, *, out=None, backend=None, check_finite=True, validate=True):
    """Mean softmax cross-entropy over a batch of score rows, and its gradient.

    Args:
        S: (n, C) float32/float64 scores, one example per row.
        y: (n,) integer labels in [0, C).
        out: optional (n, C) C-contiguous array of S's type and dtype, not overlapping S, that
            receives dS (and is returned): a training loop can reuse one buffer.
        backend, check_finite, validate: as for ``linear_grad``.
    Returns:
        (loss, dS): loss a 0-d array, loss = (1/n) sum_i [log sum_j exp(S_ij) - S_i,y_i];
        dS (n, C) = (P - Y) / n with P = softmax(S) row-wise and Y the one-hot labels.

    Example:
        >>> import numpy as np, gpugrad as gg
        >>> loss, dS = gg.softmax_cross_entropy_grad(np.array([[2.0, 0.0]]), np.array([0]))
        >>> round(float(loss), 4), dS.round(4).tolist()
        (0.1269, [[-0.1192, 0.1192]])
    """
    return _score_loss("softmax_cross_entropy_grad", S, y, out, backend, check_finite, validate)


def svm_grad(S, y, *, out=None, backend=None, check_finite=True, validate=True):
    """Mean multi-class SVM (hinge) loss over a batch of score rows, and its subgradient.

    Args:
        S: (n, C) float32/float64 scores; y: (n,) integer labels in [0, C).
        out, backend, check_finite, validate: as for ``softmax_cross_entropy_grad``.
    Returns:
        (loss, dS): loss = (1/n) sum_i sum_{j != y_i} max(0, S_ij - S_i,y_i + 1);
        dS_ij = [margin_ij > 0] / n for j != y_i and dS_i,y_i = -#{j: margin_ij > 0} / n.

    Example:
        >>> import numpy as np, gpugrad as gg
        >>> loss, dS = gg.svm_grad(np.array([[1.0, 1.5, -3.0]]), np.array([0]))
        >>> float(loss), dS.tolist()
        (1.5, [[-1.0, 1.0, 0.0]])
    """
    return _score_loss("svm_grad", S, y, out, backend, check_finite, validate)


def linear_grad(X, y, W, b, lam=0.0, loss="softmax", *, x_mean=None, x_std=None, backend=None,
                check_finite=True, validate=True):
    """Cost and gradients of a linear classifier over a mini-batch (the lecture's last slides).

    J = (1/n) sum_i l(x_i, y_i, W, b) + lam ||W||^2 with scores s = W x + b, l the softmax
    cross-entropy (``loss="softmax"``) or the multi-class hinge (``loss="svm"``).

    Args:
        X: (n, d) float32/float64, one example per row. With ``x_mean``/``x_std`` ((d,) each)
           X is normalised on the fly as (X - x_mean) / x_std and may be uint8 pixels.
           Or a sparse matrix (scipy.sparse; cupyx.scipy.sparse on CuPy) with float32/float64
           values: CSR is read as it is (other formats are converted for the call), never made
           dense. A sparse X may take ``x_std`` alone, the normalisation that keeps its zeros
           zero (a per-feature scale, no centring: StandardScaler(with_mean=False)); with
           ``x_mean`` too, the centring enters through the bias and dW, never through X.
        y: (n,) integer labels in [0, C).
        W: (C, d) weights, b: (C,) bias, in X's dtype (W's dtype decides for uint8 X).
        lam: L2 strength, >= 0.
        backend: "numpy", "cupy", "auto" or None (None: the backend owning the arrays).
        check_finite: refuse NaN/Inf in X, W, b (and x_mean, x_std), naming the first one found.
            On CuPy it is one fused device-side check. On numpy W, b, x_mean and x_std are
            searched before the step and X only when J, dW or db come out NaN/Inf: a NaN or Inf
            anywhere in X reaches every class's row of dW (0 * NaN and 0 * Inf are NaN), so a
            finite result clears X without a pass over it.
        validate: run the value checks (labels in range, finite, x_std nonzero) at all. On CuPy
            they cost one small device-to-host read per call, so a training loop on trusted
            data may turn them off; then nothing is checked: a label outside [0, C) makes J NaN
            in the fused kernels and goes unnoticed on the matmul path (C > 16, among others). On
            numpy the labels are checked even with validate=False (a pass over y, microseconds;
            numpy would read y = -1 as class C-1), and only the finiteness and x_std checks are
            skipped.
    Returns:
        (J, dW, db): J a 0-d array, dW (C, d) = G^T X / n + 2 lam W, db (C,) = column means of G,
        with G = P - Y (softmax) or the hinge indicator matrix (svm).

    Example:
        >>> import numpy as np, gpugrad as gg
        >>> rng = np.random.default_rng(0)
        >>> X, y = rng.standard_normal((8, 5)), rng.integers(0, 3, 8)
        >>> J, dW, db = gg.linear_grad(X, y, np.zeros((3, 5)), np.zeros(3), lam=0.1)
        >>> bool(np.isclose(J, np.log(3))), dW.shape, db.shape
        (True, (3, 5), (3,))
    """
    _validation.check_loss_name(loss)
    lam = _validation.check_lam(lam)
    if _sparse.is_sparse(X):
        return _sparse_linear_grad(X, y, W, b, lam, loss, x_mean, x_std, backend, check_finite, validate)
    _validation.check_linear(X, y, W, b, x_mean, x_std)
    be, back = _placement(backend, X, y, W, b, extra=(x_mean, x_std))
    X, y, W, b = (be.asarray(a) for a in (X, y, W, b))
    if x_mean is not None:
        x_mean, x_std = be.asarray(x_mean), be.asarray(x_std)
    named = _linear_checks(X, W, b, x_mean, x_std, check_finite) if validate else []
    step = _numpy_linear_step if be.xp is np else _device_linear_step
    J, dW, db = step(be, X, y, W, b, lam, loss, x_mean, x_std, named, validate, check_finite)
    return back(J), back(dW), back(db)


def _device_linear_step(be, X, y, W, b, lam, loss, x_mean, x_std, named, validate, check_finite):
    """``linear_grad`` on CuPy: the labels and the ``named`` arrays checked on the device (one
    small read back) when ``validate``, then the backend's fused step."""
    if validate:
        _check_values(be, y, W.shape[0], named)
    return be.linear_grad(X, y, W, b, lam, loss, x_mean, x_std)


def _numpy_linear_step(be, X, y, W, b, lam, loss, x_mean, x_std, named, validate, check_finite):
    """``linear_grad`` on numpy: the labels always checked, every ``named`` array but X before the
    step, and X only through the results (a NaN/Inf in X makes J, dW or db NaN/Inf)."""
    C = W.shape[0]
    _check_labels(be, y, C)
    # numpy: a pass over X to look for NaN/Inf would cost about 40% of the step (14.7 ms against
    # 35-39 ms at n=10000, d=3072 on one core); everything but X is checked now, X through the
    # results (see linear_grad's check_finite).
    if validate and not all(np.isfinite(a).all() for _, a in named if a is not X):
        _check_values(be, y, C, named)  # raises; X is searched too so that it is named first
    check_x = validate and check_finite and X.dtype.kind == "f"
    # A NaN/Inf in X must end in the ValueError below, not in warnings (or errors under
    # np.seterr(all="raise")) from the arithmetic on the way.
    quiet = np.errstate(invalid="ignore", over="ignore", divide="ignore")
    with quiet if check_x else contextlib.nullcontext():
        J, dW, db = be.linear_grad(X, y, W, b, lam, loss, x_mean, x_std)
    if check_x and not (np.isfinite(J) and np.isfinite(db).all() and np.isfinite(dW).all()):
        # Raises when an input holds NaN/Inf; finite inputs whose step overflowed return as they are.
        _check_values(be, y, C, named)
    return J, dW, db


def _linear_checks(X, W, b, x_mean, x_std, check_finite):
    """The (name, array) pairs ``linear_grad``'s value check looks at, in the order it names them:
    the float inputs when ``check_finite``, and 1/x_std, whose infinities are x_std's zeros."""
    named = []
    if check_finite:
        named = [("X", X)] if X.dtype.kind == "f" else []
        named += [("W", W), ("b", b)]
        if x_mean is not None:
            named += [("x_mean", x_mean), ("x_std", x_std)]
    if x_mean is not None:
        with np.errstate(divide="ignore"):
            named.append((_validation.INV_STD, 1 / x_std.astype(np.float64)))
    return named


def _check_labels(be, y, C):
    """Labels in [0, C): two reductions over y, then the backend's search only on the error path."""
    if int(y.min()) < 0 or int(y.max()) >= C:
        _check_values(be, y, C, [])



def _sparse_linear_grad(X, y, W, b, lam, loss, x_mean, x_std, backend, check_finite, validate):
    """``linear_grad`` for a sparse X: the checks look at X's stored values only (a NaN or Inf is
    named by row and column), the step is the backend's ``sparse_linear_grad``."""
    _validation.check_sparse_linear(X, y, W, b, x_mean, x_std)
    be, back = _placement(backend, X.data, y, W, b, extra=(x_mean, x_std))
    X = _sparse.to_backend(be, X)
    y, W, b = (be.asarray(a) for a in (y, W, b))
    x_mean, x_std = (None if v is None else be.asarray(v) for v in (x_mean, x_std))
    if validate:
        named = [("W", W), ("b", b)] if check_finite else []
        for name, v in (("x_mean", x_mean), ("x_std", x_std)):
            if v is not None and check_finite:
                named.append((name, v))
        if x_std is not None:
            with np.errstate(divide="ignore"):
                named.append((_validation.INV_STD, 1 / x_std.astype(np.float64)))
        values = [X.data] if check_finite else []
        label_pos, bad = be.first_invalid(y, W.shape[0], values + [a for _, a in named])
        if check_finite and bad[0] >= 0 and label_pos < 0:
            row, col = _sparse.locate(X, bad[0])
            raise ValueError(_sparse.nonfinite_message("X", row, col, float(X.data[bad[0]]))
                             + " (pass check_finite=False to skip this check)")
        _validation.raise_first_invalid(label_pos, bad[len(values):], y, W.shape[0], named)
    elif be.xp is np:
        _check_labels(be, y, W.shape[0])  # numpy would read -1 as the last class
    J, dW, db = be.linear_grad(X, y, W, b, lam, loss, x_mean, x_std)
    return back(J), back(dW), back(db)

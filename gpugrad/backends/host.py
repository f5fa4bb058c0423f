"""The numpy backend's compiled loops: ``kernels/host.c``, built as the ``_gpugrad_host`` extension.

A small model's training step on the CPU is dominated by numpy's per-call overhead, not its
arithmetic: ``NumpyBackend.layer_forward`` is ~20 numpy calls on a (100, 50) array, the fused
optimiser update 6 passes over every parameter. The extension runs each of those functions as one
compiled call (as ``kernels/mlp.cuh`` runs each as one kernel on a card), with numpy's arithmetic in
numpy's order: the same results bit for bit (tests/test_host.py), only sooner. Not bit for bit:
the softmax loss (its exp and log the C library's, within an ulp of numpy's; the mean summed in
double), and the sparse step (``sparse_sgd``'s algorithm in an order of its own).

It is optional. ``pip install`` builds it where a C compiler is at hand and goes on without it
where none is; the numpy code is then used, with the same results. ``GPUGRAD_HOST=0`` in the
environment turns it off; ``available()`` says whether it is in use.

Each function here returns True (or its result) when the loop ran, False (None) when its arguments
are not what the loop takes (another dtype, a non-contiguous array, a one-column layer, whose
column sums numpy adds pairwise rather than row by row) and the caller's numpy code must run
instead: every array is checked before any is written, so a refusal leaves them untouched.

    >>> import numpy as np
    >>> s, b, h = np.array([[1.0, -2.0], [3.0, -4.0]]), np.zeros(2), np.empty((2, 2))
    >>> if available():
    ...     assert call("layer_forward", (s, b, None, None, None, None, 0.1, 1e-5, (h, None, None)))
    ...     print(h.tolist())
    ... else:
    ...     print([[1.0, 0.0], [3.0, 0.0]])
    [[1.0, 0.0], [3.0, 0.0]]
"""
from __future__ import annotations

import functools
import os

import numpy as np

try:
    import _gpugrad_host as _ext
except ImportError:  # built without a C compiler: the numpy code runs instead
    _ext = None

__all__ = ["available", "call", "fixed", "update", "softmax_ce", "takes_csr", "records", "sparse_step",
           "sparse_scratch", "sparse_catch_up"]

_ON = os.environ.get("GPUGRAD_HOST", "1").strip().lower() not in ("0", "false", "no", "off")
_RULES = {"sgd": 0, "momentum": 1, "nesterov": 2, "adam": 3}
_REFUSED = (TypeError, ValueError, BufferError)  # raised by the extension before it writes anything


def available() -> bool:
    """Whether the compiled loops are built and turned on (``GPUGRAD_HOST`` not 0)."""
    return _ext is not None and _ON


def _takes(s) -> bool:
    """Whether s (n, m) is a numpy float32/float64 array the loops take: m >= 2, so that numpy's
    column sums add the rows in order, as the loops do."""
    return (_ext is not None and _ON and type(s) is np.ndarray and s.ndim == 2 and s.shape[1] >= 2
            and s.dtype.char in "fd")


def _layer(op, args):
    """(the loop, its arguments) for ``NumpyBackend.<op>(*args)``, op ``layer_forward`` or
    ``layer_backward``; (None, None) for another op or where ``_takes`` says no."""
    if op == "layer_forward":
        s, b, gamma, beta, running_mean, running_var, momentum, eps, (h, xhat, inv_std) = args
        bound = (s, b, gamma, beta, running_mean, running_var, float(momentum), float(eps), h, xhat, inv_std)
    elif op == "layer_backward":
        dh, h, xhat, gamma, inv_std, (dgamma, dbeta, db) = args
        bound = (dh, h, xhat, gamma, inv_std, dgamma, dbeta, db)
    else:
        return None, None
    if not _takes(bound[0]):
        return None, None
    return getattr(_ext, op), (*bound[0].shape, *bound)


def call(op, args) -> bool:
    """``NumpyBackend.<op>(*args)`` (a layer function, its arguments as the backend takes them) as
    one compiled call; False, nothing written, where the loop does not take them."""
    loop, bound = _layer(op, args)
    if loop is None:
        return False
    try:
        loop(*bound)
    except _REFUSED:
        return False
    return True


def fixed(op, args):
    """A call of ``NumpyBackend.<op>(*args)`` (``layer_forward`` or ``layer_backward``) with its
    arrays fixed, as a compiled step's instructions have them: the loop itself with its arguments
    bound (no checks in Python from call to call), or None when the loop does not take them. It is
    tried once, on copies, so that a refusal shows now and not in the middle of a step."""
    loop, bound = _layer(op, args)
    arrays = [a for a in bound or () if isinstance(a, np.ndarray)]
    if loop is None or not all(a.flags.c_contiguous and a.flags.writeable for a in arrays):
        return None
    try:
        loop(*(a.copy() if isinstance(a, np.ndarray) else a for a in bound))
    except _REFUSED:
        return None
    return functools.partial(loop, *bound)


def update(name, hyper, p, g, slots, two_lam, n_decay) -> bool:
    """``NumpyBackend.optimizer_update``'s penalty and rule (not its record) as one pass:
    g[:n_decay] += two_lam p[:n_decay], then the rule ``name`` with hyperparameters ``hyper``
    (Python floats) on p, g and the slot arrays, all 1-D of one dtype."""
    if _ext is None or not _ON or type(p) is not np.ndarray or p.dtype.char not in "fd":
        return False
    try:
        _ext.update(_RULES[name], p.size, n_decay if two_lam else 0, two_lam, p, g,
                    slots[0] if slots else None, slots[1] if len(slots) > 1 else None, hyper)
    except _REFUSED:
        return False
    return True


def softmax_ce(S, y, out):
    """``NumpyBackend.softmax_cross_entropy_grad`` as one call: (the mean loss as a Python float, dS
    written into ``out``, or a new array when out is None), or None when refused (labels out of
    range included: the numpy code then says which). Its exp and log are the C library's, within
    an ulp of numpy's; the loss is summed in double."""
    if not (_ext is not None and _ON and type(S) is np.ndarray and S.ndim == 2 and S.dtype.char in "fd"
            and type(y) is np.ndarray and y.dtype == np.int64 and y.shape == S.shape[:1] and out is not S):
        return None
    if out is None:
        out = np.empty(S.shape, S.dtype)
    try:
        return _ext.softmax_ce(S.shape[0], S.shape[1], S, y, out), out
    except _REFUSED:
        return None


def takes_csr(X, W) -> bool:
    """Whether ``sparse_step`` takes the CSR matrix X with weights W (d, C): int32 indices and
    row pointers, values of W's dtype (float32 or float64)."""
    return (_ext is not None and _ON and type(W) is np.ndarray and W.dtype.char in "fd" and X.data.dtype == W.dtype
            and type(X.data) is np.ndarray and X.indices.dtype == np.int32 and X.indptr.dtype == np.int32)


_SPARE = []  # the buffer of the last records given back (``release``), for the next ``records``
SPARE_BYTES = 64 << 20  # the largest such buffer kept (one, for the life of the process)


def records(W, V):
    """The state of ``sparse_step`` for weights W^T and velocities V^T (d, C), any layout: (Z,
    views). Z: d records of bytes (uint8, (d, size), starting on a cache line), one a column,
    holding its row of W^T and of V^T (copies, each padded with zeros to whole vectors), its gram
    (w.w, w.v, v.v, zero here) and its last step (0); views: (W^T, V^T, gram, last) as (d, C),
    (d, C), (d, 3) and (d,) views into Z. ``release(Z)`` once done with them."""
    d, C = W.shape
    P, size, at_gram, at_last = _ext.record_layout(C, W.itemsize)
    raw = _zeros(d * size + 64)
    start = -raw.ctypes.data % 64
    Z = raw[start:start + d * size].reshape(d, size)
    width, v0 = C * W.itemsize, P * W.itemsize
    views = (Z[:, :width].view(W.dtype), Z[:, v0:v0 + width].view(W.dtype),
             Z[:, at_gram:at_gram + 24].view(np.float64), Z[:, at_last:at_last + 8].view(np.int64)[:, 0])
    views[0][...], views[1][...] = W, V
    return Z, views


def release(Z):
    """Give the buffer of ``records``' Z back (Z and its views no longer used): the next ``records``
    of the same size fills it rather than fresh pages. (The first touch of fresh pages costs about a
    millisecond a MB, a few steps' time for a vocabulary's records; a Dask worker's malloc returns
    large blocks to the system on free, so each chunk task of a pass would pay it.) One buffer is
    kept, the last one given back, where it is at most SPARE_BYTES."""
    raw = Z.base if Z.base is not None else Z
    _SPARE[:] = [raw] if raw.nbytes <= SPARE_BYTES else []


def _zeros(nbytes):
    """nbytes zero bytes (uint8): the spare buffer (``release``) where it has that size, else new."""
    try:
        raw = _SPARE.pop()
    except IndexError:  # (none, or another thread took it)
        raw = None
    if raw is None or raw.size != nbytes:
        return np.zeros(nbytes, np.uint8)
    raw[...] = 0
    return raw


def sparse_step(X, rows, y, sample_weight, b, inv_std, Z, marks, count, A, r, groups, lr, mu, two_lam, nesterov, svm,
                work, iwork, db):
    """One lazy momentum step of ``gpugrad.sparse_sgd`` (its ``_Momentum``'s state) on the rows
    ``rows`` of CSR X: (the batch's loss, ||W||^2 before the step, the batch's column count), db
    written. Z: the columns' records (``records``); marks: (d + 63) // 64 uint64 zeros (left zero);
    count: (d,) int32 scratch; work and iwork: scratch of b's dtype and int64 (``sparse_scratch``);
    A: the window's maps, float64 (at least r + 2 of 2 x 2; A[s] brings a column last at step s to
    step r), which the step moves on to step r + 1 (A[s] <- M A[s], A[r + 1] = I).
    Every array is checked (rows, labels and columns in range, marks clear) before any but count is
    written; ValueError when they are not what the step takes (``takes_csr`` says first)."""
    return _ext.sparse_step(b.shape[0], len(rows), Z.shape[0], X.data, X.indices, X.indptr, rows, y, sample_weight,
                            b, inv_std, Z, marks, count, A, r, groups, float(lr), float(mu), float(two_lam),
                            int(nesterov), int(svm), work, iwork, db)


def sparse_scratch(C, dtype, n, e, d):
    """(work, iwork): how many values of ``dtype`` and of int64 ``sparse_step`` takes as scratch for a
    batch of n rows and e entries among d columns (C classes)."""
    return _ext.sparse_scratch(C, np.dtype(dtype).itemsize, n, e, d)


def sparse_catch_up(Z, C, dtype, A, r):
    """Every column of ``sparse_step``'s records Z brought from its last step to step r through the
    2 x 2 map A[last] (A (r + 1, 2, 2); a column at step r as it is), its gram (w.w, w.v, v.v)
    recomputed and its last step set to 0: the start of a new window. Returns the sums of the
    grams."""
    return _ext.sparse_catch_up(C, Z.shape[0], np.dtype(dtype).itemsize, Z, A, r)

"""Input checks for the fused mini-batch functions: clear errors that name the problem.

Structural checks (types, ndim, shapes, dtypes, lam, loss name) look only at metadata, so they
cost nothing on a GPU. Value checks (labels in range, finite inputs) need the data: they run as
one backend call (`Backend.first_invalid`), which on CuPy is a single fused device-side kernel
read back once. Pass ``validate=False`` to the public functions to skip that read-back.
"""
from __future__ import annotations

import numpy as np

from ..backends import is_array
from .sparse import refuse_sparse_labels

LOSSES = ("softmax", "svm")
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
INV_STD = "1/x_std"  # checked for finiteness to find zeros in x_std in the same fused pass


def require_array(name: str, a) -> None:
    """numpy.ndarray or cupy.ndarray: anything else is refused, never silently converted."""
    if not is_array(a):
        raise TypeError(f"{name} must be a numpy.ndarray or cupy.ndarray, got {type(a).__name__}")


def check_loss_name(loss) -> None:
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; expected one of {', '.join(map(repr, LOSSES))}")


def check_lam(lam) -> float:
    try:
        lam = float(lam)
    except (TypeError, ValueError):
        raise TypeError(f"lam must be a real number, got {type(lam).__name__}") from None
    if not np.isfinite(lam) or lam < 0:
        raise ValueError(f"lam must be a finite number >= 0, got {lam}")
    return lam


def check_two_classes(classes, who: str) -> None:
    """A classifier needs examples of two classes at least (scikit-learn's rule, and its words).

        >>> check_two_classes([3], "SoftmaxClassifier")
        Traceback (most recent call last):
        ...
        ValueError: SoftmaxClassifier needs samples of at least 2 classes, but the data contain only one class: [3]
    """
    classes = list(classes)
    if len(classes) < 2:
        raise ValueError(f"{who} needs samples of at least 2 classes, but the data contain only "
                         f"one class: {classes}")


def check_labels_shape(y, n: int, what: str = "rows of X") -> None:
    """y must be a 1-D integer array with one label per row."""
    require_array("labels y", y)
    if y.dtype.kind not in "iu":
        raise TypeError(f"labels y must be integers (class indices), got dtype {y.dtype}")
    if y.ndim != 1:
        raise ValueError(f"labels y must be 1-D (n,), got shape {tuple(y.shape)}")
    if y.shape[0] != n:
        raise ValueError(f"labels y has {y.shape[0]} entries but there are {n} {what}")


def check_scores(S, y) -> None:
    """S (n, C) float scores and y (n,) integer labels, as the fused losses take them."""
    require_array("scores S", S)
    if S.ndim != 2:
        raise ValueError(f"scores S must be 2-D (n, C), got shape {tuple(S.shape)}")
    if S.dtype not in FLOAT_DTYPES:
        raise TypeError(f"scores S must be float32 or float64, got dtype {S.dtype}")
    if S.shape[0] == 0:
        raise ValueError("empty batch: scores S has 0 rows")
    if S.shape[1] == 0:
        raise ValueError("scores S has 0 columns (classes)")
    check_labels_shape(y, S.shape[0], "rows of S")


def check_out(out, S) -> None:
    """``out`` for dS: an array of S's type, shape and dtype, C-contiguous, not overlapping S."""
    require_array("out", out)
    if type(out) is not type(S):
        raise TypeError(f"out must be the same kind of array as S ({_kind(S)}), got {_kind(out)}")
    if out.shape != S.shape:
        raise ValueError(f"out has shape {tuple(out.shape)}, but dS has S's shape {tuple(S.shape)}")
    if out.dtype != S.dtype:
        raise TypeError(f"out has dtype {out.dtype}, but dS has S's dtype {S.dtype}")
    if not out.flags.c_contiguous:
        raise ValueError("out must be C-contiguous (the kernels write dS row after row)")
    if _may_share_memory(out, S):
        raise ValueError("out overlaps S: dS needs memory of its own")


def _kind(a) -> str:
    """An array's class as users know it: numpy.ndarray, cupy.ndarray."""
    return f"{type(a).__module__.split('.')[0]}.{type(a).__name__}"


def _may_share_memory(a, b) -> bool:
    """Whether the memory bounds of two arrays of one kind (numpy or cupy) overlap."""
    if isinstance(a, np.ndarray):
        return bool(np.may_share_memory(a, b))
    import cupy  # a cupy.ndarray was passed: cupy is there
    return bool(cupy.may_share_memory(a, b))


def _batch_sizes(X, W, b):
    """(n, d, C) of a linear step's X (n, d), W (C, d) and b (C,), refusing W or b of another
    shape, an empty batch and no class."""
    n, d = X.shape
    if W.ndim != 2 or W.shape[1] != d:
        raise ValueError(f"W has shape {tuple(W.shape)} but X has shape {tuple(X.shape)}: "
                         f"W must be (C, d) with d = {d}")
    C = W.shape[0]
    if b.ndim != 1 or b.shape[0] != C:
        raise ValueError(f"b has shape {tuple(b.shape)} but W has shape {tuple(W.shape)}: "
                         f"b must be (C,) with C = {C}")
    if n == 0:
        raise ValueError("empty batch: X has 0 rows")
    if C == 0:
        raise ValueError("W has 0 rows: there must be at least one class")
    return n, d, C


def check_linear(X, y, W, b, x_mean=None, x_std=None):
    """Shapes and dtypes of ``linear_grad``'s inputs; returns the compute dtype.

    X (n, d) float32/float64 (or uint8 when x_mean/x_std are given), W (C, d), b (C,),
    y (n,) integers; W and b share the compute dtype, which is X's unless X is uint8.
    """
    for name, a in (("X", X), ("W", W), ("b", b)):
        require_array(name, a)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n, d) with one example per row, got shape {tuple(X.shape)}")
    if W.ndim != 2:
        raise ValueError(f"W must be 2-D (C, d), got shape {tuple(W.shape)}")
    if b.ndim != 1:
        raise ValueError(f"b must be 1-D (C,), got shape {tuple(b.shape)}")
    n, d, C = _batch_sizes(X, W, b)
    normalised = x_mean is not None or x_std is not None
    if normalised:
        if x_mean is None or x_std is None:
            raise ValueError("x_mean and x_std must be given together")
        for name, v in (("x_mean", x_mean), ("x_std", x_std)):
            require_array(name, v)
            if v.shape != (d,):
                raise ValueError(f"{name} must have shape ({d},) (one value per feature of X), "
                                 f"got {tuple(v.shape)}")
        if X.dtype not in FLOAT_DTYPES and X.dtype != np.uint8:
            raise TypeError(f"X must be uint8, float32 or float64 with x_mean/x_std, got dtype {X.dtype}")
    elif X.dtype not in FLOAT_DTYPES:
        hint = " (uint8 pixels need x_mean and x_std)" if X.dtype == np.uint8 else ""
        raise TypeError(f"X must be float32 or float64, got dtype {X.dtype}{hint}")
    dtype = W.dtype if X.dtype == np.uint8 else X.dtype
    if W.dtype not in FLOAT_DTYPES:
        raise TypeError(f"W must be float32 or float64, got dtype {W.dtype}")
    if W.dtype != dtype or b.dtype != dtype:
        raise TypeError(f"W ({W.dtype}) and b ({b.dtype}) must have X's dtype ({dtype})")
    check_labels_shape(y, n)
    return dtype


def raise_first_invalid(label_pos, bad_pos, y, C, named, hint=" (pass check_finite=False to skip this check)"):
    """Turn the positions found by ``Backend.first_invalid`` into one clear error.

    label_pos: index of the first label outside [0, C), or -1. bad_pos: for each (name, array)
    in ``named``, the flat index of its first NaN/Inf, or -1. Reads back only the offending value.
    hint: what the NaN/Inf message adds (how the caller may skip the check).
    """
    if label_pos >= 0:
        value = int(y[label_pos])
        raise ValueError(f"label y[{label_pos}] = {value} is outside [0, {C}) "
                         f"(there are C = {C} classes)")
    for (name, a), pos in zip(named, bad_pos):
        if pos >= 0 and name == INV_STD:
            raise ValueError(f"x_std contains 0 at index {int(pos)}: a constant feature cannot be "
                             "normalised (use x_std = 1 for it)")
        if pos >= 0:
            idx = tuple(int(i) for i in np.unravel_index(int(pos), a.shape))
            value = float(a[idx])
            kind = "NaN" if np.isnan(value) else ("inf" if value > 0 else "-inf")
            where = idx if len(idx) != 1 else idx[0]
            raise ValueError(f"{name} contains {kind} at index {list(where) if isinstance(where, tuple) else where}"
                             + hint)


def check_sparse_linear(X, y, W, b, x_mean=None, x_std=None):
    """Shapes and dtypes of ``linear_grad``'s inputs when X is a sparse matrix (``gpugrad.sparse``):
    X (n, d) with float32/float64 stored values, W (C, d) and b (C,) in X's dtype, y (n,) integers;
    ``x_std`` (d,) alone (the sparsity-keeping scale) or with ``x_mean`` (d,) (applied without
    centring X in memory). Returns the compute dtype."""
    refuse_sparse_labels(y)
    for name, a in (("W", W), ("b", b)):
        require_array(name, a)
    if len(X.shape) != 2:
        raise ValueError(f"X must be 2-D (n, d) with one example per row, got a sparse matrix of shape "
                         f"{tuple(X.shape)}")
    if X.dtype not in FLOAT_DTYPES:
        raise TypeError(f"a sparse X must hold float32 or float64 values, got dtype {X.dtype} "
                        "(convert it once: X.astype(numpy.float32))")
    n, d, C = _batch_sizes(X, W, b)
    if x_mean is not None and x_std is None:
        raise ValueError("x_mean needs x_std (a sparse X may take x_std alone: a per-feature scale)")
    for name, v in (("x_mean", x_mean), ("x_std", x_std)):
        if v is not None:
            require_array(name, v)
            if v.shape != (d,):
                raise ValueError(f"{name} must have shape ({d},) (one value per feature of X), "
                                 f"got {tuple(v.shape)}")
    if W.dtype != X.dtype or b.dtype != X.dtype:
        raise TypeError(f"W ({W.dtype}) and b ({b.dtype}) must have X's dtype ({X.dtype})")
    check_labels_shape(y, n)
    return X.dtype

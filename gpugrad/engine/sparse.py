"""Sparse inputs: ``scipy.sparse`` matrices on numpy, ``cupyx.scipy.sparse`` matrices on CuPy.

Bag-of-words and TF-IDF features have 10^4 to 10^6 columns and a fraction of a percent of them
filled; made dense, such an X does not fit in memory. gpugrad takes them as they are:

- CSR is the working format (a row's non-zeros next to each other: a mini-batch is a row
  selection, the step reads each row once). CSC, COO and the other formats are converted to CSR
  once, where the data enter (``as_csr``); int32 and int64 indices are both kept as they are;
  duplicate entries (summed, as scipy reads them) and unsorted indices need no clean-up.
- X is never made dense, in the step or in the checks: the finiteness check looks at the stored
  values only and names the row and column of the first NaN or Inf (``check_finite``).
- The normalisation of sparse data keeps the zeros zero: a per-feature scale, no centring, as
  scikit-learn's ``StandardScaler(with_mean=False)`` (``column_scale``). Where a model does carry
  a mean (``x_mean``), the fused step applies it without forming X - mean:
  S = X (W / std)^T + (b - (W / std) mean) and dW = (G^T X - db mean^T) / std.

    >>> import numpy as np, scipy.sparse as sp
    >>> X = sp.csr_matrix(np.array([[0.0, 2.0], [0.0, 0.0], [4.0, 0.0]]))
    >>> column_scale(X).round(4).tolist()
    [1.8856, 0.9428]
"""
from __future__ import annotations

import numpy as np

__all__ = ["is_sparse", "is_cupy_sparse", "as_csr", "with_dtype", "first_nonfinite", "check_finite",
           "column_scale", "to_backend", "refuse_sparse_labels"]

def is_sparse(a) -> bool:
    """Whether ``a`` is a scipy.sparse matrix or array, or a cupyx.scipy.sparse matrix (told by its
    class's module: nothing is imported).

        >>> import numpy as np, scipy.sparse as sp
        >>> is_sparse(sp.eye(3, format="csr")), is_sparse(np.eye(3))
        (True, False)
    """
    module = type(a).__module__
    return module.startswith("scipy.sparse") or (module.startswith("cupyx") and "sparse" in module)


def is_cupy_sparse(a) -> bool:
    """Whether ``a`` is a cupyx.scipy.sparse matrix (the device's sparse matrices)."""
    module = type(a).__module__
    return module.startswith("cupyx") and "sparse" in module


def as_csr(X, dtype=None):
    """X as a CSR matrix of the same library, its stored values in ``dtype`` (None: as they are).

    CSR is returned as it is when its values already have the dtype; another dtype copies the
    values only (the index arrays are shared); other formats are converted once (``tocsr``).

        >>> import numpy as np, scipy.sparse as sp
        >>> X = sp.coo_matrix(([1.0, 2.0], ([0, 2], [1, 0])), shape=(3, 2))
        >>> Y = as_csr(X, np.float32)
        >>> Y.format, Y.dtype.name, Y.toarray().tolist()
        ('csr', 'float32', [[0.0, 1.0], [0.0, 0.0], [2.0, 0.0]])
    """
    if getattr(X, "format", None) != "csr":
        X = X.tocsr()
    return with_dtype(X, dtype)


def with_dtype(X, dtype):
    """CSR X (scipy matrix or array, or a device matrix) with its stored values in dtype, a matrix of
    X's own class sharing X's index arrays (X itself when the values already have the dtype)."""
    if dtype is None or X.dtype == np.dtype(dtype):
        return X
    return type(X)((X.data.astype(dtype), X.indices, X.indptr), shape=X.shape, copy=False)


def _host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


def locate(X, pos: int) -> tuple[int, int]:
    """(row, column) of the stored value number ``pos`` of CSR X."""
    indptr = _host(X.indptr)
    row = int(np.searchsorted(indptr, pos, side="right")) - 1
    return row, int(_host(X.indices[pos:pos + 1])[0])


def first_nonfinite(X):
    """(row, column, value) of the first NaN or Inf among the stored values of CSR X (in storage
    order: rows in order), or None. One pass over the values, none over the zeros."""
    data = X.data
    if data.dtype.kind != "f":
        return None
    xp = _xp_of(X)
    bad = ~xp.isfinite(data)
    if not bool(bad.any()):
        return None
    pos = int(xp.argmax(bad))
    row, col = locate(X, pos)
    return row, col, float(_host(data[pos:pos + 1])[0])


def nonfinite_message(name: str, row: int, col: int, value: float) -> str:
    kind = "NaN" if value != value else ("inf" if value > 0 else "-inf")
    return f"{name} contains {kind} at row {row}, column {col} (a stored value of the sparse matrix)"


def check_finite(X, name="X", hint="") -> None:
    """Raise a ValueError naming the row and column of the first NaN/Inf stored in CSR X."""
    bad = first_nonfinite(X)
    if bad is not None:
        raise ValueError(nonfinite_message(name, *bad) + hint)


def column_scale(X) -> np.ndarray:
    """(d,) float64 per-feature scale of sparse X (n, d): the standard deviation of each column over
    all n rows, zeros included, and 1 for a constant column, as
    ``StandardScaler(with_mean=False).fit(X).scale_``. X / scale keeps every zero zero.

    std_j = sqrt((1/n) sum_i (X_ij - mean_j)^2), computed from the stored values as
    ((1/n) (sum_{stored} (x - mean_j)^2 + (n - stored_j) mean_j^2)) ^ 1/2, so without a pass over
    the zeros; duplicate entries are summed first (on a copy, only when X has any).
    """
    X = as_csr(X)
    if not getattr(X, "has_canonical_format", True):
        X = X.copy()
        X.sum_duplicates()
    xp = _xp_of(X)
    n, d = X.shape
    cols = X.indices
    data = X.data.astype(np.float64)
    mean = xp.bincount(cols, weights=data, minlength=d) / n
    dev = data - mean[cols]
    stored = xp.bincount(cols, minlength=d)
    var = (xp.bincount(cols, weights=dev * dev, minlength=d) + (n - stored) * mean * mean) / n
    std = np.sqrt(_host(var))
    std[std == 0] = 1.0
    return std


def _xp_of(X):
    """The array module of X's arrays: numpy, or CuPy for a device matrix."""
    from ..backends import backend_for  # import circle: the backends take is_sparse from here
    return backend_for(X.data).xp


def to_backend(be, X, dtype=None):
    """Sparse X as the backend ``be`` takes it: CSR on its device (scipy.sparse for numpy,
    cupyx.scipy.sparse for CuPy; one copy across when X is elsewhere), values in dtype."""
    on_device = be.xp is not np
    if on_device and not is_cupy_sparse(X):
        X = as_csr(X, dtype)
        return be.sparse_module().csr_matrix((be.asarray(X.data), be.asarray(X.indices), be.asarray(X.indptr)),
                                             shape=X.shape)
    if not on_device and is_cupy_sparse(X):
        X = X.get()
    return as_csr(X, dtype)


def refuse_sparse_labels(y, name="y") -> None:
    """Labels are one value per row: a sparse matrix is refused with what to pass instead."""
    if is_sparse(y):
        raise TypeError(f"labels {name} must be a 1-D array of labels, got a sparse matrix "
                        f"({type(y).__name__}, shape {tuple(y.shape)}); pass {name}.toarray().ravel()")

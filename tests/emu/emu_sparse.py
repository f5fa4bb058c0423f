"""cupyx.scipy.sparse on the emulated device: a CSR matrix whose arrays are emulator device arrays.

The CuPy backend's sparse step reads a device CSR matrix's ``data``, ``indices`` and ``indptr``
and hands them to its kernels; this stand-in gives it exactly that, with the rest of what the
library asks of a cupyx matrix (row selection, products for the cuSPARSE path, ``get``) done by
scipy on the host. Its class claims a "cupyx..." module, which is how gpugrad tells a device's
sparse matrix from a scipy one. ``install(backend)`` makes it the backend's ``sparse_module``.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from . import arrays as A


def _host(a):
    """The values of a device array (no synchronisation counted: the stand-in's own bookkeeping)
    or of host data."""
    return a._a if isinstance(a, A.EmuArray) else np.asarray(a)


def _dev(host: np.ndarray, op: str | None = None) -> A.EmuArray:
    """host's values in a fresh device array: the result of the library call ``op`` (counted as a
    launch reading nothing it can tell and writing the result), or an upload when op is None."""
    host = np.ascontiguousarray(host)
    if op is None:
        return A._upload(host, "sparse")
    out = A.device_empty(host.shape, host.dtype, op)
    out._a[...] = host
    A._launch(op, 0, host.nbytes)
    return out


class csr_matrix:
    """A CSR matrix on the emulated device (data, indices, indptr: EmuArrays)."""

    format = "csr"
    ndim = 2
    __array_ufunc__ = None  # a device array @ this matrix comes to __rmatmul__

    def __init__(self, arg, shape=None, dtype=None, copy=False):
        if isinstance(arg, tuple):
            data, indices, indptr = arg
            self.shape = tuple(shape)
        else:
            host = sp.csr_matrix(arg.get() if isinstance(arg, csr_matrix) else arg)
            data, indices, indptr = host.data, host.indices, host.indptr
            self.shape = host.shape
        self.data, self.indices, self.indptr = (a if isinstance(a, A.EmuArray) and not copy else _dev(_host(a))
                                                for a in (data, indices, indptr))
        if dtype is not None and self.data.dtype != np.dtype(dtype):
            self.data = _dev(_host(self.data).astype(dtype))

    dtype = property(lambda self: self.data.dtype)
    nnz = property(lambda self: self.data.size)
    has_canonical_format = property(lambda self: self.get().has_canonical_format)

    def get(self) -> sp.csr_matrix:
        return sp.csr_matrix((_host(self.data), _host(self.indices), _host(self.indptr)), shape=self.shape)

    def tocsr(self):
        return self

    def copy(self):
        return csr_matrix(self.get())

    def astype(self, dtype):
        return csr_matrix((self.data.astype(dtype), self.indices, self.indptr), shape=self.shape)

    def __getitem__(self, key):
        if isinstance(key, np.ndarray):
            key = _host(key)
        return csr_matrix(self.get()[key])

    def __matmul__(self, other):
        return _dev(self.get() @ _host(other), "cusparse.spmm")

    def __rmatmul__(self, other):
        return _dev(_host(other) @ self.get(), "cusparse.spmm")


csr_matrix.__module__ = "cupyx_emulated.scipy.sparse"


def install(backend):
    """Make this module the backend's device sparse module (``Backend.sparse_module``)."""
    import sys
    backend.sparse_module = lambda: sys.modules[__name__]
    return backend

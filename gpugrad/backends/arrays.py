"""Telling numpy and CuPy arrays apart, and moving arrays between them explicitly.

CuPy refuses implicit conversions both ways (``np.asarray`` of a device array raises TypeError;
a numpy array as an operand of a device array, too): every move between host and device goes
through ``move_to`` (or ``to_host``), so it is one visible copy, never an accident.

    >>> import numpy as np
    >>> move_to(np, [1, 2]).tolist(), is_cupy_array(np.zeros(2))
    ([1, 2], False)
"""
from __future__ import annotations

import sys

import numpy as np

__all__ = ["is_cupy_array", "is_array", "is_dask_collection", "to_host", "move_to"]


def is_cupy_array(a) -> bool:
    """Whether a is a cupy.ndarray, told by its class's module: a numpy-only machine never imports cupy."""
    return type(a).__module__.startswith("cupy")


def is_array(a) -> bool:
    """numpy.ndarray or cupy.ndarray."""
    return isinstance(a, np.ndarray) or is_cupy_array(a)


def is_dask_collection(a) -> bool:
    """Whether ``a`` is a Dask collection (array, dataframe, delayed, ...).

    Never imports Dask: when it has not been imported, nothing can be a Dask collection.

        >>> is_dask_collection([1, 2])
        False
    """
    dask = sys.modules.get("dask")
    return dask is not None and dask.is_dask_collection(a)


def to_host(a):
    """`a` as a numpy array: a cupy.ndarray copied to the host (``.get()``, a synchronisation);
    anything else as ``np.asarray`` makes it (no copy for a numpy array)."""
    return a.get() if is_cupy_array(a) else np.asarray(a)


def move_to(xp, a, dtype=None):
    """`a` as an array of the module `xp` (numpy or cupy) in `dtype` (its own when None): a
    cupy.ndarray for numpy through the host copy ``.get()``; host data for cupy through
    ``cupy.asarray`` (a copy to the current device); an array of xp itself as it is (cast if asked)."""
    if xp is np and is_cupy_array(a):
        host = a.get()
        return host if dtype is None else host.astype(dtype, copy=False)
    return xp.asarray(a, dtype=dtype)

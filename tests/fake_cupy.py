"""CuPy faked, for exercising the CuPy backend's host code without a GPU.

``fake_backend(monkeypatch)`` gives a CupyBackend whose array functions make FakeArray objects
(shape, dtype, a 256-byte aligned pointer, nothing on a device) and whose kernels record their
launches in ``backend.launches`` instead of running. Used by tests/test_launch_args.py (each
launch against its kernel's PTX signature) and benchmarks/test_launch_overhead.py (the Python
cost of a call).
"""
import math
import types

import numpy as np

from gpugrad.backends import cupy_backend as cb

H100 = dict(sm_count=132, smem_optin=232448, cc=90)


class _Flags:
    c_contiguous = True


class _Data:
    ptr = 0x7F0000000000  # 256-byte aligned, as CuPy's allocations are


class FakeArray:
    """Just enough of cupy.ndarray for the backend's launch code."""

    flags = _Flags()
    data = _Data()

    def __init__(self, shape, dtype):
        self.shape = tuple(shape) if isinstance(shape, (tuple, list)) else (shape,)
        self.dtype = np.dtype(dtype)
        self.itemsize = self.dtype.itemsize
        self.size = math.prod(self.shape)

    @property
    def ndim(self):
        return len(self.shape)

    def astype(self, dtype):
        return FakeArray(self.shape, dtype)

    def __getitem__(self, key):
        return FakeArray(self.shape, self.dtype)

    def __rtruediv__(self, other):
        return FakeArray(self.shape, self.dtype)

    def get(self):
        return np.full(self.shape, np.iinfo(np.uint64).max, dtype=np.uint64)  # "nothing invalid"


def _like(a, dtype=None):
    return FakeArray(a.shape, dtype or a.dtype)


FAKE_CUPY = types.SimpleNamespace(
    empty=lambda shape, dtype=np.float32: FakeArray(shape, dtype),
    zeros=lambda shape, dtype=np.float32: FakeArray(shape, dtype),
    full=lambda shape, value, dtype=np.float32: FakeArray(shape, dtype),
    empty_like=_like,
    asarray=lambda a, dtype=None: a if dtype is None or dtype == a.dtype else _like(a, dtype),
    ascontiguousarray=lambda a, dtype=None: _like(a, dtype),
    cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(getDevice=lambda: 0),
                               get_current_stream=lambda: types.SimpleNamespace(ptr=0)),
)


class RecordingKernel:
    """Stands in for a cupy Function: records (grid, block, args, shared_mem) of each call."""

    def __init__(self, name, log):
        self.name, self.log = name, log
        self.kernel = types.SimpleNamespace(ptr=id(self))
        self.max_dynamic_shared_size_bytes = 48 * 1024

    def __call__(self, grid, block, args, shared_mem=0):
        self.log.append(types.SimpleNamespace(name=self.name, grid=grid, block=block, args=args, smem=shared_mem,
                               smem_limit=self.max_dynamic_shared_size_bytes))



def backend_on(monkeypatch, cupy_module, make_kernel, card=H100):
    """A CupyBackend for `card` (sm count, shared-memory limit, compute capability) whose `cupy` is
    cupy_module and whose kernels are make_kernel(name, backend.launches), one object per name as
    the real backend caches CuPy's. Used here with fakes and by tests/emu with the emulator."""
    monkeypatch.setattr(cb, "cupy", cupy_module)
    monkeypatch.setattr(cb, "driver", types.SimpleNamespace(
        occupancyMaxActiveBlocksPerMultiprocessor=lambda ptr, threads, smem: 1))
    monkeypatch.setattr(cb, "LINEAR_VARIANT", dict(cb.LINEAR_VARIANT))
    monkeypatch.setattr(cb, "ROW_CALL", dict(cb.ROW_CALL))
    monkeypatch.setattr(cb, "_DIRECT", None)  # per-thread slabs of another backend's arrays
    be = object.__new__(cb.CupyBackend)
    be.xp = cupy_module  # the backend's array module (the class's is the real cupy)
    be._workspaces, be._clusters, be._occupancy, be._row_launches = {}, {}, {}, {}
    for k, v in card.items():
        setattr(be, k, v)
    be.launches = []
    kernels = {}

    def kernel(name):
        k = kernels.get(name)
        if k is None:
            k = kernels[name] = make_kernel(name, be.launches)
        return k

    be.kernel = kernel
    return be


def fake_backend(monkeypatch, card=H100):
    """A CupyBackend on fakes: launches are recorded in backend.launches, nothing runs."""
    return backend_on(monkeypatch, FAKE_CUPY, RecordingKernel, card)

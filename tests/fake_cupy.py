"""CuPy faked, for exercising the CuPy backend's host code without a GPU.

``fake_backend(monkeypatch)`` gives a CupyBackend whose array functions make FakeArray objects
(shape, dtype, a 256-byte aligned pointer, nothing on a device) and whose kernels record their
launches in ``backend.launches`` instead of running. ``FAKE_CUPY.cuda.Device(i)`` switches the
current device as ``cupy.cuda.Device(i)`` does, for backends given several cards. Used by tests/test_launch_args.py (each
launch against its kernel's PTX signature) and benchmarks/test_launch_overhead.py (the Python
cost of a call).
"""
import math
import types

import numpy as np

from gpugrad.backends import cuda_driver, plans
from gpugrad.backends import cupy_backend as cb

H100 = dict(sm_count=132, smem_optin=232448, cc=90)


class _Flags:
    c_contiguous = True


class _Data:
    """cupy's MemoryPointer: an address (256-byte aligned, as CuPy's allocations are) on a device."""
    ptr = 0x7F0000000000

    def __init__(self, device_id):
        self.device_id = device_id


class FakeArray:
    """Just enough of cupy.ndarray for the backend's launch code."""

    flags = _Flags()

    def __init__(self, shape, dtype):
        self.data = _Data(_CURRENT[0])  # made on the current device
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


_CURRENT = [0]  # the fake current device
_STREAM = types.SimpleNamespace(ptr=0)


class _Device:
    """cupy.cuda.Device: the current device inside its `with` block."""

    def __init__(self, device=None):
        self.id = _CURRENT[0] if device is None else device

    def __enter__(self):
        self._before, _CURRENT[0] = _CURRENT[0], self.id
        return self

    def __exit__(self, *exc):
        _CURRENT[0] = self._before


FAKE_CUPY = types.SimpleNamespace(
    empty=lambda shape, dtype=np.float32: FakeArray(shape, dtype),
    zeros=lambda shape, dtype=np.float32: FakeArray(shape, dtype),
    full=lambda shape, value, dtype=np.float32: FakeArray(shape, dtype),
    empty_like=_like,
    asarray=lambda a, dtype=None: a if dtype is None or dtype == a.dtype else _like(a, dtype),
    ascontiguousarray=lambda a, dtype=None: _like(a, dtype),
    cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(getDevice=lambda: _CURRENT[0], setDevice=lambda d: None),
                               get_current_stream=lambda: _STREAM, Device=_Device),
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



def backend_on(monkeypatch, cupy_module, make_kernel, card=H100, cards=None, variants=None):
    """A CupyBackend for `card` (sm count, shared-memory limit, compute capability), or for
    `cards` ({device id: card}), whose `cupy` is cupy_module and whose kernels are
    make_kernel(name, backend.launches), one object per device and name as the real backend loads
    them; `variants` overrides the measured kernel variants. Used here with fakes and by tests/emu
    with the emulator."""
    monkeypatch.setattr(cuda_driver, "driver", types.SimpleNamespace(
        occupancyMaxActiveBlocksPerMultiprocessor=lambda ptr, threads, smem: 1))
    monkeypatch.setattr(cuda_driver, "_DIRECT", None)  # per-thread slabs of another backend's arrays
    cards = {d: plans.Card(**c) for d, c in (cards or {0: card}).items()}
    launches = []

    def card_of(device):
        if device not in cards:
            raise AssertionError(f"device {device} is not one of this test's cards {sorted(cards)}")
        return cards[device]

    be = cb.CupyBackend(_variants=variants, _card=card_of, _load=lambda device, name: make_kernel(name, launches))
    be.xp = cupy_module  # the backend's array module (the class's is the real cupy)
    be.launches = launches
    return be


def fake_backend(monkeypatch, card=H100, cards=None, variants=None):
    """A CupyBackend on fakes: launches are recorded in backend.launches, nothing runs."""
    return backend_on(monkeypatch, FAKE_CUPY, RecordingKernel, card, cards, variants)

"""gpugrad's kernels on the CPU: the emulator library (build.py) behind a CuPy stand-in.

``emulated_backend(monkeypatch)`` gives a real ``CupyBackend`` whose array module is the stand-in
for CuPy (``arrays.py``: ``emucupy``, whose ``EmuArray`` refuses what CuPy 14 refuses) and whose
kernels run in the emulator, so the backend's own host code, launch arguments and kernels all run
as on a GPU.

Launches check what the CUDA driver would reject, and what CuPy would pass without a word: a
pointer parameter takes a device array (EmuArray) of the pointee's dtype, on the current device
(another device's memory is an illegal address on a card); any other parameter a numpy scalar of
exactly its width and kind; dynamic shared memory must not exceed the kernel's
``max_dynamic_shared_size_bytes``; the library itself checks threads against __launch_bounds__,
grids against cluster sizes and shared memory against an H100's 227 KB.
``as_cuda_backend(monkeypatch)`` installs the emulated backend as gpugrad's CUDA backend (the
``emu`` parameter of the tests' ``backend`` fixture), and the stand-in as the ``cupy`` module.

``counting()`` (``cost.py``) counts what the work inside it would cost on a card: launches of
gpugrad's kernels and of CuPy's array operations, host synchronisations, allocations, uploads and
the bytes each launch moves.
"""
from __future__ import annotations

import concurrent.futures
import ctypes
import itertools
import os
import sys
import types

import numpy as np

from fake_cupy import backend_on
from gpugrad.backends import cuda_driver

from . import arrays, build, cost
from .arrays import EmuArray, emucupy  # noqa: F401  (the names tests use)
from .cost import Cost, counting  # noqa: F401

# A card smaller than an H100, so that persistent kernels loop over several rows or tiles per block
# or cluster (the double-buffered paths) even at the small sizes an emulator can run.
SMALL_H100 = dict(sm_count=6, smem_optin=232448, cc=90)
# "runahead": shuffled, and before each pass one warp (or block of a cluster) at random runs alone
# until it waits for the others (gg_emu.h, run_cluster).
ORDERS = {"forward": 0, "reverse": 1, "shuffled": 2, "runahead": 3}


class EmulatorError(RuntimeError):
    """A kernel did something the hardware would not allow (the message names kernel, block, thread)."""


_LIBS = {}
_TABLES = {}  # id(library) -> its kernels() table (libraries stay loaded: ids are not reused)
_active = [None]  # the mutation whose library is in use (None: the kernels as they are)


def use(mutate=None) -> None:
    """Run the kernels as they are (None), or with a planted bug (`mutate`: source text -> text)."""
    _active[0] = mutate


def prebuild(mutations) -> None:
    """Compile the libraries for these mutations (None: the kernels as they are) side by side, one
    compiler per core: each takes ~10 s alone."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(build.build, mutations))


def library() -> ctypes.CDLL:
    key = _active[0]
    if key in _LIBS:
        return _LIBS[key]
    lib = _LIBS[key] = ctypes.CDLL(str(build.build(key)))  # one file per source digest: loads apart
    lib.gg_emu_kernel_name.restype = ctypes.c_char_p
    lib.gg_emu_kernel_signature.restype = ctypes.c_char_p
    lib.gg_emu_kernel_access.restype = ctypes.c_char_p
    lib.gg_emu_kernel_cluster.restype = ctypes.c_uint
    lib.gg_emu_error.restype = ctypes.c_char_p
    lib.gg_emu_configure.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_int]
    lib.gg_emu_launch.argtypes = [ctypes.c_int] + [ctypes.c_uint] * 6 + [ctypes.c_ulonglong,
                                                                          ctypes.POINTER(ctypes.c_void_p)]
    return lib


def kernels() -> dict[str, tuple[int, list[str], int, str]]:
    """name -> (index, parameter kinds ("f4", "i8", "pu1" for a pointer to uint8, "pv0" for void*),
    cluster size, access per parameter: "r" a pointer to const (read), "w" any other pointer
    (written), "-" a value), of the library in use (a mutation's may hold only some kernels)."""
    lib = library()
    table = _TABLES.get(id(lib))
    if table is None:
        table = _TABLES[id(lib)] = {
            lib.gg_emu_kernel_name(i).decode(): (i, lib.gg_emu_kernel_signature(i).decode().split(),
                                                 lib.gg_emu_kernel_cluster(i), lib.gg_emu_kernel_access(i).decode())
            for i in range(lib.gg_emu_kernel_count())}
    return table


def configure(order: str = "forward", seed: int = 1, deferred_copies: bool = True) -> None:
    """Thread order within a cluster (and cluster order when shuffled or runahead): one of ORDERS;
    when cp.async copies land."""
    if order not in ORDERS:
        raise ValueError(f"unknown thread order {order!r}: one of {sorted(ORDERS)}")
    library().gg_emu_configure(ORDERS[order], seed, int(deferred_copies))


def _matches(kind: str, dtype: np.dtype) -> bool:
    """Whether values of dtype are what a parameter (or pointee) of kind "<f|i|u><bytes>" is."""
    k = "u" if dtype.kind == "b" else dtype.kind  # C++ bool is unsigned
    return k == kind[0] and dtype.itemsize == int(kind[1:])


def _pack(kernel: str, i: int, kind: str, a):
    """One kernel argument as the bytes its parameter takes, or TypeError naming the mismatch: device
    arrays (EmuArray) for pointers, of the pointee's dtype (any for void*); numpy scalars of the exact
    type otherwise; np.uint64(0) for a null pointer. A host numpy array is refused, as CuPy does, and
    so is a strided one: the kernels index from the base pointer, which CuPy would pass silently.
    An array of another device than the current one is an EmulatorError: on a card the kernel
    would read through an address that is not valid in its context (CuPy's RawKernel does not
    check)."""
    if kind.startswith("p"):
        if type(a) is EmuArray:
            if not a.flags.c_contiguous:
                raise TypeError(f"{kernel}: argument {i} is a strided array (shape {a.shape}, strides {a.strides})")
            if kind == "pv0" or _matches(kind[1:], a.dtype):
                if a.data.device_id != arrays.cuda.runtime.getDevice():
                    raise EmulatorError(f"{kernel}: argument {i} is memory of device {a.data.device_id}, the kernel "
                                        f"runs on device {arrays.cuda.runtime.getDevice()} "
                                        f"(CUDA_ERROR_ILLEGAL_ADDRESS on a card)")
                return ctypes.c_void_p(a.data.ptr)
        if isinstance(a, np.uint64) and a == 0:
            return ctypes.c_void_p(0)
    elif isinstance(a, np.generic) and _matches(kind, a.dtype):
        return ctypes.create_string_buffer(a.tobytes(), a.dtype.itemsize)
    raise TypeError(f"{kernel}: argument {i} is {type(a).__name__} {getattr(a, 'dtype', '')}, "
                    f"the parameter is {kind}")


_PTRS = itertools.count(1000)  # each EmuFunction's kernel.ptr
_BY_PTR = {}  # kernel.ptr -> the EmuFunction made last for that kernel (launch_kernel's lookup)


class EmuFunction:
    """A kernel as cupy's RawModule.get_function gives it, run by the emulator."""

    def __init__(self, name: str, log: list | None = None):
        self.name, self.log = name, log
        _, self.signature, self.cluster, self.access = kernels()[name]
        self.kernel = types.SimpleNamespace(ptr=next(_PTRS))
        self.max_dynamic_shared_size_bytes = 48 * 1024
        _BY_PTR[self.kernel.ptr] = self

    def __call__(self, grid, block, args, shared_mem=0):
        if len(args) != len(self.signature):
            raise TypeError(f"{self.name}: {len(args)} arguments for {len(self.signature)} parameters")
        packed = [_pack(self.name, i, k, a) for i, (k, a) in enumerate(zip(self.signature, args))]
        argv = (ctypes.c_void_p * len(packed))(*[ctypes.cast(ctypes.pointer(p), ctypes.c_void_p) for p in packed])
        self.launch(tuple(grid) + (1,) * (3 - len(grid)), tuple(block) + (1,) * (3 - len(block)), shared_mem,
                    argv, [(i, a) for i, a in enumerate(args) if type(a) is EmuArray])

    def launch(self, grid, block, shared_mem, argv, passed):
        """Run the kernel with argv as cuLaunchKernel takes it (one pointer per parameter, to its
        bytes), then check the poison after each (index, array) of `passed`. Counted as one launch
        reading its const arrays and writing the others (``cost.py``)."""
        if shared_mem > self.max_dynamic_shared_size_bytes:
            raise EmulatorError(f"{self.name}: {shared_mem} bytes of dynamic shared memory, the kernel "
                                f"allows {self.max_dynamic_shared_size_bytes} (CUDA_ERROR_INVALID_VALUE)")
        if self.log is not None:
            self.log.append(self.name)
        if cost._ACTIVE:
            cost.record("kernel", self.name, sum(a.nbytes for i, a in passed if self.access[i] == "r"),
                        sum(a.nbytes for i, a in passed if self.access[i] == "w"))
        lib = library()
        entry = kernels().get(self.name)  # by name: a mutation's library numbers its kernels its own way
        if entry is None:
            raise RuntimeError(f"{self.name} is not in the emulator library of the mutation in use "
                               f"(built with only the kernels named {getattr(_active[0], 'only', None)}...)")
        if lib.gg_emu_launch(entry[0], *grid, *block, int(shared_mem), argv) != 0:
            raise EmulatorError(lib.gg_emu_error().decode())
        for i, a in passed:
            if not arrays.slack_intact(a):
                raise EmulatorError(f"{self.name}: a write past the end of argument {i} (shape {a.shape})")


def launch_kernel(fptr, gx, gy, gz, bx, by, bz, shared_mem, stream, argv_ptr, extra):
    """cuLaunchKernel (cupy_backends' driver.launchKernel) as the emulator runs it: argv_ptr is the
    address of an array of pointers, one per parameter, each to the parameter's bytes. A pointer
    parameter holding the start of a live device allocation is checked as EmuFunction checks it
    (the pointee's dtype and device, then a write past the end)."""
    f = _BY_PTR[fptr]
    argv = ctypes.cast(argv_ptr, ctypes.POINTER(ctypes.c_void_p))
    found = []
    for i, kind in enumerate(f.signature):
        a = arrays.live_array(ctypes.c_void_p.from_address(argv[i]).value or 0) if kind.startswith("p") else None
        if a is not None:
            _pack(f.name, i, kind, a)  # raises naming a pointee or device mismatch
            found.append((i, a))
    f.launch((gx, gy, gz), (bx, by, bz), shared_mem, argv, found)


def emulated_backend(monkeypatch, card=SMALL_H100, clusters=3, variants=None, cards=None):
    """A CupyBackend on the emulator for `card` (or `cards`, {device id: card}: the stand-in then
    has that many devices); the tensor-core kernels get `clusters` clusters (as
    cuOccupancyMaxActiveClusters would say); `variants` overrides the measured kernel variants
    (``plans.Variants``). backend.launches lists the kernels launched."""
    monkeypatch.setattr(cuda_driver, "max_active_clusters", lambda *a: clusters)
    monkeypatch.setattr(arrays, "_COUNT", [len(cards) if cards else 1])
    monkeypatch.setattr(arrays, "_CURRENT", [0])
    be = backend_on(monkeypatch, emucupy, EmuFunction, card, cards=cards, variants=variants)
    cuda_driver.driver.launchKernel = launch_kernel  # backend_on's stand-in for cupy_backends' driver
    return be


def as_cuda_backend(monkeypatch, card=SMALL_H100, variants=None, cards=None):
    """The emulated backend installed as gpugrad's CUDA backend: get_backend("cupy") returns it and
    EmuArray inputs are routed to it, as cupy.ndarray inputs are on a GPU machine; ``import cupy``
    gives the stand-in (gpugrad's own ``import cupy`` in data, distributed and validation code)."""
    import gpugrad.backends as backends
    be = emulated_backend(monkeypatch, card, variants=variants, cards=cards)
    monkeypatch.setattr(backends, "_CUPY", be)
    monkeypatch.setattr(backends, "_CUPY_WHY", "the kernel emulator (tests/emu)")
    monkeypatch.setitem(sys.modules, "cupy", emucupy)
    return be

"""gpugrad's kernels on the CPU: the emulator library (build.py) behind a CuPy look-alike.

``emulated_backend(monkeypatch)`` gives a real ``CupyBackend`` whose arrays are numpy arrays
(``EmuArray``: with ``.data.ptr`` and ``.get()`` as CuPy's have) and whose kernels run in the
emulator, so the backend's own host code, launch arguments and kernels all run as on a GPU.

Launches check what the CUDA driver would reject, and what CuPy would pass without a word: a
pointer parameter takes a device array (EmuArray) of the pointee's dtype, any other parameter a
numpy scalar of exactly its width and kind; dynamic shared memory must not exceed the kernel's
``max_dynamic_shared_size_bytes``; the library itself checks threads against __launch_bounds__,
grids against cluster sizes and shared memory against an H100's 227 KB.
``as_cuda_backend(monkeypatch)`` installs the emulated backend as gpugrad's CUDA backend (the
``emu`` parameter of the tests' ``backend`` fixture).
"""
from __future__ import annotations

import concurrent.futures
import ctypes
import functools
import mmap
import os
import types
import weakref

import numpy as np

from fake_cupy import backend_on
from gpugrad.backends import cuda_driver

from . import build

# A card smaller than an H100, so that persistent kernels loop over several rows or tiles per block
# or cluster (the double-buffered paths) even at the small sizes an emulator can run.
SMALL_H100 = dict(sm_count=6, smem_optin=232448, cc=90)
# "runahead": shuffled, and before each pass one warp (or block of a cluster) at random runs alone
# until it waits for the others (gg_emu.h, run_cluster).
ORDERS = {"forward": 0, "reverse": 1, "shuffled": 2, "runahead": 3}


class EmulatorError(RuntimeError):
    """A kernel did something the hardware would not allow (the message names kernel, block, thread)."""


_LIBS = {}
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
    lib.gg_emu_kernel_cluster.restype = ctypes.c_uint
    lib.gg_emu_error.restype = ctypes.c_char_p
    lib.gg_emu_configure.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_int]
    lib.gg_emu_launch.argtypes = [ctypes.c_int] + [ctypes.c_uint] * 6 + [ctypes.c_ulonglong,
                                                                          ctypes.POINTER(ctypes.c_void_p)]
    return lib


def kernels() -> dict[str, tuple[int, list[str], int]]:
    """name -> (index, parameter kinds ("f4", "i8", "pu1" for a pointer to uint8, "pv0" for void*),
    cluster size)."""
    lib = library()
    return {lib.gg_emu_kernel_name(i).decode(): (i, lib.gg_emu_kernel_signature(i).decode().split(),
                                                 lib.gg_emu_kernel_cluster(i))
            for i in range(lib.gg_emu_kernel_count())}


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
    so is a strided one: the kernels index from the base pointer, which CuPy would pass silently."""
    if kind.startswith("p"):
        if isinstance(a, EmuArray) and not a.flags.c_contiguous:
            raise TypeError(f"{kernel}: argument {i} is a strided array (shape {a.shape}, strides {a.strides})")
        if isinstance(a, EmuArray) and (kind == "pv0" or _matches(kind[1:], a.dtype)):
            return ctypes.c_void_p(a.ctypes.data)
        if isinstance(a, np.uint64) and a == 0:
            return ctypes.c_void_p(0)
    elif isinstance(a, np.generic) and _matches(kind, a.dtype):
        return ctypes.create_string_buffer(a.tobytes(), a.dtype.itemsize)
    raise TypeError(f"{kernel}: argument {i} is {type(a).__name__} {getattr(a, 'dtype', '')}, "
                    f"the parameter is {kind}")


_BY_PTR = {}  # kernel.ptr -> the EmuFunction made last for that kernel (launch_kernel's lookup)
_LIVE = weakref.WeakValueDictionary()  # address -> the live device array starting there


class EmuFunction:
    """A kernel as cupy's RawModule.get_function gives it, run by the emulator."""

    def __init__(self, name: str, log: list | None = None):
        self.name, self.log = name, log
        self.index, self.signature, self.cluster = kernels()[name]
        self.kernel = types.SimpleNamespace(ptr=1000 + self.index)
        self.max_dynamic_shared_size_bytes = 48 * 1024
        _BY_PTR[self.kernel.ptr] = self

    def __call__(self, grid, block, args, shared_mem=0):
        if len(args) != len(self.signature):
            raise TypeError(f"{self.name}: {len(args)} arguments for {len(self.signature)} parameters")
        packed = [_pack(self.name, i, k, a) for i, (k, a) in enumerate(zip(self.signature, args))]
        argv = (ctypes.c_void_p * len(packed))(*[ctypes.cast(ctypes.pointer(p), ctypes.c_void_p) for p in packed])
        self.launch(tuple(grid) + (1,) * (3 - len(grid)), tuple(block) + (1,) * (3 - len(block)), shared_mem,
                    argv, [(i, a) for i, a in enumerate(args) if isinstance(a, EmuArray)])

    def launch(self, grid, block, shared_mem, argv, arrays):
        """Run the kernel with argv as cuLaunchKernel takes it (one pointer per parameter, to its
        bytes), then check the poison after each (index, array) of `arrays`."""
        if shared_mem > self.max_dynamic_shared_size_bytes:
            raise EmulatorError(f"{self.name}: {shared_mem} bytes of dynamic shared memory, the kernel "
                                f"allows {self.max_dynamic_shared_size_bytes} (CUDA_ERROR_INVALID_VALUE)")
        if self.log is not None:
            self.log.append(self.name)
        lib = library()
        if lib.gg_emu_launch(self.index, *grid, *block, int(shared_mem), argv) != 0:
            raise EmulatorError(lib.gg_emu_error().decode())
        for i, a in arrays:
            if not _slack_intact(a):
                raise EmulatorError(f"{self.name}: a write past the end of argument {i} (shape {a.shape})")


def launch_kernel(fptr, gx, gy, gz, bx, by, bz, shared_mem, stream, argv_ptr, extra):
    """cuLaunchKernel (cupy_backends' driver.launchKernel) as the emulator runs it: argv_ptr is the
    address of an array of pointers, one per parameter, each to the parameter's bytes. A pointer
    parameter holding the start of a live device array is checked as EmuFunction checks it (the
    pointee's dtype, then a write past the end)."""
    f = _BY_PTR[fptr]
    argv = ctypes.cast(argv_ptr, ctypes.POINTER(ctypes.c_void_p))
    arrays = []
    for i, kind in enumerate(f.signature):
        a = _LIVE.get(ctypes.c_void_p.from_address(argv[i]).value or 0) if kind.startswith("p") else None
        if a is not None:
            _pack(f.name, i, kind, a)  # raises TypeError naming a pointee mismatch
            arrays.append((i, a))
    f.launch((gx, gy, gz), (bx, by, bz), shared_mem, argv, arrays)


# ---- CuPy's array side, as numpy ------------------------------------------------------------------
class _Ptr:
    """cupy's MemoryPointer: an address, holding the array it points into alive."""

    def __init__(self, ptr, owner):
        self.ptr, self.owner = ptr, owner

    def __add__(self, offset: int):
        return _Ptr(self.ptr + offset, self.owner)


class EmuArray(np.ndarray):
    """A numpy array that answers as a cupy.ndarray does where the backend asks: .data.ptr, .get(),
    and cupy.ndarray(shape, dtype, memptr=...) over existing device memory. Its class claims a
    "cupy..." module, which is how gpugrad tells a CuPy array from a numpy one."""

    def __new__(cls, shape, dtype=float, memptr=None):
        if memptr is None:
            return _device_empty(shape, dtype)
        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        buf = (ctypes.c_char * (count * dtype.itemsize)).from_address(memptr.ptr)
        a = np.frombuffer(buf, dtype=dtype, count=count).reshape(shape).view(cls)
        a._memptr = memptr  # as CuPy's: the memory stays alive while the array does
        return a

    @property
    def data(self):
        return _Ptr(self.ctypes.data, self)

    def get(self):
        return np.array(self).view(np.ndarray)


EmuArray.__module__ = "cupy_emulated"


_PAGE = mmap.PAGESIZE
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def _device_empty(shape, dtype) -> EmuArray:
    """Device memory as the emulator hands it out: each array in pages of its own, 16-byte aligned,
    ending at most 15 bytes before an inaccessible page. A kernel that reads or writes far past the
    end crashes (and the emulator's SIGSEGV handler names it); the bytes in between hold 0xFF and are
    checked after every launch the array is passed to."""
    dtype = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    nbytes = count * dtype.itemsize
    pages = max(1, -(-nbytes // _PAGE))
    m = mmap.mmap(-1, (pages + 1) * _PAGE)
    m.write(b"\xff" * (pages * _PAGE))
    base = ctypes.addressof(ctypes.c_char.from_buffer(m))
    if _libc.mprotect(base + pages * _PAGE, _PAGE, 0) != 0:
        raise OSError(ctypes.get_errno(), "mprotect of the guard page failed")
    start = (pages * _PAGE - nbytes) // 16 * 16
    a = np.frombuffer(m, dtype=dtype, count=count, offset=start).reshape(shape).view(EmuArray)
    a._guard = (base + start + nbytes, pages * _PAGE - start - nbytes)  # (address, bytes) of the slack
    _LIVE[a.ctypes.data] = a
    return a


def _slack_intact(a) -> bool:
    """Whether the poison after the allocation `a` belongs to is untouched (True if not one of ours)."""
    while a is not None and not hasattr(a, "_guard"):
        a = a.base if isinstance(a, np.ndarray) else None
    if a is None:
        return True
    addr, n = a._guard
    return ctypes.string_at(addr, n) == b"\xff" * n


def _dev(a) -> EmuArray:
    """a copied to the device (a fresh guarded allocation)."""
    a = np.asarray(a)
    d = _device_empty(a.shape, a.dtype)
    d[...] = a
    return d


def _gemm(transa, transb, a, b, out=None, alpha=1.0, beta=0.0):
    """cupy.cublas.gemm as numpy: out = alpha op(a) @ op(b) + beta out ('N' or 'T' for op), in place;
    a, b and out each C- or F-contiguous, as cuBLAS takes them without a copy."""
    for name, x in (("a", a), ("b", b), ("out", out)):
        if x is not None and not (x.flags.c_contiguous or x.flags.f_contiguous):
            raise TypeError(f"cublas.gemm: {name} (shape {x.shape}, strides {x.strides}) is neither C- nor "
                            "F-contiguous: CuPy would copy it")
    op = {"N": lambda x: x, "T": lambda x: x.T}
    product = np.matmul(op[transa](a), op[transb](b))
    if out is None:
        return product.view(EmuArray)
    if beta == 0:
        out[...] = alpha * product if alpha != 1 else product
    else:
        out[...] = alpha * product + beta * out
    return out


class _EmuCupy(types.ModuleType):
    """numpy, with cupy's names for moving data, cupy.cublas's gemm and a one-device cupy.cuda."""

    ndarray = EmuArray

    def __getattr__(self, name):
        attr = getattr(np, name)
        if not callable(attr) or isinstance(attr, (type, np.ufunc)):  # ufuncs keep EmuArray inputs EmuArray
            return attr

        @functools.wraps(attr)
        def on_device(*args, **kwargs):  # cupy's functions return device arrays
            r = attr(*args, **kwargs)
            return r.view(EmuArray) if type(r) is np.ndarray else r
        return on_device

    @staticmethod
    def asarray(a, dtype=None):
        return _dev(np.asarray(a, dtype=dtype))

    @staticmethod
    def asnumpy(a):
        return np.array(a).view(np.ndarray)

    @staticmethod
    def empty(shape, dtype=float):
        a = _device_empty(shape, dtype)  # poisoned: NaN, or 0xAB bytes for integers
        a.fill(np.nan if np.dtype(dtype).kind == "f" else 0xAB)
        return a

    @staticmethod
    def empty_like(a, dtype=None):
        return _EmuCupy.empty(a.shape, dtype or a.dtype)

    @staticmethod
    def zeros(shape, dtype=float):
        return _dev(np.zeros(shape, dtype))

    @staticmethod
    def full(shape, value, dtype=None):
        return _dev(np.full(shape, value, dtype))

    @staticmethod
    def ascontiguousarray(a, dtype=None):
        if isinstance(a, EmuArray) and a.flags.c_contiguous and (dtype is None or a.dtype == dtype):
            return a  # as CuPy: no copy
        return _dev(np.ascontiguousarray(a, dtype=dtype))

    cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDevice=lambda: 0, setDevice=lambda d: None),
                                 get_current_stream=lambda: types.SimpleNamespace(ptr=0))
    cublas = types.SimpleNamespace(gemm=_gemm)


emucupy = _EmuCupy("emucupy")


def emulated_backend(monkeypatch, card=SMALL_H100, clusters=3, variants=None):
    """A CupyBackend on the emulator for `card`; the tensor-core kernels get `clusters` clusters
    (as cuOccupancyMaxActiveClusters would say); `variants` overrides the measured kernel variants
    (``plans.Variants``). backend.launches lists the kernels launched."""
    monkeypatch.setattr(cuda_driver, "max_active_clusters", lambda *a: clusters)
    be = backend_on(monkeypatch, emucupy, EmuFunction, card, variants=variants)
    cuda_driver.driver.launchKernel = launch_kernel  # backend_on's stand-in for cupy_backends' driver
    return be


def as_cuda_backend(monkeypatch, card=SMALL_H100, variants=None):
    """The emulated backend installed as gpugrad's CUDA backend: get_backend("cupy") returns it and
    EmuArray inputs are routed to it, as cupy.ndarray inputs are on a GPU machine."""
    import gpugrad.backends as backends
    be = emulated_backend(monkeypatch, card, variants=variants)
    monkeypatch.setattr(backends, "_CUPY", be)
    monkeypatch.setattr(backends, "_CUPY_WHY", "the kernel emulator (tests/emu)")
    return be

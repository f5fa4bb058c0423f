"""CuPy, stood in for by numpy: device arrays that behave as CuPy 14's do, strictness included.

``EmuArray`` is the stand-in's ``cupy.ndarray`` and ``emucupy`` its ``cupy`` module. An EmuArray
keeps its values in a numpy array (``._a``, device memory as far as everyone else is concerned),
but it is not a numpy array: it refuses what CuPy refuses, so code that runs here would not fail
on a card for passing host and device arrays where the other is wanted. The rules, read against
CuPy 14.2's source (cupy/_core/core.pyx, _kernel.pyx, _scalar.pyx, _routines_indexing.pyx), are
in one place below, "Strictness": no implicit conversion to numpy; no numpy array (of any
dimension) as an operand of an array operation; no numpy array written into a device array by
plain indexing; no array of another device in an operation. What CuPy does allow stays allowed:
numpy and Python scalars as operands, host index arrays (copied to the device), ``cupy.asarray``
of host data, explicit ``.get()`` / ``cupy.asnumpy`` and ``float()`` / ``int()`` / ``bool()``.

Every array operation, allocation, host synchronisation and upload is reported to ``cost.py``
(``emulator.counting()``), which is how a test sees what a step would cost on a card.

Device memory: ``empty``/``zeros``/``full`` and copies to the device (``asarray`` of host data,
``ascontiguousarray``) are allocations of their own, each ending just before an inaccessible
page, with poison bytes in between that the kernel launcher checks after each launch
(``emulator.py``); the results of array operations live in ordinary memory.

Devices: the stand-in has a current device (``emucupy.cuda.Device(i)`` as a context manager,
``cuda.runtime.getDevice()``), each array the device it was made on (``a.device.id``,
``a.data.device_id``), and ``set_device_count`` devices in all.
"""
from __future__ import annotations

import ctypes
import functools
import mmap
import types
import warnings
import weakref

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin

from . import cost
from .cost import _ACTIVE as _COUNTING

__all__ = ["EmuArray", "emucupy", "device_empty", "live_array", "slack_intact", "set_device_count"]


# ---- devices --------------------------------------------------------------------------------
_CURRENT = [0]   # the current device
_COUNT = [1]     # how many devices the stand-in has
_STREAM = types.SimpleNamespace(ptr=0)


def set_device_count(n: int) -> None:
    """Give the stand-in n devices (ids 0..n-1)."""
    _COUNT[0] = int(n)
    _CURRENT[0] = 0


def _set_device(device: int) -> None:
    if not 0 <= device < _COUNT[0]:
        # cudaSetDevice's answer to an id past the last device
        raise RuntimeError(f"cudaErrorInvalidDevice: invalid device ordinal {device} (the stand-in has "
                           f"{_COUNT[0]} device{'s' * (_COUNT[0] > 1)})")
    _CURRENT[0] = device


class Device:
    """cupy.cuda.Device: ``.id``; current inside ``with Device(i):`` (and after ``.use()``)."""

    def __init__(self, device=None):
        self.id = _CURRENT[0] if device is None else int(device)
        self._before = []

    def __enter__(self):
        self._before.append(_CURRENT[0])
        _set_device(self.id)
        return self

    def __exit__(self, *exc):
        _CURRENT[0] = self._before.pop()

    def use(self):
        _set_device(self.id)

    def synchronize(self):
        _sync("Device.synchronize")

    def __eq__(self, other):
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self):
        return hash(self.id)

    def __repr__(self):
        return f"<CUDA Device {self.id}>"


cuda = types.SimpleNamespace(
    Device=Device,
    runtime=types.SimpleNamespace(getDevice=lambda: _CURRENT[0], setDevice=_set_device,
                                  getDeviceCount=lambda: _COUNT[0]),
    get_current_stream=lambda: _STREAM)


# ---- counting (cost.py): one call per event, nothing when no counting() block is open -------------
def _sync(why: str) -> None:
    if _COUNTING:
        cost.record("sync", why)


def _launch(name: str, read: int, written: int, new: int = 0) -> None:
    """One array operation: a launch (or library call) that reads and writes these bytes, and
    allocates `new` arrays for its results."""
    if _COUNTING:
        cost.record("op", name, read, written)
        for _ in range(new):
            cost.record("alloc", name)


# ---- device memory ------------------------------------------------------------------------------
_PAGE = mmap.PAGESIZE
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_LIVE = weakref.WeakValueDictionary()  # address -> the live device allocation starting there


class _Allocation:
    """One device allocation's bookkeeping: its poisoned slack (address, bytes) after the data."""
    __slots__ = ("guard", "__weakref__")

    def __init__(self, guard):
        self.guard = guard


def device_empty(shape, dtype, why="empty") -> "EmuArray":
    """Device memory as the emulator hands it out: each array in pages of its own, 16-byte aligned,
    ending at most 15 bytes before an inaccessible page. A kernel that reads or writes far past the
    end crashes (and the emulator's SIGSEGV handler names it); the bytes in between hold 0xFF and
    are checked after every launch the array is passed to (``slack_intact``)."""
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in shape) if isinstance(shape, (tuple, list)) else (int(shape),)
    count = int(np.prod(shape, dtype=np.int64))
    nbytes = count * dtype.itemsize
    pages = max(1, -(-nbytes // _PAGE))
    m = mmap.mmap(-1, (pages + 1) * _PAGE)
    m.write(b"\xff" * (pages * _PAGE))
    base = ctypes.addressof(ctypes.c_char.from_buffer(m))
    if _libc.mprotect(base + pages * _PAGE, _PAGE, 0) != 0:
        raise OSError(ctypes.get_errno(), "mprotect of the guard page failed")
    start = (pages * _PAGE - nbytes) // 16 * 16
    a = _wrap(np.frombuffer(m, dtype=dtype, count=count, offset=start).reshape(shape), _CURRENT[0],
              _Allocation((base + start + nbytes, pages * _PAGE - start - nbytes)))
    _LIVE[base + start] = a
    if _COUNTING:
        cost.record("alloc", why)
    return a


def live_array(address: int):
    """The live device allocation starting at `address`, or None."""
    return _LIVE.get(address)


def slack_intact(a: "EmuArray") -> bool:
    """Whether the poison after the allocation `a` lies in is untouched (True for ordinary memory)."""
    if a._owner is None:
        return True
    addr, n = a._owner.guard
    return ctypes.string_at(addr, n) == b"\xff" * n


def _wrap(a: np.ndarray, device: int, owner=None) -> "EmuArray":
    e = object.__new__(EmuArray)
    e._a, e._device, e._owner = a, device, owner
    return e


def _upload(host: np.ndarray, why="asarray") -> "EmuArray":
    """A host array copied to a fresh device allocation (cudaMemcpy from the host)."""
    d = device_empty(host.shape, host.dtype, why)
    d._a[...] = host
    if _COUNTING:
        cost.record("upload", why)
    return d


# ---- strictness: what CuPy 14 refuses ---------------------------------------------------------
_SCALARS = (bool, int, float, complex, np.generic)  # CuPy's _scalar.scalar_type_set: Python and numpy scalars
_COMPARISONS = {np.less, np.less_equal, np.equal, np.not_equal, np.greater, np.greater_equal}


class _Refused(Exception):
    """Internal: an operand type the operation does not know (-> NotImplemented)."""


def _host_array_error(x, where: str) -> TypeError:
    # cupy/_core/_scalar.pyx, CScalar: a numpy.ndarray (0-d included) reaching a kernel's arguments
    # is not a scalar, and CuPy never copies it to the device on its own.
    return TypeError(f"Unsupported type {type(x)}: {where} takes device arrays and scalars; CuPy does not "
                     f"move a numpy array (shape {np.shape(x)}) to the device implicitly (cupy.asarray does)")


def _on_current_device(a: "EmuArray", where: str) -> None:
    # cupy/_core/_kernel.pyx, _check_peer_access: an array operation on an array of another device
    # is refused where the devices have no peer access (the stand-in's devices have none).
    if a._device != _CURRENT[0]:
        raise ValueError(f"{where}: the device where the array resides ({a._device}) is different from the "
                         f"current device ({_CURRENT[0]}). Peer access is unavailable between these devices.")


def _operand(x, where: str, sources: list):
    """x as the operation computes with it: a device array's values (recorded in `sources`), a
    scalar as it is. A numpy array is refused (TypeError); anything else raises _Refused."""
    if type(x) is EmuArray:
        _on_current_device(x, where)
        sources.append(x)
        return x._a
    if isinstance(x, _SCALARS) or x is None:
        return x
    if isinstance(x, np.ndarray):
        raise _host_array_error(x, where)
    raise _Refused(type(x))


def _operands(x, where: str, sources: list):
    """_operand over the arguments of a CuPy function: lists and tuples (of arrays, of shapes)
    and dtypes, strings, slices pass through, their device arrays unwrapped."""
    if isinstance(x, (list, tuple)):
        return type(x)(_operands(v, where, sources) for v in x)
    if isinstance(x, dict):
        return {k: _operands(v, where, sources) for k, v in x.items()}
    try:
        return _operand(x, where, sources)
    except _Refused:
        return x  # a dtype, a string, a slice, ...


def _basic_fill_value(value, where: str):
    """A host value written by plain indexing: only a scalar (or 0-d array) is taken, as CuPy's
    fill does. cupy/_core/_routines_indexing.pyx, _scatter_op: "Refuse assignment from CPU arrays,
    see gh-2079"; ndarray.fill: "non-scalar numpy.ndarray cannot be used for fill"."""
    v = np.asarray(value)
    if v.ndim:
        raise ValueError(f"non-scalar numpy.ndarray cannot be used for fill ({where}: CuPy does not copy a host "
                         f"array of shape {v.shape} into a device array; cupy.asarray it first)")
    return v[()]


def _index(key, where: str):
    """A CuPy index as numpy takes it: (key, device index arrays, whether it is advanced, whether
    it holds a boolean mask). Host index arrays and lists are copied to the device, as CuPy's
    _prepare_slice_list does (an upload); device index arrays must be on the current device."""
    parts = key if isinstance(key, tuple) else (key,)
    out, sources, advanced, mask = [], [], False, False
    for p in parts:
        if type(p) is EmuArray:
            _on_current_device(p, where)
            sources.append(p)
            out.append(p._a)
            advanced, mask = True, mask or p.dtype == np.bool_
        elif isinstance(p, (np.ndarray, list)):
            arr = np.asarray(p)
            if arr.size == 0 and isinstance(p, list):
                arr = arr.astype(np.int32)
            if _COUNTING:
                cost.record("upload", "host index")
            out.append(arr)
            advanced, mask = True, mask or arr.dtype == np.bool_
        else:
            out.append(p)
    if not advanced and not any(p is Ellipsis for p in out):
        out.append(Ellipsis)  # integers select a 0-d view, as in CuPy, not a numpy scalar
    return tuple(out), sources, advanced, mask


# ---- results: new device arrays, or views ------------------------------------------------------------
def _as_device(r, sources):
    """A numpy result as device arrays: (result, bytes of new arrays, new arrays). A result that
    shares memory with a source is a view of it; numpy scalars (full reductions) become 0-d arrays,
    as CuPy returns them."""
    if isinstance(r, np.ndarray):
        for s in sources:
            if np.may_share_memory(r, s._a):
                return _wrap(r, s._device, s._owner), 0, 0
        return _wrap(r, _CURRENT[0]), r.nbytes, 1
    if isinstance(r, np.generic):
        a = np.asarray(r)
        return _wrap(a, _CURRENT[0]), a.nbytes, 1
    if isinstance(r, (tuple, list)):
        parts = [_as_device(v, sources) for v in r]
        return type(r)(p[0] for p in parts), sum(p[1] for p in parts), sum(p[2] for p in parts)
    return r, 0, 0


def _result(name: str, r, sources, read=None):
    """Wrap an operation's numpy result and count it: a launch when it made new arrays (reading
    its sources, or `read` bytes), nothing when it only made views."""
    out, written, new = _as_device(r, sources)
    if new:
        _launch(name, sum(s._a.nbytes for s in sources) if read is None else read, written, new)
    return out


def _ufunc(ufunc, method: str, inputs, kwargs):
    """ufunc(*inputs) on the device (CuPy's __array_ufunc__): operands are device arrays and
    scalars; a numpy array among them is refused. Comparisons take a 0-d numpy array's value, as
    CuPy does (numpy/numpy#12142)."""
    name = ufunc.__name__ if method == "__call__" else f"{ufunc.__name__}.{method}"
    where = f"cupy.{name}"
    if method == "at":
        return _ufunc_at(ufunc, *inputs)
    sources = []
    outs = kwargs.pop("out", None)
    if outs is not None:
        outs = outs if isinstance(outs, tuple) else (outs,)
        for o in outs:
            if type(o) is not EmuArray:
                if isinstance(o, np.ndarray):
                    raise _host_array_error(o, f"{where}(out=...)")
                return NotImplemented
            _on_current_device(o, where)
        kwargs["out"] = tuple(o._a for o in outs)
    try:
        args = [_operand(x.item() if ufunc in _COMPARISONS and isinstance(x, np.ndarray) and x.ndim == 0 else x,
                         where, sources) for x in inputs]
    except _Refused:
        return NotImplemented
    r = getattr(ufunc, method)(*args, **kwargs)
    if outs is None:
        return _result(name, r, sources)
    _launch(name, sum(s._a.nbytes for s in sources), sum(o._a.nbytes for o in outs))
    return outs[0] if len(outs) == 1 else outs


def _ufunc_at(ufunc, a, indices, b=None):
    """ufunc.at(a, indices, b) in place (cupy.add.at): a scatter by `indices`, which take CuPy's
    index rules (``_index``); the values b are a device array or a scalar, or host values copied to
    the device for an advanced index (CuPy's _scatter_op, as for ``a[indices] = b``)."""
    where = f"cupy.{ufunc.__name__}.at"
    if type(a) is not EmuArray:
        raise _host_array_error(a, where) if isinstance(a, np.ndarray) else TypeError(f"{where}: {type(a)}")
    _on_current_device(a, where)
    np_key, sources, advanced, _ = _index(indices, where)
    if type(b) is EmuArray:
        _on_current_device(b, where)
        v, read = b._a, b._a.nbytes
    elif b is None or isinstance(b, _SCALARS):
        v, read = b, 0
    elif advanced:
        v = np.asarray(b)
        if _COUNTING:
            cost.record("upload", "scattered values")
        read = v.nbytes
    else:
        raise _host_array_error(b, where)
    if b is None:
        ufunc.at(a._a, np_key)
    else:
        ufunc.at(a._a, np_key, v)
    if _COUNTING:
        _launch(f"{ufunc.__name__}.at", read + sum(s._a.nbytes for s in sources), a._a[np_key].nbytes)


# ---- the array --------------------------------------------------------------------------------------
# numpy methods the stand-in's arrays have, as CuPy's do: each is one operation (a view when its
# result shares the array's memory: reshape, ravel, transpose, view, squeeze, swapaxes, diagonal).
_METHODS = frozenset("""all any argmax argmin argsort clip conj conjugate cumprod cumsum diagonal dot flatten
    max mean min nonzero prod ravel repeat reshape round sort squeeze std sum swapaxes take trace transpose var
    view""".split())
_SYNCING = frozenset({"nonzero", "flatnonzero", "argwhere", "unique"})  # the result's size comes to the host


class EmuArray(NDArrayOperatorsMixin):
    """cupy.ndarray, emulated (see the module docstring): metadata, ``.data.ptr``, ``.device``,
    ``.get()``, indexing, arithmetic, reductions; no implicit conversion to numpy.

    ``EmuArray(shape, dtype)`` allocates; ``EmuArray(shape, dtype, memptr=p)`` views existing
    device memory, as ``cupy.ndarray`` does."""

    __slots__ = ("_a", "_device", "_owner", "__weakref__")

    def __new__(cls, shape, dtype=float, memptr=None):
        if memptr is None:
            return device_empty(shape, dtype)
        dtype = np.dtype(dtype)
        shape = tuple(shape) if isinstance(shape, (tuple, list)) else (shape,)
        count = int(np.prod(shape, dtype=np.int64))
        buf = (ctypes.c_char * (count * dtype.itemsize)).from_address(memptr.ptr)
        buf.owner = memptr.owner  # as CuPy's memptr: the memory stays alive while a view of it does
        a = np.frombuffer(buf, dtype=dtype, count=count).reshape(shape)
        return _wrap(a, memptr.owner._device, memptr.owner._owner)

    # ---- metadata: no device work ----
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    device = property(lambda self: Device(self._device), doc="the cupy.cuda.Device the array lives on")

    @property
    def data(self):
        """cupy's MemoryPointer: ``.ptr``, ``.device_id``; ``+ offset``."""
        return _Ptr(self._a.__array_interface__["data"][0], self)

    @property
    def T(self):
        return self.transpose()

    def __len__(self):
        if self._a.ndim == 0:
            raise TypeError("len() of unsized object")
        return self._a.shape[0]

    def __iter__(self):
        if self._a.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(self._a.shape[0]))

    # ---- to the host: explicit, and each a synchronisation ----
    def __array__(self, dtype=None, copy=None):
        # cupy/_core/core.pyx, ndarray.__array__: the same words.
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a "
                        "NumPy array explicitly.")

    def get(self, stream=None, order="C", out=None, blocking=True):
        """A copy on the host (a synchronisation)."""
        _sync("get")
        host = np.array(self._a, order=order)
        if out is None:
            return host
        out[...] = host
        return out

    def item(self):
        _sync("item")
        return self._a.item()

    def tolist(self):
        _sync("tolist")
        return self._a.tolist()

    def __float__(self):
        _sync("float")
        return float(self._a)

    def __int__(self):
        _sync("int")
        return int(self._a)

    def __complex__(self):
        _sync("complex")
        return complex(self._a)

    def __bool__(self):
        # cupy/_core/core.pyx, __nonzero__: one element is read back; more is ambiguous
        if self._a.size == 0:
            warnings.warn("The truth value of an empty array is ambiguous. Returning False", DeprecationWarning)
            return False
        if self._a.size > 1:
            raise ValueError("The truth value of an array with more than one element is ambiguous. Use a.any() "
                             "or a.all()")
        _sync("bool")
        return bool(self._a)

    def __repr__(self):
        _sync("repr")
        return repr(self._a)

    def __str__(self):
        _sync("str")
        return str(self._a)

    def __format__(self, spec):
        _sync("format")
        return format(self._a, spec)

    def __reduce__(self):
        return emucupy.array, (self.get(),)  # as cupy's: pickled through the host

    # ---- indexing ----
    def __getitem__(self, key):
        np_key, sources, advanced, mask = _index(key, "indexing")
        r = self._a[np_key]
        if not advanced:
            return _wrap(r, self._device, self._owner)
        _on_current_device(self, "indexing")
        if mask:  # the result's length comes from a scan whose last value the host reads
            _launch("cumsum", sum(s._a.nbytes for s in sources), 0)
            _sync("boolean mask")
        return _result("take", r, [], read=r.nbytes + sum(s._a.nbytes for s in sources))

    def __setitem__(self, key, value):
        np_key, sources, advanced, mask = _index(key, "assignment")
        where = "cupy.ndarray.__setitem__"
        _on_current_device(self, where)
        if type(value) is EmuArray:
            _on_current_device(value, where)
            v, read, name = value._a, value._a.nbytes, "scatter" if advanced else "copy"
        elif isinstance(value, _SCALARS):
            v, read, name = value, 0, "scatter" if advanced else "fill"
        elif advanced:  # CuPy copies the values to the device (core.array) for an advanced index
            v = np.asarray(value)
            if _COUNTING:
                cost.record("upload", "assigned values")
            read, name = v.nbytes, "scatter"
        else:
            v, read, name = _basic_fill_value(value, where), 0, "fill"
        if mask:
            _launch("cumsum", sum(s._a.nbytes for s in sources), 0)
            _sync("boolean mask")
        self._a[np_key] = v
        if _COUNTING:
            target = self._a[np_key]
            _launch(name, read + sum(s._a.nbytes for s in sources), target.nbytes)

    # ---- operations ----
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        return _ufunc(ufunc, method, inputs, kwargs)

    def __array_function__(self, func, types, args, kwargs):
        fn = _standin_of(func)
        return NotImplemented if fn is None else fn(*args, **kwargs)

    def astype(self, dtype, copy=True, **kwargs):
        if not copy and np.dtype(dtype) == self._a.dtype:
            return self
        return _result("astype", self._a.astype(dtype, **kwargs), [self])

    def copy(self, order="C"):
        return _result("copy", self._a.copy(order=order), [self])

    def fill(self, value):
        if type(value) is EmuArray:
            if value.shape != ():
                raise ValueError("non-scalar cupy.ndarray cannot be used for fill")
            v = value._a[()]
        else:
            v = _basic_fill_value(value, "cupy.ndarray.fill")
        self._a.fill(v)
        _launch("fill", 0, self._a.nbytes)

    def __copy__(self):
        return self.copy()

    def __deepcopy__(self, memo):
        return self.copy()

    def __getattr__(self, name):
        if name not in _METHODS:
            raise AttributeError(f"'cupy.ndarray' (the emulator's stand-in) has no attribute {name!r}")
        return functools.partial(_method, self, name)


EmuArray.__module__ = "cupy_emulated"  # how gpugrad tells a CuPy array (backends.is_cupy_array)


def _method(self: EmuArray, name: str, *args, **kwargs):
    where = f"cupy.ndarray.{name}"
    sources = [self]
    _on_current_device(self, where)
    out = kwargs.get("out")
    args, kwargs = _operands(args, where, sources), _operands(kwargs, where, [])
    if name in _SYNCING:
        _sync(name)
    r = getattr(self._a, name)(*args, **kwargs)
    if r is None or type(out) is EmuArray:  # written in place (sort) or into out
        target = self if r is None else out
        _launch(name, sum(s._a.nbytes for s in sources), target._a.nbytes)
        return None if r is None else out
    return _result(name, r, sources)


class _Ptr:
    """cupy's MemoryPointer: an address and its device, holding the array it points into alive."""
    __slots__ = ("ptr", "owner")

    def __init__(self, ptr, owner):
        self.ptr, self.owner = ptr, owner

    device_id = property(lambda self: self.owner._device)

    def __add__(self, offset: int):
        return _Ptr(self.ptr + offset, self.owner)




# ---- the module ----------------------------------------------------------------------------------------
_METADATA = frozenset({"result_type", "can_cast", "promote_types", "dtype", "iinfo", "finfo", "isscalar", "ndim",
                       "shape", "size", "issubdtype", "min_scalar_type", "common_type", "broadcast_shapes"})
_LIKE = frozenset({"empty_like", "zeros_like", "ones_like", "full_like"})


def _standin_of(func):
    """The stand-in's function for a numpy function (CuPy's __array_function__: the cupy function
    of the same name and module), or None."""
    ns = emucupy
    for part in func.__module__.split(".")[1:]:
        ns = getattr(ns, part, None)
        if ns is None:
            return None
    try:
        return getattr(ns, func.__name__)
    except AttributeError:
        return None


def _function(name: str, fn):
    """numpy's `fn` as CuPy's function `name`: device arrays in, device arrays out; numpy arrays
    refused (metadata functions and the ``*_like`` functions, which read no values, excepted)."""
    where = f"cupy.{name}"

    if name in _METADATA:
        @functools.wraps(fn)
        def metadata(*args, **kwargs):
            unwrap = lambda x: x._a if type(x) is EmuArray else x  # noqa: E731
            return fn(*[unwrap(a) for a in args], **kwargs)
        return metadata

    @functools.wraps(fn)
    def on_device(*args, **kwargs):
        sources = []
        if name in _LIKE:  # reads the metadata of its first argument only: a host array will do
            first = args[0]._a if type(args[0]) is EmuArray else args[0]
            args = (first,) + tuple(_operands(args[1:], where, sources))
        else:
            args = _operands(args, where, sources)
        out = kwargs.get("out")
        kwargs = _operands(kwargs, where, [])
        if name in _SYNCING or (name == "where" and len(args) == 1):
            _sync(name)
        r = fn(*args, **kwargs)
        if type(out) is EmuArray:
            _launch(name, sum(s._a.nbytes for s in sources), out._a.nbytes)
            return out
        return _result(name, r, sources)
    return on_device


class _UfuncStandIn:
    """cupy.<ufunc>: the numpy ufunc with the device's operand rules."""

    def __init__(self, ufunc):
        self._ufunc = ufunc
        self.__name__ = ufunc.__name__

    def __call__(self, *inputs, **kwargs):
        return self._method("__call__", inputs, kwargs)

    def _method(self, method, inputs, kwargs):
        r = _ufunc(self._ufunc, method, inputs, kwargs)
        if r is NotImplemented:
            raise TypeError(f"cupy.{self.__name__}: unsupported operand types "
                            f"{[type(x).__name__ for x in inputs]}")
        return r

    def __getattr__(self, method):
        if method not in ("reduce", "accumulate", "outer", "at", "reduceat"):
            raise AttributeError(method)
        return lambda *inputs, **kwargs: self._method(method, inputs, kwargs)


class _Namespace(types.ModuleType):
    """numpy's functions under cupy's name (``emucupy``, ``emucupy.linalg``), made on first use."""

    def __init__(self, name, numpy_ns):
        super().__init__(name)
        self._np = numpy_ns

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        attr = getattr(self._np, name)
        if isinstance(attr, types.ModuleType):  # numpy.random and the like: not the stand-in's
            raise AttributeError(f"the CuPy stand-in has no {self.__name__}.{name}")
        if isinstance(attr, np.ufunc):
            wrapped = _UfuncStandIn(attr)
        elif isinstance(attr, type) or not callable(attr):
            wrapped = attr  # dtypes (cupy.float32), constants
        else:
            wrapped = _function(name, attr)
        setattr(self, name, wrapped)
        return wrapped


def _gemm(transa, transb, a, b, out=None, alpha=1.0, beta=0.0):
    """cupy.cublas.gemm: out = alpha op(a) @ op(b) + beta out, op 'N' (as it is) or 'T' (transposed),
    one library call. Device arrays only, each C- or F-contiguous (cuBLAS takes either without a
    copy; CuPy copies anything else first, which this refuses, naming the operand); written into
    `out` when given (no allocation), else into a new F-ordered array, as CuPy's."""
    where = "cupy.cublas.gemm"
    ops = {"N": lambda x: x, "T": lambda x: x.T}
    for name, x in (("a", a), ("b", b), ("out", out)):
        if x is None:
            continue
        if type(x) is not EmuArray:
            raise _host_array_error(x, where) if isinstance(x, np.ndarray) else TypeError(f"{where}: {name} is {type(x)}")
        _on_current_device(x, where)
        if not (x.flags.c_contiguous or x.flags.f_contiguous):
            raise TypeError(f"{where}: {name} (shape {x.shape}, strides {x.strides}) is neither C- nor F-contiguous: "
                            "CuPy would copy it first")
    product = np.matmul(ops[transa](a._a), ops[transb](b._a))
    read = a._a.nbytes + b._a.nbytes
    if out is None:
        r = device_empty(product.shape, product.dtype, "gemm")
        r._a[...] = alpha * product
        _launch("gemm", read, r._a.nbytes)
        return r
    if beta == 0:
        out._a[...] = product if alpha == 1 else alpha * product
    else:
        out._a[...] = alpha * product + beta * out._a
        read += out._a.nbytes
    _launch("gemm", read, out._a.nbytes)
    return out


class _EmuCupy(_Namespace):
    """The stand-in's ``cupy`` module: numpy's names with CuPy's rules, ``ndarray = EmuArray``, the
    functions that move data between host and device, ``cublas.gemm`` and a ``cuda`` with devices."""

    ndarray = EmuArray
    cuda = cuda
    cublas = types.SimpleNamespace(gemm=_gemm)
    __version__ = "14.2.0 (numpy stand-in)"

    def __init__(self, name):
        super().__init__(name, np)
        self.linalg = _Namespace(f"{name}.linalg", np.linalg)

    # ---- host <-> device ----
    @staticmethod
    def asarray(a, dtype=None, order=None):
        """A device array: `a` itself when it is one (cast when dtype differs), else a copy of the
        host data (an upload)."""
        if type(a) is EmuArray:
            return a if dtype is None or np.dtype(dtype) == a.dtype else a.astype(dtype)
        if isinstance(a, (list, tuple)) and any(type(v) is EmuArray for v in a):
            stacked = emucupy.stack(list(a))  # device values stay on the device
            return stacked if dtype is None else stacked.astype(dtype, copy=False)
        return _upload(np.asarray(a, dtype=dtype))

    @staticmethod
    def array(a, dtype=None, copy=True, order="K", ndmin=0):
        if type(a) is EmuArray:
            return a.astype(dtype or a.dtype, copy=copy)
        return _upload(np.array(a, dtype=dtype, ndmin=ndmin), "array")

    @staticmethod
    def asnumpy(a, stream=None, order="C", out=None, blocking=True):
        if type(a) is EmuArray:
            return a.get(order=order, out=out)
        return np.asarray(a, order=order)

    @staticmethod
    def ascontiguousarray(a, dtype=None):
        # cupy/_core/core.pyx: ascontiguousarray(_ndarray_base a, dtype): a device array only.
        if type(a) is not EmuArray:
            raise TypeError(f"Argument 'a' has incorrect type (expected cupy.ndarray, got {type(a).__name__}): "
                            f"cupy.ascontiguousarray does not copy host data to the device (cupy.asarray does)")
        _on_current_device(a, "cupy.ascontiguousarray")
        if a.flags.c_contiguous and (dtype is None or np.dtype(dtype) == a.dtype):
            return a  # no copy
        d = device_empty(a.shape, dtype or a.dtype, "ascontiguousarray")
        d._a[...] = a._a
        _launch("copy", a._a.nbytes, d._a.nbytes)
        return d

    # ---- allocations (guarded device memory) ----
    @staticmethod
    def empty(shape, dtype=float, order="C"):
        """Poisoned: NaN, or 0xAB bytes for integers (the emulator's, not counted as a launch)."""
        a = device_empty(shape, dtype)
        a._a.fill(np.nan if a.dtype.kind == "f" else 0xAB)
        return a

    @staticmethod
    def empty_like(a, dtype=None):
        return _EmuCupy.empty(a.shape, dtype or a.dtype)

    @staticmethod
    def zeros(shape, dtype=float, order="C"):
        a = device_empty(shape, dtype, "zeros")
        a._a.fill(0)
        _launch("memset", 0, a._a.nbytes)
        return a

    @staticmethod
    def zeros_like(a, dtype=None):
        return _EmuCupy.zeros(a.shape, dtype or a.dtype)

    @staticmethod
    def full(shape, fill_value, dtype=None):
        fill = fill_value._a[()] if type(fill_value) is EmuArray else _basic_fill_value(fill_value, "cupy.full")
        a = device_empty(shape, dtype or np.asarray(fill).dtype, "full")
        a._a.fill(fill)
        _launch("fill", 0, a._a.nbytes)
        return a


emucupy = _EmuCupy("emucupy")

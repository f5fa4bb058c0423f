"""What the CuPy backend asks of the CUDA driver itself, through ctypes and cupy_backends.

- ``blocks_per_sm`` / ``max_active_clusters``: the driver's occupancy answers, which size the
  persistent grids of the fused linear step;
- ``DirectCalls`` / ``launch_row_direct``: the "direct" row-loss call path, cuLaunchKernel from a
  per-thread ctypes block of the parameters instead of CuPy's RawKernel call (which converts
  every argument on every call). A private variant (``plans.Variants.row_call``) until a card
  shows it wins.
"""
from __future__ import annotations

import ctypes
import threading

try:
    from cupy_backends.cuda.api import driver
except ImportError:  # no CuPy: the module still imports (for the docs' doctests); nothing here runs
    driver = None


def blocks_per_sm(fptr: int, threads: int, smem: int) -> int:
    """Blocks of the kernel fptr that fit on an SM at once (cuOccupancyMaxActiveBlocksPerMultiprocessor)."""
    return max(1, driver.occupancyMaxActiveBlocksPerMultiprocessor(fptr, threads, smem))


class _CUlaunchConfig(ctypes.Structure):
    _fields_ = [("gridDimX", ctypes.c_uint), ("gridDimY", ctypes.c_uint), ("gridDimZ", ctypes.c_uint),
                ("blockDimX", ctypes.c_uint), ("blockDimY", ctypes.c_uint), ("blockDimZ", ctypes.c_uint),
                ("sharedMemBytes", ctypes.c_uint), ("hStream", ctypes.c_void_p), ("attrs", ctypes.c_void_p),
                ("numAttrs", ctypes.c_uint)]


def max_active_clusters(fptr: int, cluster: int, threads: int, smem: int) -> int | None:
    """How many clusters of this kernel fit on the device at once (cuOccupancyMaxActiveClusters; a
    cluster must fit in one GPC, so this is not simply SMs / cluster). None when the driver does
    not say."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
        cfg = _CUlaunchConfig(cluster, 1, 1, threads, 1, 1, smem, None, None, 0)
        count = ctypes.c_int(0)
        rc = lib.cuOccupancyMaxActiveClusters(ctypes.byref(count), ctypes.c_void_p(fptr), ctypes.byref(cfg))
    except (OSError, AttributeError):
        return None
    return count.value if rc == 0 and count.value > 0 else None


class RowParams(ctypes.Structure):
    """The row-loss kernels' parameters (GG_ROW_LOSS_ARGS) as cuLaunchKernel reads them."""
    _fields_ = [("S", ctypes.c_void_p), ("y", ctypes.c_void_p), ("y64", ctypes.c_int32),
                ("dS", ctypes.c_void_p), ("n", ctypes.c_int64), ("C", ctypes.c_int32),
                ("partials", ctypes.c_void_p), ("ticket", ctypes.c_void_p), ("loss", ctypes.c_void_p)]


class DirectCalls(threading.local):
    """Per-thread state of the direct path. A RowParams and the array of pointers to its fields
    that cuLaunchKernel takes: filled and launched within one call, and no two threads share one.
    The slabs the losses are 0-d views into, one per device, stream and dtype: each slot is used
    once, so a loss stays valid as long as it is referenced (the view holds its slab); and a slab
    is allocated on the stream whose kernels write it, so CuPy's stream-ordered pool hands its
    memory out again only to work queued after them."""
    SLOTS = 256

    def __init__(self, xp):
        self.params = RowParams()
        base = ctypes.addressof(self.params)
        self.argv = (ctypes.c_void_p * len(RowParams._fields_))(
            *[base + getattr(RowParams, f).offset for f, _ in RowParams._fields_])
        self.argv_ptr = ctypes.addressof(self.argv)
        self.slabs = {}
        # cuLaunchKernel needs the device's context current in this thread. CuPy makes it so before
        # each of its own launches (and `with cupy.cuda.Device(i)` on entry); cudaSetDevice makes the
        # device's primary context current (and, since CUDA 12, initialises it).
        xp.cuda.runtime.setDevice(xp.cuda.runtime.getDevice())

    def loss(self, xp, device: int, stream_ptr: int, dtype):
        """A fresh 0-d array of dtype for one call's loss, on this device and stream."""
        key = (device, stream_ptr, dtype)
        slab = self.slabs.get(key)
        if slab is None or slab[1] == self.SLOTS:
            slab = self.slabs[key] = [xp.empty(self.SLOTS, dtype), 0]
        arr, i = slab
        slab[1] = i + 1
        return xp.ndarray((), dtype, memptr=arr.data + i * arr.itemsize)


_DIRECT = None  # made at the first direct call


def direct(xp) -> DirectCalls:
    """This thread's DirectCalls (xp: the array module, cupy)."""
    global _DIRECT
    if _DIRECT is None:
        _DIRECT = DirectCalls(xp)
    return _DIRECT


def launch_row_direct(xp, launch, ws, S, y, y64: int, out):
    """The launch the backend's row-loss call makes, through cuLaunchKernel: `launch` is its
    RowLaunch on ws's device and stream. Returns the loss (a 0-d view into a slab)."""
    d = direct(xp)
    loss = d.loss(xp, ws.device.id, ws.stream_ptr, S.dtype)
    p = d.params
    p.S, p.y, p.y64, p.dS, p.n, p.C = S.data.ptr, y.data.ptr, y64, out.data.ptr, int(launch.n), int(launch.C)
    p.partials, p.ticket, p.loss = ws.partials_for(launch.grid[0]).data.ptr, ws.ticket.data.ptr, loss.data.ptr
    driver.launchKernel(launch.fptr, launch.grid[0], 1, 1, launch.block[0], 1, 1, launch.smem, ws.stream_ptr,
                        d.argv_ptr, 0)
    return loss

"""The CuPy backend: numpy's interface, with fused CUDA kernels where they pay.

Everything not overridden here is inherited from ``NumpyBackend`` and runs through CuPy's own
array operations (``xp = cupy``). The overrides launch the kernels of ``kernels/``:

- ``softmax_cross_entropy_grad`` / ``svm_grad``: one launch, one read of S, one write of dS,
  the mean loss reduced in the same launch;
- ``linear_grad``: X read once for J, dW and db (float32 or float64 X, either normalised by
  x_mean/x_std on the fly or not, and uint8 X with them under float32 or float64 weights), for
  C <= 16 classes and rows short enough for the fused kernel (W in shared memory); other inputs
  take the inherited path (cuBLAS matmuls around the fused loss kernel). Every kind of X has a "simt"
  kernel (FMA, any sm_80+ card), which also reads per-row sample weights; float32 X (not
  normalised) and uint8 X also have an "mma" one (tensor cores and thread-block clusters, sm_90+,
  d <= 3072, unweighted steps only), chosen by ``LINEAR_VARIANT``;
- ``first_invalid``: the label-range and NaN/Inf checks in one device-side pass, one read-back.

No host synchronisation happens in a gradient step: J comes back as a 0-d device array. Only the
value checks (``validate=True``, the default) read one small array back to the host.
"""
from __future__ import annotations

import ctypes
import functools
import threading
from typing import NamedTuple

import cupy
import numpy as np
from cupy_backends.cuda.api import driver

from . import kernels as _k
from .numpy_backend import NumpyBackend

_TYPE = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}
_BLOCK_K = {"f32": (2, 4, 8, 16, 32), "f64": (2, 4, 8, 16)}
# Long rows go to the streamed kernel (a persistent block per SM, the next row in flight while the
# current one is reduced) from this many classes on, up to 1024 * _STREAM_K values a row.
_STREAM_FROM = 8193
_STREAM_K = {"f32": 32, "f64": 16}
_PREFETCH_K = {"f32": 52, "f64": 26}  # gg_ce_<t>_p640_k<K>: 640 threads, rows up to 640 K
# "stream" (the next row into registers, measured on an H100), "prefetch" (the next row into shared
# memory by cp.async, the current one in registers; checked in the CPU emulator, not yet timed on a
# GPU) or "block" (a block per row). benchmarks/gpu_check.py times all three.
CE_LONG_ROWS = {"variant": "stream"}
# The fused linear step, per kind of X ("f32", "u8"; "f32n", "f64", "f64n", "u8f64" have only "simt"):
# "simt" (gg_linear_<x>_c<C>, FMA, measured on an H100 for f32 and u8) or
# "mma" (gg_linmma_<x>_nt<NT>, tensor cores in thread-block clusters, sm_90+; compiled, its fragment
# layout and arithmetic checked on the CPU, not yet run on a GPU). benchmarks/gpu_check.py checks and
# times both. "mma" falls back to "simt" where it does not apply.
LINEAR_VARIANT = {"f32": "simt", "u8": "simt"}
# The row-loss calls' host path. A small-C call is bound by host time, not device time (S 8192 x 10:
# 4.6 us on an H100's device, ~15 us a call from Python). "cupy": RawKernel.__call__, which converts
# every argument on every call, and a cupy.empty for the loss; "direct": cuLaunchKernel straight
# from a per-thread ctypes block of the parameters, and the loss a 0-d view into a slab allocated
# once per 256 calls. Checked in the CPU emulator, not yet timed on a GPU: benchmarks/gpu_check.py
# times both, and each part of a call on its own.
ROW_CALL = {"path": "cupy"}


class LinmmaShape(NamedTuple):
    """Tile shape of gg_linmma_<x>_nt*: mirrors GG_LINMMA_* of kernels/mma_layout.cuh."""
    rows: int      # rows per tile
    cluster: int   # blocks per cluster, which split the columns
    max_dsl: int   # columns per block at most
    block: int     # dsl is a multiple of this many columns


LINMMA_THREADS = 512
LINMMA = {"u8": LinmmaShape(64, 4, 768, 16), "f32": LinmmaShape(32, 8, 384, 16)}


_Y64 = (np.int32(0), np.int32(1))  # the kernels' label-width flag, made once


def _labels(y):
    """(labels as a contiguous int32/int64 device array, 1 if int64), without a copy for contiguous
    int32/int64 labels (the kernels index y[row] from its base pointer)."""
    if not y.flags.c_contiguous:
        y = cupy.ascontiguousarray(y)
    if y.dtype == np.int64:
        return y, 1
    if y.dtype == np.int32:
        return y, 0
    return y.astype(np.int64), 1


def _allow_dynamic_smem(f, nbytes: int) -> None:
    """Raise kernel f's dynamic shared-memory limit to nbytes (past 48 KB it must be asked for)."""
    if f.max_dynamic_shared_size_bytes < nbytes:
        f.max_dynamic_shared_size_bytes = nbytes


class KernelConfig(NamedTuple):
    """How to launch a row-loss kernel: its name, threads per block, rows per block, whether it is a
    persistent kernel (grid = SMs, C values of dynamic shared memory), and whether it needs S, dS
    and each row at 16-byte boundaries."""
    name: str
    threads: int
    rows_per_block: int
    stream: bool = False
    aligned16: bool = False


def ce_kernel_config(C: int, dtype, long_rows: str | None = None) -> KernelConfig:
    """The softmax cross-entropy kernel for rows of C classes. Small C: G lanes of a warp per row,
    K values a lane in registers; large C: a persistent kernel (``long_rows="stream"``, the
    default in CE_LONG_ROWS, or "prefetch") or a 1024-thread block per row ("block"); past the
    registers: the two-pass online kernel."""
    return _ce_kernel_config(C, np.dtype(dtype), long_rows or CE_LONG_ROWS["variant"])


@functools.lru_cache(maxsize=None)
def _ce_kernel_config(C: int, dtype, long_rows: str) -> KernelConfig:
    t = _TYPE[dtype]
    for G in (1, 2, 4, 8, 16, 32):
        if C <= 8 * G:
            return KernelConfig(f"gg_ce_{t}_w{G}_k8", 256, 256 // G)
    if C <= 1024:
        return KernelConfig(f"gg_ce_{t}_w32_k32", 256, 8)
    if _STREAM_FROM <= C <= 1024 * _STREAM_K[t]:
        if long_rows == "stream":
            return KernelConfig(f"gg_ce_{t}_s1024_k{_STREAM_K[t]}", 1024, 1, stream=True)
        if long_rows == "prefetch":
            return KernelConfig(f"gg_ce_{t}_p640_k{_PREFETCH_K[t]}", 640, 1, stream=True, aligned16=True)
    for K in _BLOCK_K[t]:
        if C <= 1024 * K:
            return KernelConfig(f"gg_ce_{t}_b_k{K}", 1024, 1)
    return KernelConfig(f"gg_ce_{t}_online", 1024, 1)


@functools.lru_cache(maxsize=None)
def svm_kernel_config(C: int, dtype) -> KernelConfig:
    """The hinge kernel: G lanes per row, about 8 entries a lane, a whole block per row past
    1024 classes."""
    t = _TYPE[np.dtype(dtype)]
    for G in (1, 2, 4, 8, 16, 32):
        if C <= 8 * G or G == 32 and C <= 1024:
            return KernelConfig(f"gg_svm_{t}_w{G}", 256, 256 // G)
    return KernelConfig(f"gg_svm_{t}_b", 1024, 1)


def linear_shape(C: int, dtype=np.float32) -> tuple[int, int]:
    """(rows per group RG, columns per thread KPT) of gg_linear_*_c<C> computing in dtype: mirrors
    GgLinearShape."""
    if np.dtype(dtype) == np.float64:
        return (2, 4) if C <= 4 else (1, 2)
    p2 = 1
    while p2 < C:
        p2 *= 2
    rg = min(4, 32 // p2)
    kpt = 8 if C <= 5 else (6 if C <= 10 else 4)
    return rg, kpt


_NULL = np.uint64(0)  # a null pointer argument


def _step_inputs(X, y, W, b, x_mean, x_std):
    """A fused linear step's inputs as its kernels take them: contiguous X, W, b; the labels and
    their width flag; the normalisation (x_mean, x_std in W's dtype, or two null pointers)."""
    X = cupy.ascontiguousarray(X)
    W, b = cupy.ascontiguousarray(W), cupy.ascontiguousarray(b)
    y, y64 = _labels(y)
    if x_mean is None:
        norm = (_NULL, _NULL)
    else:
        norm = (cupy.ascontiguousarray(x_mean, dtype=W.dtype), cupy.ascontiguousarray(x_std, dtype=W.dtype))
    return X, y, y64, W, b, norm


def _row_weights(sample_weight, dtype):
    """The simt linear kernels' per-row weight argument: sample_weight (n,) as a contiguous device
    array of the compute dtype (no copy when it already is one), or a null pointer for none."""
    if sample_weight is None:
        return _NULL
    return cupy.ascontiguousarray(sample_weight, dtype=dtype)


def _step_partials(parts: int, C: int, d: int, dtype=np.float32):
    """Per-block (or per-cluster) partials of a fused linear step: dW (parts, C, d), db (parts, C)
    in the compute dtype and the loss sums (parts,) in float64, each written whole by the kernel."""
    return (cupy.empty((parts, C, d), dtype=dtype), cupy.empty((parts, C), dtype=dtype),
            cupy.empty(parts, dtype=np.float64))


def _copy_align(X) -> int:
    """The widest copy (16, 4 or 1 bytes) the kernels' X staging (gg_stage_tile) may use on this
    C-contiguous X: its row length in bytes and its address are both multiples of it, and so is
    the element size (1: one element at a time, e.g. float64 X 8 bytes past a 16-byte boundary)."""
    row = X.shape[1] * X.itemsize
    return next(a for a in (16, 4, 1) if row % a == 0 and X.data.ptr % a == 0 and (a == 1 or a % X.itemsize == 0))


def linmma_smem_bytes(x: str, dsl: int, nt: int) -> int:
    """Dynamic shared memory of gg_linmma_<x>_nt<nt> for column slices of dsl: the `bytes` of
    GgLinmmaU8Layout / GgLinmmaF32Layout (kernels/mma_layout.cuh)."""
    R = LINMMA[x].rows
    if x == "u8":
        wstride = -(-dsl // 64) * 64 + 16
        xstride = -(-dsl // 128) * 128 + 16
        x_off = -(-(2 * 8 * nt * wstride * 2 + dsl * 2) // 16) * 16
        g_off = x_off + 2 * R * xstride + 4 * R * 24 * 4 + 2 * R * 16 * 4
        return g_off + 2 * 8 * nt * (R + 8) * 2
    stride = -(-dsl // 32) * 32 + 8
    g_off = 2 * 8 * nt * stride * 4 + 2 * R * stride * 4 + 8 * R * 24 * 4 + 2 * R * 16 * 4
    return g_off + 2 * 8 * nt * (R + 4) * 4


def linmma_slice(x: str, d: int) -> int:
    """Columns per block: d split over a cluster, rounded up to whole MMA column blocks."""
    shape = LINMMA[x]
    per_block = -(-d // shape.cluster)
    return -(-per_block // shape.block) * shape.block


class _CUlaunchConfig(ctypes.Structure):
    _fields_ = [("gridDimX", ctypes.c_uint), ("gridDimY", ctypes.c_uint), ("gridDimZ", ctypes.c_uint),
                ("blockDimX", ctypes.c_uint), ("blockDimY", ctypes.c_uint), ("blockDimZ", ctypes.c_uint),
                ("sharedMemBytes", ctypes.c_uint), ("hStream", ctypes.c_void_p), ("attrs", ctypes.c_void_p),
                ("numAttrs", ctypes.c_uint)]


def _max_active_clusters(func_ptr: int, cluster: int, threads: int, smem: int) -> int | None:
    """How many clusters of this kernel fit on the device at once (the driver's
    cuOccupancyMaxActiveClusters; a cluster must fit in one GPC, so this is not simply SMs /
    cluster). None when the driver does not say."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
        cfg = _CUlaunchConfig(cluster, 1, 1, threads, 1, 1, smem, None, None, 0)
        count = ctypes.c_int(0)
        rc = lib.cuOccupancyMaxActiveClusters(ctypes.byref(count), ctypes.c_void_p(func_ptr), ctypes.byref(cfg))
    except (OSError, AttributeError):
        return None
    return count.value if rc == 0 and count.value > 0 else None


class _Workspace:
    """Per-stream scratch for the one-launch mean: a zeroed ticket counter (each kernel's last
    block resets it) and room for per-block partial sums. Kernels on one stream run in order,
    so they can share it; another stream gets its own."""

    def __init__(self, device: int, stream_ptr: int):
        self.device, self.stream_ptr = device, stream_ptr
        self.ticket = cupy.zeros(1, dtype=np.uint32)
        self.partials = cupy.empty(0, dtype=np.float64)

    def partials_for(self, nblocks: int):
        if self.partials.size < nblocks:
            self.partials = cupy.empty(max(nblocks, 2 * self.partials.size), dtype=np.float64)
        return self.partials


class _RowParams(ctypes.Structure):
    """The row-loss kernels' parameters (GG_CE_ARGS, GG_SVM_ARGS) as cuLaunchKernel reads them."""
    _fields_ = [("S", ctypes.c_void_p), ("y", ctypes.c_void_p), ("y64", ctypes.c_int32),
                ("dS", ctypes.c_void_p), ("n", ctypes.c_int64), ("C", ctypes.c_int32),
                ("partials", ctypes.c_void_p), ("ticket", ctypes.c_void_p), ("loss", ctypes.c_void_p)]


class _DirectCalls(threading.local):
    """Per-thread state of the "direct" row-loss path. A _RowParams and the array of pointers to
    its fields that cuLaunchKernel takes: filled and launched within one call, and no two threads
    share one. The slabs the losses are 0-d views into, one per device, stream and dtype: each slot
    is used once, so a loss stays valid as long as it is referenced (the view holds its slab); and
    a slab is allocated on the stream whose kernels write it, so CuPy's stream-ordered pool hands
    its memory out again only to work queued after them."""
    SLOTS = 256

    def __init__(self):
        self.params = _RowParams()
        base = ctypes.addressof(self.params)
        self.argv = (ctypes.c_void_p * len(_RowParams._fields_))(
            *[base + getattr(_RowParams, f).offset for f, _ in _RowParams._fields_])
        self.argv_ptr = ctypes.addressof(self.argv)
        self.slabs = {}
        # cuLaunchKernel needs the device's context current in this thread. CuPy makes it so before
        # each of its own launches; cudaSetDevice makes the device's primary context current (and,
        # since CUDA 12, initialises it).
        cupy.cuda.runtime.setDevice(cupy.cuda.runtime.getDevice())

    def loss(self, ws: _Workspace, dtype):
        """A fresh 0-d array of dtype for one call's loss, on the workspace's device and stream."""
        key = (ws.device, ws.stream_ptr, dtype)
        slab = self.slabs.get(key)
        if slab is None or slab[1] == self.SLOTS:
            slab = self.slabs[key] = [cupy.empty(self.SLOTS, dtype), 0]
        arr, i = slab
        slab[1] = i + 1
        return cupy.ndarray((), dtype, memptr=arr.data + i * arr.itemsize)


_DIRECT = None  # made at the first "direct" call: _DirectCalls() touches the device


def _direct() -> _DirectCalls:
    global _DIRECT
    if _DIRECT is None:
        _DIRECT = _DirectCalls()
    return _DIRECT


class CupyBackend(NumpyBackend):
    """CUDA backend: inherits the reference and overrides the fused paths with kernels."""

    name = "cupy"
    xp = cupy

    def __init__(self):
        self._workspaces = {}
        self._clusters = {}
        self._occupancy = {}
        self._row_launches = {}
        dev = cupy.cuda.Device()
        self.sm_count = dev.attributes["MultiProcessorCount"]
        self.smem_optin = dev.attributes["MaxSharedMemoryPerBlockOptin"]
        self.cc = int(dev.compute_capability)

    # ---- plumbing --------------------------------------------------------------------------
    def to_numpy(self, a):
        return cupy.asnumpy(a)

    @staticmethod
    def kernel(name: str):
        return _k.get_function(name)

    def workspace(self) -> _Workspace:
        key = (cupy.cuda.runtime.getDevice(), cupy.cuda.get_current_stream().ptr)
        ws = self._workspaces.get(key)
        if ws is None:
            ws = self._workspaces[key] = _Workspace(*key)
        return ws

    # ---- value checks: one fused pass, one read-back ------------------------------------------
    def first_invalid(self, y, C, arrays):
        y, y64 = _labels(y)
        out = cupy.full(1 + len(arrays), np.iinfo(np.uint64).max, dtype=np.uint64)
        f = self.kernel("gg_first_invalid")
        slots = [a for a in arrays] or [None]
        for start in range(0, len(slots), 4):  # four arrays per launch; the labels on the first
            group = slots[start:start + 4] + [None] * (4 - len(slots[start:start + 4]))
            args = []
            for a in group:
                if a is None or a.dtype.kind != "f":
                    args += [np.uint64(0), np.int32(0), np.int64(0)]
                else:
                    a = cupy.ascontiguousarray(a)
                    args += [a, np.int32(1 if a.dtype == np.float32 else 2), np.int64(a.size)]
            ny = y.size if start == 0 else 0
            total = max([ny] + [a.size for a in group if a is not None])
            grid = max(1, min(4 * self.sm_count, (total + 255) // 256))
            f((grid,), (256,), (y, np.int32(y64), np.int64(ny), np.int64(C), *args, np.int64(total),
                                out[start:]))
        host = out.get()  # the one device-to-host read of the call
        none = np.iinfo(np.uint64).max
        label_pos = -1 if host[0] == none else int(host[0])
        return label_pos, [-1 if v == none else int(v) for v in host[1:]]

    # ---- fused losses ----------------------------------------------------------------------------
    class _RowLaunch(NamedTuple):
        f: object
        grid: tuple
        block: tuple
        smem: int
        n: np.int64
        C: np.int32
        fptr: int  # the CUfunction on this launch's device, for the "direct" path

    def _row_launch(self, config: KernelConfig, n: int, C: int, itemsize: int, device: int) -> "_RowLaunch":
        """Grid, block and shared memory of a row-loss kernel for (n, C), worked out once per shape:
        a small-C call is dominated by its Python cost, so the per-call path is a dict lookup."""
        key = (config, n, C, itemsize, device)
        launch = self._row_launches.get(key)
        if launch is not None:
            return launch
        f = self.kernel(config.name)
        threads, smem = config.threads, 0
        if config.stream:
            grid = min(n, self.sm_count)
            smem = C * itemsize
            _allow_dynamic_smem(f, smem)
        elif config.rows_per_block > 1:
            # Short rows (G lanes a row): shrink the blocks until there are two per SM, so that a
            # batch of a few thousand rows spreads over the whole chip.
            rows_per_block = config.rows_per_block
            while threads > 64 and -(-n // rows_per_block) < 2 * self.sm_count:
                threads, rows_per_block = threads // 2, rows_per_block // 2
            grid = -(-n // rows_per_block)
        else:  # a block per row: the kernel's K values a thread assume config.threads threads
            grid = n
        launch = self._row_launches[key] = self._RowLaunch(f, (grid,), (threads,), smem, np.int64(n), np.int32(C),
                                                           f.kernel.ptr)
        return launch

    def _long_row_fallback(self, config: KernelConfig, S, out) -> KernelConfig:
        """The persistent kernel `config` where it can run, else the next best: the prefetched
        kernel moves 16-byte pieces (else the streamed one), and both keep a row in shared memory
        (else a block per row: cards with less of it, e.g. sm_86's 99 KB, and rows past it)."""
        C = S.shape[1]
        if config.aligned16 and (S.data.ptr | out.data.ptr | C * S.itemsize) % 16:
            config = ce_kernel_config(C, S.dtype, "stream")
        if C * S.itemsize + 2048 > self.smem_optin:  # 2 KB for the kernels' static shared memory
            config = ce_kernel_config(C, S.dtype, "block")
        return config

    def _row_loss(self, config: KernelConfig, S, y, out):
        if not S.flags.c_contiguous:
            S = cupy.ascontiguousarray(S)
        y, y64 = _labels(y)
        n, C = S.shape
        if out is None:
            out = cupy.empty_like(S)
        elif out.shape != S.shape or out.dtype != S.dtype or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous {S.dtype} array of shape {S.shape}")
        if config.stream:
            config = self._long_row_fallback(config, S, out)
        ws = self.workspace()
        L = self._row_launch(config, n, C, S.itemsize, ws.device)
        if ROW_CALL["path"] == "direct":
            return self._row_loss_direct(L, ws, S, y, y64, out), out
        loss = cupy.empty((), dtype=S.dtype)
        L.f(L.grid, L.block, (S, y, _Y64[y64], out, L.n, L.C, ws.partials_for(L.grid[0]), ws.ticket, loss),
            shared_mem=L.smem)
        return loss, out

    @staticmethod
    def _row_loss_direct(L: "_RowLaunch", ws: _Workspace, S, y, y64: int, out):
        """The same launch as _row_loss makes, through cuLaunchKernel from a ctypes parameter block."""
        d = _direct()
        loss = d.loss(ws, S.dtype)
        p = d.params
        p.S, p.y, p.y64, p.dS, p.n, p.C = S.data.ptr, y.data.ptr, y64, out.data.ptr, int(L.n), int(L.C)
        p.partials, p.ticket, p.loss = ws.partials_for(L.grid[0]).data.ptr, ws.ticket.data.ptr, loss.data.ptr
        driver.launchKernel(L.fptr, L.grid[0], 1, 1, L.block[0], 1, 1, L.smem, ws.stream_ptr, d.argv_ptr, 0)
        return loss

    def softmax_cross_entropy_grad(self, S, y, out=None):
        return self._row_loss(ce_kernel_config(S.shape[1], S.dtype), S, y, out)

    def svm_grad(self, S, y, out=None):
        return self._row_loss(svm_kernel_config(S.shape[1], S.dtype), S, y, out)

    # ---- the fused linear step ----------------------------------------------------------------
    @staticmethod
    def _fused_x(X, W, x_mean) -> str | None:
        """The kind of X a fused linear kernel takes these inputs as, or None (1 <= C <= 16 only):
        "f32"/"f64": float X in W's dtype; "f32n"/"f64n": the same normalised by x_mean/x_std;
        "u8"/"u8f64": uint8 X with x_mean/x_std under float32/float64 W."""
        if W.dtype not in _TYPE or not 1 <= W.shape[0] <= 16 or X.data.ptr % X.itemsize:
            return None  # (an X not aligned to its elements is left to CuPy's own operations)
        if X.dtype == W.dtype:
            return _TYPE[W.dtype] + ("" if x_mean is None else "n")
        if X.dtype == np.uint8:  # (check_linear asks x_mean/x_std of uint8 X)
            return "u8" if W.dtype == np.float32 else "u8f64"
        return None

    def linear_plan(self, X, W, x_mean):
        """Launch parameters of the fused linear kernel for these inputs, or None when it does not
        apply (then the inherited matmul path runs)."""
        return self._simt_plan(self._fused_x(X, W, x_mean), X, W)

    def _simt_plan(self, tname: str | None, X, W):
        """linear_plan for X of the kind tname (``_fused_x``'s answer, which the caller has)."""
        if tname is None:
            return None
        n, d = X.shape
        C = W.shape[0]
        rg, kpt = linear_shape(C, W.dtype)
        cols = -(-d // kpt)
        if cols > 512:
            return None
        threads = max(32 * rg, -(-cols // 32) * 32)
        item = X.dtype.itemsize
        dpad = -(-d * item // 16) * 16 // item
        # Ws[C][d] | red[threads] | Gs[RG][C] in W's dtype, 16-byte aligned, then two X row groups.
        smem = -(-W.dtype.itemsize * (C * d + threads + rg * C) // 16) * 16 + 2 * rg * dpad * item
        if smem + 1024 > self.smem_optin:  # 1 KB for the kernel's static shared memory
            return None
        return dict(name=f"gg_linear_{tname}_c{C}", threads=threads, smem=smem, dpad=dpad, rg=rg)

    def linmma_plan(self, X, W, x_mean):
        """Launch parameters of the tensor-core kernel for these inputs, or None where it does not
        apply (sm_90+, float32 X without normalisation or uint8 X with it, C <= 16, d <= 3072)."""
        return self._mma_plan(self._fused_x(X, W, x_mean), X, W)

    def _mma_plan(self, x: str | None, X, W):
        """linmma_plan for X of the kind x (``_fused_x``'s answer, which the caller has)."""
        n, d = X.shape
        C = W.shape[0]
        if self.cc < 90 or x not in LINMMA or n == 0:
            return None
        dsl = linmma_slice(x, d)
        if dsl > LINMMA[x].max_dsl:
            return None
        nt = 1 if C <= 8 else 2
        smem = linmma_smem_bytes(x, dsl, nt)
        if smem + 1024 > self.smem_optin:  # 1 KB for the kernel's static shared memory
            return None
        return dict(name=f"gg_linmma_{x}_nt{nt}", x=x, nt=nt, dsl=dsl, smem=smem)

    def _linmma_clusters(self, f, cluster: int, smem: int) -> int:
        """Clusters of the tensor-core step that fit at once; also lets f use smem bytes (both once
        per kernel and size: a small step's cost is its host time)."""
        key = (f.kernel.ptr, smem)
        if key not in self._clusters:
            _allow_dynamic_smem(f, smem)
            # Without the driver's answer, assume an eighth of the SMs sit idle in GPCs whose SM
            # count is not a multiple of the cluster size (an H100's 132 SMs: 28 clusters of 4):
            # launching more clusters than fit would run the excess as a second wave.
            self._clusters[key] = (_max_active_clusters(f.kernel.ptr, cluster, LINMMA_THREADS, smem)
                                   or max(1, (self.sm_count // cluster) * 7 // 8))
        return self._clusters[key]

    def _blocks_per_sm(self, f, threads: int, smem: int) -> int:
        """Blocks of f that fit on an SM at once (the driver's occupancy); also lets f use smem
        bytes. Both once per kernel and size: a small step's cost is its host time."""
        key = (f.kernel.ptr, threads, smem)
        if key not in self._occupancy:
            _allow_dynamic_smem(f, smem)
            self._occupancy[key] = max(1, driver.occupancyMaxActiveBlocksPerMultiprocessor(*key))
        return self._occupancy[key]

    def _linear_mma(self, plan, X, y, W, b, lam, loss, x_mean, x_std):
        """The step on the tensor cores: prepare W (uint8: fold the normalisation, scale, split into
        f16 halves; float32: split into tf32 halves), one cluster launch over X, then the
        fixed-order finish."""
        X, y, y64, W, b, norm = _step_inputs(X, y, W, b, x_mean, x_std)
        n, d = X.shape
        C = W.shape[0]
        x, nt, dsl, smem = plan["x"], plan["nt"], plan["dsl"], plan["smem"]
        shape = LINMMA[x]
        nc, dtot = 8 * nt, shape.cluster * dsl
        wsq = cupy.empty(nc, dtype=np.float64)
        if x == "u8":
            Wh = cupy.empty((2, nc, dtot), dtype=np.uint16)
            roff = cupy.empty(dtot, dtype=np.uint16)
            bprime = cupy.empty(nc, dtype=np.float32)
            sinv = cupy.empty(nc, dtype=np.float32)
            self.kernel("gg_linmma_prep")((nc,), (256,), (W, b, *norm, np.int32(C), np.int32(d),
                                                         np.int32(dtot), Wh, roff, bprime, sinv, wsq))
            weights = (Wh, roff, bprime, sinv, np.int32(0 if loss == "softmax" else 1))
        else:
            Wt = cupy.empty((2, nc, dtot), dtype=np.float32)
            self.kernel("gg_linmma_prep_f32")((nc,), (256,), (W, np.int32(C), np.int32(d), np.int32(dtot), Wt, wsq))
            weights = (Wt, b, np.int32(0 if loss == "softmax" else 1))
        f = self.kernel(plan["name"])
        clusters = min(-(-n // shape.rows), self._linmma_clusters(f, shape.cluster, smem))
        parts = _step_partials(clusters, C, d)
        f((shape.cluster * clusters,), (LINMMA_THREADS,),
          (X, y, np.int32(y64), np.int64(n), np.int32(d), np.int32(dsl), np.int32(C), *weights,
           np.int32(_copy_align(X)), *parts), shared_mem=smem)
        return self._linear_finish("gg_linmma_finish", (*parts, wsq, W, *norm, np.int32(clusters)), W, b, n, lam)

    def _linear_finish(self, name, args, W, b, n, lam):
        """The finish kernel `name`: (*args, C, d, lam, 1/n, dW, db, J), the partials in a fixed order."""
        C, d = W.shape
        dW, db, J = cupy.empty_like(W), cupy.empty_like(b), cupy.empty((), dtype=W.dtype)
        grid = max(1, min(4 * self.sm_count, -(-C * d // 256)))
        self.kernel(name)((grid,), (256,), (*args, np.int32(C), np.int32(d), np.float64(lam), np.float64(1.0 / n),
                                            dW, db, J))
        return J, dW, db

    def linear_grad(self, X, y, W, b, lam, loss, x_mean=None, x_std=None, sample_weight=None):
        """J, dW, db of the linear classifier (``NumpyBackend.linear_grad``), fused into one pass over
        X where a kernel takes these inputs. ``sample_weight`` (n,) scales row i's loss term and
        gradient by w_i; the "simt" kernels read it per row (the tensor-core ones do not, so a
        weighted step never takes them)."""
        kind = self._fused_x(X, W, x_mean)
        if sample_weight is None and LINEAR_VARIANT.get(kind) == "mma":
            plan = self._mma_plan(kind, X, W)
            if plan is not None:
                return self._linear_mma(plan, X, y, W, b, lam, loss, x_mean, x_std)
        plan = self._simt_plan(kind, X, W)
        if plan is None:
            return super().linear_grad(X, y, W, b, lam, loss, x_mean, x_std, sample_weight)
        X, y, y64, W, b, norm = _step_inputs(X, y, W, b, x_mean, x_std)
        sw = _row_weights(sample_weight, W.dtype)
        n, d = X.shape
        C = W.shape[0]
        f = self.kernel(plan["name"])
        grid = max(1, min(-(-n // plan["rg"]), self.sm_count * self._blocks_per_sm(f, plan["threads"], plan["smem"])))
        parts = _step_partials(grid, C, d, W.dtype)
        wsq = cupy.empty(1, dtype=np.float64)
        f((grid,), (plan["threads"],),
          (X, y, np.int32(y64), W, b, *norm, sw, np.int64(n), np.int32(d), np.int32(plan["dpad"]),
           np.int32(_copy_align(X)), np.int32(0 if loss == "softmax" else 1), *parts, wsq),
          shared_mem=plan["smem"])
        finish = "gg_linear_finish" if W.dtype == np.float32 else "gg_linear_finish_f64"
        return self._linear_finish(finish, (*parts, wsq, W, np.int32(grid)), W, b, n, lam)

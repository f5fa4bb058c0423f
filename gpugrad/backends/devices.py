"""The CuPy backend's per-device state: kernels loaded on the device, its card, its launch caches,
and per-stream scratch.

A ``DeviceState`` holds what belongs to one device id: the kernels (a module per device: a
CUfunction is valid only in its device's context), the card planning needs (``plans.Card``), the
kernel variants for that card, and launch parameters worked out once per shape (a small call's
cost is its host time). A ``Workspace`` belongs to one (device, stream) pair.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import cuda_driver as _drv
from . import plans


class RowLaunch(NamedTuple):
    """A row-loss launch worked out for one shape on one device."""
    f: object       # the kernel (cupy RawKernel)
    grid: tuple
    block: tuple
    smem: int
    n: np.int64
    C: np.int32
    fptr: int       # its CUfunction, for the direct path


def allow_dynamic_smem(f, nbytes: int) -> None:
    """Raise kernel f's dynamic shared-memory limit to nbytes (past 48 KB it must be asked for)."""
    if f.max_dynamic_shared_size_bytes < nbytes:
        f.max_dynamic_shared_size_bytes = nbytes


class DeviceState:
    """Kernels, card, variants and launch caches of one device (see the module's docstring)."""

    def __init__(self, device: int, card: plans.Card, variants: plans.Variants, load):
        self.id, self.card, self.variants = device, card, variants
        self._load = load        # (device id, kernel name) -> kernel
        self._kernels = {}
        self._row_launches = {}
        self._occupancy = {}
        self._clusters = {}

    def kernel(self, name: str):
        f = self._kernels.get(name)
        if f is None:
            f = self._kernels[name] = self._load(self.id, name)
        return f

    def row_launch(self, config: plans.KernelConfig, n: int, C: int, itemsize: int) -> RowLaunch:
        key = (config, n, C, itemsize)
        launch = self._row_launches.get(key)
        if launch is None:
            f = self.kernel(config.name)
            grid, threads, smem = plans.row_launch(config, n, C, itemsize, self.card.sm_count)
            if smem:
                allow_dynamic_smem(f, smem)
            launch = self._row_launches[key] = RowLaunch(f, (grid,), (threads,), smem, np.int64(n), np.int32(C),
                                                         f.kernel.ptr)
        return launch

    def blocks_per_sm(self, f, threads: int, smem: int) -> int:
        """Blocks of f resident on an SM at once (the driver's occupancy); lets f use smem bytes."""
        key = (f.kernel.ptr, threads, smem)
        if key not in self._occupancy:
            allow_dynamic_smem(f, smem)
            self._occupancy[key] = _drv.blocks_per_sm(*key)
        return self._occupancy[key]

    def clusters(self, f, cluster: int, smem: int) -> int:
        """Clusters of the tensor-core step resident at once; lets f use smem bytes."""
        key = (f.kernel.ptr, smem)
        if key not in self._clusters:
            allow_dynamic_smem(f, smem)
            # Without the driver's answer, assume an eighth of the SMs sit idle in GPCs whose SM
            # count is not a multiple of the cluster size (an H100's 132 SMs: 28 clusters of 4):
            # launching more clusters than fit would run the excess as a second wave.
            self._clusters[key] = (_drv.max_active_clusters(f.kernel.ptr, cluster, plans.LINMMA_THREADS, smem)
                                   or max(1, (self.card.sm_count // cluster) * 7 // 8))
        return self._clusters[key]


class Workspace:
    """Per-(device, stream) scratch for the one-launch mean: a zeroed ticket counter (each kernel's
    last block resets it) and room for per-block partial sums; and the fused linear step's
    per-block partials, kept per (classes, row length, dtype). Kernels on one stream run in order,
    so they can share it; another stream gets its own. Each buffer grows when a launch needs more
    and is otherwise reused: a training step allocates nothing once its shapes have been seen."""

    def __init__(self, device: DeviceState, stream_ptr: int, xp):
        self.device, self.stream_ptr, self.xp = device, stream_ptr, xp
        self.ticket = xp.zeros(1, dtype=np.uint32)
        self.partials = xp.empty(0, dtype=np.float64)
        self._linear = {}

    def partials_for(self, nblocks: int):
        if self.partials.size < nblocks:
            self.partials = self.xp.empty(max(nblocks, 2 * self.partials.size), dtype=np.float64)
        return self.partials

    def linear_scratch(self, nblocks: int, C: int, d: int, dtype):
        """(dW partials (nblocks, C, d), db partials (nblocks, C) in dtype, loss partials (nblocks,) and
        ||W||^2 (1,) in float64) for a fused linear step of nblocks blocks; each written whole by
        the kernel before the finish reads it."""
        key = (C, d, np.dtype(dtype))
        have = self._linear.get(key)
        if have is None or have[0].shape[0] < nblocks:
            xp = self.xp
            have = self._linear[key] = (xp.empty((nblocks, C, d), dtype=dtype), xp.empty((nblocks, C), dtype=dtype),
                                        xp.empty(nblocks, dtype=np.float64), xp.empty(1, dtype=np.float64))
        dW, db, loss, wsq = have
        if dW.shape[0] > nblocks:  # views of the first nblocks: the finish reads exactly those
            dW, db, loss = dW[:nblocks], db[:nblocks], loss[:nblocks]
        return dW, db, loss, wsq

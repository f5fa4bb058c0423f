"""The CuPy backend: numpy's interface, with fused CUDA kernels where they pay.

Everything not overridden here is inherited from ``NumpyBackend`` and runs through CuPy's own
array operations (``xp = cupy``). The overrides launch the kernels of ``kernels/``:

- ``softmax_cross_entropy_grad`` / ``svm_grad``: one launch, one read of S, one write of dS,
  the mean loss reduced in the same launch;
- ``linear_grad``: X read once for J, dW and db (float32 or float64 X, either normalised by
  x_mean/x_std on the fly or not, and uint8 X with them under float32 or float64 weights), for
  C <= 16 classes and rows short enough for the fused kernel (W in shared memory); other inputs
  take the inherited path (cuBLAS matmuls around the fused loss kernel);
- ``first_invalid``: the label-range and NaN/Inf checks in one device-side pass, one read-back.

Which kernel, grid and shared memory: ``plans`` (pure functions). Per-device kernels, caches and
scratch: ``devices``. Work under ``with cupy.cuda.Device(i):`` runs on device i with kernels
loaded there. No host synchronisation happens in a gradient step: J comes back as a 0-d device
array. Only the value checks (``validate=True``, the default) read one small array back.
"""
from __future__ import annotations

import copy

import cupy
import numpy as np

from . import cuda_driver as _drv
from . import kernels as _k
from . import plans
from .devices import DeviceState, Workspace
from .numpy_backend import NumpyBackend
from .plans import LINMMA, LINMMA_THREADS, ce_kernel_config, linmma_slice, linmma_smem_bytes, svm_kernel_config  # noqa: F401

_NULL = np.uint64(0)  # a null pointer argument
_Y64 = (np.int32(0), np.int32(1))  # the kernels' label-width flag, made once
_LOSS_KIND = {"softmax": np.int32(0), "svm": np.int32(1)}


def _card_of(device: int) -> plans.Card:
    dev = cupy.cuda.Device(device)
    attrs = dev.attributes
    return plans.Card(attrs["MultiProcessorCount"], attrs["MaxSharedMemoryPerBlockOptin"], int(dev.compute_capability))


def _on_device(device: int, **arrays) -> None:
    """Refuse an array of another device than the one the kernels run on (the current device):
    CuPy passes a RawKernel the pointer without a check, and on the card the kernel would fault
    with an illegal address. None stands for an absent optional array."""
    for name, a in arrays.items():
        if a is not None and a.data.device_id != device:
            raise ValueError(f"{name} is on device {a.data.device_id}, but the current device, where the kernels "
                             f"run, is {device}: call under `with cupy.cuda.Device({a.data.device_id}):`, or "
                             f"copy {name} to device {device} first")


def _labels(xp, y):
    """(labels as a contiguous int32/int64 device array, 1 if int64), without a copy for contiguous
    int32/int64 labels (the kernels index y[row] from its base pointer)."""
    if not y.flags.c_contiguous:
        y = xp.ascontiguousarray(y)
    if y.dtype == np.int64:
        return y, 1
    if y.dtype == np.int32:
        return y, 0
    return y.astype(np.int64), 1


class CupyBackend(NumpyBackend):
    """CUDA backend: inherits the reference and overrides the fused paths with kernels.

    Each device gets the kernel variants measured fastest on its architecture
    (``plans.MEASURED``). ``_variants`` ({switch: variant}, see ``plans.Variants``) overrides
    them: for the emulator tests and ``benchmarks/gpu_check.py``, which check and time variants
    that no card has yet shown to win. ``_card`` and ``_load`` stand in for the device (a
    ``plans.Card`` per device id) and the kernel loader in tests without a GPU.
    """

    name = "cupy"
    xp = cupy

    def __init__(self, *, _variants: dict | None = None, _card=None, _load=None):
        plans.make_variants(90, _variants)  # a misspelt switch or variant fails here, not at a call
        self._overrides = dict(_variants or {})
        self._card = _card or _card_of
        self._load = _load or (lambda device, name: _k.get_function(name, device))
        self._devices: dict[int, DeviceState] = {}
        self._workspaces: dict[tuple, Workspace] = {}

    def _with_variants(self, **variants) -> "CupyBackend":
        """A backend like this one with these variant overrides (its own caches, the same device hooks)."""
        other = copy.copy(self)
        other._overrides = {**self._overrides, **variants}
        plans.make_variants(90, other._overrides)
        other._devices, other._workspaces = {}, {}
        return other

    # ---- plumbing --------------------------------------------------------------------------
    def to_numpy(self, a):
        return self.xp.asnumpy(a)

    def workspace(self) -> Workspace:
        """The current (device, stream)'s scratch; ``.device`` is the device's DeviceState."""
        cuda = self.xp.cuda
        key = (cuda.runtime.getDevice(), cuda.get_current_stream().ptr)
        ws = self._workspaces.get(key)
        if ws is None:
            dev = self._devices.get(key[0])
            if dev is None:
                card = self._card(key[0])
                dev = self._devices[key[0]] = DeviceState(key[0], card, plans.make_variants(card.cc, self._overrides),
                                                          self._load)
            ws = self._workspaces[key] = Workspace(dev, key[1], self.xp)
        return ws

    @property
    def card(self) -> plans.Card:
        """The current device's card (SM count, shared memory, compute capability)."""
        return self.workspace().device.card

    @property
    def variants(self) -> plans.Variants:
        """The kernel variants used on the current device."""
        return self.workspace().device.variants

    def kernel(self, name: str):
        """The kernel `name` on the current device."""
        return self.workspace().device.kernel(name)

    # ---- value checks: one fused pass, one read-back ------------------------------------------
    def first_invalid(self, y, C, arrays):
        xp, dev = self.xp, self.workspace().device
        _on_device(dev.id, y=y, **{f"array {i} checked": a for i, a in enumerate(arrays)})
        y, y64 = _labels(xp, y)
        out = xp.full(1 + len(arrays), np.iinfo(np.uint64).max, dtype=np.uint64)
        f = dev.kernel("gg_first_invalid")
        slots = list(arrays) or [None]
        for start in range(0, len(slots), 4):  # four arrays per launch; the labels on the first
            group = slots[start:start + 4] + [None] * (4 - len(slots[start:start + 4]))
            args = []
            for a in group:
                if a is None or a.dtype.kind != "f":
                    args += [_NULL, np.int32(0), np.int64(0)]
                else:
                    a = xp.ascontiguousarray(a)
                    args += [a, np.int32(1 if a.dtype == np.float32 else 2), np.int64(a.size)]
            ny = y.size if start == 0 else 0
            total = max([ny] + [a.size for a in group if a is not None])
            f((plans.spread_grid(total, dev.card.sm_count),), (256,),
              (y, np.int32(y64), np.int64(ny), np.int64(C), *args, np.int64(total), out[start:]))
        host = out.get()  # the one device-to-host read of the call
        none = np.iinfo(np.uint64).max
        return -1 if host[0] == none else int(host[0]), [-1 if v == none else int(v) for v in host[1:]]

    # ---- fused losses ----------------------------------------------------------------------------
    def _row_loss(self, loss_name: str, S, y, out):
        xp = self.xp
        ws = self.workspace()
        dev = ws.device
        _on_device(dev.id, S=S, y=y, out=out)
        if not S.flags.c_contiguous:
            S = xp.ascontiguousarray(S)
        y, y64 = _labels(xp, y)
        n, C = S.shape
        if out is None:
            out = xp.empty_like(S)
        elif out.shape != S.shape or out.dtype != S.dtype or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous {S.dtype} array of shape {S.shape}")
        if loss_name == "softmax":
            config = ce_kernel_config(C, S.dtype, dev.variants.ce_long_rows)
            if config.stream:
                aligned = (S.data.ptr | out.data.ptr | C * S.itemsize) % 16 == 0
                config = plans.long_row_fallback(config, C, S.itemsize, aligned, dev.card.smem_optin)
        else:
            config = svm_kernel_config(C, S.dtype)
        L = dev.row_launch(config, n, C, S.itemsize)
        if dev.variants.row_call == "direct":
            return _drv.launch_row_direct(xp, L, ws, S, y, y64, out), out
        loss = xp.empty((), dtype=S.dtype)
        L.f(L.grid, L.block, (S, y, _Y64[y64], out, L.n, L.C, ws.partials_for(L.grid[0]), ws.ticket, loss),
            shared_mem=L.smem)
        return loss, out

    def softmax_cross_entropy_grad(self, S, y, out=None):
        return self._row_loss("softmax", S, y, out)

    def svm_grad(self, S, y, out=None):
        return self._row_loss("svm", S, y, out)

    # ---- the fused linear step ----------------------------------------------------------------
    @staticmethod
    def _kind(X, W, x_mean) -> str | None:
        return plans.fused_kind(X.dtype, W.dtype, W.shape[0], x_mean is not None, X.data.ptr % X.itemsize == 0)

    def linear_plan(self, X, W, x_mean):
        """The FMA kernel's launch plan for these inputs (``plans.simt_plan``), or None when the
        fused step does not apply (then the inherited matmul path runs)."""
        return plans.simt_plan(self._kind(X, W, x_mean), *X.shape, W.shape[0], W.dtype, X.itemsize,
                               self.card.smem_optin)

    def linmma_plan(self, X, W, x_mean):
        """The tensor-core kernel's launch plan (``plans.mma_plan``), or None where it does not apply."""
        return plans.mma_plan(self._kind(X, W, x_mean), *X.shape, W.shape[0], self.card)

    def linear_grad(self, X, y, W, b, lam, loss, x_mean=None, x_std=None, sample_weight=None):
        """J, dW, db of the linear classifier (``NumpyBackend.linear_grad``), fused into one pass over
        X where a kernel takes these inputs. ``sample_weight`` (n,) scales row i's loss term and
        gradient by w_i; the FMA kernels read it per row (the tensor-core ones do not, so a
        weighted step never takes them)."""
        dev = self.workspace().device
        _on_device(dev.id, X=X, y=y, W=W, b=b, x_mean=x_mean, x_std=x_std, sample_weight=sample_weight)
        kind = self._kind(X, W, x_mean)
        n, d = X.shape
        C = W.shape[0]
        if sample_weight is None and kind in ("f32", "u8") and getattr(dev.variants, "linear_" + kind) == "mma":
            plan = plans.mma_plan(kind, n, d, C, dev.card)
            if plan is not None:
                return self._linear_mma(dev, plan, X, y, W, b, lam, loss, x_mean, x_std)
        plan = plans.simt_plan(kind, n, d, C, W.dtype, X.itemsize, dev.card.smem_optin)
        if plan is None:
            return super().linear_grad(X, y, W, b, lam, loss, x_mean, x_std, sample_weight)
        X, y, y64, W, b, norm = self._step_inputs(X, y, W, b, x_mean, x_std)
        sw = _NULL if sample_weight is None else self.xp.ascontiguousarray(sample_weight, dtype=W.dtype)
        f = dev.kernel(plan["name"])
        grid = plans.linear_grid(n, plan["rg"], dev.card.sm_count, dev.blocks_per_sm(f, plan["threads"], plan["smem"]))
        parts = self._partials(grid, C, d, W.dtype)
        wsq = self.xp.empty(1, dtype=np.float64)
        align = plans.copy_align(d * X.itemsize, X.data.ptr, X.itemsize)
        f((grid,), (plan["threads"],),
          (X, y, _Y64[y64], W, b, *norm, sw, np.int64(n), np.int32(d), np.int32(plan["dpad"]), np.int32(align),
           _LOSS_KIND[loss], *parts, wsq), shared_mem=plan["smem"])
        finish = "gg_linear_finish" if W.dtype == np.float32 else "gg_linear_finish_f64"
        return self._linear_finish(dev, finish, (*parts, wsq, W, np.int32(grid)), W, b, n, lam)

    def _linear_mma(self, dev, plan, X, y, W, b, lam, loss, x_mean, x_std):
        """The step on the tensor cores: prepare W (uint8: fold the normalisation, scale, split into
        f16 halves; float32: split into tf32 halves), one cluster launch over X, then the
        fixed-order finish."""
        xp = self.xp
        X, y, y64, W, b, norm = self._step_inputs(X, y, W, b, x_mean, x_std)
        n, d = X.shape
        C = W.shape[0]
        x, dsl, smem = plan["x"], plan["dsl"], plan["smem"]
        shape = LINMMA[x]
        nc, dtot = 8 * plan["nt"], shape.cluster * dsl
        wsq = xp.empty(nc, dtype=np.float64)
        if x == "u8":
            Wh, roff = xp.empty((2, nc, dtot), dtype=np.uint16), xp.empty(dtot, dtype=np.uint16)
            bprime, sinv = xp.empty(nc, dtype=np.float32), xp.empty(nc, dtype=np.float32)
            dev.kernel("gg_linmma_prep")((nc,), (256,), (W, b, *norm, np.int32(C), np.int32(d), np.int32(dtot),
                                                         Wh, roff, bprime, sinv, wsq))
            weights = (Wh, roff, bprime, sinv, _LOSS_KIND[loss])
        else:
            Wt = xp.empty((2, nc, dtot), dtype=np.float32)
            dev.kernel("gg_linmma_prep_f32")((nc,), (256,), (W, np.int32(C), np.int32(d), np.int32(dtot), Wt, wsq))
            weights = (Wt, b, _LOSS_KIND[loss])
        f = dev.kernel(plan["name"])
        clusters = min(-(-n // shape.rows), dev.clusters(f, shape.cluster, smem))
        parts = self._partials(clusters, C, d, np.float32)
        align = plans.copy_align(d * X.itemsize, X.data.ptr, X.itemsize)
        f((shape.cluster * clusters,), (LINMMA_THREADS,),
          (X, y, _Y64[y64], np.int64(n), np.int32(d), np.int32(dsl), np.int32(C), *weights, np.int32(align), *parts),
          shared_mem=smem)
        return self._linear_finish(dev, "gg_linmma_finish", (*parts, wsq, W, *norm, np.int32(clusters)), W, b, n, lam)

    def _step_inputs(self, X, y, W, b, x_mean, x_std):
        """A fused step's inputs as its kernels take them: contiguous X, W, b; the labels and their
        width flag; the normalisation (x_mean, x_std in W's dtype, or two null pointers)."""
        xp = self.xp
        X, W, b = xp.ascontiguousarray(X), xp.ascontiguousarray(W), xp.ascontiguousarray(b)
        y, y64 = _labels(xp, y)
        norm = (_NULL, _NULL) if x_mean is None else (xp.ascontiguousarray(x_mean, dtype=W.dtype),
                                                      xp.ascontiguousarray(x_std, dtype=W.dtype))
        return X, y, y64, W, b, norm

    def _partials(self, parts: int, C: int, d: int, dtype):
        """Per-block (or per-cluster) partials: dW (parts, C, d), db (parts, C) in the compute dtype and
        the loss sums (parts,) in float64, each written whole by the kernel."""
        xp = self.xp
        return xp.empty((parts, C, d), dtype=dtype), xp.empty((parts, C), dtype=dtype), xp.empty(parts, dtype=np.float64)

    def _linear_finish(self, dev, name, args, W, b, n, lam):
        """The finish kernel `name`: (*args, C, d, lam, 1/n, dW, db, J), the partials in a fixed order."""
        C, d = W.shape
        dW, db, J = self.xp.empty_like(W), self.xp.empty_like(b), self.xp.empty((), dtype=W.dtype)
        dev.kernel(name)((plans.spread_grid(C * d, dev.card.sm_count),), (256,),
                         (*args, np.int32(C), np.int32(d), np.float64(lam), np.float64(1.0 / n), dW, db, J))
        return J, dW, db

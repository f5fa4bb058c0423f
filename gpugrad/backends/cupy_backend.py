"""The CuPy backend: numpy's interface, with fused CUDA kernels where they pay.

Everything not overridden here is inherited from ``NumpyBackend`` and runs through CuPy's own
array operations (``xp = cupy``). The overrides launch the kernels of ``kernels/``:

- ``softmax_cross_entropy_grad`` / ``svm_grad``: one launch, one read of S, one write of dS,
  the mean loss reduced in the same launch;
- ``linear_grad``: X read once for J, dW and db (float32 or float64 X, either normalised by
  x_mean/x_std on the fly or not, and uint8 X with them under float32 or float64 weights), for
  C <= 16 classes and rows short enough for the fused kernel (W in shared memory); other inputs
  take the inherited path (cuBLAS matmuls around the fused loss kernel);
- ``linear_step``: the same kernel on the rows idx of X (a training batch read where it lies), into
  preallocated outputs: the trainer's linear step is this, its finish and the update;
- the compiled step's functions (``gpugrad.compiled``, kernels/mlp.cuh): ``gather_rows``,
  ``layer_forward`` (bias + batch norm + ReLU), ``layer_backward`` (ReLU mask + batch-norm VJP +
  the bias's sums), ``scores_loss`` (bias, loss and dL/dS, a warp per row), ``optimizer_update``
  (every parameter in one launch, with the penalty and the step's cost), and ``matmul`` (one
  cuBLAS call into the output, no copy of a transposed operand);
- ``first_invalid``: the label-range and NaN/Inf checks in one device-side pass, one read-back;
- ``sparse_linear_grad``: a CSR X (cupyx.scipy.sparse) with up to 32 classes in one row kernel
  that reads each row's non-zeros once (scores, softmax or hinge, G's outer product with the row
  added into dW by atomics), between a prep and a finish pass over W; more classes take the
  inherited path (cuSPARSE's products around the fused loss kernel).

Which kernel, grid and shared memory: ``plans`` (pure functions). Per-device kernels, caches and
scratch: ``devices``. Work under ``with cupy.cuda.Device(i):`` runs on device i with kernels
loaded there. No host synchronisation happens in a gradient step: J comes back as a 0-d device
array. Only the value checks (``validate=True``, the default) read one small array back. The
compiled step's functions write into the caller's buffers and take their scratch from the
workspace, so a replayed training step allocates nothing either.
"""
from __future__ import annotations

import copy

import cupy
import numpy as np

from . import cuda_driver as _drv
from . import kernels as _k
from . import plans
from .devices import DeviceState, Workspace
from ..engine.sparse import is_sparse
from .numpy_backend import NumpyBackend
from .plans import LINMMA, LINMMA_THREADS, ce_kernel_config, linmma_slice, linmma_smem_bytes, svm_kernel_config  # noqa: F401

_NULL = np.uint64(0)  # a null pointer argument
_Y64 = (np.int32(0), np.int32(1))  # the kernels' label-width flag, made once
_LOSS_KIND = {"softmax": np.int32(0), "svm": np.int32(1)}
_TYPE = {np.float32: "f32", np.float64: "f64"}  # the kernels' names for the compute dtypes
_RULE = {"sgd": 0, "momentum": 1, "nesterov": 2, "adam": 3}  # kernels/mlp.cuh's GG_RULE_*


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
        if is_sparse(X):
            return self.sparse_linear_grad(X, y, W, b, lam, loss, x_mean, x_std, sample_weight)
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
        xp = self.xp
        out = (xp.empty((), dtype=W.dtype), xp.empty_like(W), xp.empty_like(b))
        return self._linear_simt(dev, plan, X, None, y, W, b, lam, loss, x_mean, x_std, sample_weight, out)

    def linear_step(self, X, idx, y, W, b, loss, x_mean=None, x_std=None, sample_weight=None, out=None):
        """``NumpyBackend.linear_step``: the batch's rows read where they lie, through idx, by the FMA
        kernel (two launches, no gather, no allocation once the scratch for the shape exists);
        inputs no fused kernel takes (a sparse X among them) go the reference's way."""
        if is_sparse(X):
            return super().linear_step(X, idx, y, W, b, loss, x_mean, x_std, sample_weight, out)
        dev = self.workspace().device
        kind = self._kind(X, W, x_mean)
        n = X.shape[0] if idx is None else idx.shape[0]
        plan = plans.simt_plan(kind, n, X.shape[1], W.shape[0], W.dtype, X.itemsize, dev.card.smem_optin)
        if plan is None or n == 0:
            return super().linear_step(X, idx, y, W, b, loss, x_mean, x_std, sample_weight, out)
        if out is None:
            out = (self.xp.empty((), dtype=W.dtype), self.xp.empty_like(W), self.xp.empty_like(b))
        return self._linear_simt(dev, plan, X, idx, y, W, b, 0.0, loss, x_mean, x_std, sample_weight, out)

    def _linear_simt(self, dev, plan, X, idx, y, W, b, lam, loss, x_mean, x_std, sample_weight, out):
        """The FMA step and its finish on the rows idx of X (all rows when None), into out = (J, dW, db)."""
        n = X.shape[0] if idx is None else idx.shape[0]
        d, C = X.shape[1], W.shape[0]
        X, y, y64, W, b, norm = self._step_inputs(X, y, W, b, x_mean, x_std)
        sw = _NULL if sample_weight is None else self.xp.ascontiguousarray(sample_weight, dtype=W.dtype)
        rows = _NULL if idx is None else self.xp.ascontiguousarray(idx, dtype=np.int64)
        f = dev.kernel(plan["name"])
        grid = plans.linear_grid(n, plan["rg"], dev.card.sm_count, dev.blocks_per_sm(f, plan["threads"], plan["smem"]))
        *parts, wsq = self.workspace().linear_scratch(grid, C, d, W.dtype)
        align = plans.copy_align(d * X.itemsize, X.data.ptr, X.itemsize)
        f((grid,), (plan["threads"],),
          (X, y, _Y64[y64], W, b, *norm, sw, rows, np.int64(n), np.int32(d), np.int32(plan["dpad"]), np.int32(align),
           _LOSS_KIND[loss], *parts, wsq), shared_mem=plan["smem"])
        finish = "gg_linear_finish" if W.dtype == np.float32 else "gg_linear_finish_f64"
        J, dW, db = out
        dev.kernel(finish)((plans.spread_grid(C * d, dev.card.sm_count),), (256,),
                           (*parts, wsq, W, np.int32(grid), np.int32(C), np.int32(d), np.float64(lam),
                            np.float64(1.0 / n), dW, db, J))
        return J, dW, db

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

    # ---- the sparse step (CSR X on the device) ---------------------------------------------------
    def sparse_module(self):
        """cupyx.scipy.sparse: the device's sparse matrices."""
        import cupyx.scipy.sparse
        return cupyx.scipy.sparse

    def _has_mean(self, x_mean) -> bool:
        return x_mean is not None  # (looking at its values would cost a device read)

    def sparse_linear_grad(self, X, y, W, b, lam, loss, x_mean=None, x_std=None, sample_weight=None):
        """``NumpyBackend.sparse_linear_grad`` for a CSR X on the device: for C <= 32 classes the row
        kernel (``plans.sparse_plan``) reads each row's non-zeros once; W / x_std is laid out as
        Wt (d, C) by the prep kernel, so that a non-zero's C weights are one read, and the finish
        turns the accumulated dWt into dW (C, d). More classes: the inherited formulas (cuSPARSE).
        No host synchronisation. dW's atomics make it vary within rounding from run to run."""
        plan = plans.sparse_plan(W.shape[0], W.dtype)
        if plan is None or X.data.dtype != W.dtype:
            return super().sparse_linear_grad(X, y, W, b, lam, loss, x_mean, x_std, sample_weight)
        xp, ws = self.xp, self.workspace()
        dev = ws.device
        C, d = W.shape
        n = X.shape[0]
        W, b = xp.ascontiguousarray(W), xp.ascontiguousarray(b)
        y, y64 = _labels(xp, y)
        std = _NULL if x_std is None else xp.ascontiguousarray(x_std, dtype=W.dtype)
        mean = _NULL if x_mean is None else xp.ascontiguousarray(x_mean, dtype=W.dtype)
        if x_mean is not None:  # b' = b - (W / x_std) x_mean: the centring, without touching X
            b = b - (W if x_std is None else W / std) @ mean
        val, col, indptr = (xp.ascontiguousarray(a) for a in (X.data, X.indices, X.indptr))
        idx64 = np.int32(col.dtype == np.int64)
        if indptr.dtype != col.dtype:
            indptr = indptr.astype(col.dtype)
        Wt, dWt = xp.empty((d, C), dtype=W.dtype), xp.empty((d, C), dtype=W.dtype)
        wsq, loss_sum = xp.empty(1, dtype=np.float64), xp.empty(1, dtype=np.float64)
        spread = plans.spread_grid(C * d, dev.card.sm_count)
        dev.kernel(plan["prep"])((spread,), (256,), (W, std, np.int32(C), np.int32(d), Wt, dWt,
                                                      ws.partials_for(spread), ws.ticket, wsq))
        f = dev.kernel(plan["name"])
        grid = plans.sparse_grid(n, dev.card.sm_count, dev.blocks_per_sm(f, plan["threads"], 0))
        db_part, loss_part = xp.empty((grid, C), dtype=W.dtype), xp.empty(grid, dtype=np.float64)
        db = xp.empty(C, dtype=W.dtype)
        sw = _NULL if sample_weight is None else xp.ascontiguousarray(sample_weight, dtype=W.dtype)
        f((grid,), (plan["threads"],),
          (val, col, indptr, idx64, y, _Y64[y64], Wt, b, sw, np.int64(n), np.int32(C), _LOSS_KIND[loss], dWt,
           db_part, loss_part, ws.ticket, db, loss_sum))
        dW, J = xp.empty_like(W), xp.empty((), dtype=W.dtype)
        dev.kernel(plan["finish"])((spread,), (256,), (dWt, W, db, mean, std, loss_sum, wsq, np.int32(C), np.int32(d),
                                                       np.float64(lam), np.float64(1.0 / n), dW, J))
        return J, dW, db

    # ---- the compiled step's kernels (kernels/mlp.cuh) ------------------------------------------
    def matmul(self, a, b, out):
        """out = a @ b through cuBLAS, one call: transposed views go in as transposes, never copied,
        and out is written in place (no allocation)."""
        self._blas().gemm("N", "N", a, b, out=out)
        return out

    def _blas(self):
        """cupy.cublas, imported at the first matrix product (importing it loads cuBLAS)."""
        if not hasattr(self.xp, "cublas"):
            import cupy.cublas  # noqa: F401
        return self.xp.cublas

    def gather_rows(self, X, idx, x_mean, x_std, y, sample_weight, out):
        Xb, yb, wb = out
        dev = self.workspace().device
        n, d = Xb.shape
        name = {(np.float32, np.float32): "f32", (np.float64, np.float64): "f64", (np.uint8, np.float32): "u8",
                (np.uint8, np.float64): "u8f64"}.get((X.dtype.type, Xb.dtype.type))
        if name is None or not X.flags.c_contiguous:
            return super().gather_rows(X, idx, x_mean, x_std, y, sample_weight, out)
        xp, T = self.xp, Xb.dtype
        y, y64 = _labels(xp, y)
        # (each conversion a no-op for the trainer's inputs: no copy in a step)
        norm = (_NULL, _NULL) if x_mean is None else (xp.ascontiguousarray(x_mean, dtype=T),
                                                      xp.ascontiguousarray(x_std, dtype=T))
        rows = _NULL if idx is None else xp.ascontiguousarray(idx, dtype=np.int64)
        sw = _NULL if sample_weight is None else xp.ascontiguousarray(sample_weight, dtype=T)
        dev.kernel(f"gg_gather_{name}")(
            (max(1, min(n, 4 * dev.card.sm_count)),), (256,),
            (X, rows, np.int64(n), np.int32(d), *norm, y, _Y64[y64], sw, Xb, yb, _NULL if wb is None else wb))
        return out

    def layer_forward(self, s, b, gamma, beta, running_mean, running_var, momentum, eps, out):
        h, xhat, inv_std = out
        n, m = s.shape
        bn = gamma is not None
        self.workspace().device.kernel("gg_layer_fwd_" + _TYPE[s.dtype.type])(
            (-(-m // 32),), (32, 8),
            (s, b, gamma if bn else _NULL, beta if bn else _NULL, _NULL if running_mean is None else running_mean,
             _NULL if running_var is None else running_var, np.float64(momentum), np.float64(eps), np.int64(n), np.int32(m), h,
             xhat if bn else _NULL, inv_std if bn else _NULL))
        return out

    def layer_backward(self, dh, h, xhat, gamma, inv_std, out):
        dgamma, dbeta, db = out
        n, m = dh.shape
        bn = gamma is not None
        self.workspace().device.kernel("gg_layer_bwd_" + _TYPE[dh.dtype.type])(
            (-(-m // 32),), (32, 8),
            (dh, _NULL if h is None else h, xhat if bn else _NULL, gamma if bn else _NULL, inv_std if bn else _NULL,
             dh, dgamma if bn else _NULL, dbeta if bn else _NULL, db, np.int64(n), np.int32(m)))
        return dh

    def scores_loss(self, S, b, y, sample_weight, loss, out):
        dS, L = out
        n, C = S.shape
        K = next((k for k in (1, 2, 4, 8, 32) if C <= 32 * k), None)
        if K is None:  # more than 1024 classes: the bias added, then the row-loss kernels
            return super().scores_loss(S, b, y, sample_weight, loss, out)
        ws = self.workspace()
        y, y64 = _labels(self.xp, y)
        sw = _NULL if sample_weight is None else self.xp.ascontiguousarray(sample_weight, dtype=S.dtype)
        grid = -(-n // 8)  # a warp per row, 8 a block
        ws.device.kernel(f"gg_scores_loss_{_TYPE[S.dtype.type]}_k{K}")(
            (grid,), (256,),
            (S, b, y, _Y64[y64], sw, _LOSS_KIND[loss], dS, np.int64(n), np.int32(C), ws.partials_for(grid),
             ws.ticket, L))
        return out

    def optimizer_update(self, rule, p, g, slots, lam=0.0, n_decay=0, loss=None, record=None, index=0):
        name, h = rule
        ws = self.workspace()
        N = p.size
        grid = plans.spread_grid(N, ws.device.card.sm_count)
        s1, s2 = (tuple(slots) + (_NULL, _NULL))[:2]
        hyper = [np.float64(v) for v in tuple(h) + (0.0,) * (6 - len(h))]
        ws.device.kernel("gg_update_" + _TYPE[p.dtype.type])(
            (grid,), (256,),
            (p, g, s1, s2, np.int64(N), np.int64(n_decay), np.int32(_RULE[name]), *hyper, np.float64(lam),
             _NULL if record is None else loss, _NULL if record is None else record, np.int64(index),
             np.int64(0 if record is None else record.shape[1]), ws.partials_for(grid), ws.ticket))

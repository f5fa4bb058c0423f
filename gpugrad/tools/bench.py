"""``gpugrad bench``: gpugrad against the tools one would otherwise use, and against the floor.

Three families of workloads, each at three sizes (``tiny`` for smoke tests, ``cpu``, ``gpu``):

- ``ce``: softmax cross-entropy forward + gradient on scores S (n, C), float32, for C in 10,
  1024, 32768: loss = -(1/n) sum_i log p_{i,y_i}, dS = (P - Y) / n;
- ``linear``: the linear classifier's step J, dW, db of J = (1/n) sum_i l_i + lam ||W||^2 with
  S = X W^T + b, for n in 100, 8192, 65536 rows of d = 3072, C = 10, X float32 and uint8 (the
  pixels normalised on the fly by x_mean, x_std);
- ``epoch``: one epoch of mini-batch SGD (batch 100) of the linear classifier (plain SGD) and of
  the MLP 3072-50-50-10 with batch normalisation (SGD with momentum 0.9), gpugrad's through
  ``gpugrad.Trainer`` (``eval_train=False``; the MLP's compiled step, and its generic backward
  pass as "gpugrad graph").

Each workload is run by gpugrad (``ours``) and by peers on the same inputs in the same process:
on the CPU the numpy backend against numpy written by hand from the formulas, scikit-learn's
own loss-and-gradient code where it has an equivalent, and PyTorch eager and ``torch.compile``
when torch is installed; on a GPU the CuPy backend against the same hand-written code run by
CuPy ("plain CuPy") and PyTorch on CUDA. An implementation that cannot run here (no torch, no
GPU) is listed as skipped with the reason.

Times: the median of ``repeat`` calls after warm-up, ``time.perf_counter`` around each call on
the CPU and CUDA events around each call on a GPU; the trainer's epochs are timed by the
trainer's own per-epoch clock (``History`` column ``seconds``), which leaves out what ``fit``
does once per call (here with ``check_input=False``: the inputs are known to be valid).
``gpugrad bench`` holds the C heap first (``steady_heap``), so that the implementations that
allocate every call take the same time whatever ran before them in the process.

The floor of a workload is the bytes it must move (each input read once, each output written
once; see ``Workload.nbytes``) divided by the bandwidth measured in the same run: a
device-to-device copy on a GPU, ``numpy.copyto`` of a buffer larger than the CPU's caches on
the CPU (bytes read + written per second).

    >>> from gpugrad import bench
    >>> rows = bench.run(["ce"], backend="numpy", size="tiny", repeat=2, bandwidth=1e10,
    ...                  implementations=["gpugrad numpy", "numpy by hand"])
    >>> [(r["workload"], r["implementation"]) for r in rows["rows"]][:2]
    [('CE fwd+grad S 64x10 float32', 'gpugrad numpy'), ('CE fwd+grad S 64x10 float32', 'numpy by hand')]
    >>> rows["rows"][0]["floor_s"] > 0
    True
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from typing import Callable

import numpy as np

import gpugrad as gg

from .. import __version__
from ..backends import cupy_available, why_backend
from ..training.models import MLP, LinearClassifier
from . import options
from ..training.saving import json_safe

__all__ = ["FAMILIES", "SIZES", "Workload", "Impl", "Case", "Unavailable", "workloads", "make_inputs",
           "IMPLEMENTATIONS", "implementations_for", "time_case", "memory_bandwidth", "steady_heap", "run",
           "format_table", "ce_by_hand", "linear_by_hand", "linear_epoch_by_hand", "mlp_step_by_hand",
           "mlp_epoch_by_hand", "add_parser", "command"]

FAMILIES = ("ce", "linear", "epoch")
SIZES = ("tiny", "cpu", "gpu")
LAM = 1e-3            # the L2 strength of the linear step and of both epochs
LR = {"linear": 1e-3, "mlp": 1e-2}  # SGD rates of the epochs (the course's first and third assignments)
MOMENTUM = {"linear": 0.0, "mlp": 0.9}  # the MLP epoch is SGD with momentum, the linear one plain SGD
BATCH, HIDDEN, BN_EPS, BN_MOMENTUM = 100, (50, 50), 1e-5, 0.1

# (n, C) of the CE workloads; (n values, d, C) of the linear step; (N linear, N mlp, d, C) of the epochs.
# The cpu sizes keep `pytest benchmarks/ --benchmark-only` to a few minutes on 2 cores; the gpu sizes
# are those gpugrad is measured at on a GPU (the epochs: the course's N = 50,000 CIFAR-10 rows).
CE_SIZES = {"tiny": ((64, 10), (16, 1024), (2, 32768)),
            "cpu": ((65536, 10), (4096, 1024), (128, 32768)),
            "gpu": ((8192, 10), (8192, 1024), (8192, 32768))}
LINEAR_SIZES = {"tiny": ((10, 50), 64, 10), "cpu": ((100, 1024, 8192), 3072, 10),
                "gpu": ((100, 8192, 65536), 3072, 10)}
EPOCH_SIZES = {"tiny": (300, 300, 64, 10), "cpu": (10_000, 10_000, 3072, 10), "gpu": (50_000, 50_000, 3072, 10)}


class Unavailable(Exception):
    """An implementation cannot run here; the message says why (e.g. "PyTorch is not installed")."""


# ---------------------------------------------------------------------------------------------
# Workloads
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Workload:
    """One thing to time. ``family`` in FAMILIES; ``shape``: its sizes (n, C, d, X dtype, model...).

    ``nbytes`` is what the workload must move between memory and the processor at least once:
    CE reads S and the labels and writes dS; the linear step reads X, the labels, W (and x_mean,
    x_std) and writes dW; an epoch reads X and the labels once (the parameters, at most a few
    hundred KB, stay in cache from step to step).
    """
    family: str
    name: str
    shape: tuple
    nbytes: int

    @property
    def params(self) -> dict:
        return dict(self.shape)


def _ce(n, C):
    return Workload("ce", f"CE fwd+grad S {n}x{C} float32", (("n", n), ("C", C)), 2 * n * C * 4 + n * 8)


def _linear(n, d, C, xdtype):
    item = np.dtype(xdtype).itemsize
    extra = 2 * d * 4 if xdtype == "uint8" else 0
    return Workload("linear", f"linear step n={n} d={d} C={C} {xdtype}",
                    (("n", n), ("d", d), ("C", C), ("xdtype", xdtype)),
                    n * d * item + n * 8 + 2 * C * d * 4 + extra)


def _epoch(model, N, d, C):
    label = (f"linear epoch N={N} d={d} C={C}" if model == "linear"
             else f"MLP epoch N={N} {d}-{'-'.join(map(str, HIDDEN))}-{C} BN")
    return Workload("epoch", f"{label} batch {BATCH} float32",
                    (("model", model), ("N", N), ("d", d), ("C", C)), N * d * 4 + N * 8)


def workloads(families=FAMILIES, size="cpu") -> list[Workload]:
    """The workloads of these families at this size, in table order.

        >>> [w.name for w in workloads(["linear"], "tiny")]  # doctest: +NORMALIZE_WHITESPACE
        ['linear step n=10 d=64 C=10 float32', 'linear step n=10 d=64 C=10 uint8',
         'linear step n=50 d=64 C=10 float32', 'linear step n=50 d=64 C=10 uint8']
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, got {size!r}")
    out = []
    for family in families:
        if family == "ce":
            out += [_ce(n, C) for n, C in CE_SIZES[size]]
        elif family == "linear":
            ns, d, C = LINEAR_SIZES[size]
            out += [_linear(n, d, C, x) for n in ns for x in ("float32", "uint8")]
        elif family == "epoch":
            n_lin, n_mlp, d, C = EPOCH_SIZES[size]
            out += [_epoch("linear", n_lin, d, C), _epoch("mlp", n_mlp, d, C)]
        else:
            raise ValueError(f"unknown workload family {family!r}; expected one of {', '.join(FAMILIES)}")
    return out


def make_inputs(w: Workload, seed=0) -> dict:
    """The workload's inputs as numpy arrays (every implementation converts these same arrays).

    ce: S (n, C) float32 ~ N(0, 3^2), y (n,) int64. linear: X (n, d) float32 ~ N(0, 1) or uint8
    pixels with x_mean = 120, x_std = 64 (float32 (d,)), y, W (C, d) ~ N(0, 0.01^2), b (C,)
    float32. epoch: X (N, d) float32 ~ N(0, 1), y, and ``params0``: the gpugrad model's initial
    parameters (seed 0), from which every implementation starts.
    """
    p = w.params
    rng = np.random.default_rng(seed)
    if w.family == "ce":
        n, C = p["n"], p["C"]
        return {"S": (rng.standard_normal((n, C), dtype=np.float32) * 3), "y": rng.integers(0, C, n)}
    if w.family == "linear":
        n, d, C = p["n"], p["d"], p["C"]
        if p["xdtype"] == "uint8":
            X = rng.integers(0, 256, (n, d), dtype=np.uint8)
            mean, std = np.full(d, 120, np.float32), np.full(d, 64, np.float32)
        else:
            X, mean, std = rng.standard_normal((n, d), dtype=np.float32), None, None
        return {"X": X, "y": rng.integers(0, C, n), "W": (rng.standard_normal((C, d)) * 0.01).astype(np.float32),
                "b": (rng.standard_normal(C) * 0.1).astype(np.float32), "x_mean": mean, "x_std": std}
    N, d, C = p["N"], p["d"], p["C"]
    model = _gpugrad_model(p["model"], d, C, "numpy")
    return {"X": rng.standard_normal((N, d), dtype=np.float32), "y": rng.integers(0, C, N),
            "params0": {k: np.array(v) for k, v in model.params.items()}}


def _gpugrad_model(kind, d, C, backend, compiled=True):
    if kind == "linear":
        return LinearClassifier(d, C, backend=backend, seed=0)
    return MLP(d, C, HIDDEN, batchnorm=True, backend=backend, seed=0, bn_momentum=BN_MOMENTUM, compiled=compiled)


# ---------------------------------------------------------------------------------------------
# The peers written by hand, once for numpy and CuPy (xp is the array module)
# ---------------------------------------------------------------------------------------------

def ce_by_hand(xp, S, y):
    """(loss, dS) of the softmax cross-entropy written the obvious way: P = softmax(S) by rows
    (the row max subtracted first, so exp never overflows), loss = -mean log P[i, y_i],
    dS = (P - Y) / n.

        >>> S, y = np.array([[0.0, 0.0]], np.float32), np.array([1])
        >>> loss, dS = ce_by_hand(np, S, y)
        >>> round(float(loss), 4), dS.tolist()
        (0.6931, [[0.5, -0.5]])
    """
    n = S.shape[0]
    P = xp.exp(S - S.max(axis=1, keepdims=True))
    P /= P.sum(axis=1, keepdims=True)
    rows = xp.arange(n)
    loss = -xp.log(P[rows, y]).mean()
    P[rows, y] -= 1
    P /= n
    return loss, P


def linear_by_hand(xp, X, y, W, b, lam, x_mean=None, x_std=None):
    """(J, dW, db) of the linear softmax classifier from the lecture's formulas: X normalised
    first when x_mean is given, S = X W^T + b, P = row softmax, G = (P - Y) / n,
    dW = G^T X + 2 lam W, db = G summed over rows.

        >>> X, y = np.eye(2, dtype=np.float32), np.array([0, 1])
        >>> J, dW, db = linear_by_hand(np, X, y, np.zeros((2, 2), np.float32), np.zeros(2, np.float32), 0.0)
        >>> round(float(J), 4), dW.tolist(), db.tolist()
        (0.6931, [[-0.25, 0.25], [0.25, -0.25]], [0.0, 0.0])
    """
    if x_mean is not None:
        X = (X.astype(W.dtype) - x_mean) / x_std
    n = len(y)
    S = X @ W.T + b
    P = xp.exp(S - S.max(axis=1, keepdims=True))
    P /= P.sum(axis=1, keepdims=True)
    rows = xp.arange(n)
    J = -xp.log(P[rows, y]).mean() + lam * (W * W).sum()
    Y = xp.zeros_like(P)
    Y[rows, y] = 1
    G = (P - Y) / n
    return J, G.T @ X + 2 * lam * W, G.sum(axis=0)


def linear_epoch_by_hand(xp, X, y, params, order, lr, lam, batch=BATCH):
    """One epoch of plain SGD on the linear classifier, in place on params {"W", "b"}: the batches
    are the rows of X in ``order`` (a permutation), batch rows at a time."""
    W, b = params["W"], params["b"]
    for start in range(0, X.shape[0], batch):
        idx = order[start:start + batch]
        _, dW, db = linear_by_hand(xp, X[idx], y[idx], W, b, lam)
        W -= lr * dW
        b -= lr * db
    return params


def mlp_step_by_hand(xp, X, y, params, buffers, lam, eps=BN_EPS, momentum=BN_MOMENTUM):
    """(J, grads) of the MLP with batch normalisation (the course's third assignment), by hand.

    Layers l < k: s = h W_l^T + b_l; batch norm with the batch mean mu and biased variance v,
    xhat = (s - mu) / sqrt(v + eps), z = gamma_l xhat + beta_l; h = max(z, 0). Scores
    S = h W_k^T + b_k, softmax cross-entropy (``ce_by_hand``); J adds lam sum_l ||W_l||^2. The
    running averages in ``buffers`` are updated in place (PyTorch's convention: the unbiased
    variance). Backward: G = (P - Y) / n, then per layer dz = dh [z > 0], dgamma = sum dz xhat, dbeta = sum dz,
    ds = (dxhat - mean(dxhat) - xhat mean(dxhat xhat)) / sqrt(v + eps) with dxhat = dz gamma.
    """
    n = X.shape[0]
    k = len([key for key in params if key.startswith("W")])
    h, cache = X, []
    for l in range(1, k):
        s = h @ params[f"W{l}"].T + params[f"b{l}"]
        mu, var = s.mean(axis=0), s.var(axis=0)
        inv = 1 / xp.sqrt(var + eps)
        xhat = (s - mu) * inv
        z = params[f"gamma{l}"] * xhat + params[f"beta{l}"]
        rm, rv = buffers[f"running_mean{l}"], buffers[f"running_var{l}"]
        rm *= 1 - momentum
        rm += momentum * mu
        rv *= 1 - momentum
        rv += momentum * var * (n / max(n - 1, 1))
        cache.append((h, xhat, inv, z))
        h = xp.maximum(z, 0)
    loss, G = ce_by_hand(xp, h @ params[f"W{k}"].T + params[f"b{k}"], y)
    J = loss + lam * sum((params[f"W{l}"] ** 2).sum() for l in range(1, k + 1))
    grads = {f"W{k}": G.T @ h + 2 * lam * params[f"W{k}"], f"b{k}": G.sum(axis=0)}
    dh = G @ params[f"W{k}"]
    for l in range(k - 1, 0, -1):
        h_in, xhat, inv, z = cache[l - 1]
        dz = dh * (z > 0)
        grads[f"gamma{l}"] = (dz * xhat).sum(axis=0)
        grads[f"beta{l}"] = dz.sum(axis=0)
        dxhat = dz * params[f"gamma{l}"]
        ds = (dxhat - dxhat.mean(axis=0) - xhat * (dxhat * xhat).mean(axis=0)) * inv
        grads[f"W{l}"] = ds.T @ h_in + 2 * lam * params[f"W{l}"]
        grads[f"b{l}"] = ds.sum(axis=0)
        if l > 1:
            dh = ds @ params[f"W{l}"]
    return J, grads


def mlp_epoch_by_hand(xp, X, y, params, buffers, order, lr, lam, batch=BATCH, momentum=0.0, velocity=None):
    """One epoch of SGD on the MLP (``mlp_step_by_hand`` per batch), in place on params: plain,
    p -= lr g, or with momentum (``velocity``: arrays like params, kept from epoch to epoch),
    v = momentum v - lr g, p += v."""
    for start in range(0, X.shape[0], batch):
        idx = order[start:start + batch]
        _, grads = mlp_step_by_hand(xp, X[idx], y[idx], params, buffers, lam)
        for key, g in grads.items():
            if momentum:
                v = velocity[key]
                v *= momentum
                v -= lr * g
                params[key] += v
            else:
                params[key] -= lr * g
    return params


def _mlp_buffers(xp, params, dtype):
    return {f"running_{s}{l}": (xp.zeros if s == "mean" else xp.ones)(params[f"gamma{l}"].shape[0], dtype)
            for l in range(1, len(HIDDEN) + 1) for s in ("mean", "var")}


# ---------------------------------------------------------------------------------------------
# Implementations
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Case:
    """A prepared call: ``fn()`` runs the workload once and returns its result (loss and
    gradients, or the parameters after an epoch, on the implementation's device). ``seconds``,
    when set, returns the time of the last call as the implementation itself measured it.
    ``sync`` waits for the device (None on the CPU); ``events`` makes (start, end, elapsed in ms)
    for CUDA-event timing; ``warmup`` calls run before timing (compiles, caches, plans)."""
    fn: Callable
    seconds: Callable | None = None
    sync: Callable | None = None
    events: Callable | None = None
    warmup: int = 1


@dataclasses.dataclass(frozen=True)
class Impl:
    """An implementation: ``prepare(workload, inputs)`` returns a Case or raises Unavailable.
    ``device`` is "cpu" or "gpu"; ``ours`` marks gpugrad's own (the others are the peers)."""
    name: str
    device: str
    ours: bool
    prepare: Callable


def _cupy():
    if not cupy_available():
        raise Unavailable(f"no usable CUDA device ({why_backend()})")
    import cupy
    return cupy


def _cupy_case(fn, **kw):
    cupy = _cupy()
    return Case(fn, sync=cupy.cuda.Device().synchronize,
                events=lambda: (cupy.cuda.Event(), cupy.cuda.Event(), cupy.cuda.get_elapsed_time), **kw)


def _gpugrad(device):
    """gpugrad's public functions (value checks off, as in a training loop over checked data) and
    its Trainer, on the numpy backend or the CuPy backend."""
    def prepare(w, inp):
        if device == "gpu":
            move = _cupy().asarray  # first: without a usable device this is Unavailable
            be, wrap = gg.get_backend("cupy"), _cupy_case
        else:
            be, move, wrap = gg.get_backend("numpy"), (lambda a: a), Case
        a = {k: (move(v) if isinstance(v, np.ndarray) else v) for k, v in inp.items() if k != "params0"}
        if w.family == "ce":
            return wrap(lambda: gg.softmax_cross_entropy_grad(a["S"], a["y"], validate=False))
        if w.family == "linear":
            return wrap(lambda: gg.linear_grad(a["X"], a["y"], a["W"], a["b"], LAM, x_mean=a["x_mean"],
                                               x_std=a["x_std"], validate=False))
        return _trainer_case(w, a, be, wrap, compiled=True)
    return prepare


def _trainer_case(w, a, be, wrap, compiled):
    """An epoch through gpugrad.Trainer: one more epoch of ``fit`` per call, the trainer's own clock."""
    p = w.params
    model = _gpugrad_model(p["model"], p["d"], p["C"], be, compiled=compiled)
    trainer = gg.Trainer(model, gg.optim.SGD(LR[p["model"]], momentum=MOMENTUM[p["model"]]), epochs=0,
                         batch_size=BATCH, lam=LAM, seed=0, eval_train=False, progress=False)

    def one_epoch():  # the inputs are made here, finite and in range: fit need not check them
        trainer.epochs += 1
        trainer.fit(a["X"], a["y"], check_input=False)
        return model.params
    return wrap(one_epoch, seconds=lambda: trainer.history.rows[-1]["seconds"])


def _graph(device):
    """gpugrad's graph and its generic backward pass (no fused kernel, no compiled step): the linear
    step, and the MLP epoch through the trainer with ``MLP(compiled=False)``."""
    def prepare(w, inp):
        if w.family == "epoch" and w.params["model"] == "mlp":
            if device == "gpu":
                move, be, wrap = _cupy().asarray, gg.get_backend("cupy"), _cupy_case
            else:
                move, be, wrap = (lambda a: a), gg.get_backend("numpy"), Case
            return _trainer_case(w, {k: move(inp[k]) for k in ("X", "y")}, be, wrap, compiled=False)
        if w.family != "linear" or inp["x_mean"] is not None:
            raise Unavailable("timed on the float32 linear step and the MLP epoch only")
        move = _cupy().asarray if device == "gpu" else (lambda a: a)
        X, y, W, b = (move(inp[k]) for k in ("X", "y", "W", "b"))

        def step():
            Wt, bt = gg.tensor(W, requires_grad=True), gg.tensor(b, requires_grad=True)
            J = gg.cross_entropy(gg.tensor(X) @ Wt.T + bt, y, validate=False) + LAM * (Wt ** 2).sum()
            J.backward()
            return J.value, Wt.grad, bt.grad
        return _cupy_case(step) if device == "gpu" else Case(step)
    return prepare


def _by_hand(device):
    """numpy (CPU) or CuPy (GPU) written the obvious way: the functions above."""
    def prepare(w, inp):
        xp, wrap = (_cupy(), _cupy_case) if device == "gpu" else (np, Case)
        a = {k: (xp.asarray(v) if isinstance(v, np.ndarray) else v) for k, v in inp.items() if k != "params0"}
        if w.family == "ce":
            return wrap(lambda: ce_by_hand(xp, a["S"], a["y"]))
        if w.family == "linear":
            return wrap(lambda: linear_by_hand(xp, a["X"], a["y"], a["W"], a["b"], LAM, a["x_mean"], a["x_std"]))
        params = {k: xp.array(v) for k, v in inp["params0"].items()}
        buffers = _mlp_buffers(xp, params, np.float32) if w.params["model"] == "mlp" else None
        velocity = {k: xp.zeros_like(v) for k, v in params.items()}
        rng = np.random.default_rng(0)  # the trainer's shuffles come from the same generator

        def one_epoch():
            order = xp.asarray(rng.permutation(a["X"].shape[0]))
            if buffers is None:
                return linear_epoch_by_hand(xp, a["X"], a["y"], params, order, LR["linear"], LAM)
            return mlp_epoch_by_hand(xp, a["X"], a["y"], params, buffers, order, LR["mlp"], LAM,
                                     momentum=MOMENTUM["mlp"], velocity=velocity)
        return wrap(one_epoch)
    return prepare


def _sklearn(w, inp):
    """scikit-learn's own loss-and-gradient code: ``HalfMultinomialLoss.loss_gradient`` (what its
    multinomial models evaluate) for CE, ``LinearModelLoss.loss_gradient`` (what
    ``LogisticRegression``'s L-BFGS evaluates at each iterate) for the linear step."""
    if w.family == "epoch":
        raise Unavailable("scikit-learn has no batch-norm MLP nor mini-batch softmax SGD epoch; "
                          "benchmarks/test_estimators.py compares the estimators' fit with it")
    try:
        from sklearn._loss.loss import HalfMultinomialLoss
        from sklearn.linear_model._linear_loss import LinearModelLoss
        from sklearn.utils._openmp_helpers import _openmp_effective_n_threads
    except ImportError as e:  # private modules: present in scikit-learn 1.1 to 1.9 at least
        raise Unavailable(f"scikit-learn's loss modules are not importable ({e})") from None
    threads = _openmp_effective_n_threads()
    if w.family == "ce":
        S = inp["S"]
        loss = HalfMultinomialLoss(n_classes=S.shape[1])
        yf = inp["y"].astype(S.dtype)

        def ce():
            per_row, grad = loss.loss_gradient(y_true=yf, raw_prediction=S, n_threads=threads)
            grad /= S.shape[0]
            return per_row.mean(), grad
        return Case(ce)
    X, W = inp["X"], inp["W"]
    model_loss = LinearModelLoss(base_loss=HalfMultinomialLoss(n_classes=W.shape[0]), fit_intercept=True)
    coef = np.ascontiguousarray(np.hstack([W, inp["b"][:, None]]))
    yf = inp["y"].astype(W.dtype)
    mean, std = inp["x_mean"], inp["x_std"]

    def step():
        Xn = X if mean is None else (X.astype(W.dtype) - mean) / std
        # sklearn's penalty is (l2 / 2) ||W||^2: l2 = 2 lam gives lam ||W||^2.
        J, grad = model_loss.loss_gradient(coef, Xn, yf, l2_reg_strength=2 * LAM, n_threads=threads)
        return J, grad[:, :-1], grad[:, -1]
    return Case(step)


def _torch(device, compiled):
    """PyTorch eager (autograd) or ``torch.compile`` of the same functions, on the CPU or CUDA."""
    def prepare(w, inp):
        try:
            import torch
            import torch.nn.functional as F
        except ImportError:
            raise Unavailable("PyTorch is not installed") from None
        dev = "cuda" if device == "gpu" else "cpu"
        if dev == "cuda" and not torch.cuda.is_available():
            raise Unavailable("PyTorch sees no CUDA device")
        if compiled and not hasattr(torch, "compile"):
            raise Unavailable("this PyTorch has no torch.compile")
        t = {k: torch.as_tensor(v, device=dev) for k, v in inp.items() if isinstance(v, np.ndarray)}

        if w.family == "ce":
            def fn(S, y):
                S = S.detach().requires_grad_(True)
                loss = F.cross_entropy(S, y)
                loss.backward()
                return loss, S.grad
            args = (t["S"], t["y"])
        elif w.family == "linear":
            mean, std = t.get("x_mean"), t.get("x_std")

            def fn(X, y, W, b):
                if mean is not None:
                    X = (X.float() - mean) / std
                W, b = W.detach().requires_grad_(True), b.detach().requires_grad_(True)
                J = F.cross_entropy(X @ W.T + b, y) + LAM * (W * W).sum()
                J.backward()
                return J, W.grad, b.grad
            args = (t["X"], t["y"], t["W"], t["b"])
        else:  # the epoch's loop stays eager; torch.compile compiles its step
            fn, args = _torch_epoch(torch, F, w, inp, t, dev, compiled)
        step = torch.compile(fn) if compiled and w.family != "epoch" else fn
        if dev == "cuda":
            def events():
                return (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True),
                        lambda a, b: a.elapsed_time(b))
            return Case(lambda: step(*args), sync=torch.cuda.synchronize, events=events,
                        warmup=3 if compiled else 1)
        return Case(lambda: step(*args), warmup=3 if compiled else 1)
    return prepare


def _torch_epoch(torch, F, w, inp, t, dev, compiled):
    """An epoch as PyTorch users write it, from the gpugrad model's start: the MLP a
    ``torch.nn.Sequential`` of Linear, BatchNorm1d and ReLU (the linear classifier one Linear),
    ``torch.optim.SGD`` with the epoch's momentum and the penalty lam ||W||^2 as weight decay
    2 lam on the weight matrices only; ``torch.compile`` compiles the module."""
    kind = w.params["model"]
    p0 = inp["params0"]
    if kind == "linear":  # the linear classifier's W, b as the one layer's
        p0 = {"W1": p0["W"], "b1": p0["b"]}
    k = len([key for key in p0 if key.startswith("W")])
    layers = []
    for l in range(1, k + 1):
        W = torch.as_tensor(p0[f"W{l}"], device=dev)
        lin = torch.nn.Linear(W.shape[1], W.shape[0], device=dev)
        with torch.no_grad():
            lin.weight.copy_(W)
            lin.bias.copy_(torch.as_tensor(p0[f"b{l}"], device=dev))
        layers.append(lin)
        if l < k:
            bn = torch.nn.BatchNorm1d(W.shape[0], eps=BN_EPS, momentum=BN_MOMENTUM, device=dev)
            with torch.no_grad():
                bn.weight.copy_(torch.as_tensor(p0[f"gamma{l}"], device=dev))
                bn.bias.copy_(torch.as_tensor(p0[f"beta{l}"], device=dev))
            layers += [bn, torch.nn.ReLU()]
    net = torch.nn.Sequential(*layers).train()
    weights = [m.weight for m in net if isinstance(m, torch.nn.Linear)]
    others = [q for q in net.parameters() if all(q is not W for W in weights)]
    opt = torch.optim.SGD([{"params": weights, "weight_decay": 2 * LAM}, {"params": others, "weight_decay": 0.0}],
                          lr=LR[kind], momentum=MOMENTUM[kind])
    forward = torch.compile(net) if compiled else net
    rng = np.random.default_rng(0)

    def epoch(X, y):
        order = torch.as_tensor(rng.permutation(X.shape[0]), device=dev)
        for start in range(0, X.shape[0], BATCH):
            idx = order[start:start + BATCH]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(forward(X[idx]), y[idx]).backward()
            opt.step()
        params = _torch_params(torch, net)
        return {"W": params["W1"], "b": params["b1"]} if kind == "linear" else params
    return epoch, (t["X"], t["y"])


def _torch_params(torch, net):
    """A Sequential's parameters under gpugrad's names (W1, b1, gamma1, beta1, ...)."""
    out, l = {}, 0
    for m in net:
        if isinstance(m, torch.nn.Linear):
            l += 1
            out[f"W{l}"], out[f"b{l}"] = m.weight.detach(), m.bias.detach()
        elif isinstance(m, torch.nn.BatchNorm1d):
            out[f"gamma{l}"], out[f"beta{l}"] = m.weight.detach(), m.bias.detach()
    return out


IMPLEMENTATIONS = {
    "gpugrad numpy": Impl("gpugrad numpy", "cpu", True, _gpugrad("cpu")),
    "gpugrad graph numpy": Impl("gpugrad graph numpy", "cpu", True, _graph("cpu")),
    "numpy by hand": Impl("numpy by hand", "cpu", False, _by_hand("cpu")),
    "scikit-learn": Impl("scikit-learn", "cpu", False, _sklearn),
    "PyTorch eager CPU": Impl("PyTorch eager CPU", "cpu", False, _torch("cpu", False)),
    "torch.compile CPU": Impl("torch.compile CPU", "cpu", False, _torch("cpu", True)),
    "gpugrad cupy": Impl("gpugrad cupy", "gpu", True, _gpugrad("gpu")),
    "gpugrad graph cupy": Impl("gpugrad graph cupy", "gpu", True, _graph("gpu")),
    "plain CuPy": Impl("plain CuPy", "gpu", False, _by_hand("gpu")),
    "PyTorch eager CUDA": Impl("PyTorch eager CUDA", "gpu", False, _torch("gpu", False)),
    "torch.compile CUDA": Impl("torch.compile CUDA", "gpu", False, _torch("gpu", True)),
}


def implementations_for(backend: str) -> list[Impl]:
    """The implementations a table on this backend ("numpy": the CPU ones, "cupy": the GPU ones)."""
    device = {"numpy": "cpu", "cupy": "gpu"}[backend]
    return [i for i in IMPLEMENTATIONS.values() if i.device == device]


# ---------------------------------------------------------------------------------------------
# Timing and the floor
# ---------------------------------------------------------------------------------------------

def time_case(case: Case, repeat: int) -> list[float]:
    """Seconds of ``repeat`` calls after ``case.warmup`` calls: the case's own clock when it has
    one, else CUDA events around each call when it runs on a GPU, else time.perf_counter."""
    for _ in range(case.warmup):
        case.fn()
    if case.sync is not None:
        case.sync()
    times = []
    for _ in range(repeat):
        if case.seconds is not None:
            case.fn()
            times.append(float(case.seconds()))
        elif case.events is not None:
            start, end, elapsed_ms = case.events()
            start.record()
            case.fn()
            end.record()
            end.synchronize()
            times.append(elapsed_ms(start, end) / 1e3)
        else:
            t0 = time.perf_counter()
            case.fn()
            times.append(time.perf_counter() - t0)
    return times


def _largest_cache_bytes() -> int:
    """The largest CPU cache this process can see (sysfs, then sysconf), 32 MiB when unknown."""
    sizes = []
    root = "/sys/devices/system/cpu/cpu0/cache"
    try:
        entries = os.listdir(root)
    except OSError:
        entries = []
    for entry in entries:  # index0, index1, ... (and files such as uevent, which have no size)
        try:
            with open(os.path.join(root, entry, "size")) as f:
                text = f.read().strip().upper()
            unit = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
            sizes.append(int(text.rstrip("KMG")) * unit)
        except (OSError, ValueError):
            continue
    for name in ("SC_LEVEL3_CACHE_SIZE", "SC_LEVEL2_CACHE_SIZE"):
        try:
            sizes.append(int(os.sysconf(name)))
        except (ValueError, OSError):
            continue
    return max([s for s in sizes if s > 0], default=32 << 20)


def steady_heap() -> bool:
    """Keep the C heap's freed blocks in the process, so that allocating costs no page faults.

    Implementations that allocate arrays every step (numpy written by hand, PyTorch eager) get
    memory from the C library's malloc. By default glibc hands a freed block at the top of the
    heap back to the system and maps large blocks anew, and when it does depends on what the
    process allocated before: a loop that frees and re-allocates a batch-sized array each step
    may touch fresh pages, and fault on each, on every step, or never, according to which
    implementation ran before it. Raising the trim and mmap thresholds (``mallopt``, the
    process-wide equivalent of ``MALLOC_TRIM_THRESHOLD_`` and ``MALLOC_MMAP_THRESHOLD_``) makes
    every implementation's time the same whatever ran before it, and at its best for those that
    allocate: gpugrad's compiled steps allocate nothing after their first call. ``gpugrad bench``
    and the benchmark scripts call it first. Returns whether the settings took (False where the C
    library is not glibc).
    """
    import ctypes
    import ctypes.util

    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or None).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    return bool(mallopt(m_trim_threshold, 1 << 30)) and bool(mallopt(m_mmap_threshold, 1 << 25))


def memory_bandwidth(backend="numpy", nbytes=None, repeat=5) -> tuple[float, str]:
    """(bytes per second, how it was measured) of a copy, counting the bytes read and written.

    numpy: ``numpy.copyto`` between two buffers of ``nbytes`` (default: twice the largest CPU
    cache, within 64 MiB .. 1 GiB), the median of ``repeat`` copies after one that touches
    every page. cupy: a device-to-device copy of 1 GiB timed with CUDA events.
    """
    if backend == "cupy":
        cupy = _cupy()
        nbytes = nbytes or 1 << 30
        src = cupy.ones(nbytes // 4, np.float32)
        dst = cupy.empty_like(src)
        case = _cupy_case(lambda: dst.__setitem__(Ellipsis, src))
        t = statistics.median(time_case(case, repeat))
        return 2 * nbytes / t, f"device-to-device copy of {nbytes / 2**30:.2f} GiB (CUDA events)"
    if nbytes is None:
        nbytes = min(max(2 * _largest_cache_bytes(), 64 << 20), 1 << 30)
    src = np.ones(nbytes // 8)
    dst = np.empty_like(src)
    t = statistics.median(time_case(Case(lambda: np.copyto(dst, src)), repeat))
    return 2 * src.nbytes / t, f"numpy.copyto of {src.nbytes / 2**20:.0f} MiB"


# ---------------------------------------------------------------------------------------------
# Running and the table
# ---------------------------------------------------------------------------------------------

def _environment(backend, bandwidth, how) -> dict:
    env = {"backend": backend, "bandwidth_bytes_per_s": bandwidth, "bandwidth_measured_by": how,
           "python": platform.python_version(), "numpy": np.__version__, "machine": _cpu_name(),
           "cores": os.cpu_count()}
    try:
        from threadpoolctl import threadpool_info
        env["blas"] = [{"library": i.get("internal_api"), "version": i.get("version"),
                        "threads": i.get("num_threads"), "path": i.get("filepath")}
                       for i in threadpool_info() if i.get("user_api") == "blas"]
    except ImportError:
        pass
    env["gpugrad"] = __version__
    if backend == "cupy":
        import cupy
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props["name"]
        env["device"] = name.decode() if isinstance(name, bytes) else name
        env["cupy"] = cupy.__version__
    return env


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _time_workload(w, impls, bandwidth, repeat, skipped) -> list:
    """The rows of one workload, one per implementation run (see ``run``), with vs_best_peer
    against the fastest peer; an implementation that cannot run here goes to ``skipped``."""
    inputs = make_inputs(w)
    floor = w.nbytes / bandwidth
    group = []
    for impl in impls:
        row = {"workload": w.name, "family": w.family, "implementation": impl.name, "ours": impl.ours,
               "floor_s": floor, "bytes": w.nbytes}
        try:
            case = impl.prepare(w, inputs)
            times = time_case(case, repeat)
        except Unavailable as e:
            skipped.append({"workload": w.name, "implementation": impl.name, "reason": str(e)})
            continue
        except Exception as e:  # a broken peer (or ours) costs its own row, never the table
            group.append({**row, "failed": _failure(e), "median_s": None, "min_s": None, "vs_floor": None})
            continue
        finally:
            case = None  # the inputs it moved to a device are freed before the next one
        med = statistics.median(times)
        group.append({**row, "median_s": med, "min_s": min(times), "vs_floor": med / floor})
    peers = [r["median_s"] for r in group if not r["ours"] and r["median_s"] is not None]
    for r in group:
        r["vs_best_peer"] = r["median_s"] / min(peers) if peers and r["median_s"] is not None else None
    return group  # the inputs are freed here, before the next workload's are made


def run(families=FAMILIES, *, backend="numpy", size=None, repeat=10, bandwidth=None, implementations=None,
        progress=None) -> dict:
    """Time every implementation of every workload; returns the results as a JSON-able dict.

    Args:
        families: workload families (FAMILIES). backend: "numpy" (CPU) or "cupy" (GPU).
        size: "tiny", "cpu" or "gpu" (default: "cpu" on numpy, "gpu" on cupy).
        repeat: timed calls per implementation (the median is reported).
        bandwidth: bytes/s to take as the copy bandwidth instead of measuring it.
        implementations: names from IMPLEMENTATIONS to run (default: all of this backend's).
        progress: a callable given one line per workload as it starts (e.g. print to stderr).
    Returns:
        {"environment": {...}, "repeat": repeat, "size": size, "rows": [...], "skipped": [...]},
        a row per workload and implementation run: workload, family, implementation, ours,
        median_s, min_s, floor_s, bytes, vs_best_peer (median / the fastest peer's median on
        this workload; None without a peer), vs_floor (median / floor_s). An implementation
        that raises is not timed: its row holds ``failed`` (the exception in one line) and None
        for the times, and the others run on; one that cannot run here (``Unavailable``) is
        listed in ``skipped`` with the reason.
    """
    size = size or ("gpu" if backend == "cupy" else "cpu")
    impls = implementations_for(backend)
    if implementations is not None:
        unknown = sorted(set(implementations) - {i.name for i in impls})
        if unknown:
            raise ValueError(f"unknown implementation(s) on {backend}: {', '.join(unknown)}")
        impls = [i for i in impls if i.name in implementations]
    how = "given"
    if bandwidth is None:
        bandwidth, how = memory_bandwidth(backend)
    rows, skipped = [], []
    todo = workloads(families, size)
    for k, w in enumerate(todo, 1):
        if progress:
            progress(f"[{k}/{len(todo)}] {w.name}")
        rows += _time_workload(w, impls, bandwidth, repeat, skipped)
    return {"environment": _environment(backend, bandwidth, how), "size": size, "repeat": repeat,
            "rows": rows, "skipped": skipped}


def _failure(e: BaseException) -> str:
    """One line saying why an implementation failed: the exception's type and the first line of its
    message, cut to 200 characters (the table keeps one line per implementation)."""
    text = str(e).strip().splitlines()
    line = f"{type(e).__name__}: {text[0]}" if text else type(e).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def _duration(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def _versions(env: dict) -> str:
    """One line: numpy and the BLAS numpy calls (several BLAS libraries may be loaded: numpy's
    own is the one whose path names numpy), CuPy on a GPU, gpugrad."""
    parts = [f"numpy {env.get('numpy', '?')}"]
    blas = env.get("blas") or []
    ours = [b for b in blas if "numpy" in str(b.get("path"))] or blas
    if ours:
        b = ours[0]
        plural = "" if b["threads"] == 1 else "s"
        parts.append(f"BLAS {b['library']} {b['version']} ({b['threads']} thread{plural})")
    if env.get("cupy"):
        parts.append(f"cupy {env['cupy']}")
    parts.append(f"gpugrad {env.get('gpugrad', '?')}")
    return ", ".join(parts)


def format_table(result: dict) -> str:
    """The results as text: a header line, then one line per implementation of each workload
    (its median time, that time over the fastest peer's, that time over the floor; or "failed:"
    and why), the floor of each workload on its first timed line, and the implementations that
    could not run here with the reason.

        >>> r = {"environment": {"backend": "numpy", "machine": "cpu", "cores": 2,
        ...      "bandwidth_bytes_per_s": 1e10, "bandwidth_measured_by": "given"}, "size": "tiny",
        ...      "repeat": 3, "skipped": [],
        ...      "rows": [{"workload": "w", "implementation": "a", "ours": True, "median_s": 2e-3,
        ...                "floor_s": 1e-3, "vs_best_peer": 0.5, "vs_floor": 2.0}]}
        >>> print(*format_table(r).splitlines()[3:], sep="\\n")
        workload  implementation    median  x best peer  x floor  floor
        w         a                2.00 ms         0.50      2.0  1.00 ms
    """
    env = result["environment"]
    where = env.get("device") or f"{env.get('machine')} ({env.get('cores')} cores)"
    lines = [f"gpugrad bench: {env['backend']} backend on {where}, size {result['size']}, "
             f"median of {result['repeat']} calls",
             f"bandwidth {env['bandwidth_bytes_per_s'] / 1e9:.1f} GB/s ({env['bandwidth_measured_by']}); "
             f"floor = bytes the workload must move / bandwidth",
             _versions(env)]
    wl = max([len("workload")] + [len(r["workload"]) for r in result["rows"]])
    il = max([len("implementation")] + [len(r["implementation"]) for r in result["rows"]])
    lines.append(f"{'workload':<{wl}}  {'implementation':<{il}}  {'median':>8}  {'x best peer':>11}  "
                 f"{'x floor':>7}  floor")
    last, floor_shown = None, False
    for r in result["rows"]:
        first = r["workload"] != last
        last = r["workload"]
        floor_shown = floor_shown and not first
        name = f"{r['workload'] if first else '':<{wl}}  {r['implementation']:<{il}}"
        if r.get("failed"):
            lines.append(f"{name}  failed: {r['failed']}")
            continue
        peer = "-" if r["vs_best_peer"] is None else f"{r['vs_best_peer']:.2f}"
        lines.append(f"{name}  {_duration(r['median_s']):>8}  {peer:>11}  {r['vs_floor']:>7.1f}  "
                     f"{'' if floor_shown else _duration(r['floor_s'])}".rstrip())
        floor_shown = True
    reasons = {}
    for s in result["skipped"]:
        reasons.setdefault((s["implementation"], s["reason"]), []).append(s["workload"])
    for (impl, reason), names in reasons.items():
        lines.append(f"not run: {impl}: {reason} ({len(names)} workload{'s' if len(names) > 1 else ''})")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The command line: gpugrad bench
# ---------------------------------------------------------------------------------------------

def add_parser(sub) -> argparse.ArgumentParser:
    """Add the ``bench`` subcommand to ``gpugrad``'s subparsers."""
    b = sub.add_parser(
        "bench", prog="gpugrad bench", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="time gpugrad against its peers and the memory-bandwidth floor",
        description=(
            "Time gpugrad against the tools one would otherwise use, on the same inputs in one run,\n"
            "and against the floor: the bytes a workload must move / the copy bandwidth measured\n"
            "in the same run (numpy.copyto on the CPU, a device-to-device copy on a GPU).\n\n"
            "Workloads: ce (softmax cross-entropy forward+gradient on S n x C, C = 10, 1024, 32768),\n"
            "linear (the linear classifier's step, d = 3072, C = 10, float32 and uint8 X),\n"
            "epoch (an SGD epoch, batch 100, of the linear model and of the MLP 3072-50-50-10\n"
            "with batch norm, through gpugrad.Trainer).\n"
            "Columns: median time; x best peer = median / the fastest peer's median (below 1:\n"
            "faster than every peer); x floor = median / floor."),
        epilog="examples:\n  gpugrad bench\n  gpugrad bench --workload ce,linear --repeat 20 --json")
    b.add_argument("--workload", metavar="LIST", default=",".join(FAMILIES),
                   help=f"comma list of {', '.join(FAMILIES)} (default: all)")
    b.add_argument("--backend", choices=("auto", "numpy", "cupy"), default="auto",
                   help="numpy: gpugrad's numpy backend and the CPU peers; cupy: the CuPy backend and "
                        "the GPU peers; auto: cupy when a CUDA device is usable (default: auto)")
    b.add_argument("--size", choices=SIZES,
                   help="problem sizes: tiny (a smoke test), cpu, gpu (S 8192 x C, n up to 65536, "
                        "N = 50,000) (default: cpu on numpy, gpu on cupy)")
    b.add_argument("--repeat", default="10", metavar="N", help="timed calls per implementation (default: 10)")
    b.add_argument("--json", action="store_true", help="print the results as JSON instead of the table")
    return b


def command(parser, args) -> int:
    """Run ``gpugrad bench`` with parsed ``args``; bad values go to ``parser.error`` (exit 2)."""
    families = [f.strip() for f in str(args.workload).split(",")]
    if not families or any(f not in FAMILIES for f in families):
        parser.error(f"--workload must be a comma list of {', '.join(FAMILIES)}, got {args.workload!r}")
    repeat = options.number(parser, "--repeat", args.repeat, "a positive integer")
    backend = options.backend(parser, args.backend).name
    progress = None if args.json else (lambda line: print(f"gpugrad bench: {line}", file=sys.stderr, flush=True))
    steady_heap()
    result = run(list(dict.fromkeys(families)), backend=backend, size=args.size, repeat=repeat, progress=progress)
    if args.json:
        print(json.dumps(json_safe(result), indent=1))
    else:
        print(format_table(result))
    return 0

"""The numpy backend: the reference implementation of the fused mini-batch gradients.

Everything here is written against ``self.xp`` so that the CuPy backend inherits it as a
working fallback and overrides only what its kernels fuse (the thinc pattern).

Notation (the lecture's, batched): X (n, d) one example per row, W (C, d), b (C,),
S = X W^T + b (n, C), P = softmax(S) row-wise, Y the one-hot rows of the labels y.
"""
from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np


class NumpyBackend:
    """Reference backend. Methods take and return arrays of ``self.xp``; no input checks here
    (the public functions in ``gpugrad.fused`` check before calling)."""

    name = "numpy"
    xp = np

    # ---- arrays -------------------------------------------------------------------------
    def asarray(self, a, dtype=None):
        """``a`` as an array of this backend (no copy when it already is one)."""
        return self.xp.asarray(a, dtype=dtype)

    def to_numpy(self, a):
        return np.asarray(a)

    # ---- value checks (one call per public function; see gpugrad._validation) ----------------
    def first_invalid(self, y, C, arrays):
        """(first index i with y[i] outside [0, C) or -1, [first flat NaN/Inf index or -1 per array])."""
        xp = self.xp
        bad = (y < 0) | (y >= C)
        label_pos = int(xp.argmax(bad)) if bool(bad.any()) else -1
        positions = []
        for a in arrays:
            if a.dtype.kind != "f":
                positions.append(-1)
                continue
            nonfinite = ~xp.isfinite(a.ravel())
            positions.append(int(xp.argmax(nonfinite)) if bool(nonfinite.any()) else -1)
        return label_pos, positions

    # ---- fused losses on a score matrix ----------------------------------------------------
    def softmax_cross_entropy_grad(self, S, y, out=None):
        """Mean softmax cross-entropy of the rows of S and its gradient.

        S (n, C) float, y (n,) int in [0, C); ``out``: optional (n, C) array that receives dS.
        Returns (loss, dS): loss is 0-d,
        loss = (1/n) sum_i [logsumexp(S_i) - S_i,y_i], dS = (P - Y) / n (the lecture's
        g = p - y per row, divided by the batch size because the loss is a mean).
        """
        xp = self.xp
        n = S.shape[0]
        rows = xp.arange(n)
        # Subtracting the row max keeps exp() in range for any score magnitude.
        m = S.max(axis=1, keepdims=True)
        E = xp.exp(S - m)
        e_y = E[rows, y].copy()
        # The sum over the classes other than y, kept apart from e_y: p_y - 1 = -others / total
        # is then exact even when p_y rounds to 1 (p_y - 1 from a rounded p_y would be 0).
        E[rows, y] = 0
        others = E.sum(axis=1)
        total = others + e_y
        dS = E / total[:, None]
        dS[rows, y] = -others / total
        dS /= n
        loss = self._ce_rows(S, y, m[:, 0], e_y, others, total).mean(dtype=S.dtype)
        return self.xp.asarray(loss), self._into(out, dS)

    def _ce_rows(self, S, y, m, e_y, others, total):
        """Row losses l_i = log(total) - (s_y - m); log1p(others / e_y) when y is (near) the max,
        where log(total) would round a small loss away."""
        xp = self.xp
        shift = S[xp.arange(S.shape[0]), y] - m  # s_y - m <= 0
        near_max = shift > -1
        safe_e_y = xp.where(near_max, e_y, 1)
        return xp.where(near_max, xp.log1p(others / safe_e_y), xp.log(total) - shift)

    def row_losses(self, S, y, loss):
        """(n,) per-row losses l_i of the score rows S (n, C): the softmax cross-entropy
        logsumexp(S_i) - S_i,y_i, or the hinge sum_{j != y_i} max(0, S_ij - S_i,y_i + 1)."""
        xp = self.xp
        rows = xp.arange(S.shape[0])
        if loss == "softmax":
            m = S.max(axis=1)
            E = xp.exp(S - m[:, None])
            e_y = E[rows, y]
            total = E.sum(axis=1)
            return self._ce_rows(S, y, m, e_y, xp.maximum(total - e_y, 0), total)
        margins = xp.maximum(S - S[rows, y][:, None] + 1, 0)
        margins[rows, y] = 0
        return margins.sum(axis=1)

    def svm_grad(self, S, y, out=None):
        """Mean multi-class hinge loss of the rows of S and its (sub)gradient.

        loss = (1/n) sum_i sum_{j != y_i} max(0, S_ij - S_i,y_i + 1);
        dS_ij = [margin_ij > 0] / n for j != y_i, dS_i,y_i = -(number of positive margins) / n.
        At a kink (margin exactly 0) the subgradient 0 is used. ``out`` as for the cross-entropy.
        """
        xp = self.xp
        n = S.shape[0]
        rows = xp.arange(n)
        margins = S - S[rows, y][:, None] + 1
        margins[rows, y] = 0
        active = margins > 0
        loss = xp.asarray(xp.where(active, margins, 0).sum(dtype=S.dtype) / n)
        dS = active.astype(S.dtype)
        dS[rows, y] = -active.sum(axis=1)
        dS /= n
        return loss, self._into(out, dS)

    @staticmethod
    def _into(out, a):
        """``a`` written into ``out`` when one is given (the kernels write there directly)."""
        if out is None:
            return a
        out[...] = a
        return out

    def loss_grad(self, S, y, loss, sample_weight=None):
        """(L, dL/dS) for the loss name 'softmax' or 'svm'. With ``sample_weight`` w (n,),
        L = (1/n) sum_i w_i l_i and row i of dL/dS is scaled by w_i (w = 1: the plain mean)."""
        L, G = (self.softmax_cross_entropy_grad if loss == "softmax" else self.svm_grad)(S, y)
        if sample_weight is None:
            return L, G
        w = sample_weight.astype(S.dtype, copy=False)
        G *= w[:, None]
        L = self.xp.asarray((self.row_losses(S, y, loss) * w).sum(dtype=S.dtype) / S.shape[0])
        return L, G

    # ---- the whole linear-classifier step -------------------------------------------------
    def normalise(self, X, x_mean, x_std, dtype):
        """(X - x_mean) / x_std in ``dtype``; X itself when no normalisation is asked for."""
        if x_mean is None:
            return X
        return (X.astype(dtype) - x_mean.astype(dtype)) / x_std.astype(dtype)

    def linear_grad(self, X, y, W, b, lam, loss, x_mean=None, x_std=None, sample_weight=None):
        """J, dJ/dW, dJ/db of J = (1/n) sum_i w_i l(x_i, y_i) + lam ||W||^2 with s = W x + b
        (w_i = ``sample_weight[i]``, 1 when it is None).

        The lecture's mini-batch formulas, vectorised: S = X W^T + b; (loss, G) from the fused
        loss (G = dL/dS, already divided by n); dW = G^T X + 2 lam W; db = column sums of G.
        On numpy a large X is stepped in row blocks (``_blocked_loss_grads``), the same sums
        taken block by block so that X is read from memory once.

        Example (X (4, 3), C = 2: at W = 0 every row's softmax loss is log 2):
            >>> import numpy as np
            >>> be = NumpyBackend()
            >>> X, y = np.arange(12.0).reshape(4, 3), np.array([0, 1, 1, 0])
            >>> J, dW, db = be.linear_grad(X, y, np.zeros((2, 3)), np.zeros(2), 0.0, "softmax")
            >>> round(float(J), 6) == round(float(np.log(2)), 6), dW.tolist(), db.tolist()
            (True, [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], [0.0, 0.0])
        """
        rows = self._block_rows(X, W)
        if rows:
            L, dW, db = self._blocked_loss_grads(X, y, W, b, loss, x_mean, x_std, sample_weight, rows)
        else:
            Xn = self.normalise(X, x_mean, x_std, W.dtype)
            L, G = self.loss_grad(Xn @ W.T + b, y, loss, sample_weight)
            # One product, as written: for an X this small (or on CuPy, whose cuBLAS reads
            # either operand transposed at no cost) the shape makes no difference worth timing.
            dW = G.T @ Xn
            db = G.sum(axis=0)
        if lam:
            dW += (2 * lam) * W
        J = L + lam * (W * W).sum()
        return self.xp.asarray(J, dtype=W.dtype), dW, db

    # ---- the blocked step (numpy only) --------------------------------------------------------
    # X is cut into row blocks of ``plan.rows`` rows (the product plan, timed once per process
    # and shape: ``_step_plan``). A block serves both products while it is in cache: S_blk =
    # X_blk W^T, and after the loss dW += G_blk^T X_blk, so X is read from memory once, not
    # twice. Blocks of a few dozen rows also let BLAS run its small-matrix kernels, which skip
    # the copy into packed panels that a long skinny product pays (OpenBLAS on x86: the two
    # products at n = 10000, d = 3072, C = 10 take ~25 ms of one core in blocks of 32 rows
    # against ~57 ms whole). The loss runs once per ``loss_rows`` rows, where its Python cost is
    # small, and ``threads`` workers step contiguous row ranges side by side (BLAS small-matrix
    # calls are single-threaded). The products are np.dot, not matmul: np.dot lets go of the
    # GIL around its BLAS call, numpy's 2-D matmul does not (two threads of 32-row products:
    # 1.7x one thread's speed with np.dot, 0.8x with matmul).
    # Bytes of X (as W's dtype) from which X is stepped in blocks. Below it the blocks' Python
    # costs more than they save (n = 512, d = 64: 0.19 ms blocked, 0.17 ms whole); above it one
    # whole product already runs multi-threaded in OpenBLAS, slower than the blocks on a busy
    # machine (n = 100, d = 3072: 0.6 ms blocked against 39 ms whole at a load of 11 on 2 cores).
    blocked_from = 256 << 10
    # Rows per loss evaluation; None: about 12 MiB of X (as W's dtype), 8 to 4096 rows. Fewer
    # rows pay the loss's Python cost more often, more rows no longer stay in cache between the
    # two products (normalised uint8 X at d = 3072 on one core: 55 ms a step at 256 rows, 58 ms
    # at 1024, 65 ms at 2048; float X: 38 ms at 256, 35 ms at 1024; float X on the idle 2-core
    # machine, 32-row blocks: 1.08x the step by hand at 320 rows, 0.99x at 1024).
    loss_rows = None
    threads = None  # workers over the row ranges; None: the CPUs this process may run on
    worker_rows = 256  # fewest rows worth a worker of their own
    # (rows, x_first[, workers]) to use instead of the timed plan (see _Plan). The block rows
    # and the workers set the order in which dW's float sums are taken, so a timed plan can
    # differ from one process to the next in the last bits of dW; a fixed plan (and fixed
    # ``threads``) repeats them bit for bit.
    plan = None

    def _block_rows(self, X, W) -> int:
        """Rows per loss evaluation of the blocked step, or 0 to step X whole (CuPy, small X)."""
        if self.xp is not np:  # a loop of small products would waste a GPU: CuPy steps X whole
            return 0
        n, d = X.shape
        row_bytes = d * W.dtype.itemsize
        if n * row_bytes < self.blocked_from:
            return 0
        return min(self.loss_rows or _rows_in(12 << 20, row_bytes, 8, 4096), n)

    def _workers(self, n: int) -> int:
        """How many row ranges the blocked step runs side by side: ``threads`` (or the CPUs this
        process may use), each of at least ``worker_rows`` rows."""
        k = self.threads or _cpu_count()
        return max(1, min(k, n // self.worker_rows))

    def _blocked_loss_grads(self, X, y, W, b, loss, x_mean, x_std, sample_weight, loss_rows):
        """(L, G^T X, column sums of G) of ``linear_grad``, X stepped in row blocks.

        The rows are cut into one contiguous range per worker (at multiples of the plan's block
        rows), each worker sums its own (weighted losses, G^T X, G's column sums), and the
        partial sums are added in range order, so a result does not depend on which thread
        finishes first. Per ``loss_rows`` rows of a range: S = X W^T + b block by block, then
        (L, G) from ``loss_grad`` (softmax and hinge rows are independent, so these rows get
        exactly the whole batch's P - Y), rescaled from these rows' mean to the batch's (x m/n
        for m rows), then G^T X block by block while the blocks are still in cache. With
        x_mean/x_std each block is normalised into a buffer first, as ``normalise`` does it.
        """
        n, d = X.shape
        C = W.shape[0]
        dtype = W.dtype
        k = self._workers(n)
        plan = _Plan(*self.plan) if self.plan else _step_plan(dtype, C, d, k)
        k = min(k, plan.workers or k)
        loss_rows = max(plan.rows, loss_rows // plan.rows * plan.rows)  # no ragged block inside
        cuts = [min(n, -(-i * n // k // plan.rows) * plan.rows) for i in range(k)] + [n]
        norm = None if x_mean is None else (x_mean.astype(dtype), x_std.astype(dtype))

        def span(lo, hi):
            return _step_span(self, X[lo:hi], y[lo:hi], W, b, loss, norm,
                              None if sample_weight is None else sample_weight[lo:hi],
                              n, loss_rows, plan)
        parts = _run_side_by_side(span, list(zip(cuts[:-1], cuts[1:])))
        total = sum(p[0] for p in parts)
        acc, db = parts[0][1], parts[0][2]
        for _, a, g in parts[1:]:
            acc += a
            db += g
        dW = np.ascontiguousarray(acc.T) if plan.x_first else acc
        return np.asarray(total / n, dtype=dtype), dW, db


class _Plan(NamedTuple):
    """How the blocked step runs its products: blocks of ``rows`` rows of X, the weight gradient
    as (X^T G)^T (``x_first``) or as G^T X, and in how many row ranges side by side (``workers``;
    0: as many as ``NumpyBackend._workers`` allows; 1: one range, BLAS's own threads)."""
    rows: int
    x_first: bool
    workers: int = 0


def _step_span(be, X, y, W, b, loss, norm, w, n, loss_rows, plan):
    """One range of a batch of n rows: (the sum of its weighted row losses as a float, its part
    of G^T X, or of X^T G when ``plan.x_first``, and its part of G's column sums), with G
    already divided by n, blocked as ``plan`` says."""
    d = X.shape[1]
    C = W.shape[0]
    dtype = W.dtype
    r = plan.rows
    WT = W.T
    acc = np.zeros((d, C) if plan.x_first else (C, d), dtype)
    part = np.empty_like(acc)  # one block's product, added to acc (np.dot cannot add into it)
    db = np.zeros(C, dtype)
    S = np.empty((min(loss_rows, len(X)), C), dtype)
    buf = None if norm is None else np.empty((min(loss_rows, len(X)), d), dtype)
    total = 0.0
    for start in range(0, len(X), loss_rows):
        stop = min(start + loss_rows, len(X))
        m = stop - start
        Xs = X[start:stop]
        if norm is not None:  # (X - x_mean) / x_std, as ``normalise`` computes it
            Xs = np.subtract(Xs, norm[0], out=buf[:m])
            Xs /= norm[1]
        for i in range(0, m, r):
            np.dot(Xs[i:i + r], WT, out=S[i:min(i + r, m)])
        Sm = S[:m]
        Sm += b
        L, G = be.loss_grad(Sm, y[start:stop], loss, None if w is None else w[start:stop])
        G *= m / n  # loss_grad's G and L are means over these m rows; the step's are over n
        total += float(L) * m
        for i in range(0, m, r):
            j = min(i + r, m)
            if plan.x_first:
                np.dot(Xs[i:j].T, G[i:j], out=part)
            else:
                np.dot(G[i:j].T, Xs[i:j], out=part)
            acc += part
        db += G.sum(axis=0)
    return total, acc, db


# Workers of the blocked step, made on first use.
_POOL = {"pool": None, "size": 0}
_POOL_LOCK = threading.Lock()


def _forget_pool():
    """In a forked child: the parent's worker threads are not there, and its lock may be held."""
    global _POOL_LOCK
    _POOL_LOCK = threading.Lock()
    _POOL.update(pool=None, size=0)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _run_side_by_side(fn, ranges):
    """[fn(lo, hi) for (lo, hi) in ranges], the first in this thread, the others in workers."""
    if len(ranges) == 1:
        return [fn(*ranges[0])]
    with _POOL_LOCK:
        if _POOL["size"] < len(ranges) - 1:
            if _POOL["pool"] is not None:
                _POOL["pool"].shutdown(wait=False)  # too few workers: its threads end when idle
            _POOL.update(pool=ThreadPoolExecutor(len(ranges) - 1, thread_name_prefix="gpugrad-step"),
                         size=len(ranges) - 1)
        pool = _POOL["pool"]
    err = np.geterr()  # numpy's error state is per thread: the workers take the caller's

    def in_worker(lo, hi):
        with np.errstate(**err):
            return fn(lo, hi)
    futures = [pool.submit(in_worker, *r) for r in ranges[1:]]
    first = fn(*ranges[0])
    return [first] + [f.result() for f in futures]


def _cpu_count() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# (dtype char, C, d, workers) -> _Plan, timed once per process (see _step_plan).
_PLANS: dict = {}
_PLAN_ROWS = (8, 16, 32, 64, 256)


def _step_plan(dtype, C: int, d: int, workers: int) -> _Plan:
    """The fastest block rows and weight-gradient shape for the blocked step with these sizes on
    this machine. Which wins differs between machines and BLAS builds (G^T X took 17 ms against
    32 ms for X^T G at n = 10000, d = 3072, C = 10 on one machine, the reverse on another, and
    the small-matrix kernels that make blocks of a few dozen rows pay exist only in some
    builds), so each candidate is timed once per process as the step runs it: ``workers``
    ranges side by side, S then the weight gradient block by block, on throwaway data."""
    key = (np.dtype(dtype).char, int(C), int(d), int(workers))
    plan = _PLANS.get(key)
    if plan is None:
        plan = _PLANS[key] = _time_plans(np.dtype(dtype), *key[1:])
    return plan


def _rows_in(nbytes: int, row_bytes: int, least: int, most: int) -> int:
    """How many rows of ``row_bytes`` fit in ``nbytes``, kept within [least, most]."""
    return min(most, max(least, nbytes // row_bytes))


def _time_plans(dtype, C, d, workers, rows=None) -> _Plan:
    """The candidate plan that steps ``workers`` x ``rows`` rows the fastest (rows None: 256,
    fewer where that is more than 4 MiB, at least 8). Candidates: each block size in
    ``_PLAN_ROWS`` with ``workers`` ranges side by side, then the product shape at the best of
    them. (One range of 256-row blocks with BLAS's own threads is not a candidate: on these
    cache-resident rows it timed best in idle moments, yet stepped X at 1.05x the time of the
    step by hand, and at 1.3-2.6x on a busy machine, where 2 ranges of 32-row blocks took
    0.27-0.35x; benchmarks/RESULTS.md.) Each is timed in rounds that take turns, so that a
    burst of load elsewhere falls on all of them, keeping its best time; one twice as slow as
    the best after a round is not timed again (on a busy machine such a candidate can take most
    of the timing). Larger blocks win ties (within 5%): fewer partial sums."""
    rows = rows or _rows_in(4 << 20, d * dtype.itemsize, 8, 256)
    X = np.ones((rows, d), dtype)  # the values do not matter to BLAS's speed; NaN-free
    W = np.full((C, d), 0.5, dtype)
    G = np.full((rows, C), 0.5, dtype)

    def run(plan):
        def products(lo, hi):  # as _step_span runs them, the sum of the blocks' parts included
            r = plan.rows
            S = np.empty((r, C), dtype)
            part = np.empty((d, C) if plan.x_first else (C, d), dtype)
            acc = np.zeros_like(part)
            for i in range(0, rows - r + 1, r):
                np.dot(X[i:i + r], W.T, out=S)
            for i in range(0, rows - r + 1, r):
                if plan.x_first:
                    np.dot(X[i:i + r].T, G[i:i + r], out=part)
                else:
                    np.dot(G[i:i + r].T, X[i:i + r], out=part)
                acc += part
        t = time.perf_counter()
        for _ in range(workers // plan.workers):  # the same rows in all: workers x rows
            _run_side_by_side(products, [(0, rows)] * plan.workers)
        return time.perf_counter() - t

    def fastest(candidates, rounds=3):
        times = dict.fromkeys(candidates, float("inf"))
        for _ in range(rounds):
            for plan in candidates:
                times[plan] = min(times[plan], run(plan))
            candidates = [p for p in candidates if times[p] < 2 * min(times.values())]
        quickest = min(times.values())
        return max((p for p in candidates if times[p] <= 1.05 * quickest), key=lambda p: p.rows)

    sizes = [r for r in _PLAN_ROWS if r <= rows] or [rows]
    best = fastest([_Plan(r, False, workers) for r in sizes])
    other = best._replace(x_first=True)
    times = {best: float("inf"), other: float("inf")}
    for _ in range(3):
        for plan in times:
            times[plan] = min(times[plan], run(plan))
    return other if times[other] < 0.95 * times[best] else best

"""SGD on a sparse X whose steps cost what the batch's non-zeros cost, not C x d.

A mini-batch of text rows touches a few thousand of the d columns, but its gradient,
dW = G^T X' + 2 lam W, is a full C x d array because of the L2 term, and so is the update: on a
100,000-word vocabulary every step would pass over all C x d weights several times (allocating
dW, adding 2 lam W, updating W and the velocity), many times the cost of the batch itself. Between
two batches that touch it, a column of W evolves by the L2 term alone, a linear map, so its
updates can wait until it is next used:

- plain SGD (momentum 0), the classic way (Bottou's, scikit-learn's SGDClassifier's): W = a V with
  a scalar a. The step W <- (1 - 2 eta lam) W - eta G^T X' is a <- a (1 - 2 eta lam), the decay of
  every weight in one multiplication, and V[:, cols] -= (eta / a) (G^T X')[:, cols] on the batch's
  columns; ||W||^2 = a^2 ||V||^2 is kept from the changed columns.
- SGD with (Nesterov) momentum: an untouched column's (w, v) pair follows z <- M_t z with the 2 x 2
  matrix of the update (heavy ball: w' = (1 - eta c) w + mu v, v' = -eta c w + mu v, c = 2 lam;
  Nesterov: w' = (1 - eta c (1 + mu)) w + mu^2 v), so a column last touched at step s is brought
  to step t by A_t[s] = M_{t-1} ... M_s, the product of the matrices since. The window keeps A_t[s]
  for each of its steps s (each step multiplies them all by its matrix: a few flops a step of the
  window; never through Q_t Q_s^-1, whose factor Q_s^-1 grows as mu^-s and cancels to nothing in
  floating point with mu = 0.5 over 50 steps). Columns are brought up to date when a batch touches
  them, and all of them every WINDOW steps (which bounds the window's maps and groups). ||W_t||^2
  for the cost is the sum over the columns' last-touch steps s of a quadratic form in the group's
  (sum w^2, sum w v, sum v^2).

With momentum, where the compiled CPU loops are built (``gpugrad.backends.host``), each step is
one call (``_Momentum.compiled_step``): the batch's columns brought up to date, its scores, loss
and dL/dS, dW's data term, the update and the bookkeeping of ||W||^2, all in a few passes over the
batch's non-zeros rather than the ~25 numpy calls over its (columns, C) block. There a column's
state is one record (its weights, its velocities, its gram and last step side by side, a few
whole cache lines: ``host.records``), and a column that only rows with a zero dL/dS use (hinge
rows with no margin violated) keeps its lazy state: with no data term, the catch-up's map is its
update.

Either way the result is the same algorithm as the dense step, equal within rounding, step for
step (the same batches, learning rates, per-step costs in the history, optimiser state); at the
end of each epoch every weight is written back, so checkpoints, evaluation and callbacks see the
ordinary weights and velocities.

It applies (``applies``) to a ``LinearClassifier`` on the numpy backend trained by ``SGD`` on a
sparse X, when the model does not centre its inputs (x_mean absent or 0: a centring term would
touch every column); the Trainer uses it then, and its ordinary step otherwise (Adam's update of a
weight depends on its whole gradient history in a way no closed form catches up).
"""
from __future__ import annotations

import numpy as np

from ..backends import host
from ..engine.sparse import is_sparse
from .data import batch_rows
from .optim import SGD

__all__ = ["applies", "epoch", "run"]

WINDOW = 64  # steps between full catch-ups of the momentum path (a step moves the window's maps on: r of them)


def applies(trainer, X) -> bool:
    """Whether ``trainer``'s epoch over X can take the lazy path (see the module docstring)."""
    model, opt = trainer.model, trainer.optimizer
    mean = model.buffers.get("x_mean")
    return (is_sparse(X) and model.kind == "linear" and model.backend.xp is np and type(opt) is SGD
            and (mean is None or not np.any(mean)))


def _dot(a, b) -> float:
    """sum(a * b) over every entry. (Not np.vdot: BLAS's threaded dot costs milliseconds for the
    few thousand values of a batch's columns when the machine's cores are busy.)"""
    return float(np.einsum("ij,ij->", a, b))


def _put_rows(A, rows, block):
    """A[rows] = block for C-contiguous A (m, C) and block (len(rows), C): one np.put of whole rows,
    each viewed as one opaque item (for rows of a few dozen values, several times faster than
    assigning through a fancy index, which moves them value by value)."""
    item = np.dtype((np.void, A.shape[1] * A.itemsize))
    block = np.ascontiguousarray(block, dtype=A.dtype)
    np.put(A.view(item).reshape(-1), rows, block.view(item).reshape(-1))


class _Scratch:
    """Work arrays kept from step to step, (rows, width) views of buffers that grow on demand.

    A step's arrays are a few hundred kB to a few MB each; allocated afresh, each would be fresh
    pages from the system wherever malloc hands large blocks back on free, as it does in a Dask
    worker (MALLOC_TRIM_THRESHOLD_): three times slower steps there."""

    def __init__(self, dtype):
        self.dtype, self.buffers = dtype, {}

    def get(self, name, rows, width, dtype=None):
        buf = self.buffers.get(name)
        if buf is None or buf.shape[0] < rows:
            buf = self.buffers[name] = np.empty((max(rows, 1024), width), dtype or self.dtype)
        return buf[:rows]

    def per_row(self, name, coef, C):
        """The (rows,) coefficients repeated into a (rows, C) array: multiplying by it is several
        times faster than broadcasting a (rows, 1) column over short rows."""
        out = self.get(name, len(coef), C)
        np.copyto(out, coef[:, None])
        return out


def _compact(Xb, present, d, pos=None):
    """(cols, Xc): the sorted columns the batch's rows touch and the batch with its column indices
    renumbered into them (CSR (rows, len(cols)), sharing Xb's values). `present` is a (d,) bool
    scratch array, all False, left all False; `pos` a (d,) integer scratch array (any values)."""
    present[Xb.indices] = True
    cols = np.flatnonzero(present)
    present[cols] = False
    if pos is None:
        pos = np.empty(d, dtype=Xb.indices.dtype)
    pos[cols] = np.arange(len(cols), dtype=pos.dtype)  # column -> its place among cols
    local = pos.take(Xb.indices).astype(Xb.indices.dtype, copy=False)
    Xc = type(Xb)((Xb.data, local, Xb.indptr), shape=(Xb.shape[0], len(cols)))
    return cols, Xc


def epoch(trainer, X, y, w, steps, bar):
    """One epoch of the trainer's shuffled batches (``Trainer._epoch``'s contract: returns the
    (2, steps) per-step costs and losses and the last learning rate)."""
    model, opt, be = trainer.model, trainer.optimizer, trainer.model.backend
    order = be.asarray(trainer.rng.permutation(X.shape[0]))
    velocity = None
    if opt.momentum:
        velocity = (opt.slots["velocity/W"], opt.slots["velocity/b"])
    per_step, opt.t, lr = run(be, X, y, w, model.params["W"], model.params["b"], loss=model.loss, lam=trainer.lam,
                              schedule=opt.schedule, t=opt.t, order=order, batch_size=trainer.batch_size,
                              batches=range(steps), x_std=model.buffers.get("x_std"), momentum=opt.momentum,
                              nesterov=opt.nesterov, velocity=velocity,
                              progress=None if bar is None else bar.update)
    return per_step, lr


def run(be, X, y, w, W, b, *, loss, lam, schedule, t, order, batch_size, batches, x_std=None, momentum=0.0,
        nesterov=False, velocity=None, progress=None):
    """SGD steps on the batches order[i * batch_size:(i + 1) * batch_size], i in ``batches``, of CSR
    X, updating W (C, d), b (C,) (and with momentum their ``velocity`` arrays) in place exactly as
    ``optim.SGD(schedule, momentum, nesterov)`` would from the gradients of
    ``Backend.linear_grad`` plus 2 lam W, the learning rate schedule(t) at update t. Returns
    ((2, len(batches)) per-step costs J_t = L_t + lam ||W_t||^2 and losses L_t, the update count
    after, the last learning rate).

    The steps work on W^T (d, C) (with momentum and the compiled step, in records of a column's
    weights and velocities side by side), copies made here and written back at the end: a batch's
    columns are then rows, gathered (np.take) and scattered whole, and both products take and give
    that layout."""
    steps = _Steps(be, X, y, w, b, loss, x_std, order, batch_size, W.shape[1])
    lazy = _Momentum(W, velocity[0], momentum, nesterov, lam, steps) if momentum else _Scaled(W, lam)
    compiled = momentum and lazy.compiled
    per_step = np.empty((2, len(batches)), dtype=np.float64)
    lr = np.nan
    for j, i in enumerate(batches):
        lr = schedule(t)
        if compiled:  # the whole step in one call (backends/host.py)
            L, norm2, db = lazy.compiled_step(steps, i, lr)
        else:
            cols, Xc, rows = steps.batch(i)
            Wc = lazy.current(cols)
            L, G, D = steps.gradient(Xc, rows, Wc, cols)
            norm2 = lazy.norm2()
            lazy.update(cols, D, lr)
            db = G.sum(axis=0)
        per_step[0, j] = float(L) + lam * norm2
        per_step[1, j] = float(L)
        if momentum:  # the bias, dense and small, as optim.SGD updates it
            vb = velocity[1]
            vb *= momentum
            vb -= lr * db
            b += momentum * vb - lr * db if nesterov else vb
        else:
            b -= lr * db
        t += 1
        if progress is not None:
            progress(1)
    lazy.finish()
    return per_step, t, lr


class _Steps:
    """What every step shares: the batch's rows and columns, its loss and G, and dW's data term."""

    def __init__(self, be, X, y, w, b, loss, x_std, order, batch_size, d):
        self.be, self.X, self.y, self.w, self.b, self.loss = be, X, y, w, b, loss
        self.inv_std = None if x_std is None else (1 / x_std)[:, None]
        self.order, self.batch_size = order, batch_size
        self.present = np.zeros(d, dtype=bool)
        self.pos = np.empty(d, dtype=X.indices.dtype)

    def batch(self, i):
        rows = batch_rows(self.order, i, self.batch_size)
        cols, Xc = _compact(self.X[rows], self.present, self.present.shape[0], self.pos)
        return cols, Xc, rows

    def gradient(self, Xc, rows, Wc, cols):
        """(L, G, D): the batch's loss and dL/dS at the weights Wc (len(cols), C) of its columns
        (rows of W^T), and D = (X'^T G)[cols], the data term of dW^T there (0 on every other row)."""
        scale = None if self.inv_std is None else self.inv_std.take(cols, axis=0)
        S = Xc @ (Wc if scale is None else Wc * scale) + self.b
        L, G = self.be.loss_grad(S, self.y[rows], self.loss, None if self.w is None else self.w[rows])
        D = Xc.T @ G
        if scale is not None:
            D *= scale
        return L, G, D


class _Scaled:
    """Plain SGD in the form W^T = a V (V a (d, C) copy, written back by ``finish``)."""

    def __init__(self, W, lam):
        self.out, self.lam = W, lam
        self.W = np.ascontiguousarray(W.T)
        self.a, self.sq = 1.0, _dot(self.W, self.W)  # sq = ||V||^2

    def current(self, cols):
        self.Vc = self.W.take(cols, axis=0)
        return self.Vc * self.a

    def norm2(self):
        return self.a * self.a * self.sq

    def update(self, cols, D, lr):
        Vc = self.Vc
        self.a *= 1 - 2 * lr * self.lam
        if self.a == 0:  # (lr 2 lam = 1: the decay leaves nothing of W, and a cannot divide)
            self._fold()
            Vc = np.zeros_like(Vc)
        Vnew = Vc - (lr / self.a) * D
        self.sq += _dot(Vnew, Vnew) - _dot(Vc, Vc)
        _put_rows(self.W, cols, Vnew)
        if self.a < 1e-6:  # fold the scale back in before V grows out of range
            self._fold()

    def _fold(self):
        self.W *= self.a
        self.sq *= self.a * self.a
        self.a = 1.0

    def finish(self):
        self._fold()
        self.out[...] = self.W.T


class _Momentum:
    """(Nesterov) momentum SGD on W^T and V^T (d, C) copies, each row (a column of W and of its
    velocity) brought up to date when a batch uses it (module docstring); ``finish`` brings every
    row up to date and writes W and V back."""

    def __init__(self, W, V, mu, nesterov, lam, steps=None):
        self.out = (W, V)
        self.mu, self.nesterov, self.c = mu, nesterov, 2 * lam
        self.scratch = _Scratch(W.dtype)
        self._start_window()
        if steps is not None and self._compile(steps, W, V):
            self._catch_up()  # (at r = 0: the records' gram computed, every row already at step 0)
            return
        self.Z = None  # (the compiled step's records)
        self.W, self.V = np.ascontiguousarray(W.T), np.ascontiguousarray(V.T)
        self.last = np.zeros(W.shape[1], dtype=np.int64)  # the window's step each row is at
        self.gram = np.zeros((W.shape[1], 3))  # each row's (w.w, w.v, v.v) at its last step
        self._new_window()

    def _new_window(self, grams=None):
        """A new window from rows all at the current step: their gram and their sums, groups[0],
        with ``grams`` those sums where the rows' gram is already up to date (the records'),
        computed here otherwise; every row's last step 0."""
        if grams is None:
            self.gram[...] = np.stack(self._grams(self.W, self.V), axis=1)
            self.last[:] = 0
            grams = self.gram.sum(axis=0)
        self._start_window()
        self.groups[0] = grams

    def _start_window(self):
        """The window's maps and groups, empty: step 0 (``_new_window`` fills groups[0])."""
        self.r = 0
        self.A = np.zeros((WINDOW + 1, 2, 2))  # A[s], s <= r: rows last at step s -> step r
        self.A[0] = np.eye(2)
        # Per last-touch step s: (sum w^2, sum w v, sum v^2) over the rows last touched there.
        self.groups = np.zeros((WINDOW + 1, 3))

    @staticmethod
    def _grams(P, V):
        """w.w, w.v and v.v of each row of P, V (rows, C)."""
        return (np.einsum("ij,ij->i", P, P), np.einsum("ij,ij->i", P, V), np.einsum("ij,ij->i", V, V))

    def _apply(self, m, last, P, V, w, v):
        """w, v (rows, C) = each row of P, V after the 2 x 2 map m[last[i]] (m (steps, 2, 2))."""
        table = np.ascontiguousarray(m.reshape(-1, 4).T, dtype=P.dtype)  # (4, steps)
        C, tmp = P.shape[1], self.scratch.get("tmp", len(last), P.shape[1])
        k = lambda i: self.scratch.per_row("coef", table[i].take(last), C)  # noqa: E731
        np.multiply(P, k(0), out=w)
        w += np.multiply(V, k(1), out=tmp)
        np.multiply(V, k(3), out=v)
        v += np.multiply(P, k(2), out=tmp)

    def current(self, cols):
        n, C, sc = len(cols), self.W.shape[1], self.scratch
        P0, V0 = sc.get("w0", n, C), sc.get("v0", n, C)
        self.W.take(cols, axis=0, out=P0, mode="clip")  # (clip: no buffered copy; cols are in range)
        self.V.take(cols, axis=0, out=V0, mode="clip")
        last = self.last.take(cols)
        gram = self.gram.take(cols, axis=0, out=sc.get("gram", n, 3, np.float64), mode="clip")
        for k in range(3):  # out of their groups (back in at update)
            self.groups[:, k] -= np.bincount(last, weights=gram[:, k], minlength=WINDOW + 1)
        self.P, self.Vc = sc.get("w", n, C), sc.get("v", n, C)
        self._apply(self.A[:self.r + 1], last, P0, V0, self.P, self.Vc)
        return self.P

    def norm2(self):
        """||W_r||^2: each group's quadratic form, plus the rows of this batch (already at r)."""
        a, b = self.A[:self.r + 1, 0, 0], self.A[:self.r + 1, 0, 1]
        g = self.groups[:self.r + 1]
        return float(np.sum(a * a * g[:, 0] + 2 * a * b * g[:, 1] + b * b * g[:, 2])) + _dot(self.P, self.P)

    @property
    def compiled(self) -> bool:
        """Whether the steps are ``compiled_step``'s (``_compile`` took them)."""
        return self.Z is not None

    def _compile(self, steps, W, V) -> bool:
        """Whether ``compiled_step`` takes these steps' X (``host.takes_csr``) and W (C, d); if so,
        its inputs once, in the form it takes them: W^T, V^T (copied from W and V), gram and last
        as views into Z, one record of them a column (``host.records``)."""
        X, dtype, b = steps.X, W.dtype, steps.b
        if not (host.takes_csr(X, W) and X.data.size == X.indices.size == X.indptr[-1] and b.dtype == dtype
                and b.flags.c_contiguous):
            return False
        self.y = np.ascontiguousarray(steps.y, dtype=np.int64)
        self.sw = None if steps.w is None else np.ascontiguousarray(steps.w, dtype=dtype)
        self.inv_std = None if steps.inv_std is None else np.ascontiguousarray(steps.inv_std[:, 0], dtype=dtype)
        self.b = b
        C, d = W.shape
        self.Z, (self.W, self.V, self.gram, self.last) = host.records(W.T, V.T)
        self.marks, self.count = np.zeros(-(-d // 64), dtype=np.uint64), np.empty(d, dtype=np.int32)
        self.db = np.empty(C, dtype=dtype)
        self.svm = steps.loss == "svm"
        # scratch for the largest batch of the order (e entries)
        n = len(steps.order)
        e = int(np.add.reduceat(np.diff(X.indptr)[steps.order], np.arange(0, n, steps.batch_size)).max()) if n else 0
        work, iwork = host.sparse_scratch(C, dtype, min(n, steps.batch_size), e, d)
        self.work, self.iwork = np.empty(work, dtype), np.empty(iwork, np.int64)
        return True

    def compiled_step(self, steps, i, lr):
        """Batch i's step as ``current``, the gradient, ``norm2`` and ``update`` do it, in one call:
        (L, ||W||^2 before the step, db)."""
        rows = batch_rows(steps.order, i, steps.batch_size)
        L, norm2, _ = host.sparse_step(steps.X, rows, self.y, self.sw, self.b, self.inv_std, self.Z, self.marks,
                                       self.count, self.A, self.r, self.groups, lr, self.mu, self.c, self.nesterov,
                                       self.svm, self.work, self.iwork, self.db)
        self._next_step()  # (the call moved the window's maps on, as _advance does)
        return L, norm2, self.db

    def update(self, cols, D, lr):
        mu, c = self.mu, self.c
        P, V = self.P, self.Vc
        g = np.multiply(P, c, out=self.scratch.get("tmp", len(cols), P.shape[1]))
        g += D
        g *= lr  # lr times the gradient at the batch's columns
        V *= mu
        V -= g  # the new velocity
        if self.nesterov:
            P -= g
            P += np.multiply(V, mu, out=g)
        else:
            P += V
        _put_rows(self.W, cols, P)
        _put_rows(self.V, cols, V)
        gram = self.scratch.get("gram", len(cols), 3, np.float64)
        for k, dots in enumerate(self._grams(P, V)):
            gram[:, k] = dots
        _put_rows(self.gram, cols, gram)
        self.groups[self.r + 1] += gram.sum(axis=0)
        self.last[cols] = self.r + 1
        self._advance(lr)

    def _advance(self, lr):
        """The step's map M joins the window's maps: A[s] <- M A[s], and A[r + 1] = I for the batch's
        rows, already at the next step."""
        mu, decay = self.mu, lr * self.c
        M = np.array([((1 - decay * (1 + mu), mu * mu) if self.nesterov else (1 - decay, mu)), (-decay, mu)])
        maps = self.A[:self.r + 1]
        np.matmul(M, maps, out=maps)
        self.A[self.r + 1] = np.eye(2)
        self._next_step()

    def _next_step(self):
        """The window's step count moves on; at WINDOW, every row is brought up to date."""
        self.r += 1
        if self.r == WINDOW:
            self._catch_up()

    def _catch_up(self):
        """Every row brought to the current step; a new window begins."""
        m = self.A[:self.r + 1]
        if self.compiled:  # the records: one pass
            self._new_window(host.sparse_catch_up(self.Z, self.W.shape[1], self.W.dtype, m, self.r))
            return
        step = max(len(self.scratch.buffers.get("w", ())), 4096)
        for a in range(0, self.W.shape[0], step):  # a block at a time, in the steps' work arrays
            rows = slice(a, a + step)
            n = len(self.last[rows])
            w, v = self.scratch.get("w", n, self.W.shape[1]), self.scratch.get("v", n, self.W.shape[1])
            self._apply(m, self.last[rows], self.W[rows], self.V[rows], w, v)
            self.W[rows], self.V[rows] = w, v
        self._new_window()

    def finish(self):
        self._catch_up()
        W, V = self.out
        W[...] = self.W.T
        V[...] = self.V.T
        if self.compiled:
            host.release(self.Z)
            self.Z = self.W = self.V = self.gram = self.last = None

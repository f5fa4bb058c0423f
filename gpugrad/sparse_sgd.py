"""Plain SGD on a sparse X whose steps cost what the batch's non-zeros cost, not C x d.

A mini-batch of text rows touches a few thousand of the d columns, but its dense gradient,
dW = G^T X' + 2 lam W, is a full C x d array because of the L2 term, and so is the update: on a
100,000-word vocabulary every step would pass over all C x d weights several times (allocating
dW, adding 2 lam W, updating W), many times the cost of the batch itself. Plain SGD (no
momentum) allows the classic way out (Bottou's, scikit-learn's SGDClassifier's): keep
W = a V with a scalar a. The step

    W <- W - eta (G^T X' + 2 lam W) = (1 - 2 eta lam) W - eta G^T X'

becomes a <- a (1 - 2 eta lam) (the decay of every weight, one multiplication) and
V[:, cols] <- V[:, cols] - (eta / a) (G^T X')[:, cols] on the batch's columns only; ||W||^2 =
a^2 ||V||^2 for the cost is kept up to date from the changed columns. The result is the same
algorithm as the dense step, equal within rounding, step for step (the same batches, the same
learning rates, the same per-step costs in the history); at the end of each epoch W = a V is
written back into the model, so checkpoints, evaluation and callbacks see the ordinary weights.

It applies (``applies``) to a ``LinearClassifier`` on the numpy backend trained by ``SGD`` with
momentum 0 on a sparse X, when the model does not centre its inputs (x_mean absent or 0: a
centring term would touch every column); the Trainer uses it then, and its ordinary step
otherwise (momentum and Adam update every weight every step by nature).
"""
from __future__ import annotations

import numpy as np

from .sparse import is_sparse

__all__ = ["applies", "epoch", "run"]


def applies(trainer, X) -> bool:
    """Whether ``trainer``'s epoch over X can take the lazy path (see the module docstring)."""
    from .optim import SGD
    model, opt = trainer.model, trainer.optimizer
    mean = model.buffers.get("x_mean")
    return (is_sparse(X) and model.kind == "linear" and model.backend.xp is np and type(opt) is SGD
            and opt.momentum == 0 and (mean is None or not np.any(mean)))


def _compact(Xb, present, d):
    """(cols, Xc): the sorted columns the batch's rows touch and the batch with its column indices
    renumbered into them (CSR (rows, len(cols)), sharing Xb's values). `present` is a (d,) bool
    scratch array, all False, left all False."""
    present[Xb.indices] = True
    cols = np.flatnonzero(present)
    local = np.cumsum(present, dtype=np.int64)[Xb.indices] - 1  # column -> its place among cols
    present[cols] = False
    Xc = type(Xb)((Xb.data, local.astype(Xb.indices.dtype), Xb.indptr), shape=(Xb.shape[0], len(cols)))
    return cols, Xc


def epoch(trainer, X, y, w, steps, bar):
    """One epoch of the trainer's shuffled batches (``Trainer._epoch``'s contract: returns the
    (2, steps) per-step costs and losses and the last learning rate), in the W = a V form."""
    model, opt, be = trainer.model, trainer.optimizer, trainer.model.backend
    order = be.asarray(trainer.rng.permutation(X.shape[0]))
    per_step, opt.t, lr = run(be, X, y, w, model.params["W"], model.params["b"], loss=model.loss, lam=trainer.lam,
                              schedule=opt.schedule, t=opt.t, order=order, batch_size=trainer.batch_size,
                              batches=range(steps), x_std=model.buffers.get("x_std"),
                              progress=None if bar is None else bar.update)
    return per_step, lr


def run(be, X, y, w, W, b, *, loss, lam, schedule, t, order, batch_size, batches, x_std=None, progress=None):
    """Plain SGD steps on the batches order[i * batch_size:(i + 1) * batch_size], i in ``batches``,
    of CSR X, updating W (C, d) and b (C,) in place exactly as ``optim.SGD`` (momentum 0) would
    from the gradients of ``Backend.linear_grad`` plus 2 lam W, the learning rate schedule(t) at
    update t. Returns ((2, len(batches)) per-step costs J_t = L_t + lam ||W_t||^2 and losses L_t,
    the update count after, the last learning rate)."""
    inv_std = None if x_std is None else 1 / x_std
    d = W.shape[1]
    per_step = np.empty((2, len(batches)), dtype=np.float64)
    present = np.zeros(d, dtype=bool)
    a, sq = 1.0, float(np.vdot(W, W))  # W = a V, V held in W's array; sq = ||V||^2
    lr = np.nan
    for j, i in enumerate(batches):
        idx = order[i * batch_size:(i + 1) * batch_size]
        cols, Xc = _compact(X[idx], present, d)
        Vc = W[:, cols]
        Wc = Vc * (a if inv_std is None else a * inv_std[cols])  # the weights these rows meet
        S = Xc @ Wc.T + b
        L, G = be.loss_grad(S, y[idx], loss, None if w is None else w[idx])
        D = np.ascontiguousarray(G.T @ Xc)  # the data term of dW on cols; every other column's is 0
        if inv_std is not None:
            D *= inv_std[cols]
        per_step[0, j] = float(L) + lam * a * a * sq
        per_step[1, j] = float(L)
        lr = schedule(t)
        a *= 1 - 2 * lr * lam
        Vnew = Vc - (lr / a) * D
        sq += float(np.vdot(Vnew, Vnew) - np.vdot(Vc, Vc))
        W[:, cols] = Vnew
        b -= lr * G.sum(axis=0)
        t += 1
        if a < 1e-6:  # fold the scale back in before V grows out of range
            W *= a
            sq *= a * a
            a = 1.0
        if progress is not None:
            progress(1)
    W *= a
    return per_step, t, lr

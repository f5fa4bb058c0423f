"""The numpy backend: the reference implementation of the fused mini-batch gradients.

Everything here is written against ``self.xp`` so that the CuPy backend inherits it as a
working fallback and overrides only what its kernels fuse (the thinc pattern).

Notation (the lecture's, batched): X (n, d) one example per row, W (C, d), b (C,),
S = X W^T + b (n, C), P = softmax(S) row-wise, Y the one-hot rows of the labels y.
"""
from __future__ import annotations

import functools
import threading

import numpy as np

from ..engine.sparse import is_sparse
from . import host
from .arrays import move_to, to_host

# The optimiser rules of ``optimizer_update``, and the hyperparameters each takes (as the host
# computes them, in double): sgd (lr,), momentum and nesterov (lr, mu), adam (beta1, 1 - beta1,
# beta2, 1 - beta2, lr sqrt(1 - beta2^t) / (1 - beta1^t), eps sqrt(1 - beta2^t)).
UPDATE_RULES = ("sgd", "momentum", "nesterov", "adam")
_SCRATCH = threading.local()  # per thread: optimizer_update's scratch arrays


_BLAS = []   # numpy's BLAS as threadpoolctl controls it (or None), looked up once


def blas_threads() -> int:
    """How many threads numpy's BLAS uses now; 0 when that cannot be told (no threadpoolctl, or
    no BLAS library it knows loaded by numpy). The library is looked up once (about 2 ms); each
    call then asks it (under a microsecond), so ``threadpoolctl.threadpool_limits`` is seen.

        >>> blas_threads() >= 0
        True
    """
    if not _BLAS:
        try:
            from threadpoolctl import ThreadpoolController
            libs = ThreadpoolController().select(user_api="blas").lib_controllers
        except Exception:  # threadpoolctl absent or unable to inspect this process
            libs = []
        own = [c for c in libs if "numpy" in c.filepath] or (libs if len(libs) == 1 else [])
        _BLAS.append(own[0] if own else None)
    return int(_BLAS[0].num_threads) if _BLAS[0] is not None else 0


def _adam_update(xp, p, g, slots, h, s, t):
    """Adam's step in place (``NumpyBackend.optimizer_update``): h = (b1, 1 - b1, b2, 1 - b2, a, e),
    s and t scratch arrays like p."""
    m, v = slots
    m *= h[0]
    m += xp.multiply(g, h[1], out=s)  # (1 - b1) g
    v *= h[2]
    xp.multiply(g, g, out=s)
    v += xp.multiply(s, h[3], out=s)  # (1 - b2) g^2
    xp.sqrt(v, out=t)
    t += h[5]
    xp.multiply(m, h[4], out=s)
    p -= xp.divide(s, t, out=s)  # a m / (sqrt(v) + e)


def _momentum_update(xp, nesterov, p, g, slots, h, s, t):
    """SGD with momentum (Nesterov's when ``nesterov``) in place: h = (lr, mu), s and t scratch
    arrays like p (t only for Nesterov)."""
    lr, mu = h
    v, = slots
    v *= mu
    v -= xp.multiply(g, lr, out=s)  # lr g
    if nesterov:
        xp.multiply(v, mu, out=t)
        p += xp.subtract(t, s, out=t)  # mu v - lr g
    else:
        p += v


class NumpyBackend:
    """Reference backend. Methods take and return arrays of ``self.xp``; no input checks here
    (the public functions in ``gpugrad.fused`` check before calling)."""

    name = "numpy"
    xp = np

    # ---- arrays -------------------------------------------------------------------------
    def asarray(self, a, dtype=None):
        """``a`` as an array of this backend (no copy when it already is one; a CuPy array comes
        to the host with an explicit copy, numpy data goes to the device with one)."""
        return move_to(self.xp, a, dtype)

    def to_numpy(self, a):
        """``a`` as a numpy array (a CuPy array copied to the host)."""
        return to_host(a)

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
        done = host.softmax_ce(S, y, out)  # the same formulas in one compiled call (backends/host.py)
        if done is not None:
            return np.asarray(S.dtype.type(done[0])), done[1]
        xp = self.xp
        n = S.shape[0]
        rows = xp.arange(n)
        # Subtracting the row max keeps exp() in range for any score magnitude.
        m = S.max(axis=1, keepdims=True)
        E = S - m
        xp.exp(E, out=E)
        e_y = E[rows, y]  # advanced indexing: a copy
        # The sum over the classes other than y, kept apart from e_y: p_y - 1 = -others / total
        # is then exact even when p_y rounds to 1 (p_y - 1 from a rounded p_y would be 0).
        E[rows, y] = 0
        others = E.sum(axis=1)
        total = others + e_y
        scale = 1 / (n * total)  # dS = P / n: one pass over E, which becomes dS
        E *= scale[:, None]
        E[rows, y] = -others * scale
        loss = self._ce_rows(S[rows, y] - m[:, 0], e_y, others, total).sum(dtype=S.dtype) / S.dtype.type(n)
        return self.xp.asarray(loss), self._into(out, E)

    def _ce_rows(self, shift, e_y, others, total):
        """Row losses l_i = log(total) - shift from shift = s_y - m <= 0 (m the row max), e_y =
        exp(shift) and the sum of the other classes' exp(s_j - m); log1p(others / e_y) when y is
        (near) the max, where log(total) would round a small loss away."""
        xp = self.xp
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
            return self._ce_rows(S[rows, y] - m, e_y, xp.maximum(total - e_y, 0), total)
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

    def loss_grad(self, S, y, loss, sample_weight=None, out=None):
        """(L, dL/dS) for the loss name 'softmax' or 'svm'. With ``sample_weight`` w (n,),
        L = (1/n) sum_i w_i l_i and row i of dL/dS is scaled by w_i (w = 1: the plain mean).
        ``out``: an (n, C) array that receives dL/dS."""
        L, G = (self.softmax_cross_entropy_grad if loss == "softmax" else self.svm_grad)(S, y, out=out)
        if sample_weight is None:
            return L, G
        w = sample_weight.astype(S.dtype, copy=False)
        G *= w[:, None]
        L = self.xp.asarray((self.row_losses(S, y, loss) * w).sum(dtype=S.dtype) / S.shape[0])
        return L, G

    # ---- the whole linear-classifier step -------------------------------------------------
    def _softmax_columns(self, S, b, y, sample_weight=None):
        """The softmax cross-entropy of the scores S + b (S (n, C), b (C,)) computed on their
        transpose, one row per class: (L, G^T) with L = (1/n) sum_i w_i l_i and G^T (C, n) the
        transpose of ``softmax_cross_entropy_grad``'s dS (rows scaled by w_i when weights are given).

        The same formulas as ``softmax_cross_entropy_grad`` (the sum over the other classes kept
        apart from e_y; ``_ce_rows`` for the row losses), in one new (C, n) array.

            >>> import numpy as np
            >>> L, GT = NumpyBackend()._softmax_columns(np.array([[2.0, 0.0]]), np.zeros(2), np.array([0]))
            >>> round(float(L), 4), GT.round(4).tolist()
            (0.1269, [[-0.1192], [0.1192]])
        """
        xp = self.xp
        n, C = S.shape
        ST = xp.empty((C, n), dtype=S.dtype)
        xp.add(S.T, b[:, None], out=ST)   # transposed while b is added: no extra pass
        at_y = y.astype(xp.intp) * n        # flat positions of s_{i, y_i} in ST (any integer y)
        at_y += xp.arange(n)
        m = ST.max(axis=0)
        E = ST
        shift = ST.reshape(-1)[at_y] - m    # s_y - m, read before ST becomes E
        E -= m
        xp.exp(E, out=E)
        flat = E.reshape(-1)
        e_y = flat[at_y]
        flat[at_y] = 0
        others = E.sum(axis=0)
        total = others + e_y
        rows = self._ce_rows(shift, e_y, others, total)
        scale = 1 / (n * total)
        if sample_weight is not None:
            w = sample_weight.astype(S.dtype, copy=False)
            scale *= w
            rows *= w
        E *= scale
        flat[at_y] = -others * scale
        return xp.asarray(rows.sum(dtype=S.dtype) / S.dtype.type(n)), E

    def normalise(self, X, x_mean, x_std, dtype):
        """(X - x_mean) / x_std in ``dtype``; X itself when no normalisation is asked for."""
        if x_mean is None:
            return X
        Xn = X.astype(dtype)   # a copy, which the two steps then work in
        Xn -= x_mean.astype(dtype)
        Xn /= x_std.astype(dtype)
        return Xn

    def linear_grad(self, X, y, W, b, lam, loss, x_mean=None, x_std=None, sample_weight=None):
        """J, dJ/dW, dJ/db of J = (1/n) sum_i w_i l(x_i, y_i) + lam ||W||^2 with s = W x + b
        (w_i = ``sample_weight[i]``, 1 when it is None).

        The lecture's mini-batch formulas, vectorised: S = X W^T + b; (loss, G) from the fused
        loss (G = dL/dS, already divided by n); dW = G^T X + 2 lam W; db = column sums of G.

        Example (X (4, 3), C = 2: at W = 0 every row's softmax loss is log 2):
            >>> import numpy as np
            >>> be = NumpyBackend()
            >>> X, y = np.arange(12.0).reshape(4, 3), np.array([0, 1, 1, 0])
            >>> J, dW, db = be.linear_grad(X, y, np.zeros((2, 3)), np.zeros(2), 0.0, "softmax")
            >>> round(float(J), 6) == round(float(np.log(2)), 6), dW.tolist(), db.tolist()
            (True, [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], [0.0, 0.0])
        """
        if is_sparse(X):
            return self.sparse_linear_grad(X, y, W, b, lam, loss, x_mean, x_std, sample_weight)
        Xn = self.normalise(X, x_mean, x_std, W.dtype)
        if loss == "softmax" and self.xp is np:
            # numpy: the loss on the class-major scores S^T (C, n), whose per-row work (max, sum,
            # scaling over the C classes) runs along n-long contiguous rows.
            L, GT = self._softmax_columns(Xn @ W.T, b, y, sample_weight)
            G, db = GT.T, GT.sum(axis=1)
        else:
            L, G = self.loss_grad(Xn @ W.T + b, y, loss, sample_weight)
            db = G.sum(axis=0)
        if self.xp is np and blas_threads() > 1:
            # (X^T G)^T: OpenBLAS gives each thread its own part of d here, where for G^T X its
            # threads share G's packed panels and wait on each other at every one (benchmarks/
            # RESULTS.md, "The numpy step on AMD"); on one thread G^T X is the faster product.
            dW = np.ascontiguousarray((Xn.T @ G).T)
        else:
            dW = G.T @ Xn
        J = L
        if lam:
            dW += (2 * lam) * W
            J = L + lam * (W * W).sum()
        return self.xp.asarray(J, dtype=W.dtype), dW, db

    # ---- sparse X: CSR, never made dense (gpugrad.sparse) --------------------------------------
    def sparse_module(self):
        """The module of this backend's sparse matrices (scipy.sparse)."""
        import scipy.sparse
        return scipy.sparse

    def _has_mean(self, x_mean) -> bool:
        """Whether a centring term must be applied (numpy: x_mean given and not all zero)."""
        return x_mean is not None and bool(x_mean.any())

    def sparse_weights(self, W, b, x_mean=None, x_std=None):
        """(W', b') that the raw sparse rows meet: W' = W / x_std, b' = b - W' x_mean, so that
        X W'^T + b' = ((X - x_mean) / x_std) W^T + b without X - x_mean ever formed."""
        Wn = W if x_std is None else W * (1 / x_std.astype(W.dtype))
        bn = b - Wn @ x_mean.astype(W.dtype) if self._has_mean(x_mean) else b
        return Wn, bn

    def sparse_scores(self, X, W, b, x_mean=None, x_std=None):
        """(n, C) scores S = X' W^T + b of CSR X (X' its normalised rows), X read once."""
        Wn, bn = self.sparse_weights(W, b, x_mean, x_std)
        return X @ Wn.T + bn

    def sparse_linear_grad(self, X, y, W, b, lam, loss, x_mean=None, x_std=None, sample_weight=None):
        """``linear_grad`` for a CSR X (n, d) (scipy.sparse on numpy): the same J, dW, db.

        S = X W'^T + b' (``sparse_weights``); (L, G) from the fused loss; dW = (G^T X - db x_mean^T)
        / x_std + 2 lam W, db = column sums of G. The products are scipy.sparse's, in the shapes
        measured fastest (benchmarks/RESULTS.md, "Sparse inputs"): S as X @ W'^T, dW as G^T @ X
        (scipy runs it as (X^T G)^T over X's rows, no transposed copy of X). The normalisation
        costs passes over W (C x d), never over X.
        """
        S = self.sparse_scores(X, W, b, x_mean, x_std)
        L, G = self.loss_grad(S, y, loss, sample_weight)
        db = G.sum(axis=0)
        dW = self.sparse_weight_grad(X, G, db, x_mean, x_std)
        J = L
        if lam:
            dW += (2 * lam) * W
            J = L + lam * (W * W).sum()
        return self.xp.asarray(J, dtype=W.dtype), dW, db

    def sparse_weight_grad(self, X, G, db, x_mean=None, x_std=None):
        """dL/dW (C, d) of S = X' W^T + b for CSR X, from G = dL/dS (n, C) and db = its column
        sums: (G^T X - db x_mean^T) / x_std, C-contiguous as the dense step gives it."""
        dW = self.xp.ascontiguousarray(G.T @ X)
        if self._has_mean(x_mean):
            dW -= db[:, None] * x_mean.astype(dW.dtype)
        if x_std is not None:
            dW *= 1 / x_std.astype(dW.dtype)
        return dW

    # ---- the compiled step: fused functions of a training step (gpugrad.compiled) -------------
    # Each is written with the same numpy operations, in the same order, as the graph's ops and
    # VJP rules it replaces (gpugrad.ops), so a compiled step equals the generic backward pass bit
    # for bit on numpy; the CuPy backend runs each as one kernel (kernels/mlp.cuh).

    def matmul(self, a, b, out):
        """out = a @ b for a (n, k) and b (k, m), either a transposed view, into out (n, m)."""
        return self.xp.matmul(a, b, out=out)

    def fixed_call(self, op, args):
        """``self.<op>(*args)`` as a call without arguments, for a compiled step whose arrays stay
        the same from batch to batch (``compiled.Program``), or None where there is no faster form
        than calling the method: the matrix products straight to numpy, a layer's functions
        straight to their compiled loops (``host.fixed``)."""
        if self.xp is not np:
            return None
        if op == "matmul":
            a, b, out = args
            return functools.partial(np.matmul, a, b, out=out)
        return host.fixed(op, args)

    def gather_rows(self, X, idx, x_mean, x_std, y, sample_weight, out):
        """A batch: rows idx of X (all rows in order when idx is None), normalised as ``normalise``
        does when x_mean is given, with their labels and weights. idx must index rows of X (the
        trainer's permutation does): it is not checked.

        X (N, d) float in out's dtype, or uint8 with x_mean; idx (n,) int64; x_mean, x_std (d,) or
        None; y (N,) int; sample_weight (N,) or None. out = (Xb (n, d), yb (n,) int64, wb (n,) or
        None), written in place and returned.
        """
        Xb, yb, wb = out
        xp = self.xp
        if idx is None:
            Xb[...] = X
            yb[...] = y
        else:  # mode="clip": numpy's default "raise" copies through a buffer (3x the time here)
            clip = {"mode": "clip"} if xp is np else {}  # (CuPy's take has no mode)
            if X.dtype == Xb.dtype:
                xp.take(X, idx, axis=0, out=Xb, **clip)
            else:
                Xb[...] = X[idx]
            if y.dtype == yb.dtype:
                xp.take(y, idx, out=yb, **clip)
            else:
                yb[...] = y[idx]
        if x_mean is not None:  # (X - x_mean) / x_std, as normalise computes it
            Xb -= x_mean.astype(Xb.dtype, copy=False)
            Xb /= x_std.astype(Xb.dtype, copy=False)
        if wb is not None:
            wb[...] = sample_weight if idx is None else sample_weight[idx]
        return out

    def linear_step(self, X, idx, y, W, b, loss, x_mean=None, x_std=None, sample_weight=None, out=None):
        """The linear classifier's (L, dL/dW, dL/db) without the penalty (``linear_grad`` at lam = 0)
        on the batch of rows idx of X, y and sample_weight (all rows when idx is None), written into
        out = (L (0-d), dW (C, d), db (C,)) when given. The CuPy backend reads the rows where they
        lie (one kernel and its fixed-order finish); here they are gathered first."""
        if idx is not None:
            X, y = X[idx], y[idx]
            sample_weight = None if sample_weight is None else sample_weight[idx]
        L, dW, db = self.linear_grad(X, y, W, b, 0.0, loss, x_mean, x_std, sample_weight)
        if out is None:
            return L, dW, db
        for target, value in zip(out, (L, dW, db)):
            target[...] = value
        return out

    def layer_forward(self, s, b, gamma, beta, running_mean, running_var, momentum, eps, out):
        """A hidden layer after its matrix product s = h_in W^T (n, m): a = s + b (in place on s),
        then h = ReLU(batch_norm(a)) with the batch's statistics (``ops.batch_norm`` in training
        mode: running_mean and running_var (m,), when given, updated in place), or h = ReLU(a) when gamma is
        None. out = (h, xhat, inv_std): (n, m), (n, m) and (m,); xhat and inv_std (what the
        backward pass needs) are written with batch norm only.

            >>> be = NumpyBackend()
            >>> s, h = np.array([[1.0, -2.0], [3.0, -4.0]]), np.empty((2, 2))
            >>> be.layer_forward(s, np.zeros(2), None, None, None, None, 0.1, 1e-5, (h, None, None))[0].tolist()
            [[1.0, 0.0], [3.0, 0.0]]
        """
        h, xhat, inv_std = out
        if host.call("layer_forward", (s, b, gamma, beta, running_mean, running_var, momentum, eps, out)):
            return out  # the same arithmetic in one compiled call (backends/host.py)
        xp = self.xp
        s += b  # the linear node's value x W^T + b
        if gamma is None:
            xp.maximum(s, 0, out=h)
            return out
        n = s.shape[0]
        mu = s.mean(axis=0)
        centred = xp.subtract(s, mu, out=xhat)
        var = xp.multiply(centred, centred, out=h).mean(axis=0)  # h as scratch until the end
        xp.add(var, eps, out=inv_std)
        xp.sqrt(inv_std, out=inv_std)
        xp.divide(1, inv_std, out=inv_std)
        xhat *= inv_std
        if running_mean is not None:
            running_mean[...] = (1 - momentum) * running_mean + momentum * mu
            running_var[...] = (1 - momentum) * running_var + momentum * (var * (n / (n - 1)))
        xp.multiply(gamma, xhat, out=h)
        h += beta
        xp.maximum(h, 0, out=h)
        return out

    def layer_backward(self, dh, h, xhat, gamma, inv_std, out):
        """The backward pass of ``layer_forward`` from dJ/dh (n, m), written over dh (in place):
        g = dh [h > 0] (the ReLU's mask; none when h is None), then with batch norm
        ds = inv_std / n (n ghat - sum_i ghat_i - xhat sum_i ghat_i xhat_i), ghat = g gamma, and
        without it ds = g. out = (dgamma, dbeta, db) (m,) each: sum_i g_i xhat_i, sum_i g_i (batch
        norm only, else None) and db = sum_i ds_i, the gradient of the bias added before the norm.
        Returns ds (dh itself)."""
        dgamma, dbeta, db = out
        if host.call("layer_backward", (dh, h, xhat, gamma, inv_std, out)):
            return dh
        xp = self.xp
        g = dh
        if h is not None:
            xp.multiply(g, h > 0, out=g)
        if gamma is not None:
            n = g.shape[0]
            dgamma[...] = (g * xhat).sum(axis=0)
            dbeta[...] = g.sum(axis=0)
            g *= gamma  # ghat
            sum_ghat, sum_ghat_xhat = g.sum(axis=0), (g * xhat).sum(axis=0)
            g *= n
            g -= sum_ghat
            g -= xhat * sum_ghat_xhat
            g *= inv_std / n
        db[...] = g.sum(axis=0)
        return g

    def scores_loss(self, S, b, y, sample_weight, loss, out):
        """The last layer's bias, the loss and its gradient: S += b (in place; S (n, C) = h W^T),
        then ``loss_grad``. out = (dS (n, C), L (0-d)), written in place and returned."""
        dS, L = out
        S += b
        L[...] = self.loss_grad(S, y, loss, sample_weight, out=dS)[0]
        return out

    def optimizer_update(self, rule, p, g, slots, lam=0.0, n_decay=0, loss=None, record=None, index=0):
        """One optimiser step, in place on the parameters p and the optimiser's slots.

        rule: (name, hyperparameters), name in UPDATE_RULES (see there). p, g: the parameters
        and their gradient, of one shape (a whole model's as one flat buffer, weight matrices
        first); slots: the rule's slot arrays like p (momentum: (v,), Adam: (m, v)).
        With lam, g += 2 lam p on the first n_decay entries of the flat p (the penalty
        lam ||W||^2), in place on g. With ``record`` (a (2, steps) float64 array) the step's cost
        and loss go to record[0, index] = loss + lam ||p[:n_decay]||^2 (p before the update) and
        record[1, index] = loss.

        SGD: p -= lr g;  momentum: v = mu v - lr g, p += v;  Nesterov: the same v, p += mu v - lr g;
        Adam: m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2, p -= a m / (sqrt(v) + e), with a and
        e the bias-corrected rate and epsilon.

            >>> be = NumpyBackend()
            >>> p, g = np.ones(3), np.full(3, 2.0)
            >>> be.optimizer_update(("sgd", (0.5,)), p, g, ())
            >>> p.tolist()
            [0.0, 0.0, 0.0]
        """
        name, h = rule
        h = tuple(float(x) for x in h)  # host numbers, rounded to p's dtype as numpy rounds Python floats
        xp = self.xp
        if record is not None:
            decayed = p[:n_decay]
            record[0, index] = loss + lam * xp.vdot(decayed, decayed) if lam else loss
            record[1, index] = loss
        if host.update(name, h, p, g, slots, 2 * lam if lam else 0.0, n_decay):
            return  # the penalty and the rule in one compiled pass (backends/host.py)
        # Each product goes into scratch rather than a fresh temporary: the same operations in the
        # same order (so the same bits), without allocating a parameter-sized array per product.
        s, t = self._scratch(p, 0), (self._scratch(p, 1) if name in ("adam", "nesterov") else None)
        if lam and n_decay:
            g[:n_decay] += xp.multiply(p[:n_decay], 2 * lam, out=s[:n_decay])  # (2 lam) W
        if name == "sgd":
            p -= xp.multiply(g, h[0], out=s)
        elif name == "adam":
            _adam_update(xp, p, g, slots, h, s, t)
        else:
            _momentum_update(xp, name == "nesterov", p, g, slots, h, s, t)

    def _scratch(self, like, k):
        """Scratch array number k of like's shape and dtype, one set per thread (the numpy backend
        is shared, and Dask's threads may update at once), reused from call to call."""
        have = _SCRATCH.__dict__.setdefault("arrays", {})
        a = have.get((k, np.dtype(like.dtype)))
        if a is None or a.size < like.size:
            a = have[(k, np.dtype(like.dtype))] = self.xp.empty(like.size, dtype=like.dtype)
        return a[:like.size].reshape(like.shape)

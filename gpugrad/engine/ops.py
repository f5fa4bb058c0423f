"""The operations on tensors, and below them their local derivatives as VJP rules.

Each op computes its value with the array module of its inputs (numpy or cupy) and records a
node (``gpugrad.graph.record``). Each op's local derivative is registered once, with
``defvjp(op, rule_for_child_0, rule_for_child_1, ...)``; a rule maps the upstream gradient
``g = dJ/d(out)`` to ``g @ d(out)/d(child)`` without ever forming that Jacobian. All rules have
the signature ``rule(g, ans, *children_values, **params)`` where ``ans`` is the op's value.

The two losses differentiate with their fused rules, ``dJ/dS = (P - Y) / n`` (cross-entropy)
and the hinge indicator matrix (SVM), computed by the backend in the same pass as the loss:
never as softmax, log and their chained Jacobians.

    >>> import numpy as np, gpugrad as gg
    >>> S = gg.tensor(np.array([[2.0, 0.0]]), requires_grad=True)
    >>> loss = gg.cross_entropy(S, np.array([0]))
    >>> loss.backward()
    >>> round(loss.item(), 4), S.grad.round(4).tolist()
    (0.1269, [[-0.1192, 0.1192]])
"""
from __future__ import annotations

import numpy as np

from . import _validation
from ..backends import backend_for, is_array, is_cupy_array, move_to
from .graph import Tensor, defvjp, is_grad_enabled, record

__all__ = ["add", "sub", "mul", "div", "power", "matmul", "neg", "exp", "log", "relu",
           "sum", "mean", "transpose", "reshape", "getitem", "softmax", "stable_softmax", "cross_entropy",
           "svm_loss", "batch_norm", "linear", "sparse_linear", "unbroadcast"]


def _xp(a):
    """numpy or cupy: the module that owns array ``a``."""
    return backend_for(a).xp


def _as_tensor(x, like: Tensor | None = None) -> Tensor:
    """``x`` itself if it is a Tensor, else a constant node on ``like``'s backend.

    A Python number takes the dtype numpy would give it next to ``like`` (float32 stays
    float32 in ``2 * t``), so constants never silently widen a float32 graph to float64. An
    array or numpy scalar joins ``like``'s backend with its own dtype: a numpy operand of a CuPy
    tensor moves to the device, a CuPy operand of a numpy tensor to the host (CuPy itself mixes
    neither: it refuses numpy arrays, 0-d ones included, as operands of device arrays).

        >>> import numpy as np, gpugrad as gg
        >>> (gg.tensor(np.ones(2, np.float32)) * np.float32(3)).value.tolist()
        [3.0, 3.0]
    """
    if isinstance(x, Tensor):
        return x
    if like is None:
        return Tensor(x)
    xp = like.xp
    if isinstance(x, (bool, int, float)) and not isinstance(x, np.generic):
        x = xp.asarray(x, dtype=xp.result_type(like.value, x))
    elif is_array(x) or isinstance(x, np.generic):
        x = move_to(xp, x)
    const = Tensor(x)
    const._op = "const"
    return const


def _operands(a, b):
    """Both operands of a binary op as Tensors on one backend (non-Tensors become constants).

    A constant leaf tensor of the other backend (``tensor(np.float32(2))`` next to a CuPy tensor)
    joins the other operand's backend; two tensors in graphs on different backends are refused,
    as CuPy refuses to mix host and device arrays.
    """
    like = a if isinstance(a, Tensor) else b
    a, b = _as_tensor(a, like), _as_tensor(b, like)
    if is_cupy_array(a.value) == is_cupy_array(b.value):
        return a, b
    for const, other in ((a, b), (b, a)):
        if not const.requires_grad and not const._children:
            moved = _as_tensor(const.value, other)
            return (moved, b) if const is a else (a, moved)
    kinds = ["cupy" if is_cupy_array(t.value) else "numpy" for t in (a, b)]
    raise TypeError(f"operands on two backends ({kinds[0]} and {kinds[1]}), both in graphs that require "
                    "grad: build them on one backend (gg.tensor of arrays of one kind)")


def unbroadcast(g, shape):
    """Sum ``g`` (the gradient of a broadcast result) down to an operand's ``shape``.

    Broadcasting copies an operand along new leading axes and along its axes of length 1, so
    its gradient is the sum of ``g`` over those axes. Used by every binary rule.

        >>> import numpy as np
        >>> unbroadcast(np.ones((4, 3)), (3,)).tolist()   # a bias b (C,) in S = X W^T + b
        [4.0, 4.0, 4.0]
    """
    shape = tuple(shape)
    if tuple(g.shape) == shape:
        return g
    lead = g.ndim - len(shape)
    if lead:
        g = g.sum(axis=tuple(range(lead)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    return g.sum(axis=stretched, keepdims=True) if stretched else g


# ================================ forward: the operations ================================

# ---- arithmetic (numpy broadcasting) ----

def add(a, b):
    """a + b, broadcast."""
    a, b = _operands(a, b)
    return record("add", a.value + b.value, (a, b))


def sub(a, b):
    """a - b, broadcast."""
    a, b = _operands(a, b)
    return record("sub", a.value - b.value, (a, b))


def mul(a, b):
    """a * b elementwise, broadcast."""
    a, b = _operands(a, b)
    return record("mul", a.value * b.value, (a, b))


def div(a, b):
    """a / b elementwise, broadcast."""
    a, b = _operands(a, b)
    return record("div", a.value / b.value, (a, b))


def power(a, b):
    """a ** b elementwise, broadcast (for the exponent's gradient, a must be > 0)."""
    a, b = _operands(a, b)
    return record("pow", a.value ** b.value, (a, b))


def neg(a):
    """-a."""
    a = _as_tensor(a)
    return record("neg", -a.value, (a,))


def matmul(a, b):
    """a @ b for 1-D and 2-D operands: (n, k) @ (k, m), (k,) @ (k, m), (n, k) @ (k,), (k,) @ (k,).

    Raises ValueError naming both shapes when the inner dimensions differ.

        >>> import numpy as np, gpugrad as gg
        >>> (gg.tensor(np.ones((2, 3))) @ np.ones(3)).value.tolist()
        [3.0, 3.0]
    """
    a, b = _operands(a, b)
    if a.ndim not in (1, 2) or b.ndim not in (1, 2):
        raise ValueError(f"matmul: operands must be 1-D or 2-D, got shapes {a.shape} and {b.shape}")
    if a.shape[-1] != b.shape[0]:
        raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not match: the last axis "
                         f"of the first ({a.shape[-1]}) must equal the first axis of the "
                         f"second ({b.shape[0]})")
    return record("matmul", a.value @ b.value, (a, b))


def linear(x, W, b):
    """Scores of a layer, S = X W^T + b: the lecture's s = W x + b for each row x of X, as one node.

    Args: x (n, d), W (C, d) as in the lecture, b (C,); Tensors or arrays.
    Returns: S (n, C). Its local derivatives (one rule per child, no transpose or broadcast node):
    dJ/dX = G W, dJ/dW = G^T X (the lecture's g x^T summed over the batch), dJ/db = sum_i g_i.

        >>> import numpy as np, gpugrad as gg
        >>> gg.linear(np.ones((2, 3)), np.ones((4, 3)), np.arange(4.0)).value.tolist()[0]
        [3.0, 4.0, 5.0, 6.0]
    """
    x = _as_tensor(x, W if isinstance(W, Tensor) else None)
    W, b = _as_tensor(W, x), _as_tensor(b, x)
    if x.ndim != 2 or W.ndim != 2 or b.ndim != 1 or x.shape[1] != W.shape[1] or b.shape[0] != W.shape[0]:
        raise ValueError(f"linear: x must be (n, d), W (C, d) and b (C,); got x {x.shape}, W {W.shape}, "
                         f"b {b.shape}")
    return record("linear", x.value @ W.value.T + b.value, (x, W, b))


def sparse_linear(X, W, b, x_mean=None, x_std=None):
    """S = X' W^T + b for a sparse X (n, d) (``gpugrad.sparse``: CSR on the backend of W), X' its
    rows scaled by 1 / x_std (and centred by x_mean) without X ever made dense: a first layer.

    X is data, not a node: only W and b get gradients, dJ/dW = (G^T X - (sum_i g_i) x_mean^T) / x_std
    and dJ/db = sum_i g_i (``Backend.sparse_weight_grad``).

        >>> import numpy as np, scipy.sparse as sp, gpugrad as gg
        >>> X = sp.csr_matrix(np.array([[1.0, 0.0], [0.0, 2.0]]))
        >>> W = gg.tensor(np.ones((3, 2)), requires_grad=True)
        >>> S = gg.ops.sparse_linear(X, W, np.zeros(3))
        >>> S.value.tolist()[1], (S.sum().backward(), W.grad.tolist()[0])[1]
        ([2.0, 2.0, 2.0], [1.0, 2.0])
    """
    W = _as_tensor(W)
    b = _as_tensor(b, W)
    if W.ndim != 2 or b.ndim != 1 or len(X.shape) != 2 or X.shape[1] != W.shape[1] or b.shape[0] != W.shape[0]:
        raise ValueError(f"sparse_linear: X must be (n, d), W (C, d) and b (C,); got X {tuple(X.shape)}, "
                         f"W {W.shape}, b {b.shape}")
    be = backend_for(W.value)
    return record("sparse_linear", be.sparse_scores(X, W.value, b.value, x_mean, x_std), (W, b),
                  X=X, x_mean=x_mean, x_std=x_std)


# ---- elementwise functions ----

def exp(a):
    """exp(a) elementwise."""
    a = _as_tensor(a)
    return record("exp", _xp(a.value).exp(a.value), (a,))


def log(a):
    """Natural log of a elementwise."""
    a = _as_tensor(a)
    return record("log", _xp(a.value).log(a.value), (a,))


def relu(a):
    """max(0, a) elementwise (derivative taken as 0 at a = 0)."""
    a = _as_tensor(a)
    return record("relu", _xp(a.value).maximum(a.value, 0), (a,))


# ---- reductions and shape ----

def _axes(axis, ndim):
    """``axis`` (None, int or tuple, possibly negative) as a sorted tuple of axes, or None."""
    if axis is None:
        return None
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    return tuple(sorted(ax % ndim for ax in axes))


def sum(a, axis=None, keepdims=False):  # noqa: A001 (shadows the builtin, as numpy.sum does)
    """Sum of a over ``axis`` (all axes when None)."""
    a = _as_tensor(a)
    axis = _axes(axis, a.ndim)
    return record("sum", a.value.sum(axis=axis, keepdims=keepdims), (a,),
                  axis=axis, keepdims=keepdims)


def mean(a, axis=None, keepdims=False):
    """Mean of a over ``axis`` (all axes when None)."""
    a = _as_tensor(a)
    axis = _axes(axis, a.ndim)
    return record("mean", a.value.mean(axis=axis, keepdims=keepdims), (a,),
                  axis=axis, keepdims=keepdims)


def transpose(a):
    """a.T (axes reversed)."""
    a = _as_tensor(a)
    return record("transpose", a.value.T, (a,))


def reshape(a, shape):
    """a with a new shape (same entries, row-major)."""
    a = _as_tensor(a)
    return record("reshape", a.value.reshape(tuple(shape)), (a,))


def _index_on(xp, index):
    """``index`` with Tensors unwrapped and arrays moved to ``xp`` (indices are constants)."""
    parts = index if isinstance(index, tuple) else (index,)
    moved = []
    for p in parts:
        if isinstance(p, Tensor):
            p = p.value
        if isinstance(p, list) or is_array(p):
            p = move_to(xp, p)
        moved.append(p)
    return tuple(moved) if isinstance(index, tuple) else moved[0]


def getitem(a, index):
    """a[index]: basic (ints, slices, None, ...) and integer-array indexing."""
    a = _as_tensor(a)
    index = _index_on(a.xp, index)
    return record("getitem", a.value[index], (a,), index=index)


# ---- softmax and the losses ----

def stable_softmax(s, axis=-1):
    """The softmax of a plain array (numpy or CuPy, no graph): p = exp(s - max) / sum(exp(s - max))
    along ``axis``; what ``softmax`` computes, and the probabilities of ``predict_proba``.

        >>> import numpy as np
        >>> stable_softmax(np.array([[0.0, 1000.0], [1.0, 1.0]])).tolist()
        [[0.0, 1.0], [0.5, 0.5]]
    """
    xp = backend_for(s).xp
    # Subtracting the max keeps exp() <= 1: any score magnitude gives a finite result.
    e = xp.exp(s - s.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def softmax(s, axis=-1):
    """p = exp(s) / sum(exp(s)) along ``axis``, computed stably (``stable_softmax``).

    Args: s (..., C) scores. Returns p of the same shape, each slice along ``axis`` summing to 1.
    Its Jacobian per slice is the lecture's diag(p) - p p^T (applied as a VJP, never formed).

        >>> import numpy as np, gpugrad as gg
        >>> gg.softmax(gg.tensor(np.array([0.0, 1000.0]))).value.tolist()
        [0.0, 1.0]
    """
    s = _as_tensor(s)
    return record("softmax", stable_softmax(s.value, axis), (s,), axis=axis)


def cross_entropy(scores, labels, *, validate=True):
    """Mean softmax cross-entropy of raw scores, differentiated by the fused rule g = p - y.

    Args:
        scores: Tensor or array (n, C) float32/float64, one example per row; or one score
            vector (C,) (then n = 1).
        labels: integer class indices (n,) in [0, C) (a scalar for (C,) scores), or one-hot /
            probability rows (n, C) (a row (C,) for (C,) scores) as a float array. Labels are
            data: an array, or a Tensor that does not require grad.
        validate: check the label values: class indices in [0, C), probability rows >= 0.
            On CuPy that check reads one value back from the device, so it waits for the GPU
            on every call; pass False in a training loop whose labels were checked once
            (shapes and dtypes are still checked: they are metadata and cost nothing).
            With False nothing looks at the label values: a class index outside [0, C) or a
            negative probability gives a meaningless result (an IndexError, a negative index
            counted from the end of the row, a NaN or a wrong finite number, depending on the
            backend) instead of a ValueError.
    Returns:
        0-d Tensor J = (1/n) sum_i [logsumexp(s_i) sum_j y_ij - sum_j y_ij s_ij], which for
        one-hot rows is (1/n) sum_i -log p_i,y_i with p_i = softmax(s_i).
    Backward:
        dJ/dS = (P - Y) / n for class indices (``backend.softmax_cross_entropy_grad``), and
        (P * rowsum(Y) - Y) / n for probability rows; both computed with the loss. When the
        result will not be differentiated (inside ``no_grad()``, or scores that do not require
        grad) only the loss is computed (``backend.row_losses``), never dS.
    Raises:
        TypeError / ValueError naming the problem: wrong types, shapes or dtypes, a label out
        of range (position and value), negative probabilities.

        >>> import numpy as np, gpugrad as gg
        >>> S = gg.tensor(np.zeros((2, 4)), requires_grad=True)
        >>> J = gg.cross_entropy(S, np.array([1, 3]))
        >>> round(J.item(), 6), round(float(np.log(4)), 6)
        (1.386294, 1.386294)
    """
    S = _as_tensor(scores)
    S2, y = _loss_inputs("cross_entropy", S, labels, soft_ok=True, validate=validate)
    be = backend_for(S2)
    soft = y.dtype.kind == "f"
    if not _will_differentiate(S):
        loss = _soft_cross_entropy(S2, y, grad=False) if soft else _mean_row_loss(be, S2, y,
                                                                                  "softmax")
        return record("cross_entropy", S.xp.asarray(loss, dtype=S.dtype), (S,))
    if soft:
        loss, dS = _soft_cross_entropy(S2, y)
    else:
        loss, dS = be.softmax_cross_entropy_grad(S2, y)
    # dS is kept for the backward pass (the fused gradient, computed in the same pass as J).
    return record("cross_entropy", S.xp.asarray(loss, dtype=S.dtype), (S,),
                  dS=dS.reshape(S.shape))


def _will_differentiate(S):
    """Whether the loss node of scores S will be recorded for a backward pass (see ``record``):
    otherwise its dS would never be used."""
    return is_grad_enabled() and S.requires_grad


def _mean_row_loss(be, S, y, loss):
    """(1/n) sum_i l_i from the backend's per-row losses: the loss without its gradient."""
    return be.row_losses(S, y, loss).mean(dtype=S.dtype)


def _soft_cross_entropy(S, Y, grad=True):
    """(loss, dS) for probability rows Y (n, C): the fused rule dS = (P * rowsum(Y) - Y) / n,
    loss = mean_i sum_j Y_ij (logsumexp(S_i) - S_ij) from max-shifted scores. With
    ``grad=False`` the loss alone."""
    xp = _xp(S)
    n = S.shape[0]
    shifted = S - S.max(axis=1, keepdims=True)  # <= 0, so exp() cannot overflow
    E = xp.exp(shifted)
    Z = E.sum(axis=1, keepdims=True)
    # sum_j Y_ij (log Z_i - shifted_ij): the max cancels before the subtraction, so large
    # scores lose no precision to logsumexp(S_i) - S_ij.
    loss = (Y * (xp.log(Z) - shifted)).sum() / n
    if not grad:
        return loss
    dS = (E / Z * Y.sum(axis=1, keepdims=True) - Y) / n
    return loss, dS


def svm_loss(scores, labels, *, validate=True):
    """Mean multi-class SVM (hinge) loss of the lecture, differentiated in closed form.

    Args:
        scores: Tensor or array (n, C) float32/float64, or one score vector (C,) (n = 1).
        labels: integer class indices (n,) in [0, C) (a scalar for (C,) scores).
        validate: check that every label is in [0, C) (on CuPy one read-back from the device
            per call). False skips that check only (shapes and dtypes are still checked); a
            label outside [0, C) then gives a meaningless result (an IndexError, a negative
            index counted from the end of the row, a NaN or a wrong finite number, depending
            on the backend) instead of a ValueError.
    Returns:
        0-d Tensor J = (1/n) sum_i sum_{j != y_i} max(0, s_ij - s_i,y_i + 1).
    Backward:
        ``backend.svm_grad``: dJ/dS_ij = [margin_ij > 0] / n for j != y_i and
        dJ/dS_i,y_i = -#{j: margin_ij > 0} / n (0 at a kink, margin exactly 0). Inside
        ``no_grad()`` (or for scores that do not require grad) only the loss is computed.

        >>> import numpy as np, gpugrad as gg
        >>> gg.svm_loss(np.array([[1.0, 1.5, -3.0]]), np.array([0])).item()
        1.5
    """
    S = _as_tensor(scores)
    S2, y = _loss_inputs("svm_loss", S, labels, soft_ok=False, validate=validate)
    be = backend_for(S2)
    if not _will_differentiate(S):
        loss = _mean_row_loss(be, S2, y, "svm")
        return record("svm_loss", S.xp.asarray(loss, dtype=S.dtype), (S,))
    loss, dS = be.svm_grad(S2, y)
    return record("svm_loss", S.xp.asarray(loss, dtype=S.dtype), (S,), dS=dS.reshape(S.shape))


# ---- batch normalisation ----

def batch_norm(x, gamma, beta, running_mean=None, running_var=None, *, training=True,
               momentum=0.1, eps=1e-5):
    """Batch normalisation of the columns of x, then a per-column scale and shift.

    PyTorch's ``torch.nn.functional.batch_norm`` for 2-D inputs: the same options and meaning,
    with the scale and shift (PyTorch's weight and bias) before the running statistics.

    Args:
        x: Tensor or array (n, m) float32/float64, one example per row, m features.
        gamma, beta: Tensors or arrays (m,) of x's dtype: the learned scale and shift.
        running_mean, running_var: arrays (m,) of x's backend (float32/float64), or None.
            In training mode they are updated IN PLACE when given (both or neither); in
            inference mode both are required.
        training: True normalises by the batch statistics, False by the running ones.
        momentum: weight in [0, 1] of the new batch statistic in the running averages.
        eps: added to the variance before the square root, > 0.
    Returns:
        Tensor (n, m): y = gamma * xhat + beta with xhat = (x - mu) / sqrt(var + eps), where
        training=True: mu = (1/n) sum_i x_i and var = (1/n) sum_i (x_i - mu)^2 (the biased
        batch variance), differentiated through; the running averages become
        running_mean = (1 - momentum) running_mean + momentum mu and
        running_var = (1 - momentum) running_var + momentum var * n / (n - 1) (unbiased).
        training=False: mu = running_mean and var = running_var, constants.
    Backward (one fused rule per child, with g = dJ/dy and ghat = g * gamma):
        dJ/dx = (1/n) inv_std (n ghat - sum_i ghat_i - xhat sum_i ghat_i xhat_i) in training
        mode, g * gamma * inv_std in inference mode (inv_std = 1 / sqrt(var + eps));
        dJ/dgamma = sum_i g_i xhat_i, dJ/dbeta = sum_i g_i.
    Raises:
        TypeError / ValueError naming the argument: x not 2-D, gamma/beta/running stats not
        (m,), dtypes, missing running stats in inference mode, a momentum outside [0, 1],
        eps <= 0, and a batch of one row in training mode (its variance is undefined).

        >>> import numpy as np, gpugrad as gg
        >>> from gpugrad.ops import batch_norm
        >>> x = gg.tensor(np.array([[1.0, 10.0], [3.0, 30.0]]), requires_grad=True)
        >>> rm, rv = np.zeros(2), np.ones(2)
        >>> y = batch_norm(x, np.ones(2), np.zeros(2), rm, rv)
        >>> y.value.round(4).tolist()
        [[-1.0, -1.0], [1.0, 1.0]]
        >>> rm.round(6).tolist(), rv.round(6).tolist()
        ([0.2, 2.0], [1.1, 20.9])
    """
    x = _as_tensor(x)
    gamma, beta = _as_tensor(gamma, like=x), _as_tensor(beta, like=x)
    _check_batch_norm(x, gamma, beta, running_mean, running_var, training, momentum, eps)
    xp = x.xp
    X = x.value
    if training:
        n = X.shape[0]
        mu = X.mean(axis=0)
        centred = X - mu
        var = (centred * centred).mean(axis=0)  # two passes: no cancellation as in E[x^2]-mu^2
        inv_std = 1 / xp.sqrt(var + eps)
        xhat = centred * inv_std
        if running_mean is not None:
            # In place, so that the caller's buffers (a model's state) hold the new averages.
            running_mean[...] = (1 - momentum) * running_mean + momentum * mu
            running_var[...] = (1 - momentum) * running_var + momentum * (var * (n / (n - 1)))
    else:
        mean = running_mean.astype(X.dtype, copy=False)
        inv_std = 1 / xp.sqrt(running_var.astype(X.dtype, copy=False) + eps)
        xhat = (X - mean) * inv_std
    # xhat and inv_std are kept for the backward pass, which then recomputes nothing; the options
    # and running averages, so that the node says all it takes to compute it (gpugrad.compiled).
    return record("batch_norm", gamma.value * xhat + beta.value, (x, gamma, beta),
                  xhat=xhat, inv_std=inv_std, training=bool(training), momentum=momentum, eps=eps,
                  running_mean=running_mean, running_var=running_var)


def _check_batch_norm(x, gamma, beta, running_mean, running_var, training, momentum, eps):
    """The shapes, dtypes and options of ``batch_norm`` (metadata only: no device read)."""
    if x.ndim != 2:
        raise ValueError(f"batch_norm: x must be 2-D (n, m) with one example per row, got "
                         f"shape {x.shape}")
    n, m = x.shape
    if x.dtype not in _validation.FLOAT_DTYPES:
        raise TypeError(f"batch_norm: x must be float32 or float64, got dtype {x.dtype}")
    for name, t in (("gamma", gamma), ("beta", beta)):
        if t.shape != (m,):
            raise ValueError(f"batch_norm: {name} must have shape ({m},) (one value per column "
                             f"of x {x.shape}), got {t.shape}")
        if t.dtype != x.dtype:
            raise TypeError(f"batch_norm: {name} has dtype {t.dtype} but x has {x.dtype}; "
                            f"they must match")
    given = [running_mean is not None, running_var is not None]
    if given[0] != given[1]:
        raise ValueError("batch_norm: running_mean and running_var must be given together")
    if not training and not given[0]:
        raise ValueError("batch_norm: training=False normalises by running_mean and "
                         "running_var, so both must be given")
    for name, r in (("running_mean", running_mean), ("running_var", running_var)):
        if r is None:
            continue
        _validation.require_array(f"batch_norm: {name}", r)
        if backend_for(r) is not backend_for(x.value):
            raise TypeError(f"batch_norm: {name} is a {type(r).__module__.split('.')[0]} array "
                            f"but x is on {backend_for(x.value).name}; they must be on one "
                            f"backend")
        if tuple(r.shape) != (m,):
            raise ValueError(f"batch_norm: {name} must have shape ({m},) (one value per column "
                             f"of x {x.shape}), got {tuple(r.shape)}")
        if r.dtype not in _validation.FLOAT_DTYPES:
            raise TypeError(f"batch_norm: {name} must be float32 or float64, got dtype {r.dtype}")
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float, np.floating)) \
            or not 0 <= momentum <= 1:
        raise ValueError(f"batch_norm: momentum must be a number in [0, 1], got {momentum!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating)) \
            or not 0 < eps < float("inf"):
        raise ValueError(f"batch_norm: eps must be a finite number > 0, got {eps!r}")
    if training and n <= 1:
        raise ValueError(f"batch_norm: expected more than 1 value per channel when training, "
                         f"got x of shape {x.shape} (the batch variance of {n} row(s) is "
                         f"undefined; use training=False)")


def _label_array(name, labels):
    """Labels as an array: a Tensor is unwrapped (it must not require grad); a Python or
    numpy integer becomes a 0-d array; anything else must already be an array."""
    if isinstance(labels, Tensor):
        if labels.requires_grad:
            raise TypeError(f"{name}: labels must not require grad (the loss is not "
                            f"differentiated with respect to its labels)")
        return labels.value
    if isinstance(labels, (int, np.integer)) and not isinstance(labels, bool):
        return np.asarray(labels)
    _validation.require_array(f"{name}: labels", labels)
    return labels


def _loss_inputs(name, S, labels, soft_ok, validate=True):
    """The checked (scores (n, C), labels on the scores' backend); (C,) scores become 1 row.

    Structural checks (shapes, dtypes) first, then, when ``validate``, the label values: the
    range of class indices with one backend call, the sign of probability rows.
    """
    y = _label_array(name, labels)
    if S.ndim not in (1, 2):
        raise ValueError(f"{name}: scores must be (n, C), or (C,) for one example, "
                         f"got shape {S.shape}")
    soft = y.dtype.kind == "f"
    if soft and not soft_ok:
        raise TypeError(f"{name}: labels must be integer class indices, got dtype {y.dtype}")
    S2 = S.value
    if S.ndim == 1:
        if y.ndim != (1 if soft else 0):
            row = " or a (C,) probability row" if soft_ok else ""
            raise ValueError(f"{name}: one score vector (C,) takes a scalar class index{row}, "
                             f"got labels of shape {tuple(y.shape)}")
        S2, y = S2.reshape(1, -1), y.reshape((1, -1) if soft else (1,))
    be = backend_for(S2)
    if soft:
        _check_probability_rows(name, S2, y, validate)
        return S2, be.asarray(y, dtype=S2.dtype)
    _validation.check_scores(S2, y)
    y = be.asarray(y)
    if not validate:
        return S2, y
    label_pos, _ = be.first_invalid(y, S2.shape[1], [])
    _validation.raise_first_invalid(label_pos, [], y, S2.shape[1], [])
    return S2, y


def _check_probability_rows(name, S, Y, validate=True):
    """Scores (n, C) float and one-hot / probability rows Y of the same shape; Y >= 0 too when
    ``validate`` (a value check: one read-back on CuPy)."""
    if S.dtype not in _validation.FLOAT_DTYPES:
        raise TypeError(f"{name}: scores must be float32 or float64, got dtype {S.dtype}")
    if tuple(Y.shape) != tuple(S.shape):
        raise ValueError(f"{name}: probability rows must have the scores' shape "
                         f"{tuple(S.shape)}, got {tuple(Y.shape)}")
    if S.shape[0] == 0 or S.shape[1] == 0:
        raise ValueError(f"{name}: scores of shape {tuple(S.shape)} are empty")
    if validate and bool((Y < 0).any()):
        raise ValueError(f"{name}: probability rows must be >= 0, got a negative entry")


# ============================= backward: the local derivatives =============================
# One rule per child: rule(g, ans, *children_values, **params) -> g @ d(ans)/d(child).

def _reduced_back(g, a, axis, keepdims):
    """g broadcast back over the axes a reduction removed: the VJP of a sum."""
    if axis is not None and not keepdims:
        g = _xp(g).expand_dims(g, axis)
    return _xp(g).broadcast_to(g, a.shape)


def _as_matrices(a, b, g):
    """Views of a, b, g as matrices for a matmul rule: (k,) -> (1, k) on the left, (k, 1)
    on the right, g as (rows of a, columns of b)."""
    a2 = a.reshape(1, -1) if a.ndim == 1 else a
    b2 = b.reshape(-1, 1) if b.ndim == 1 else b
    return a2, b2, g.reshape(a2.shape[0], b2.shape[1])


def _matmul_vjp_a(g, ans, a, b):
    a2, b2, g2 = _as_matrices(a, b, g)
    return (g2 @ b2.T).reshape(a.shape)  # dJ/dA = G B^T


def _matmul_vjp_b(g, ans, a, b):
    a2, b2, g2 = _as_matrices(a, b, g)
    return (a2.T @ g2).reshape(b.shape)  # dJ/dB = A^T G


def _getitem_vjp(g, ans, a, *, index):
    out = _xp(a).zeros_like(a)
    # Scatter-add, not out[index] = g: an integer index that repeats must sum its gradients.
    _xp(a).add.at(out, index, g)
    return out


def _pow_vjp_exponent(g, ans, a, b):
    # d(a^b)/db = a^b log a; where a == 0 the term is 0 (a^b = 0), so log(1) avoids 0 * -inf.
    xp = _xp(a)
    return unbroadcast(g * ans * xp.log(xp.where(a == 0, 1, a)), b.shape)


# ---- arithmetic ----
defvjp("add", lambda g, ans, a, b: unbroadcast(g, a.shape),
              lambda g, ans, a, b: unbroadcast(g, b.shape))
defvjp("sub", lambda g, ans, a, b: unbroadcast(g, a.shape),
              lambda g, ans, a, b: unbroadcast(-g, b.shape))
defvjp("mul", lambda g, ans, a, b: unbroadcast(g * b, a.shape),
              lambda g, ans, a, b: unbroadcast(g * a, b.shape))
defvjp("div", lambda g, ans, a, b: unbroadcast(g / b, a.shape),
              lambda g, ans, a, b: unbroadcast(-g * a / (b * b), b.shape))
defvjp("pow", lambda g, ans, a, b: unbroadcast(g * b * a ** (b - 1), a.shape),
              _pow_vjp_exponent)
defvjp("neg", lambda g, ans, a: -g)
defvjp("matmul", _matmul_vjp_a, _matmul_vjp_b)
defvjp("linear", lambda g, ans, x, W, b: g @ W,
                 lambda g, ans, x, W, b: g.T @ x,
                 lambda g, ans, x, W, b: g.sum(axis=0))

defvjp("sparse_linear",
       lambda g, ans, W, b, X, x_mean, x_std: backend_for(g).sparse_weight_grad(X, g, g.sum(axis=0), x_mean, x_std),
       lambda g, ans, W, b, X, x_mean, x_std: g.sum(axis=0))

# ---- elementwise functions ----
defvjp("exp", lambda g, ans, a: g * ans)
defvjp("log", lambda g, ans, a: g / a)
defvjp("relu", lambda g, ans, a: g * (a > 0))

# ---- reductions and shape ----
defvjp("sum", lambda g, ans, a, *, axis, keepdims: _reduced_back(g, a, axis, keepdims))
defvjp("mean", lambda g, ans, a, *, axis, keepdims:
       _reduced_back(g, a, axis, keepdims) / (a.size // max(ans.size, 1)))
defvjp("transpose", lambda g, ans, a: g.T)
defvjp("reshape", lambda g, ans, a: g.reshape(a.shape))
defvjp("getitem", _getitem_vjp)

# ---- batch normalisation ----
def _batch_norm_vjp_x(g, ans, x, gamma, beta, *, xhat, inv_std, training, **options):
    ghat = g * gamma
    if not training:  # mean and variance are constants: y is affine in x
        return ghat * inv_std
    # The fused rule: the paths through the batch mean and variance collapse to two column sums.
    n = x.shape[0]
    return (inv_std / n) * (n * ghat - ghat.sum(axis=0) - xhat * (ghat * xhat).sum(axis=0))


defvjp("batch_norm", _batch_norm_vjp_x,
       lambda g, ans, x, gamma, beta, **cache: (g * cache["xhat"]).sum(axis=0),
       lambda g, ans, x, gamma, beta, **cache: g.sum(axis=0))

# ---- softmax and the losses ----
# g (diag(p) - p p^T) = p * (g - <g, p>): the lecture's softmax Jacobian, applied as a VJP.
defvjp("softmax", lambda g, ans, s, *, axis: ans * (g - (g * ans).sum(axis=axis, keepdims=True)))
# The fused gradients dS computed with the loss (g is the upstream scalar).
defvjp("cross_entropy", lambda g, ans, s, *, dS: g * dS)
defvjp("svm_loss", lambda g, ans, s, *, dS: g * dS)


# ---- Tensor's operators: the ops above under Python's names (a + b is add(a, b)) ----

def _sum_method(self, axis=None, keepdims=False):
    """Sum over ``axis`` (all axes by default), as ``numpy.sum``."""
    return sum(self, axis, keepdims)


def _mean_method(self, axis=None, keepdims=False):
    """Mean over ``axis`` (all axes by default), as ``numpy.mean``."""
    return mean(self, axis, keepdims)


def _reshape_method(self, *shape):
    """Same entries, new shape: ``t.reshape(2, 3)`` or ``t.reshape((2, 3))``; -1 allowed."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = shape[0]
    return reshape(self, shape)


Tensor.__add__, Tensor.__radd__ = add, lambda self, other: add(other, self)
Tensor.__sub__, Tensor.__rsub__ = sub, lambda self, other: sub(other, self)
Tensor.__mul__, Tensor.__rmul__ = mul, lambda self, other: mul(other, self)
Tensor.__truediv__, Tensor.__rtruediv__ = div, lambda self, other: div(other, self)
Tensor.__matmul__, Tensor.__rmatmul__ = matmul, lambda self, other: matmul(other, self)
Tensor.__pow__, Tensor.__rpow__ = power, lambda self, other: power(other, self)
Tensor.__neg__, Tensor.__getitem__ = neg, getitem
Tensor.sum, Tensor.mean, Tensor.reshape = _sum_method, _mean_method, _reshape_method
Tensor.T = property(transpose, doc="The transpose (axes reversed).")

"""Checking gradients: ``gradcheck`` (backward vs central differences) and ``jacobian``
(the full Jacobian built from the same VJPs, to compare with the lecture's formulas).

    >>> import numpy as np, gpugrad as gg
    >>> max(gg.gradcheck(lambda W: (W * W).sum(), [np.ones((2, 3))])) < 1e-7
    True
"""
from __future__ import annotations

import numpy as np

from ..backends import backend_for, is_array
from .graph import Tensor, no_grad, tensor

__all__ = ["gradcheck", "jacobian"]


def _float_array(x, dtype=None):
    """A fresh float array holding x (a Tensor's value, an array or a list), on x's backend.

    Without ``dtype`` a float array keeps its dtype and anything else becomes float64.
    """
    x = x.value if isinstance(x, Tensor) else x
    if not is_array(x):
        x = np.asarray(x)
    if dtype is None and x.dtype.kind != "f":
        dtype = np.float64
    return backend_for(x).xp.array(x, dtype=dtype or x.dtype)  # .array copies


def jacobian(f, x):
    """The Jacobian of ``f`` at ``x``, one backward pass (VJP with a one-hot row) per output.

    Args:
        f: maps a Tensor of x's shape to a Tensor.
        x: numpy/cupy array (or list, or Tensor) of any shape; integers become float64.
    Returns:
        J of shape (f(x).size, x.size): J[k, i] = d f(x).ravel()[k] / d x.ravel()[i], both
        flattened row-major. So for z = W x with W (C, d), ``jacobian(lambda W: W @ x, W)``
        is the lecture's dz/dvec(W) = I_C (kron) x^T.

        >>> import numpy as np, gpugrad as gg
        >>> gg.jacobian(lambda t: t * t, np.array([1.0, 2.0])).tolist()
        [[2.0, 0.0], [0.0, 4.0]]
    """
    xt = tensor(_float_array(x), requires_grad=True)
    out = f(xt)
    if not isinstance(out, Tensor):
        raise TypeError(f"jacobian: f must return a Tensor, got {type(out).__name__}")
    xp = xt.xp
    J = xp.zeros((out.size, xt.size), dtype=xt.dtype)
    if not out.requires_grad:  # f does not depend on x
        return J
    for k in range(out.size):
        row = xp.zeros(out.size, dtype=out.dtype)
        row[k] = 1
        xt.zero_grad()
        out.backward(gradient=row.reshape(out.shape))  # row k of J = e_k^T J, one VJP
        if xt.grad is not None:
            J[k] = xt.grad.reshape(-1)
    return J


def gradcheck(f, inputs, h=1e-6, eps=1e-12):
    """Largest relative error between backward's gradients and central differences.

    Both are computed in float64 (inputs are copied and cast). Per entry,
    ``err = |g_a - g_n| / max(eps, |g_a| + |g_n|)`` (the DD2424 formula), with g_a from
    ``f(...).backward()`` and ``g_n = (f(x + h e_i) - f(x - h e_i)) / (2h)``.

    Args:
        f: takes one Tensor per input, returns a one-element Tensor.
        inputs: list of arrays (numpy or cupy), any shapes.
        h: the finite-difference step. eps: guards the division when both gradients are 0.
    Returns:
        list of floats, the max error over the entries of each input. In float64 a correct
        rule gives about 1e-10 or less where the gradient is not tiny next to f. Where the true
        gradient is 0 (a dead relu, an inactive hinge term, a bias whose contributions cancel)
        both sides hold only rounding noise (~1e-17 analytic, ~|f| 1e-16 / h numeric), and the
        ratio can reach 1 for a correct rule: raise ``eps`` above that noise (say 1e-8) to compare
        such entries in absolute terms, or check away from those points.

        >>> import numpy as np, gpugrad as gg
        >>> errs = gg.gradcheck(lambda a, b: (a @ b).sum(), [np.ones((2, 3)), np.ones(3)])
        >>> [e < 1e-7 for e in errs]
        [True, True]
    """
    xs = [_float_array(x, np.float64) for x in inputs]
    analytic = _backward_gradients(f, xs)
    return [_max_relative_error(g_a, _central_differences(f, xs, i, h), eps)
            for i, g_a in enumerate(analytic)]


def _backward_gradients(f, xs):
    """dJ/dx for each input x, by one backward pass (zeros where J does not depend on x)."""
    ts = [tensor(x, requires_grad=True) for x in xs]
    out = f(*ts)
    if not isinstance(out, Tensor):
        raise TypeError(f"gradcheck: f must return a Tensor, got {type(out).__name__}")
    if out.requires_grad:
        out.backward()
    return [t.grad if t.grad is not None else t.xp.zeros_like(t.value) for t in ts]


def _central_differences(f, xs, i, h):
    """The numerical gradient of f with respect to xs[i], one entry at a time."""
    x = xs[i]
    flat = x.reshape(-1)  # a view: writing to it perturbs x in place
    grad = backend_for(x).xp.zeros_like(flat)
    with no_grad():
        for j in range(flat.size):
            old = float(flat[j])
            flat[j] = old + h
            f_plus = float(f(*map(tensor, xs)).value)
            flat[j] = old - h
            f_minus = float(f(*map(tensor, xs)).value)
            # Divide by the step actually taken: x + h - (x - h) is not exactly 2h in floats.
            grad[j] = (f_plus - f_minus) / ((old + h) - (old - h))
            flat[j] = old
    return grad.reshape(x.shape)


def _max_relative_error(g_a, g_n, eps):
    """max over entries of |g_a - g_n| / max(eps, |g_a| + |g_n|) (0.0 for an empty input)."""
    if g_a.size == 0:
        return 0.0
    xp = backend_for(g_a).xp
    err = xp.abs(g_a - g_n) / xp.maximum(eps, xp.abs(g_a) + xp.abs(g_n))
    return float(err.max())

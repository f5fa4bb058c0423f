"""Comparisons shared by the kernel tests (tests/test_gpu_kernels.py on a GPU, tests/test_emulated_kernels.py
on the CPU emulator): float32 kernels against the float64 numpy backend."""
import numpy as np

import gpugrad as gg

NP = gg.get_backend("numpy")


def rel(got, ref, scale=0.0):
    """||got - ref|| / max(||ref||, scale): the relative error, or the error against `scale` where
    the reference is smaller (cancelled sums). Every entry of `got` must be finite (outputs start
    as NaN: one left unwritten shows)."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert np.isfinite(got).all(), "an output entry was left unwritten (NaN poison) or is not finite"
    return np.linalg.norm(got - ref) / max(np.linalg.norm(ref), scale, 1e-300)


def db_scale(X, y, W, b, loss, mean=None, std=None):
    """The size db's float32 rounding is measured against: the norm of the per-class sums of |dL/dS|.
    db = sum_r dL/dS_r cancels to exactly 0 for some labels (2-class hinge rows that balance), where
    the float64 reference is rounding noise and a relative error means nothing."""
    Xn = X if mean is None else (X - mean) / std
    dS = (NP.softmax_cross_entropy_grad if loss == "softmax" else NP.svm_grad)(Xn @ W.T + b, y)[1]
    return np.linalg.norm(np.abs(dS).sum(axis=0))


def f32(a):
    """a as the float32 kernels get it, back in float64: the reference then solves the same problem
    (a handful of rows whose gradients cancel can amplify input rounding far past 1e-5)."""
    return np.asarray(a, np.float32).astype(np.float64)

"""The numpy linear step against the same step written by hand and PyTorch's CPU eager mode, at
CIFAR-10's shape (n=10000, d=3072, C=10, float32), side by side in one group:

    python -m pytest benchmarks/test_numpy_step.py --benchmark-only

gpugrad runs with default arguments (value checks on). Compare the ratios within one run; the
numbers of record are in benchmarks/RESULTS.md ("The numpy step").
"""
import numpy as np
import pytest

import gpugrad as gg

try:
    import torch
    import torch.nn.functional as F
except Exception:  # torch is optional
    torch = None

N, D, C, LAM = 10000, 3072, 10, 1e-3


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return (rng.standard_normal((N, D), dtype=np.float32), rng.integers(0, C, N),
            (rng.standard_normal((C, D)) * 0.01).astype(np.float32), np.zeros(C, np.float32))


def numpy_by_hand(X, y, W, b, lam):
    """The step as one writes it in numpy: S = X W^T + b, row softmax, G = (P - Y) / n,
    dW = G^T X + 2 lam W, db = column sums of G."""
    n = len(y)
    S = X @ W.T + b
    P = np.exp(S - S.max(axis=1, keepdims=True))
    P /= P.sum(axis=1, keepdims=True)
    J = -np.log(P[np.arange(n), y]).mean() + lam * (W * W).sum()
    Y = np.zeros_like(P)
    Y[np.arange(n), y] = 1
    G = (P - Y) / n
    return J, G.T @ X + 2 * lam * W, G.sum(axis=0)


@pytest.mark.parametrize("impl", ["gpugrad linear_grad", "numpy by hand", "torch cpu eager"])
def test_numpy_step(benchmark, data, impl):
    X, y, W, b = data
    benchmark.group = f"numpy step n={N} d={D} C={C} float32"
    if impl == "gpugrad linear_grad":
        benchmark(gg.linear_grad, X, y, W, b, LAM)
    elif impl == "numpy by hand":
        benchmark(numpy_by_hand, X, y, W, b, LAM)
    else:
        if torch is None:
            pytest.skip("PyTorch is not installed")
        tX, ty, tW0, tb0 = (torch.from_numpy(a) for a in (X, y, W, b))

        def step():
            tW, tb = tW0.clone().requires_grad_(True), tb0.clone().requires_grad_(True)
            J = F.cross_entropy(tX @ tW.T + tb, ty) + LAM * (tW * tW).sum()
            J.backward()
            return J, tW.grad, tb.grad
        benchmark(step)


def test_the_three_steps_agree(data):
    """What is timed computes the same thing (float32 round-off apart)."""
    X, y, W, b = (a[:2000] if a.ndim and len(a) == N else a for a in data)
    got = gg.linear_grad(X, y, W, b, LAM)
    want = numpy_by_hand(X, y, W, b, LAM)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-7)

"""Throughput comparisons (pytest-benchmark): gpugrad's fused path against real peers.

    python -m pytest benchmarks --benchmark-only --benchmark-group-by=param:case

Peers: the graph path (generic backward pass), numpy written the obvious way, PyTorch (CPU, when
installed), and on a GPU the CuPy backend against plain CuPy and PyTorch CUDA. Compare ratios
within one run; absolute GPU times come from benchmarks/gpu_check.py (CUDA events).
"""
import numpy as np
import pytest

import gpugrad as gg

try:
    import torch
    import torch.nn.functional as F
except Exception:  # torch is optional
    torch = None

CASES = {"digits n=512 d=64 C=10": (512, 64, 10), "cifar n=4096 d=3072 C=10": (4096, 3072, 10)}


def _data(n, d, C, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, d)).astype(dtype), rng.integers(0, C, n),
            (rng.standard_normal((C, d)) * 0.01).astype(dtype), np.zeros(C, dtype))


def numpy_obvious(X, y, W, b, lam):
    """Softmax linear classifier gradient written directly from the lecture's formulas."""
    S = X @ W.T + b
    P = np.exp(S - S.max(axis=1, keepdims=True))
    P /= P.sum(axis=1, keepdims=True)
    n = len(y)
    J = -np.log(P[np.arange(n), y]).mean() + lam * (W * W).sum()
    P[np.arange(n), y] -= 1
    return J, P.T @ X / n + 2 * lam * W, P.mean(axis=0)


def graph_path(X, y, W, b, lam):
    Wt, bt = gg.tensor(W, requires_grad=True), gg.tensor(b, requires_grad=True)
    J = gg.cross_entropy(gg.tensor(X) @ Wt.T + bt, y) + lam * (Wt ** 2).sum()
    J.backward()
    return J.value, Wt.grad, bt.grad


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("impl", ["gpugrad fused", "gpugrad graph", "numpy obvious", "torch cpu"])
def test_linear_step_cpu(benchmark, case, impl):
    X, y, W, b = _data(*CASES[case])
    benchmark.group = f"linear step, CPU, {case}"
    if impl == "gpugrad fused":
        benchmark(gg.linear_grad, X, y, W, b, 1e-3, validate=False)
    elif impl == "gpugrad graph":
        benchmark(graph_path, X, y, W, b, 1e-3)
    elif impl == "numpy obvious":
        benchmark(numpy_obvious, X, y, W, b, 1e-3)
    else:
        if torch is None:
            pytest.skip("PyTorch is not installed")
        tX, ty, tW0, tb0 = (torch.from_numpy(a) for a in (X, y, W, b))

        def step():
            tW, tb = tW0.clone().requires_grad_(True), tb0.clone().requires_grad_(True)
            J = F.cross_entropy(tX @ tW.T + tb, ty) + 1e-3 * (tW * tW).sum()
            J.backward()
            return J, tW.grad, tb.grad
        benchmark(step)


# float64 at d = 1024: the longest float64 row the fused kernel takes at C = 10.
GPU_CASES = {"float32 n=16384 d=3072 C=10": (16384, 3072, 10, np.float32),
             "float64 n=16384 d=1024 C=10": (16384, 1024, 10, np.float64)}


@pytest.mark.gpu
@pytest.mark.parametrize("case", list(GPU_CASES))
@pytest.mark.parametrize("impl", ["gpugrad fused", "plain cupy", "torch cuda"])
def test_linear_step_gpu(benchmark, case, impl):
    import cupy
    n, d, C, dtype = GPU_CASES[case]
    X, y, W, b = (cupy.asarray(a) for a in _data(n, d, C, dtype))
    benchmark.group = f"linear step, GPU, {case}"
    sync = cupy.cuda.Device().synchronize
    if impl == "gpugrad fused":
        fn = lambda: gg.linear_grad(X, y, W, b, 1e-3, validate=False)
    elif impl == "plain cupy":
        def fn():
            S = X @ W.T + b
            P = cupy.exp(S - S.max(axis=1, keepdims=True))
            P /= P.sum(axis=1, keepdims=True)
            P[cupy.arange(len(y)), y] -= 1
            return P.T @ X / len(y) + 2e-3 * W, P.mean(axis=0)
    else:
        if torch is None or not torch.cuda.is_available():
            pytest.skip("PyTorch with CUDA is not installed")
        tX, ty, tW0, tb0 = (torch.as_tensor(a, device="cuda") for a in (X, y, W, b))

        def fn():
            tW, tb = tW0.clone().requires_grad_(True), tb0.clone().requires_grad_(True)
            J = F.cross_entropy(tX @ tW.T + tb, ty) + 1e-3 * (tW * tW).sum()
            J.backward()
        sync = torch.cuda.synchronize
    benchmark(lambda: (fn(), sync()))

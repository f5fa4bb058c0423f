"""The numpy linear step against the same step written by hand and PyTorch's CPU eager mode, at
CIFAR-10's shape (n=10000, d=3072, C=10, float32), side by side in one group:

    python -m pytest benchmarks/test_numpy_step.py --benchmark-only

gpugrad runs with default arguments (value checks on). Compare the ratios within one run; the
numbers of record are in benchmarks/RESULTS.md ("The numpy step", "The numpy step on AMD").
On a machine shared with other work, pytest-benchmark's rounds of one step after another see
different loads; run as a script, the steps take turns round by round (which goes first
alternates) and the median of each round's ratio is reported:

    python benchmarks/test_numpy_step.py --rounds 15          # wall time, BLAS's own threads
    python benchmarks/test_numpy_step.py --rounds 15 --one-core   # CPU time of one core
"""
import argparse
import time

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
    return _fresh_data()


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
        benchmark(torch_eager, X, y, W, b, LAM)


def torch_eager(X, y, W, b, lam):
    """The step in PyTorch's CPU eager mode (autograd): (J, dW, db) as torch tensors."""
    tX, ty, tW0, tb0 = (torch.from_numpy(a) for a in (X, y, W, b))
    tW, tb = tW0.clone().requires_grad_(True), tb0.clone().requires_grad_(True)
    J = F.cross_entropy(tX @ tW.T + tb, ty) + lam * (tW * tW).sum()
    J.backward()
    return J, tW.grad, tb.grad


def test_the_three_steps_agree(data):
    """What is timed computes the same thing (float32 round-off apart)."""
    X, y, W, b = (a[:2000] if a.ndim and len(a) == N else a for a in data)
    got = gg.linear_grad(X, y, W, b, LAM)
    want = numpy_by_hand(X, y, W, b, LAM)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-7)
    if torch is not None:
        for g, w in zip(got, torch_eager(X, y, W, b, LAM)):
            np.testing.assert_allclose(g, w.detach().numpy(), rtol=1e-4, atol=1e-7)


def side_by_side(rounds, one_core, n=N, d=D):
    """{step: (median seconds, median ratio to the step by hand)}, the steps taking turns each
    round (after one untimed call each); printed as a table."""
    X, y, W, b = _fresh_data(n, d)
    steps = {"numpy by hand": lambda: numpy_by_hand(X, y, W, b, LAM),
             "gpugrad linear_grad": lambda: gg.linear_grad(X, y, W, b, LAM)}
    if torch is not None:
        steps["torch cpu eager"] = lambda: torch_eager(X, y, W, b, LAM)
    clock = time.thread_time if one_core else time.perf_counter
    if one_core:  # one BLAS thread: all the work in this thread
        from threadpoolctl import threadpool_limits
        limits = threadpool_limits(1)
        if torch is not None:
            torch_threads = torch.get_num_threads()
            torch.set_num_threads(1)
    for step in steps.values():  # warm-up
        step()
    times = {k: [] for k in steps}
    order = list(steps)
    for r in range(rounds):
        for k in order if r % 2 == 0 else order[::-1]:   # which step goes first alternates
            t = clock()
            steps[k]()
            times[k].append(clock() - t)
    if one_core:
        limits.unregister()
        if torch is not None:
            torch.set_num_threads(torch_threads)
    hand = np.array(times["numpy by hand"])
    clocked = "one core, CPU time" if one_core else "wall time"
    print(f"{clocked}, {rounds} rounds, n={n} d={d} C={C}")
    out = {}
    for k, v in times.items():
        v = np.array(v)
        out[k] = (float(np.median(v)), float(np.median(v / hand)))
        print(f"  {k:22s} median {np.median(v) * 1e3:7.1f} ms  min {v.min() * 1e3:7.1f} ms  "
              f"median ratio to by hand {np.median(v / hand):.2f} "
              f"(quartiles {np.percentile(v / hand, 25):.2f}-{np.percentile(v / hand, 75):.2f})")
    return out


def _fresh_data(n=N, d=D):
    rng = np.random.default_rng(0)
    return (rng.standard_normal((n, d), dtype=np.float32), rng.integers(0, C, n),
            (rng.standard_normal((C, d)) * 0.01).astype(np.float32), np.zeros(C, np.float32))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--one-core", action="store_true", help="CPU time of one core (BLAS and gpugrad on one thread)")
    args = parser.parse_args()
    side_by_side(args.rounds, args.one_core)

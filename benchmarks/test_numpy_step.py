"""The numpy linear step against the same step written by hand and PyTorch's CPU eager mode, at
CIFAR-10's shape (n=10000, d=3072, C=10, float32), side by side in one group:

    python -m pytest benchmarks/test_numpy_step.py --benchmark-only

gpugrad runs with default arguments (value checks on). The peers are those of ``gpugrad bench``
(``gpugrad.bench``: numpy written by hand, PyTorch eager), which the tests check computes the same
step. Compare the ratios within one run; the numbers of record are in benchmarks/RESULTS.md
("The numpy step", "The numpy step on AMD"). On a machine shared with other work,
pytest-benchmark's rounds of one step after another see different loads; run as a script, the
steps take turns round by round (which goes first alternates) and the median of each round's
ratio is reported:

    python benchmarks/test_numpy_step.py --rounds 15          # wall time, BLAS's own threads
    python benchmarks/test_numpy_step.py --rounds 15 --one-core   # CPU time of one core

``GPUGRAD_BENCH_SIZE=tiny`` runs it at a smoke-test size.
"""
import argparse
import os
import time

import numpy as np
import pytest

import gpugrad as gg
from gpugrad.tools import bench

N, D, C, LAM = (200, 64, 10, bench.LAM) if os.environ.get("GPUGRAD_BENCH_SIZE") == "tiny" else \
    (10000, 3072, 10, bench.LAM)
WORKLOAD = bench.Workload("linear", f"numpy step n={N} d={D} C={C} float32",
                          (("n", N), ("d", D), ("C", C), ("xdtype", "float32")), 0)


@pytest.fixture(scope="module")
def data():
    return _fresh_data()


def _torch_step(X, y, W, b):
    """PyTorch eager's step on these arrays (``gpugrad.bench``'s peer); Unavailable without torch."""
    inputs = {"X": X, "y": y, "W": W, "b": b, "x_mean": None, "x_std": None}
    return bench.IMPLEMENTATIONS["PyTorch eager CPU"].prepare(WORKLOAD, inputs).fn


@pytest.mark.parametrize("impl", ["gpugrad linear_grad", "numpy by hand", "torch cpu eager"])
def test_numpy_step(benchmark, data, impl):
    X, y, W, b = data
    benchmark.group = f"numpy step n={N} d={D} C={C} float32"
    if impl == "gpugrad linear_grad":
        benchmark(gg.linear_grad, X, y, W, b, LAM)
    elif impl == "numpy by hand":
        benchmark(bench.linear_by_hand, np, X, y, W, b, LAM)
    else:
        try:
            step = _torch_step(X, y, W, b)
        except bench.Unavailable as e:
            pytest.skip(str(e))
        benchmark(step)


def test_the_three_steps_agree(data):
    """What is timed computes the same thing (float32 round-off apart)."""
    X, y, W, b = (a[:2000] if a.ndim and len(a) == N else a for a in data)
    got = gg.linear_grad(X, y, W, b, LAM)
    steps = [bench.linear_by_hand(np, X, y, W, b, LAM)]
    try:
        steps.append([t.detach().numpy() for t in _torch_step(X, y, W, b)()])
    except bench.Unavailable:
        pass
    for want in steps:
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-7)


def side_by_side(rounds, one_core, n=N, d=D):
    """{step: (median seconds, median ratio to the step by hand)}, the steps taking turns each
    round (after one untimed call each); printed as a table."""
    X, y, W, b = _fresh_data(n, d)
    steps = {"numpy by hand": lambda: bench.linear_by_hand(np, X, y, W, b, LAM),
             "gpugrad linear_grad": lambda: gg.linear_grad(X, y, W, b, LAM)}
    try:
        steps["torch cpu eager"] = _torch_step(X, y, W, b)
    except bench.Unavailable:
        pass
    clock = time.thread_time if one_core else time.perf_counter
    if one_core:  # one BLAS thread: all the work in this thread
        from threadpoolctl import threadpool_limits
        limits = threadpool_limits(1)
        if "torch cpu eager" in steps:
            import torch
            torch_threads = torch.get_num_threads()
            torch.set_num_threads(1)
    for step in steps.values():  # warm-up
        step()
    times = {k: [] for k in steps}
    order = list(steps)
    for r in range(rounds):
        for k in order if r % 2 == 0 else order[::-1]:  # which step goes first alternates
            t = clock()
            steps[k]()
            times[k].append(clock() - t)
    if one_core:
        limits.unregister()
        if "torch cpu eager" in steps:
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
    bench.steady_heap()
    side_by_side(args.rounds, args.one_core)

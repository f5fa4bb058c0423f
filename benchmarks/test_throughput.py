"""Throughput by workload (pytest-benchmark): gpugrad against its peers on the same inputs, one run.

    python -m pytest benchmarks/test_throughput.py --benchmark-only

One group per workload of ``gpugrad.bench`` (the workloads, their inputs and every implementation
are defined there, once, and ``gpugrad bench`` prints the same comparison as a table with the
memory-bandwidth floor): CE forward+gradient on S (n x C, C = 10, 1024, 32768), the linear step
(d = 3072, C = 10, float32 and uint8 X) and SGD epochs (batch 100) of the linear model and of the
MLP 3072-50-50-10 with batch norm through ``gpugrad.Trainer`` (``eval_train=False``).

Each group holds gpugrad's numpy backend (and its graph path, on the float32 step), numpy by hand,
scikit-learn's loss-and-gradient code where it has one, PyTorch eager and ``torch.compile`` on the
CPU, and on a GPU the CuPy backend, plain CuPy and PyTorch on CUDA; what cannot run here (no torch,
no GPU) is skipped with the reason. The CPU sizes always run (a few minutes on 2 cores); the GPU
sizes (S 8192 x C, n up to 65536, N = 50,000) run only where a CUDA device is
usable, and there the CPU implementations take 3 rounds each. GPU calls end with a device
synchronisation inside the timed call. The trainer's epoch here is a ``fit`` of one more epoch
(``check_input=False``), which adds fit's per-call set-up to the epoch; ``extra_info["epoch_s"]``
holds the trainer's own clock for the epoch alone, which ``gpugrad bench`` reports.
``GPUGRAD_BENCH_SIZE=tiny`` runs the CPU part at gpugrad bench's tiny sizes.
"""
import os

import pytest

from gpugrad.tools import bench

# GPUGRAD_BENCH_SIZE=tiny: the tiny sizes of gpugrad bench instead of the CPU ones (a smoke test).
CPU_WORKLOADS = bench.workloads(bench.FAMILIES, "tiny" if os.environ.get("GPUGRAD_BENCH_SIZE") == "tiny"
                                else "cpu")
GPU_ONLY = [w for w in bench.workloads(bench.FAMILIES, "gpu") if w not in CPU_WORKLOADS]


def _params():
    out = []
    for w in CPU_WORKLOADS + GPU_ONLY:
        for impl in bench.IMPLEMENTATIONS.values():
            gpu = impl.device == "gpu" or w in GPU_ONLY
            out.append(pytest.param(w, impl, marks=[pytest.mark.gpu] if gpu else [], id=f"{w.name} | {impl.name}"))
    return out


_INPUTS = {}


def inputs_for(w):
    """The workload's numpy inputs, made once for all its implementations (the tests of a workload
    run one after another, so only the current workload's inputs are kept)."""
    if w not in _INPUTS:
        _INPUTS.clear()
        _INPUTS[w] = bench.make_inputs(w)
    return _INPUTS[w]


@pytest.mark.parametrize("w, impl", _params())
def test_throughput(benchmark, w, impl):
    benchmark.group = w.name
    try:
        case = impl.prepare(w, inputs_for(w))
    except bench.Unavailable as e:
        pytest.skip(f"{impl.name}: {e}")
    for _ in range(case.warmup):
        case.fn()
    fn = case.fn if case.sync is None else (lambda: (case.fn(), case.sync()))
    benchmark.extra_info.update(implementation=impl.name, ours=impl.ours, bytes=w.nbytes)
    if impl.device == "cpu" and w in GPU_ONLY:
        benchmark.pedantic(fn, rounds=3, iterations=1)
    else:
        benchmark(fn)
    if case.seconds is not None:
        benchmark.extra_info["epoch_s"] = case.seconds()

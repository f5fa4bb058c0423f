"""The GPU check: the kernel tests, then timings against plain CuPy and PyTorch.

The bandwidth floor is measured in the same run. One command, on your own card:

    python benchmarks/gpu_check.py [--out DIR] [--quick] [--compile]

Correctness lives in ``pytest -m gpu tests/test_gpu_kernels.py`` (every kernel against float64
numpy, outputs and shared memory poisoned first). This script runs those tests first, one group
of kernel variants per process (a kernel that traps kills its CUDA context, and only its own
process), and times only the variants whose tests passed. --quick leaves out the tests' largest
sizes; the timings always run at the target shapes, so every run's table compares with them.

Timing: CUDA events around R back-to-back calls, after warm-up; the median over many batches;
inputs rotated among copies that together exceed the L2 cache. "floor" = the bytes the workload
must move / the device-to-device copy bandwidth measured here (bytes read + written / time).
Its last lines name, for each kernel-variant switch (``plans.Variants``), the fastest variant
whose tests passed. Writes results.json under --out (default $OUT or .) and ends with the table.
"""
from __future__ import annotations

import argparse
import ctypes
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import cupy  # noqa: E402

import gpugrad as gg  # noqa: E402
import gpugrad.engine.sparse  # noqa: E402,F401
from gpugrad.backends import cuda_driver, plans  # noqa: E402
from gpugrad.backends import kernels as kmod  # noqa: E402

try:
    import torch
    import torch.nn.functional as F
    HAVE_TORCH = torch.cuda.is_available()
except Exception:  # pragma: no cover - torch is optional
    torch = None
    HAVE_TORCH = False

sys.path.insert(0, str(ROOT / "benchmarks"))
NP_BACKEND = gg.get_backend("numpy")
RESULTS = {"correctness": [], "timing": [], "env": {}}
FAILURES = []


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def log(*a):
    print(*a, flush=True)


def record(kind, name, ok, **info):
    """One correctness result of this run (a test group, or an experiment's launch checked bit for bit)."""
    RESULTS["correctness"].append(dict(kind=kind, name=name, ok=bool(ok), **info))
    if not ok:
        FAILURES.append(f"{kind} {name} {info}")
    log(f"  {'ok  ' if ok else 'FAIL'} {kind:<10} {name}")


def rand_scores(rng, n, C, scale=3.0):
    return (rng.standard_normal((n, C)) * scale).astype(np.float64)


# The linear step's kinds of X with only the "simt" kernel: (X dtype, normalised on the fly).
OTHER_KINDS = {"f32n": (np.float32, True), "f64": (np.float64, False), "f64n": (np.float64, True),
               "u8f64": (np.float64, True)}


def backend_with(**variants):
    """The CUDA backend with these kernel variants (plans.Variants) in place of the measured ones."""
    return gg.get_backend("cupy")._with_variants(**variants)


LINEAR_VARIANTS = plans.CHOICES["linear_f32"]  # the fused linear kernels; --linear-variants
LONG_ROW_VARIANTS = plans.CHOICES["ce_long_rows"]  # --long-rows-variants
ROW_CALLS = plans.CHOICES["row_call"]  # the row losses' host path; --row-calls

# ---------------------------------------------------------------------------------------------
# correctness: the GPU tests, a process per group of variants
# ---------------------------------------------------------------------------------------------
NEW = "mma or tensor_core or prefetch or direct or other_kinds or sparse"
# group: (pytest -k expression, seconds allowed); "established" holds simt, stream, block, cupy.
# The limits add up to a little over half of device_check.sh's time limit, leaving the rest for timing.
TEST_GROUPS = {"established": (f"not ({NEW})", 150), "mma": ("mma or tensor_core", 60),
               "prefetch": ("prefetch", 30), "direct": ("direct", 30), "other_kinds": ("other_kinds", 45),
               "sparse": ("sparse", 30)}


def groups_wanted() -> list[str]:
    """The groups whose variants this run was asked for (--linear-variants and the others)."""
    wanted = {"established": True, "mma": "mma" in LINEAR_VARIANTS, "prefetch": "prefetch" in LONG_ROW_VARIANTS,
              "direct": "direct" in ROW_CALLS, "other_kinds": True, "sparse": True}
    return [g for g, w in wanted.items() if w]


def run_gpu_tests(groups, quick: bool) -> set[str]:
    """Run tests/test_gpu_kernels.py's tests of each group in a pytest process of its own; record
    each group's result and return the groups that passed."""
    passed = set()
    for group in groups:
        expr, limit = TEST_GROUPS[group]
        if quick:
            expr = f"({expr}) and not 65537"
        cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
               str(ROOT / "tests" / "test_gpu_kernels.py"), "-k", expr]
        t0 = time.perf_counter()
        try:
            r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=limit)
            ok, tail = r.returncode == 0, (r.stdout + r.stderr).strip().splitlines()[-1:]
        except subprocess.TimeoutExpired:
            ok, tail = False, [f"stopped after {limit} s"]
        record("tests", f"{group}: pytest -k {expr!r}", ok, seconds=round(time.perf_counter() - t0, 1),
               summary=" ".join(tail))
        log(f"       {' '.join(tail)}")
        if ok:
            passed.add(group)
    return passed


# ---------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------
def time_batches(fn, sets, reps=20, batches=15, warm=3, events=None):
    """Median microseconds per call: CUDA events around `reps` back-to-back calls (rotating
    through `sets` of inputs), `batches` times, after `warm` warm-up batches. `events` makes a
    (start, end, elapsed_ms) triple; CuPy's by default (PyTorch work is timed with torch's)."""
    start, end, elapsed_ms = (events or _cupy_events)()
    times = []
    for b in range(warm + batches):
        start.record()
        for r in range(reps):
            fn(*sets[r % len(sets)])
        end.record()
        end.synchronize()
        if b >= warm:
            times.append(elapsed_ms(start, end) * 1e3 / reps)
    return float(np.median(times)), float(np.percentile(times, 10)), float(np.percentile(times, 90))


def _cupy_events():
    return cupy.cuda.Event(), cupy.cuda.Event(), cupy.cuda.get_elapsed_time


def _torch_events():
    return (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True),
            lambda a, b: a.elapsed_time(b))


def time_graph(fn, args, reps=50, batches=15):
    """Device time per call without the Python launch cost: `reps` calls captured in a CUDA graph,
    the graph replayed `batches` times between events. None if capture is not possible."""
    try:
        stream = cupy.cuda.Stream(non_blocking=True)
        with stream:
            fn(*args)  # warm: workspace and pool blocks exist before the capture
            stream.synchronize()
            stream.begin_capture()
            for _ in range(reps):
                fn(*args)
            graph = stream.end_capture()
            graph.launch(stream)
            stream.synchronize()
            start, end = cupy.cuda.Event(), cupy.cuda.Event()
            times = []
            for _ in range(batches):
                start.record(stream)
                graph.launch(stream)
                end.record(stream)
                end.synchronize()
                times.append(cupy.cuda.get_elapsed_time(start, end) * 1e3 / reps)
        return float(np.median(times)), float(np.percentile(times, 10)), float(np.percentile(times, 90))
    except Exception as e:  # capture is best effort
        log(f"  (CUDA graph capture failed: {type(e).__name__}: {e})")
        return None


def copy_bandwidth():
    """Device-to-device copy bandwidth in bytes/s, counting bytes read + written."""
    n = 1 << 29  # 2 GiB of float32
    a = cupy.random.random(n, dtype=np.float32)
    b = cupy.empty_like(a)
    med, _, _ = time_batches(lambda: b.__setitem__(Ellipsis, a), [()], reps=5, batches=10)
    return 2 * n * 4 / (med * 1e-6)


def nsets(bytes_per_set, min_total=256 << 20, cap=16):
    return int(max(1, min(cap, -(-min_total // max(1, bytes_per_set)))))


def plain_cupy_ce(S, y):
    """Softmax cross-entropy + gradient written the obvious way in CuPy."""
    n = S.shape[0]
    m = S.max(axis=1, keepdims=True)
    E = cupy.exp(S - m)
    P = E / E.sum(axis=1, keepdims=True)
    rows = cupy.arange(n)
    loss = -cupy.log(P[rows, y]).mean()
    P[rows, y] -= 1
    P /= n
    return loss, P


def torch_ce(S, y):
    S = S.detach().requires_grad_(True)
    loss = F.cross_entropy(S, y)
    loss.backward()
    return loss, S.grad


def torch_time(fn, sets, reps=20, batches=15, warm=3):
    return time_batches(fn, sets, reps, batches, warm, events=_torch_events)


def add_timing(workload, variant, t, floor_us=None):
    med, p10, p90 = t
    row = dict(workload=workload, variant=variant, median_us=med, p10_us=p10, p90_us=p90, floor_us=floor_us)
    RESULTS["timing"].append(row)
    fl = f"  x floor {med / floor_us:6.2f}" if floor_us else ""
    log(f"  {workload:<34} {variant:<26} {med:10.1f} us  (p10 {p10:.1f}, p90 {p90:.1f}){fl}")


LINEAR_TARGET = (65536, 3072, 10)  # the linear step's target shape (n, d, C), RESULTS.md


def ce_workload(n: int, C: int) -> str:
    """A softmax CE timing row's workload name (float32 S); recommend_defaults looks rows up by it."""
    return f"CE fwd+grad S {n}x{C} f32"


def linear_workload(n: int, d: int, C: int, x: str) -> str:
    """A linear step timing row's workload name, x = "f32", "uint8" (the X type) or another kind of
    X ("f32n", "f64", "f64n", "u8f64": OTHER_KINDS)."""
    return f"linear step n={n} d={d} C={C} {x}"


def bench_ce(bw, rng, shapes=((8192, 32768), (8192, 1024), (8192, 10))):
    be = gg.get_backend("cupy")
    for n, C in shapes:
        nbytes = n * C * 4
        floor = 2 * nbytes / bw * 1e6
        k = nsets(nbytes)
        sets = [(cupy.asarray((rng.standard_normal((n, C)) * 3).astype(np.float32)),
                 cupy.asarray(rng.integers(0, C, n))) for _ in range(k)]
        outs = [cupy.empty((n, C), np.float32) for _ in range(2)]
        wl = ce_workload(n, C)
        if C == 32768:
            for variant in LONG_ROW_VARIANTS:
                bv = backend_with(ce_long_rows=variant)
                add_timing(wl, f"gpugrad kernel {variant}",
                           time_batches(lambda S, y: bv.softmax_cross_entropy_grad(S, y, out=outs[0]), sets), floor)
        add_timing(wl, "gpugrad kernel", time_batches(lambda S, y: be.softmax_cross_entropy_grad(S, y, out=outs[0]), sets), floor)
        add_timing(wl, "gpugrad kernel (alloc dS)", time_batches(be.softmax_cross_entropy_grad, sets), floor)
        api = lambda S, y: gg.softmax_cross_entropy_grad(S, y, out=outs[0], validate=False)  # noqa: E731
        if C <= 1024:  # host-bound sizes: what a user's call costs, checks and all
            add_timing(wl, "gpugrad API, validate=False, out=", time_batches(api, sets), floor)
        if C <= 1024 and "direct" in ROW_CALLS:  # host-bound sizes: the call path matters
            bd = backend_with(row_call="direct")
            add_timing(wl, "gpugrad direct call",
                       time_batches(lambda S, y: bd.softmax_cross_entropy_grad(S, y, out=outs[0]), sets), floor)
            add_timing(wl, "gpugrad direct (alloc dS)", time_batches(bd.softmax_cross_entropy_grad, sets),
                       floor)
            api_direct = lambda S, y: gg.softmax_cross_entropy_grad(  # noqa: E731
                S, y, out=outs[0], validate=False, backend=bd)
            add_timing(wl, "gpugrad API direct, validate=False, out=", time_batches(api_direct, sets), floor)
        if C <= 1024:
            tg = time_graph(lambda S, y: be.softmax_cross_entropy_grad(S, y, out=outs[0]), sets[0])
            if tg:
                add_timing(wl, "gpugrad kernel, CUDA graph", tg, floor)
        add_timing(wl, "gpugrad API, validate=True", time_batches(lambda S, y: gg.softmax_cross_entropy_grad(S, y), sets), floor)
        add_timing(wl, "plain CuPy", time_batches(plain_cupy_ce, sets), floor)
        if HAVE_TORCH:
            tsets = [(torch.as_tensor(S, device="cuda"), torch.as_tensor(y, device="cuda")) for S, y in sets]
            add_timing(wl, "PyTorch eager", torch_time(torch_ce, tsets), floor)
    # SVM on the middle shape
    n, C = 8192, 1024
    nbytes = n * C * 4
    sets = [(cupy.asarray((rng.standard_normal((n, C)) * 3).astype(np.float32)), cupy.asarray(rng.integers(0, C, n)))
            for _ in range(nsets(nbytes))]
    add_timing(f"SVM fwd+grad S {n}x{C} f32", "gpugrad kernel", time_batches(be.svm_grad, sets), 2 * nbytes / bw * 1e6)


def host_us(fn, calls=200, repeats=25, warm=3):
    """Host microseconds per call of fn: `calls` calls enqueued back to back (far fewer than the
    launch queue holds, so none waits for the device), timed with perf_counter; the device is
    synchronised outside the timed part. Median over `repeats`."""
    times = []
    for r in range(warm + repeats):
        cupy.cuda.Device().synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        dt = time.perf_counter() - t0
        if r >= warm:
            times.append(dt / calls * 1e6)
    cupy.cuda.Device().synchronize()
    return float(np.median(times))


def host_breakdown(n=8192, C=10):
    """Where the host time of a small-C softmax call goes (at 8192 x 10 a call costs more host
    time than device time): the whole call on each path
    (the row_call variants), then each part alone, and the pieces of a faster path (arguments
    converted once; cuLaunchKernel straight from a ctypes parameter block; the loss as a 0-d view
    into a slab allocated once). Each launch that bypasses CuPy's argument conversion is checked
    against the backend's result."""
    from cupy.cuda.function import CIntptr
    log(f"== host cost per call, softmax CE S {n}x{C} f32 (perf_counter, 200 calls enqueued)")
    be = gg.get_backend("cupy")
    rng = np.random.default_rng(7)
    S = cupy.asarray(rand_scores(rng, n, C).astype(np.float32))
    y = cupy.asarray(rng.integers(0, C, n))
    out = cupy.empty((n, C), np.float32)
    ref_loss, _ = be.softmax_cross_entropy_grad(S, y, out=out)
    ref_loss, ref_dS = float(ref_loss), out.copy()
    ws = be.workspace()
    L = ws.device.row_launch(plans.ce_kernel_config(C, np.float32), n, C, 4)
    partials, ticket = ws.partials_for(L.grid[0]), ws.ticket
    loss = cupy.empty((), np.float32)
    args = (S, y, np.int32(1), out, L.n, L.C, partials, ticket, loss)
    pre = tuple(CIntptr(a.data.ptr) if isinstance(a, cupy.ndarray) else CIntptr(int(a)) for a in args)
    params = cuda_driver.RowParams(S.data.ptr, y.data.ptr, 1, out.data.ptr, n, C, partials.data.ptr, ticket.data.ptr,
                           loss.data.ptr)
    argv = (ctypes.c_void_p * 9)(*[ctypes.addressof(params) + getattr(cuda_driver.RowParams, f).offset
                                    for f, _ in cuda_driver.RowParams._fields_])
    slab, slot = cupy.empty(256, np.float32), itertools.cycle(range(256))

    def slab_view():
        return cupy.ndarray((), np.float32, memptr=slab.data + 4 * next(slot))

    def launch_cupy():
        L.f(L.grid, L.block, args, shared_mem=L.smem)
        return loss

    def launch_cintptr():
        L.f(L.grid, L.block, pre, shared_mem=L.smem)
        return loss

    def launch_ctypes():
        cuda_driver.driver.launchKernel(L.fptr, L.grid[0], 1, 1, L.block[0], 1, 1, L.smem, ws.stream_ptr,
                               ctypes.addressof(argv), 0)
        return loss

    direct = be._with_variants(row_call="direct")

    def call_direct():
        return direct.softmax_cross_entropy_grad(S, y, out=out)[0]

    # (label, function, whether it bypasses CuPy's argument conversion)
    parts = [("the whole backend call (out given)", lambda: be.softmax_cross_entropy_grad(S, y, out=out), False),
             ("the same, row_call direct", call_direct, True),
             ("the whole backend call (dS allocated)", lambda: be.softmax_cross_entropy_grad(S, y), False),
             ("the public API, validate=False", lambda: gg.softmax_cross_entropy_grad(S, y, validate=False), False),
             ("cupy.empty((), float32), freed", lambda: cupy.empty((), np.float32), False),
             ("0-d view into a slab, freed", slab_view, False),
             ("be.workspace()", be.workspace, False),
             ("RawKernel launch, the backend's args", launch_cupy, False),
             ("RawKernel launch, args as CIntptr", launch_cintptr, True),
             ("driver.launchKernel, ctypes block", launch_ctypes, True)]
    parts = [p for p in parts if "direct" in ROW_CALLS or not p[2]]
    for label, fn, bypasses in parts:  # first the results: an experiment must not time a wrong launch
        if bypasses:
            try:
                out.fill(np.nan), loss.fill(np.nan)
                same = float(fn()) == ref_loss and bool(cupy.array_equal(out, ref_dS))
                log(f"  {label}: results {'identical to' if same else 'DIFFER from'} the backend's")
            except Exception as e:  # an experiment failing must not cost the rest of the run
                same = False
                log(f"  {label}: failed: {type(e).__name__}: {e}")
            if fn is call_direct:  # a product path (the others are experiments): a correctness check
                record("call path", "row_call direct vs cupy, bit for bit", same)
    host = {}
    for label, fn, _ in parts:
        try:
            host[label] = host_us(fn)
            log(f"  {label:<42} {host[label]:7.2f} us")
        except Exception as e:
            log(f"  {label:<42} failed: {type(e).__name__}: {e}")
    RESULTS["env"]["host_breakdown_us"] = host


class Switch(NamedTuple):
    """A kernel-variant switch (a field of plans.Variants) and what decides it: the fastest of its
    variants on `workload` (the target shape) whose tests passed in this run.
    variants: {variant: (its timing row, the test group it must have passed)}."""
    name: str
    workload: str
    variants: dict


SWITCHES = (
    Switch("linear_f32", linear_workload(*LINEAR_TARGET, "f32"),
           {"simt": ("gpugrad fused simt", "established"), "mma": ("gpugrad fused mma", "mma")}),
    Switch("linear_u8", linear_workload(*LINEAR_TARGET, "uint8"),
           {"simt": ("gpugrad fused simt", "established"), "mma": ("gpugrad fused mma", "mma")}),
    Switch("ce_long_rows", ce_workload(8192, 32768),
           {v: (f"gpugrad kernel {v}", "prefetch" if v == "prefetch" else "established")
            for v in ("stream", "prefetch", "block")}),
    Switch("row_call", ce_workload(8192, 10),
           {"cupy": ("gpugrad kernel", "established"), "direct": ("gpugrad direct call", "direct")}),
)


def _passed(group: str) -> bool:
    """Whether this run's tests of `group` passed (and, for direct, its launch matched bit for bit)."""
    mine = [c for c in RESULTS["correctness"] if c["kind"] == "tests" and c["name"].startswith(group + ":")]
    if group == "direct":
        mine += [c for c in RESULTS["correctness"] if c["kind"] == "call path"]
    return bool(mine) and all(c["ok"] for c in mine)


def _measured(field: str) -> str:
    """The variant the backend uses now on the current device for the switch `field` (without a
    device: the newest architecture's measured row)."""
    variants = gg.get_backend("cupy").variants if gg.cupy_available() else plans.MEASURED[max(plans.MEASURED)]
    return getattr(variants, field)


def recommend_defaults():
    """For each switch, the fastest variant this run timed among those whose tests passed; logs a
    line each and stores them in the results. The defaults themselves are not changed here: that
    is an edit of plans.MEASURED, after reading the log."""
    out = {}
    for sw in SWITCHES:
        times = {r["variant"]: r["median_us"] for r in RESULTS["timing"] if r["workload"] == sw.workload}
        sound = {v: times[row] for v, (row, group) in sw.variants.items() if row in times and _passed(group)}
        now = _measured(sw.name)
        best = min(sound, key=sound.get) if len(sound) >= 2 else None
        out[sw.name] = dict(now=now, best=best, us=sound)
        if best is None:
            log(f"  {sw.name:<14} keep {now!r}: fewer than two sound variants timed on {sw.workload}")
            continue
        alts = ", ".join(f"{v} {t:.1f} us" for v, t in sorted(sound.items(), key=lambda kv: kv[1]))
        log(f"  {sw.name:<14} {'keep' if best == now else 'SET'} {best!r} (now {now!r}) on {sw.workload}: {alts}")
    RESULTS["env"]["recommended_defaults"] = out
    return out


def plain_cupy_linear(X, y, W, b, lam):
    S = X @ W.T + b
    loss, G = plain_cupy_ce(S, y)
    dW = G.T @ X + 2 * lam * W
    return loss + lam * (W * W).sum(), dW, G.sum(axis=0)


def torch_linear(X, y, W, b, lam):
    W = W.detach().requires_grad_(True)
    b = b.detach().requires_grad_(True)
    J = F.cross_entropy(X @ W.T + b, y) + lam * (W * W).sum()
    J.backward()
    return J, W.grad, b.grad


def time_linear_variants(workload, sets, W, mean, step, floor=None, reps=20):
    """Time step(be, X, y) (a backend linear step) on a backend with each fused kernel of
    LINEAR_VARIANTS for the X type of sets, skipping "mma" where it does not apply."""
    key = "linear_u8" if sets[0][0].dtype == np.uint8 else "linear_f32"
    for variant in LINEAR_VARIANTS:
        be = backend_with(**{key: variant})
        if variant == "mma" and not be.linmma_plan(sets[0][0], W, mean):
            continue
        add_timing(workload, f"gpugrad fused {variant}",
                   time_batches(lambda X, y: step(be, X, y), sets, reps=reps), floor)


def bench_linear(bw, rng, compile_torch):
    be = gg.get_backend("cupy")
    n, d, C = LINEAR_TARGET  # --quick or not
    lam = 1e-3
    for xdtype in (np.float32, np.uint8):
        item = np.dtype(xdtype).itemsize
        floor = n * d * item / bw * 1e6  # one read of X; W, dW and the labels are < 1% of it
        k = 2 if xdtype == np.float32 else 4  # 2 x 805 MB float32 sets already exceed the L2 64 times
        W = cupy.asarray((rng.standard_normal((C, d)) * 0.01).astype(np.float32))
        b = cupy.asarray((rng.standard_normal(C) * 0.1).astype(np.float32))
        if xdtype == np.float32:
            sets = [(cupy.asarray(rng.standard_normal((n, d), dtype=np.float32)), cupy.asarray(rng.integers(0, C, n)))
                    for _ in range(k)]
            wl = linear_workload(n, d, C, "f32")
            time_linear_variants(wl, sets, W, None, lambda be, X, y: be.linear_grad(X, y, W, b, lam, "softmax"),
                                 floor, reps=5)
            add_timing(wl, "gpugrad API, validate=True", time_batches(lambda X, y: gg.linear_grad(X, y, W, b, lam), sets, reps=5), floor)
            add_timing(wl, "plain CuPy (cuBLAS)", time_batches(lambda X, y: plain_cupy_linear(X, y, W, b, lam), sets, reps=5), floor)
            if HAVE_TORCH:
                tW, tb = torch.as_tensor(W, device="cuda"), torch.as_tensor(b, device="cuda")
                tsets = [(torch.as_tensor(X, device="cuda"), torch.as_tensor(y, device="cuda")) for X, y in sets]
                add_timing(wl, "PyTorch eager", torch_time(lambda X, y: torch_linear(X, y, tW, tb, lam), tsets, reps=5), floor)
                if compile_torch:
                    cl = torch.compile(torch_linear)
                    add_timing(wl, "torch.compile", torch_time(lambda X, y: cl(X, y, tW, tb, lam), tsets, reps=5), floor)
        else:
            sets = [(cupy.asarray(rng.integers(0, 256, (n, d), dtype=np.uint8)), cupy.asarray(rng.integers(0, C, n)))
                    for _ in range(k)]
            mean = cupy.full(d, 120.0, np.float32)
            std = cupy.full(d, 64.0, np.float32)
            wl = linear_workload(n, d, C, "uint8")
            time_linear_variants(wl, sets, W, mean,
                                 lambda be, X, y: be.linear_grad(X, y, W, b, lam, "softmax", mean, std), floor, reps=5)
            add_timing(wl, "plain CuPy (normalise+cuBLAS)", time_batches(
                lambda X, y: plain_cupy_linear((X.astype(np.float32) - mean) / std, y, W, b, lam), sets, reps=5), floor)
        del sets
    bench_small_step(rng)


def bench_other_linear_kinds(bw, rng, shapes=(("f32n", LINEAR_TARGET), ("f64", (65536, 1024, 10)),
                                              ("u8f64", (65536, 1024, 10)))):
    """The "simt" kernel for float32 X normalised on the fly (at the target shape), float64 X and
    uint8 X under float64 weights (d = 1024, the longest float64 row it takes at C = 10), against
    plain CuPy."""
    be = gg.get_backend("cupy")
    lam = 1e-3
    for kind, (n, d, C) in shapes:
        dtype, norm = OTHER_KINDS[kind]
        xtype = np.uint8 if kind.startswith("u8") else dtype
        floor = n * d * np.dtype(xtype).itemsize / bw * 1e6  # one read of X
        W = cupy.asarray(rng.standard_normal((C, d)) * 0.01, dtype=dtype)
        b = cupy.asarray(rng.standard_normal(C) * 0.1, dtype=dtype)
        mean, std = (cupy.full(d, 0.5, dtype), cupy.full(d, 2.0, dtype)) if norm else (None, None)
        draw = ((lambda: rng.integers(0, 256, (n, d), dtype=np.uint8)) if xtype == np.uint8
                else (lambda: rng.standard_normal((n, d), dtype=dtype)))
        sets = [(cupy.asarray(draw()), cupy.asarray(rng.integers(0, C, n))) for _ in range(2)]
        wl = linear_workload(n, d, C, kind)
        assert be.linear_plan(sets[0][0], W, mean) is not None, wl
        add_timing(wl, "gpugrad fused simt", time_batches(
            lambda X, y: be.linear_grad(X, y, W, b, lam, "softmax", mean, std), sets, reps=5), floor)
        add_timing(wl, "plain CuPy (cuBLAS)", time_batches(
            lambda X, y: plain_cupy_linear(X if mean is None else (X - mean) / std, y, W, b, lam), sets, reps=5), floor)
        del sets


def bench_small_step(rng, n=100, d=64, C=10):
    """A digits mini-batch (`gpugrad train`'s default: 100 uint8 rows of 64 pixels): bound by the host
    cost of a call, which is what a training loop over small batches feels."""
    be = gg.get_backend("cupy")
    sets = [(cupy.asarray(rng.integers(0, 17, (n, d), dtype=np.uint8)), cupy.asarray(rng.integers(0, C, n)))
            for _ in range(4)]
    W = cupy.asarray((rng.standard_normal((C, d)) * 0.01).astype(np.float32))
    b = cupy.zeros(C, np.float32)
    mean, std = cupy.full(d, 4.9, np.float32), cupy.full(d, 6.0, np.float32)
    wl = linear_workload(n, d, C, "uint8")
    time_linear_variants(wl, sets, W, mean, lambda be, X, y: be.linear_grad(X, y, W, b, 1e-3, "softmax", mean, std))
    add_timing(wl, "gpugrad API, validate=False", time_batches(
        lambda X, y: gg.linear_grad(X, y, W, b, 1e-3, x_mean=mean, x_std=std, validate=False), sets))
    add_timing(wl, "plain CuPy (normalise+cuBLAS)", time_batches(
        lambda X, y: plain_cupy_linear((X.astype(np.float32) - mean) / std, y, W, b, 1e-3), sets))
    if HAVE_TORCH:
        tW, tb = torch.as_tensor(W, device="cuda"), torch.as_tensor(b, device="cuda")
        tm, ts = torch.as_tensor(mean, device="cuda"), torch.as_tensor(std, device="cuda")
        tsets = [(torch.as_tensor(X, device="cuda"), torch.as_tensor(y, device="cuda")) for X, y in sets]
        add_timing(wl, "PyTorch eager (normalise+matmul)", torch_time(
            lambda X, y: torch_linear((X.float() - tm) / ts, y, tW, tb, 1e-3), tsets))


# Text-like X (sparse_data.make_text, ~100 words a row of 100,000): the row kernel (20 classes) and
# cuSPARSE around the fused loss (100 classes); small enough to add ~15 s to the run.
SPARSE_SHAPES = ((32768, 100000, 100, 20), (32768, 100000, 100, 100))


def sparse_workload(n: int, d: int, nnz: int, C: int) -> str:
    return f"sparse step n={n} d={d} nnz/row={nnz} C={C} f32"


def plain_cupyx_sparse(X, y, W, b, lam):
    """The sparse step written the obvious way with cupyx.scipy.sparse (cuSPARSE products)."""
    S = X @ W.T + b
    loss, G = plain_cupy_ce(S, y)
    dW = G.T @ X + 2 * lam * W
    return loss + lam * (W * W).sum(), dW, G.sum(axis=0)


def torch_sparse_step(X, y, W, b, lam):
    """PyTorch: a sparse CSR tensor times W^T (torch.sparse.mm), cross-entropy, autograd for W, b."""
    W = W.detach().requires_grad_(True)
    b = b.detach().requires_grad_(True)
    J = F.cross_entropy(torch.sparse.mm(X, W.t()) + b, y) + lam * (W * W).sum()
    J.backward()
    return J, W.grad, b.grad


def bench_sparse(rng, shapes=SPARSE_SHAPES):
    """The sparse step on text-like CSR X (benchmarks/sparse_data.make_text: Zipf words, TF-IDF values)
    on the device: gpugrad's (the row kernel for C <= 32, cuSPARSE around the fused loss past it)
    against cupyx written the obvious way and PyTorch's sparse CSR matmul; each checked first
    against the float64 numpy step on the same X (a result that differs is recorded, not timed)."""
    from sparse_data import make_text
    be = gg.get_backend("cupy")
    lam = 1e-4
    for n, d, nnz, C in shapes:
        X, y = make_text(n, d, nnz, C, seed=int(rng.integers(1 << 30)))
        X = X.astype(np.float32)
        W = (rng.standard_normal((C, d)) * 0.1).astype(np.float32)
        b = (rng.standard_normal(C) * 0.1).astype(np.float32)
        Xd, yd = gg.sparse.to_backend(be, X), cupy.asarray(y)
        Wd, bd = cupy.asarray(W), cupy.asarray(b)
        wl = sparse_workload(n, d, nnz, C)
        ref = NP_BACKEND.linear_grad(X.astype(np.float64), y, W.astype(np.float64), b.astype(np.float64), lam, "softmax")
        ways = [("gpugrad", lambda X, y: be.linear_grad(X, y, Wd, bd, lam, "softmax"), [(Xd, yd)]),
                ("gpugrad API, validate=False", lambda X, y: gg.linear_grad(X, y, Wd, bd, lam, validate=False),
                 [(Xd, yd)]),
                ("plain cupyx (cuSPARSE)", lambda X, y: plain_cupyx_sparse(X, y, Wd, bd, lam), [(Xd, yd)])]
        if HAVE_TORCH:
            try:
                tX = torch.sparse_csr_tensor(torch.as_tensor(Xd.indptr.astype(np.int64), device="cuda"),
                                             torch.as_tensor(Xd.indices.astype(np.int64), device="cuda"),
                                             torch.as_tensor(Xd.data, device="cuda"), size=X.shape)
                tW, tb = torch.as_tensor(Wd, device="cuda"), torch.as_tensor(bd, device="cuda")
                ways.append(("PyTorch sparse CSR", lambda X, y: torch_sparse_step(X, y, tW, tb, lam),
                             [(tX, torch.as_tensor(yd, device="cuda"))]))
            except Exception as e:  # a peer that cannot run here is reported, not fatal
                log(f"  PyTorch sparse CSR not run: {type(e).__name__}: {e}")
        for name, fn, sets in ways:
            try:
                J, dW, db = fn(*sets[0])
                host = [a.detach().cpu().numpy() if hasattr(a, "detach") else cupy.asnumpy(a) for a in (J, dW, db)]
                ok = all(np.linalg.norm(np.asarray(g, np.float64) - r) <= 1e-4 * max(np.linalg.norm(r), 1e-30)
                         for g, r in zip(host, ref))
            except Exception as e:
                ok, host = False, f"{type(e).__name__}: {e}"
            record("sparse", f"{wl}: {name} vs numpy", ok)
            if not ok:
                continue
            timer = torch_time if name.startswith("PyTorch") else time_batches
            add_timing(wl, name, timer(fn, sets, reps=5))


FIRST_CALL = r"""
import time, sys
t0 = time.perf_counter()
import cupy, numpy as np
cupy.cuda.Device(0).use(); cupy.zeros(1); cupy.cuda.Device().synchronize()
t1 = time.perf_counter()
sys.path.insert(0, {root!r})
import gpugrad as gg
S = cupy.asarray(np.random.default_rng(0).standard_normal((256, 10)).astype(np.float32))
y = cupy.asarray(np.random.default_rng(1).integers(0, 10, 256))
gg.softmax_cross_entropy_grad(S, y); cupy.cuda.Device().synchronize()
t2 = time.perf_counter()
from gpugrad.backends import kernels
print(f"{{t1 - t0:.3f}} {{t2 - t1:.3f}} {{kernels.how_loaded()}}")
"""


def first_call_times():
    """Seconds from a fresh process's CUDA context to its first gradient, per way of loading."""
    out = {}
    code = FIRST_CALL.format(root=str(ROOT))
    env = dict(os.environ)
    env["CUPY_CACHE_DIR"] = tempfile.mkdtemp(prefix="gg_cupy_cache_")  # empty: the cold compile
    runs = [("fatbin", {}), ("nvrtc, cold CuPy cache", {"GPUGRAD_NO_FATBIN": "1"}),
            ("nvrtc, warm CuPy cache", {"GPUGRAD_NO_FATBIN": "1"})]
    for label, extra in runs:
        r = subprocess.run([sys.executable, "-c", code], env={**env, **extra}, capture_output=True, text=True)
        if r.returncode != 0:
            out[label] = f"failed: {r.stderr[-500:]}"
        else:
            ctx, first, how = r.stdout.strip().split(" ", 2)
            out[label] = dict(context_s=float(ctx), first_call_s=float(first), how=how)
        log(f"  first call, {label:<24}: {out[label]}")
    return out


def main():
    global LINEAR_VARIANTS, LONG_ROW_VARIANTS, ROW_CALLS
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--quick", action="store_true", help="leave out the tests' largest sizes (n = 65537)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile)")
    ap.add_argument("--skip-tests", action="store_true", help="time without running the GPU tests first "
                    "(every variant asked for is timed; none is recommended)")
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--linear-variants", default=",".join(LINEAR_VARIANTS),
                    help="fused linear kernels to test and time (comma-separated: simt, mma)")
    ap.add_argument("--long-rows-variants", default=",".join(LONG_ROW_VARIANTS),
                    help="kernels for long softmax rows to test and time (stream, prefetch, block)")
    ap.add_argument("--row-calls", default=",".join(ROW_CALLS),
                    help="host paths of the row-loss calls to test and time (cupy, direct)")
    args = ap.parse_args()
    LINEAR_VARIANTS = tuple(v for v in args.linear_variants.split(",") if v)
    LONG_ROW_VARIANTS = tuple(v for v in args.long_rows_variants.split(",") if v)
    ROW_CALLS = tuple(v for v in args.row_calls.split(",") if v)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(int(time.time()))

    dev = cupy.cuda.Device()
    props = cupy.cuda.runtime.getDeviceProperties(dev.id)
    env = RESULTS["env"]
    env.update(device=props["name"].decode() if isinstance(props["name"], bytes) else props["name"],
               cupy=cupy.__version__, numpy=np.__version__, torch=getattr(torch, "__version__", None),
               cuda_runtime=cupy.cuda.runtime.runtimeGetVersion(), driver=cupy.cuda.runtime.driverGetVersion(),
               date=time.strftime("%Y-%m-%d"), backend=gg.why_backend())
    log("== environment:", json.dumps(env))
    log("== first gradient call in a fresh process")
    env["first_call"] = first_call_times()
    kmod.get_function("gg_first_invalid")
    env["kernels"] = kmod.how_loaded()
    log("== kernels loaded from:", env["kernels"])

    groups = groups_wanted()
    if not args.skip_tests:
        log("== the GPU tests (pytest -m gpu tests/test_gpu_kernels.py), a process per group")
        passed = run_gpu_tests(groups, args.quick)
        # time only what passed: a kernel that traps would end this process's CUDA context
        LINEAR_VARIANTS = tuple(v for v in LINEAR_VARIANTS if v != "mma" or "mma" in passed)
        LONG_ROW_VARIANTS = tuple(v for v in LONG_ROW_VARIANTS if v != "prefetch" or "prefetch" in passed)
        ROW_CALLS = tuple(v for v in ROW_CALLS if v != "direct" or "direct" in passed)
        groups = [g for g in groups if g in passed or g == "established"]

    if not args.skip_timing:
        log("== timing | linear variants:", ",".join(LINEAR_VARIANTS), "| long-row variants:",
            ",".join(LONG_ROW_VARIANTS), "| row calls:", ",".join(ROW_CALLS))
        bw = copy_bandwidth()
        env["copy_bandwidth_TBps"] = bw / 1e12
        log(f"  device-to-device copy: {bw / 1e12:.2f} TB/s (read + write)")
        bench_ce(bw, rng)
        bench_linear(bw, rng, args.compile)
        if "other_kinds" in groups:
            bench_other_linear_kinds(bw, rng)
        if "sparse" in groups:
            bench_sparse(rng)
        host_breakdown()  # last: its experiments launch through the driver directly

    log("\n== summary:", env["device"], "| copy", f"{env.get('copy_bandwidth_TBps', 0):.2f} TB/s")
    log(f"correctness: {sum(r['ok'] for r in RESULTS['correctness'])} ok, {len(FAILURES)} failed")
    for f in FAILURES:
        log("  FAIL", f)
    if RESULTS["timing"]:
        log("fastest variant per switch whose tests passed (the defaults are plans.MEASURED):")
        recommend_defaults()
    (out / "results.json").write_text(json.dumps(RESULTS, indent=1))
    log(f"{'workload':<36}{'variant':<32}{'median us':>10}{'x floor':>9}")
    for r in RESULTS["timing"]:
        fl = f"{r['median_us'] / r['floor_us']:9.2f}" if r["floor_us"] else ""
        log(f"{r['workload']:<36}{r['variant']:<32}{r['median_us']:10.1f}{fl}")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())

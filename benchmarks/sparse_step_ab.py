"""Two builds of the CPU loops (kernels/host.c) side by side on the sparse momentum step.

    python benchmarks/sparse_step_ab.py                        # the working tree's host.c against HEAD's
    python benchmarks/sparse_step_ab.py --base HEAD~3 --rounds 12
    python benchmarks/sparse_step_ab.py --rows 20000 --rounds 2   # a smoke run

On a shared machine the same run can take a third longer from one minute to the next, so two builds
timed minutes apart say little about a change to the step. This builds both (``kernels/host.c`` of
the working tree as "B", of git revision ``--base`` as "A"), each as an extension module of its own
name with setup.py's flags, in a temporary folder, and alternates whole runs between them in one
process (AB, BA, AB, ...): each run is ``--epochs`` epochs of ``gpugrad.sparse_sgd.run`` (the
compiled momentum step, the sequential Dask pass's settings) over ``--rows`` rows of
``sparse_data.make_text``. It reports each pair's time ratio B/A and their median, and how far
apart the two builds' weights are: a change meant only to be faster should give the same weights
(or say by how much it does not). Both builds run under this tree's Python code, so the base's
``sparse_step`` must take the arguments this tree passes (it says so where it does not).
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE]

from sparse_data import make_text  # noqa: E402

SOURCE = "kernels/host.c"
MODULE = "_gpugrad_host"


def log(*a):
    print(*a, flush=True)


def setup_flags() -> list:
    """setup.py's compiler flags for the extension (its FLAGS, read rather than written again here)."""
    tree = ast.parse(open(os.path.join(ROOT, "setup.py")).read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "FLAGS" for t in node.targets):
            return eval(compile(ast.Expression(node.value), "setup.py", "eval"), {"sys": sys})
    raise RuntimeError("setup.py has no FLAGS")


def base_source(rev: str) -> str:
    """kernels/host.c at git revision rev."""
    out = subprocess.run(["git", "show", f"{rev}:{SOURCE}"], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"sparse_step_ab: cannot read {SOURCE} at revision {rev!r}: {out.stderr.strip()}")
    return out.stdout


def build(source: str, name: str, folder: str):
    """The extension built from ``source`` as module ``name`` in ``folder``, imported."""
    for old in (f'"{MODULE}"', f"PyInit_{MODULE}("):
        if source.count(old) != 1:
            raise SystemExit(f"sparse_step_ab: {SOURCE} does not name its module {MODULE} once ({old})")
    source = source.replace(f'"{MODULE}"', f'"{name}"').replace(f"PyInit_{MODULE}(", f"PyInit_{name}(")
    c_file = os.path.join(folder, f"{name}.c")
    with open(c_file, "w") as f:
        f.write(source)
    target = os.path.join(folder, name + sysconfig.get_config_var("EXT_SUFFIX"))
    cc = (sysconfig.get_config_var("CC") or "cc").split()
    cmd = cc + setup_flags() + ["-fPIC", "-shared", "-I" + sysconfig.get_paths()["include"], c_file, "-o", target]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"sparse_step_ab: building {name} failed:\n{out.stderr}")
    spec = importlib.util.spec_from_file_location(name, target)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def one_run(ext, X, y, args):
    """--epochs epochs of the compiled momentum step with ``ext`` as the loops: (seconds, W)."""
    from gpugrad.backends import host
    from gpugrad.backends.numpy_backend import NumpyBackend
    from gpugrad.training import sparse_sgd
    from gpugrad.training.data import n_batches
    host._ext = ext
    C, d = int(y.max()) + 1, X.shape[1]
    W, b = np.zeros((C, d), X.dtype), np.zeros(C, X.dtype)
    velocity = (np.zeros_like(W), np.zeros_like(b))
    steps = n_batches(X.shape[0], args.batch_size)
    order = np.random.default_rng(0).permutation(X.shape[0])
    start = time.perf_counter()
    for epoch in range(args.epochs):
        sparse_sgd.run(NumpyBackend(), X, y, None, W, b, loss=args.loss, lam=5e-5,
                       schedule=lambda t: args.lr * (1 - t / (args.epochs * steps)), t=epoch * steps, order=order,
                       batch_size=args.batch_size, batches=range(steps), momentum=0.9, velocity=velocity)
    return time.perf_counter() - start, W


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="HEAD", help="git revision of the A build (default HEAD)")
    ap.add_argument("--rows", type=int, default=100_000, help="rows of make_text (one Dask chunk of the benchmark)")
    ap.add_argument("--cols", type=int, default=100_000, help="columns (the vocabulary)")
    ap.add_argument("--nnz", type=int, default=100, help="distinct words a row, about")
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=500, help="rows a step")
    ap.add_argument("--epochs", type=int, default=2, help="epochs a run")
    ap.add_argument("--lr", type=float, default=4.0, help="the rate, falling linearly to 0 over the run")
    ap.add_argument("--loss", choices=("svm", "softmax"), default="svm")
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--rounds", type=int, default=8, help="AB pairs (each pair both builds once)")
    args = ap.parse_args(argv)
    X, y = make_text(args.rows, args.cols, args.nnz, args.classes, seed=0)
    X = X.astype(args.dtype)
    from gpugrad.backends import host
    saved = host._ext
    with tempfile.TemporaryDirectory() as folder:
        tag = f"{os.getpid()}_{int(time.time())}"
        A = build(base_source(args.base), f"{MODULE}_a{tag}", folder)
        with open(os.path.join(ROOT, SOURCE)) as f:
            B = build(f.read(), f"{MODULE}_b{tag}", folder)
        log(f"== A: {SOURCE} at {args.base}; B: the working tree's; {args.rows} x {args.cols} rows, "
            f"{args.classes} classes, {args.epochs} epochs of {args.batch_size}-row batches, {args.dtype}")
        times, weights = {"A": [], "B": []}, {}
        try:
            for r in range(args.rounds):
                for name, ext in ((("A", A), ("B", B)) if r % 2 == 0 else (("B", B), ("A", A))):
                    try:
                        seconds, W = one_run(ext, X, y, args)
                    except (TypeError, ValueError) as e:
                        if name == "B":
                            raise
                        raise SystemExit(f"sparse_step_ab: {SOURCE} at {args.base} does not take the arguments "
                                         f"this tree's Python passes it: {e}") from e
                    times[name].append(seconds)
                    weights.setdefault(name, W)
                log(f"  pair {r + 1}: A {times['A'][-1]:.3f} s, B {times['B'][-1]:.3f} s, "
                    f"B/A {times['B'][-1] / times['A'][-1]:.3f}")
        finally:
            host._ext = saved
    ratios = [b / a for a, b in zip(times["A"], times["B"])]
    diff = float(np.abs(weights["A"].astype(np.float64) - weights["B"]).max())
    same = bool(np.array_equal(weights["A"], weights["B"]))
    log(f"== B/A: median {statistics.median(ratios):.3f} over {len(ratios)} pairs "
        f"({', '.join(f'{q:.2f}' for q in ratios)}); weights "
        + ("the same, bit for bit" if same else f"differ by at most {diff:.3g}"))
    return {"ratios": ratios, "median": statistics.median(ratios), "same_weights": same, "max_weight_diff": diff}


if __name__ == "__main__":
    main()

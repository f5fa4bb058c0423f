"""The MLP's CPU targets, measured side by side: implementations in alternating rounds.

    python benchmarks/mlp_epoch.py                    # BLAS with its own threads, 7 rounds
    python benchmarks/mlp_epoch.py --blas-threads 1   # BLAS and PyTorch held to one thread
    python benchmarks/mlp_epoch.py --quick            # small sizes, 2 rounds: a smoke run

1. The MLP epoch: 3072-50-50-10 with batch norm, batch 100, SGD with momentum 0.9, lam 1e-3,
   N = 10,000 float32 rows (``gpugrad.bench``'s epoch workload at that N). One epoch per call of
   each of: gpugrad's compiled step through ``gpugrad.Trainer`` ("gpugrad numpy"), the same
   trainer with the generic backward pass ("gpugrad graph numpy", ``MLP(compiled=False)``), numpy
   written by hand ("numpy by hand", ``bench.mlp_epoch_by_hand``) and PyTorch eager
   (``torch.nn.Sequential`` of Linear, BatchNorm1d and ReLU with ``torch.optim.SGD``), all from
   the same start with the same shuffles. Targets: gpugrad <= 0.8x numpy by hand, <= 1x PyTorch.
2. ``MLPClassifier`` on digits at equal epochs (hidden (100,), Adam at 0.001, batches of 200,
   50 epochs, the same penalty; ``benchmarks/test_estimators.py``'s ``mlp_pair``) against
   scikit-learn's ``MLPClassifier``. Target: <= 0.7x.

Each round times every implementation once, in turn (wall clock around the call: for gpugrad a
``fit`` of one more epoch with ``check_input=False``), so a machine shared with other work slows
all of them alike within a round. The C heap is held first (``bench.steady_heap``): without it
the loop by hand faults on fresh pages every step or not at all, according to which
implementation ran before it. Reported per implementation: the median and the range of its
times; per ratio: the median and the range over rounds of (gpugrad's time / the peer's time in
the same round). The run reports; it does not fail on a slow round.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the checkout's gpugrad

from gpugrad.tools import bench  # noqa: E402

EPOCH_IMPLS = ("gpugrad numpy", "gpugrad graph numpy", "numpy by hand", "PyTorch eager CPU")
TARGETS = {("MLP epoch", "numpy by hand"): 0.8, ("MLP epoch", "PyTorch eager CPU"): 1.0,
           ("MLPClassifier digits", "scikit-learn MLPClassifier"): 0.7}


def rounds_of(cases: dict, rounds: int) -> dict:
    """{name: [seconds of each round]}: every case's fn called once a round, in turn (one warm-up call each first)."""
    for fn in cases.values():
        fn()
    times = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def summary(what: str, times: dict, ours: str) -> dict:
    """Medians and ranges of each implementation, and of ours / each peer round by round."""
    out = {"what": what, "times": {}, "ratios": {}}
    for name, ts in times.items():
        out["times"][name] = {"median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts), "all_s": ts}
    for name, ts in times.items():
        if name == ours:
            continue
        r = [a / b for a, b in zip(times[ours], ts)]
        out["ratios"][name] = {"median": statistics.median(r), "min": min(r), "max": max(r),
                               "target": TARGETS.get((what, name))}
    return out


def epoch_cases(N: int, d: int, skip=()) -> dict:
    """The MLP epoch implementations available here (PyTorch may be missing: then left out)."""
    w = bench._epoch("mlp", N, d, 10)
    inputs = bench.make_inputs(w)
    cases = {}
    for name in EPOCH_IMPLS:
        if name in skip:
            continue
        try:
            cases[name] = bench.IMPLEMENTATIONS[name].prepare(w, inputs).fn
        except bench.Unavailable as e:
            print(f"not run: {name}: {e}", file=sys.stderr)
    return cases


def digits_cases(epochs: int) -> dict:
    import importlib.util
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.preprocessing import StandardScaler
    # benchmarks/test_estimators.py by its path: tests/ has a module of the same name
    spec = importlib.util.spec_from_file_location("benchmarks_test_estimators", HERE / "test_estimators.py")
    est = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(est)
    X, _, y, _ = est.digits_split()
    X = StandardScaler().fit_transform(X)
    ours, theirs = est.mlp_pair(epochs)

    def fit(clf):
        def run():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                clf.fit(X, y)
        return run
    return {"gpugrad MLPClassifier": fit(ours), "scikit-learn MLPClassifier": fit(theirs)}


def report(result: dict) -> str:
    lines = [f"{result['what']}:"]
    for name, t in result["times"].items():
        lines.append(f"  {name:38s} median {t['median_s'] * 1e3:9.1f} ms   range {t['min_s'] * 1e3:.1f}-"
                     f"{t['max_s'] * 1e3:.1f} ms")
    for name, r in result["ratios"].items():
        target = "" if r["target"] is None else f"   target <= {r['target']}"
        lines.append(f"  {'gpugrad / ' + name:38s} median {r['median']:9.3f}      range {r['min']:.3f}-"
                     f"{r['max']:.3f}{target}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7, help="timed rounds (default 7)")
    ap.add_argument("--blas-threads", type=int, default=None,
                    help="hold BLAS and OpenMP (threadpoolctl) and PyTorch (torch.set_num_threads) to this "
                         "many threads (default: their own)")
    ap.add_argument("--quick", action="store_true", help="small sizes and 2 rounds: a smoke run")
    ap.add_argument("--skip", action="append", default=[], metavar="NAME",
                    help=f"leave out an MLP epoch implementation (one of {', '.join(EPOCH_IMPLS[1:])})")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args(argv)
    rounds = 2 if args.quick else args.rounds
    bench.steady_heap()  # the hand loop and PyTorch allocate: no page faults that depend on run order
    N, d, epochs = (300, 64, 2) if args.quick else (10_000, 3072, 50)
    limit, torch_threads = None, None
    if args.blas_threads is not None:
        from threadpoolctl import threadpool_limits
        limit = threadpool_limits(args.blas_threads)
        try:
            import torch
            torch_threads = torch.get_num_threads()
            torch.set_num_threads(args.blas_threads)
        except ImportError:
            pass
    try:
        unknown = set(args.skip) - set(EPOCH_IMPLS[1:])
        if unknown:
            ap.error(f"--skip takes {', '.join(EPOCH_IMPLS[1:])}; got {', '.join(sorted(unknown))}")
        results = [summary("MLP epoch", rounds_of(epoch_cases(N, d, args.skip), rounds), "gpugrad numpy"),
                   summary("MLPClassifier digits", rounds_of(digits_cases(epochs), rounds), "gpugrad MLPClassifier")]
    finally:
        if limit is not None:
            limit.restore_original_limits()
        if torch_threads is not None:
            import torch
            torch.set_num_threads(torch_threads)
    try:
        import torch
        torch_version = torch.__version__
    except ImportError:
        torch_version = None
    import sklearn
    env = {"machine": bench._cpu_name(), "python": platform.python_version(), "numpy": np.__version__,
           "torch": torch_version, "scikit-learn": sklearn.__version__, "rounds": rounds,
           "blas_threads": args.blas_threads, "sizes": {"N": N, "d": d, "digits_epochs": epochs},
           "date": time.strftime("%Y-%m-%d %H:%M")}
    print(f"{env['machine']}, numpy {env['numpy']}, torch {torch_version}, scikit-learn {env['scikit-learn']}; "
          f"{rounds} rounds, BLAS threads {args.blas_threads or 'its own'}; N = {N}, d = {d}, digits {epochs} epochs")
    for r in results:
        print(report(r))
    if args.json:
        Path(args.json).write_text(json.dumps({"environment": env, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

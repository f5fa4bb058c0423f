"""Sparse text-like data: gpugrad's estimators against scikit-learn's, in memory and on Dask.

Run by hand (minutes; the tests run every function of it at a small size):

    python benchmarks/sparse_bench.py                  # 200,000 x 100,000, ~100 words a row, 20 classes
    python benchmarks/sparse_bench.py --rounds 3 --dask
    python benchmarks/sparse_bench.py --rounds 3 --dask-only        # the Dask comparison alone
    python benchmarks/sparse_bench.py --rows 20000 --quick     # a smoke run

The data (benchmarks/sparse_data.make_text): TF-IDF rows of Zipf-distributed words with
class-dependent word frequencies, float64 CSR as TfidfVectorizer gives them; ``--rows`` training
rows and a quarter as many test rows, held out. Every method fits the same X and is scored on the
same test rows through its own predict.

- LogisticRegression (multinomial, C = 1, scikit-learn's defaults) with each solver of
  ``--lr-solvers``, each once; the fastest is the peer of the rounds.
  SoftmaxClassifier: the same objective (alpha = 1 / (C n)) by mini-batch SGD with Nesterov
  momentum and a rate falling linearly to 0 (``SOFTMAX``), float32, a fixed number of epochs.
- SGDClassifier(loss="hinge") (scikit-learn's defaults: alpha 1e-4, plain SGD one class against
  the rest, until its tolerance). SVMClassifier: the multi-class hinge at the same alpha, mini-batch
  SGD with Nesterov momentum and the linear rate (``SVM``), float32.
- Rounds alternate peer and gpugrad, ``--rounds`` of them: each row of the table is a median, the
  ratio is gpugrad's median over the peer's, both taken side by side.
- Peak memory of gpugrad's fits (tracemalloc, a separate untimed fit): the largest amount of memory
  allocated during ``fit`` beyond what was allocated before it, against the bytes of X's stored
  values and indices.
- ``--dask``: the training rows as a Dask array of CSR chunks (``--chunk`` rows each) persisted on a
  2-worker LocalCluster (one thread each): ``gpugrad.distributed.fit_linear`` (the hinge, SGD
  with momentum and the linear rate, ``sgd_pass="sequential"``: the model goes from chunk to
  chunk, each chunk's steps on the worker holding it; the rows as they are, ``standardize=False``)
  against dask-ml's ``Incremental(SGDClassifier(loss="hinge"))`` (one ``partial_fit`` a block, in
  order); skipped, with a line saying so, where dask-ml is not installed. ``--dask-only`` runs this
  comparison alone.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import gpugrad as gg  # noqa: E402
from sparse_data import make_text, split, stored_bytes  # noqa: E402

LR_SOLVERS = ("sag", "saga", "lbfgs", "newton-cg")
# gpugrad's settings for the text data: Nesterov momentum 0.95, the rate falling linearly to 0 at
# the end of the last epoch, float32; a fixed number of epochs (max_iter) without a tolerance.
SOFTMAX = dict(solver="sgd", batch_size=500, learning_rate="linear", learning_rate_init=80.0, momentum=0.95,
               max_iter=2, tol=None, dtype="float32")
SVM = dict(solver="sgd", batch_size=300, learning_rate="linear", learning_rate_init=1.5, momentum=0.95,
           max_iter=2, tol=None, dtype="float32", alpha=1e-4)
# Dask: the sequential pass (the model goes from chunk to chunk), heavy-ball momentum 0.9, rate 4 falling
# linearly to 0 over 2 epochs, chosen on this data (benchmarks/RESULTS.md, "Dask: the sequential pass").
DASK_SVM = dict(loss="svm", solver="sgd", sgd_pass="sequential", batch_size=500, learning_rate="linear",
                learning_rate_init=4.0, momentum=0.9, max_iter=2, dtype="float32", standardize=False)


def log(*a):
    print(*a, flush=True)


def timed(fit):
    """(the fitted estimator, wall seconds of fit)."""
    t = time.perf_counter()
    est = fit()
    return est, time.perf_counter() - t


def peak_bytes(fit) -> int:
    """The most memory allocated during fit() beyond what was allocated before it (tracemalloc:
    numpy's and scipy's arrays included)."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        fit()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def lr_peer(solver, n):
    from sklearn.linear_model import LogisticRegression
    return lambda X, y: LogisticRegression(solver=solver, C=1.0).fit(X, y)


def softmax(n, **kw):
    return lambda X, y: gg.SoftmaxClassifier(backend="numpy", random_state=0, alpha=1.0 / n,
                                             **{**SOFTMAX, **kw}).fit(X, y)


def sgd_peer():
    from sklearn.linear_model import SGDClassifier
    return lambda X, y: SGDClassifier(loss="hinge", random_state=0).fit(X, y)


def svm(**kw):
    return lambda X, y: gg.SVMClassifier(backend="numpy", random_state=0, **{**SVM, **kw}).fit(X, y)


def run_one(name, fit, data, rows):
    """Fit once, score on the test rows, append a result row."""
    Xtr, ytr, Xte, yte = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarnings of fixed-iteration fits
        est, seconds = timed(lambda: fit(Xtr, ytr))
    acc = float(est.score(Xte, yte))
    rows.append(dict(method=name, seconds=seconds, accuracy=acc))
    log(f"  {name:<44} {seconds:8.2f} s  accuracy {acc:.4f}")
    return est


def in_memory(data, rounds, lr_solvers, gg_kw=None):
    """The in-memory comparisons; returns (rows, summary)."""
    gg_kw = gg_kw or {}
    n = data[0].shape[0]
    rows = []
    log("== LogisticRegression, each solver once (the fastest is the peer)")
    lr_times = {}
    for s in lr_solvers:
        run_one(f"LogisticRegression(solver={s!r})", lr_peer(s, n), data, rows)
        lr_times[s] = rows[-1]["seconds"]
    fastest = min(lr_times, key=lr_times.get)
    pairs = [(f"LogisticRegression(solver={fastest!r})", lr_peer(fastest, n), "SoftmaxClassifier",
              softmax(n, **gg_kw.get("softmax", {}))),
             ("SGDClassifier(loss='hinge')", sgd_peer(), "SVMClassifier", svm(**gg_kw.get("svm", {})))]
    for r in range(rounds):
        log(f"== round {r + 1} of {rounds}")
        for peer_name, peer, ours_name, ours in pairs:
            order = [(peer_name, peer), (ours_name, ours)]
            for name, fit in (order if r % 2 == 0 else order[::-1]):  # alternate which goes first
                run_one(name, fit, data, rows)
    summary = {}
    for peer_name, _, ours_name, _ in pairs:
        mine = [r for r in rows if r["method"] == ours_name]
        theirs = [r for r in rows if r["method"] == peer_name][-rounds:]
        summary[ours_name] = dict(
            peer=peer_name, seconds=statistics.median(r["seconds"] for r in mine),
            peer_seconds=statistics.median(r["seconds"] for r in theirs),
            accuracy=statistics.median(r["accuracy"] for r in mine),
            peer_accuracy=statistics.median(r["accuracy"] for r in theirs),
            spread=[round(r["seconds"], 2) for r in mine], peer_spread=[round(r["seconds"], 2) for r in theirs])
        s = summary[ours_name]
        s["ratio"] = s["seconds"] / s["peer_seconds"]
    return rows, summary


def memory(data, gg_kw=None):
    """Peak bytes of gpugrad's two fits against the bytes of X's stored values and indices."""
    gg_kw = gg_kw or {}
    Xtr, ytr = data[0], data[1]
    x_bytes = stored_bytes(Xtr)
    out = {"X_bytes": x_bytes}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, fit in (("SoftmaxClassifier", softmax(Xtr.shape[0], **gg_kw.get("softmax", {}))),
                          ("SVMClassifier", svm(**gg_kw.get("svm", {})))):
            peak = peak_bytes(lambda: fit(Xtr, ytr))
            out[name] = dict(peak_bytes=peak, x_ratio=peak / x_bytes)
            log(f"  {name:<20} peak {peak / 2**20:8.1f} MiB = {peak / x_bytes:.2f} x X's "
                f"{x_bytes / 2**20:.1f} MiB")
    return out


def dask_comparison(data, rounds, chunk, client=None, gg_kw=None):
    """gpugrad.distributed.fit_linear against dask-ml's Incremental(SGDClassifier(loss="hinge")) on the
    training rows as a Dask array of CSR chunks persisted on the cluster; None without dask-ml."""
    try:
        from dask_ml.wrappers import Incremental
    except ImportError:
        log("== Dask: dask-ml is not installed (pip install dask-ml): comparison skipped")
        return None
    import dask
    import dask.array as da
    from sklearn.linear_model import SGDClassifier
    from gpugrad.sklearn_dask import distributed as ggd
    Xtr, ytr, Xte, yte = data
    X = da.from_array(Xtr, chunks=(chunk, Xtr.shape[1]), asarray=False)
    y = da.from_array(ytr, chunks=chunk)
    X, y = (client.persist([X, y]) if client is not None else dask.persist(X, y))
    classes = np.unique(ytr)
    kw = {**DASK_SVM, **(gg_kw or {})}
    rows = []

    def ours():
        fit = ggd.fit_linear(X, y, lam=1e-4 / 2, random_state=0, **kw)
        model, classes_ = fit["model"], fit["classes_"]
        return model, classes_

    def theirs():
        inc = Incremental(SGDClassifier(loss="hinge", random_state=0))
        return inc.fit(X, y, classes=classes)

    for r in range(rounds):
        log(f"== Dask round {r + 1} of {rounds}")
        order = [("dask-ml Incremental(SGDClassifier(loss='hinge'))", theirs), ("gpugrad.distributed.fit_linear", ours)]
        for name, fit in (order if r % 2 == 0 else order[::-1]):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out, seconds = timed(fit)
            if name.startswith("gpugrad"):
                model, classes_ = out
                pred = classes_[model.predict(Xte)]
            else:
                pred = out.predict(Xte)
            acc = float((np.asarray(pred) == yte).mean())
            rows.append(dict(method=name, seconds=seconds, accuracy=acc))
            log(f"  {name:<52} {seconds:8.2f} s  accuracy {acc:.4f}")
    mine = [r for r in rows if r["method"].startswith("gpugrad")]
    theirs_rows = [r for r in rows if not r["method"].startswith("gpugrad")]
    summary = dict(seconds=statistics.median(r["seconds"] for r in mine),
                   peer_seconds=statistics.median(r["seconds"] for r in theirs_rows),
                   accuracy=statistics.median(r["accuracy"] for r in mine),
                   peer_accuracy=statistics.median(r["accuracy"] for r in theirs_rows),
                   spread=[round(r["seconds"], 2) for r in mine],
                   peer_spread=[round(r["seconds"], 2) for r in theirs_rows])
    summary["ratio"] = summary["seconds"] / summary["peer_seconds"]
    return rows, summary


@contextlib.contextmanager
def dask_client():
    """The comparison's cluster: a 2-worker LocalCluster (one thread each) and its Client."""
    from distributed import Client, LocalCluster
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=50) as cluster, Client(cluster) as client:
        yield client


def product_orders(X, C=20, rows=(500, None), repeat=7, seed=0):
    """Seconds (median of ``repeat``, the variants alternating) of the ways to form the sparse step's
    two products with scipy.sparse, on the first `rows` rows of CSR X (None: all) in float32:
    S = X W^T as X @ W.T or (W @ X^T)^T; dW = G^T X as G.T @ X, as (X^T @ G)^T, and either made
    C-contiguous (what the optimiser's update reads), and one class at a time (X^T @ G[:, c])."""
    rng = np.random.default_rng(seed)
    out = {}
    for n in rows:
        Xb = X[:n].astype(np.float32) if n else X.astype(np.float32)
        d = Xb.shape[1]
        W = rng.standard_normal((C, d)).astype(np.float32)
        G = rng.standard_normal((Xb.shape[0], C)).astype(np.float32)
        Gt = np.ascontiguousarray(G.T)
        XT = Xb.T
        ways = {"S = X @ W.T": lambda: Xb @ W.T,
                "S = (W @ X.T).T": lambda: (W @ XT).T,
                "dW = G.T @ X": lambda: G.T @ Xb,
                "dW = (X.T @ G).T": lambda: (XT @ G).T,
                "dW = G.T @ X, C-contiguous": lambda: np.ascontiguousarray(G.T @ Xb),
                "dW = (X.T @ G).T, C-contiguous": lambda: np.ascontiguousarray((XT @ G).T),
                "dW = one class at a time": lambda: np.stack([XT @ Gt[c] for c in range(C)])}
        times = {k: [] for k in ways}
        for _ in range(repeat):
            for k, f in ways.items():
                t = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t)
        out[Xb.shape[0]] = {k: statistics.median(v) for k, v in times.items()}
        log(f"== scipy.sparse products, {Xb.shape[0]} rows x {d}, C = {C}, float32 (median of {repeat})")
        for k, v in out[Xb.shape[0]].items():
            log(f"  {k:<34} {v * 1e3:9.2f} ms")
    return out


def report(summary, mem, dask_summary):
    log("\n== summary (medians; ratio = gpugrad / peer, side by side)")
    for name, s in summary.items():
        log(f"  {name:<18} {s['seconds']:7.2f} s (spread {s['spread']}), accuracy {s['accuracy']:.4f} | "
            f"{s['peer']}: {s['peer_seconds']:.2f} s (spread {s['peer_spread']}), accuracy {s['peer_accuracy']:.4f} "
            f"| ratio {s['ratio']:.2f}, accuracy {s['accuracy'] - s['peer_accuracy']:+.4f}")
    if mem:
        for name in ("SoftmaxClassifier", "SVMClassifier"):
            log(f"  {name:<18} peak memory {mem[name]['x_ratio']:.2f} x X's stored values and indices")
    if dask_summary:
        s = dask_summary
        log(f"  Dask: gpugrad {s['seconds']:.2f} s (spread {s['spread']}), accuracy {s['accuracy']:.4f} | dask-ml "
            f"Incremental {s['peer_seconds']:.2f} s (spread {s['peer_spread']}), accuracy {s['peer_accuracy']:.4f} | "
            f"ratio {s['ratio']:.2f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=200_000, help="training rows (a quarter as many more are tested)")
    ap.add_argument("--cols", type=int, default=100_000)
    ap.add_argument("--nnz", type=int, default=100, help="distinct words a row, about")
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--lr-solvers", default=",".join(LR_SOLVERS))
    ap.add_argument("--dask", action="store_true", help="also the Dask comparison (2-worker LocalCluster)")
    ap.add_argument("--dask-only", action="store_true",
                    help="the Dask comparison alone (no in-memory fits, no memory peaks)")
    ap.add_argument("--chunk", type=int, default=100_000, help="rows per Dask chunk")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--quick", action="store_true", help="leave out the timing of the product shapes")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    import platform
    import scipy
    import sklearn
    log(f"== {platform.processor() or platform.machine()}, numpy {np.__version__}, scipy {scipy.__version__}, "
        f"scikit-learn {sklearn.__version__}, gpugrad {gg.__version__}")
    t = time.perf_counter()
    X, y = make_text(args.rows + args.rows // 4, args.cols, args.nnz, args.classes, seed=args.seed)
    data = split(X, y, args.rows // 4)
    log(f"== data: {args.rows} x {args.cols}, {data[0].nnz / args.rows:.1f} stored values a row, "
        f"{args.classes} classes, {args.rows // 4} test rows ({time.perf_counter() - t:.1f} s to make)")
    orders = None if args.quick or args.dask_only else product_orders(data[0])
    rows, summary, mem = [], {}, None
    if not args.dask_only:
        rows, summary = in_memory(data, args.rounds, [s for s in args.lr_solvers.split(",") if s])
        mem = None if args.no_memory else memory(data)
    dask_out = None
    if args.dask or args.dask_only:
        with dask_client() as client:
            dask_out = dask_comparison(data, args.rounds, args.chunk, client)
    report(summary, mem, dask_out[1] if dask_out else None)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(rows=rows, summary=summary, memory=mem, dask=dask_out,
                                                   product_orders=orders), indent=1))
    return summary, mem, dask_out


if __name__ == "__main__":
    main()

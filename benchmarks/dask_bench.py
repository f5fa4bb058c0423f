"""Training on a Dask array across a 2-worker LocalCluster: gpugrad against dask-ml.

Run by hand (minutes; not part of the test suite):

    python benchmarks/dask_bench.py                       # 2,000,000 x 100 float32, C = 10
    python benchmarks/dask_bench.py --rows 200000 --quick # a smoke run

The problem is scikit-learn's ``make_classification`` (10 classes; and a two-class version of it
with the same options), float32, in chunks of 100,000 rows, persisted on the workers once before
any timing. Every method trains on the same Dask array; test accuracy is measured on held-out
rows (a Dask array on the same workers) through each method's own predict. Timings are wall
clock of ``fit`` alone; run both sides in one run, since only ratios taken side by side mean
anything on a shared machine.

- gpugrad: ``gpugrad.distributed.fit_linear`` with solver "lbfgs" (the exact optimum) and "sgd"
  (local momentum SGD, parameters averaged once an epoch).
- dask-ml: ``Incremental(SGDClassifier(loss="log_loss"))`` (one ``partial_fit`` per block, in
  order), and on the two-class version ``dask_ml.linear_model.LogisticRegression`` with
  solver="lbfgs" (the same algorithm as gpugrad's) and with its default solver (ADMM), the
  latter given up after ``--budget`` seconds.
"""
from __future__ import annotations

import argparse
import json
import threading
import time

import numpy as np


def make_data(rows, test_rows, features, classes, chunk, seed, client):
    """(X, y, X_test, y_test) Dask arrays persisted on the workers, float32 X."""
    import dask.array as da
    from distributed import wait
    from sklearn.datasets import make_classification
    X, y = make_classification(n_samples=rows + test_rows, n_features=features, n_informative=30,
                               n_redundant=20, n_classes=classes, n_clusters_per_class=1,
                               class_sep=1.0, flip_y=0.01, random_state=seed)
    X = X.astype(np.float32)
    parts = (da.from_array(X[:rows], chunks=(chunk, features)), da.from_array(y[:rows], chunks=chunk),
             da.from_array(X[rows:], chunks=(chunk, features)), da.from_array(y[rows:], chunks=chunk))
    del X, y
    parts = client.persist(list(parts))
    wait(parts)
    return parts


def timed(run):
    t = time.perf_counter()
    out = run()
    return out, time.perf_counter() - t


def accuracy(pred, y_test):
    return float((pred == y_test).mean().compute())


def gpugrad_fit(X, y, X_test, y_test, **kw):
    from gpugrad import distributed as ggd
    fit, seconds = timed(lambda: ggd.fit_linear(X, y, **kw))
    pred = ggd.predict(fit["model"], fit["classes_"], X_test)
    return {"seconds": seconds, "accuracy": accuracy(pred, y_test), "iterations": fit["n_iter_"]}


def incremental_sgd(X, y, X_test, y_test, seed):
    from dask_ml.wrappers import Incremental
    from sklearn.linear_model import SGDClassifier
    inc = Incremental(SGDClassifier(loss="log_loss", random_state=seed))
    classes = np.arange(int(y.max().compute()) + 1)  # make_classification labels 0..C-1
    _, seconds = timed(lambda: inc.fit(X, y, classes=classes))
    return {"seconds": seconds, "accuracy": accuracy(inc.predict(X_test), y_test), "iterations": 1}


def dask_ml_logistic(X, y, X_test, y_test, budget, **kw):
    """dask-ml's LogisticRegression (``kw``: its options); None when fit outlasts ``budget`` s
    (then it is left running in a daemon thread: run it last)."""
    from dask_ml.linear_model import LogisticRegression
    lr = LogisticRegression(**kw)
    done = {}
    thread = threading.Thread(target=lambda: done.update(out=timed(lambda: lr.fit(X, y))),
                              daemon=True)
    thread.start()
    thread.join(budget)
    if thread.is_alive():
        return {"seconds": float("nan"), "accuracy": float("nan"), "iterations": None,
                "note": f"not finished after {budget} s"}
    return {"seconds": done["out"][1], "accuracy": accuracy(lr.predict(X_test), y_test),
            "iterations": getattr(lr, "n_iter_", None)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--test-rows", type=int, default=400_000)
    p.add_argument("--features", type=int, default=100)
    p.add_argument("--chunk", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="skip dask-ml's LogisticRegression (admm)")
    p.add_argument("--budget", type=float, default=600,
                   help="seconds after which a dask-ml LogisticRegression fit is given up")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)

    from distributed import Client, LocalCluster
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=None, silence_logs=50)
    client = Client(cluster)
    results = []
    lam = 1e-5
    for C in (10, 2):
        t = time.perf_counter()
        X, y, X_test, y_test = make_data(args.rows, args.test_rows, args.features, C, args.chunk,
                                         args.seed, client)
        print(f"C={C}: data {X.shape} {X.dtype} in {X.numblocks[0]} chunks, persisted in "
              f"{time.perf_counter() - t:.1f} s", flush=True)
        runs = {
            "gpugrad lbfgs float32": lambda: gpugrad_fit(X, y, X_test, y_test, lam=lam,
                                                         dtype="float32", max_iter=100),
            "gpugrad sgd momentum, 3 epochs": lambda: gpugrad_fit(
                X, y, X_test, y_test, lam=lam, solver="sgd", dtype="float32", max_iter=3,
                learning_rate_init=0.01, batch_size=200),
            "gpugrad sgd momentum, 1 epoch": lambda: gpugrad_fit(
                X, y, X_test, y_test, lam=lam, solver="sgd", dtype="float32", max_iter=1,
                learning_rate_init=0.01, batch_size=200),
            "dask-ml Incremental(SGDClassifier log_loss)": lambda: incremental_sgd(
                X, y, X_test, y_test, args.seed),
        }
        if C == 2:
            runs["dask-ml LogisticRegression(solver='lbfgs')"] = lambda: dask_ml_logistic(
                X, y, X_test, y_test, args.budget, solver="lbfgs")
            if not args.quick:  # last: when it outlasts the budget it keeps running
                runs["dask-ml LogisticRegression() (admm)"] = lambda: dask_ml_logistic(
                    X, y, X_test, y_test, args.budget)
        for name, run in runs.items():
            r = {"classes": C, "method": name, **run()}
            results.append(r)
            print(f"  {name:45s} {r['seconds']:8.2f} s  test accuracy {r['accuracy']:.4f}  "
                  f"iterations {r['iterations']} {r.get('note', '')}", flush=True)
        del X, y, X_test, y_test
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    client.close()
    cluster.close()
    return results


if __name__ == "__main__":
    main()

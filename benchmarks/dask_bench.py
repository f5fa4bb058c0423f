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

``--default`` measures what users call instead, the estimator with its defaults on a Dask array:

    python benchmarks/dask_bench.py --default --rounds 5          # 350,000 x 100, C = 10
    python benchmarks/dask_bench.py --default --rounds 5 --profile

``gg.SoftmaxClassifier(random_state=0).fit(X, y)`` (``solver="auto"``) against dask-ml's
``Incremental(SGDClassifier(loss="log_loss", random_state=0))`` on the same persisted Dask array:
a Gaussian mixture of 10 classes (class c's rows are N(mu_c, I) in 100 dimensions, mu_c drawn
once from N(0, 0.42^2 I), labels uniform), float32, 350,000 training rows in chunks of 50,000 and
50,000 test rows, on a 2-worker LocalCluster (1 thread each). The two fits take turns (the first
of each round alternates), after one untimed fit of each; the report gives the median fit time
of each, the median of the rounds' ratios and their range, test accuracy through each method's
predict, and the share of test predictions on which the Dask fit agrees with the same estimator
fitted in memory on the same rows. ``--lbfgs`` adds ``solver="lbfgs"`` (the exact optimum) to
the rounds; ``--profile`` adds where the default fit's time went (task compute time by kind,
from the scheduler's task stream). Without dask-ml installed the comparison is skipped with a
message and the gpugrad side is still timed.
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
    from gpugrad.sklearn_dask import distributed as ggd
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


def gaussian_mixture(rows, features=100, classes=10, sep=0.42, seed=0):
    """(X float32 (rows, features), y int64 (rows,)): class c's rows are N(mu_c, I), the means
    mu_c drawn once from N(0, sep^2 I), the labels uniform over the classes."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((classes, features)) * sep
    y = rng.integers(0, classes, rows)
    X = rng.standard_normal((rows, features), dtype=np.float32)
    X += means[y].astype(np.float32)
    return X, y


def have_dask_ml():
    try:
        import dask_ml  # noqa: F401
    except ImportError:
        return False
    return True


def default_fit(X, y, X_test, seed=0, **options):
    """``gg.SoftmaxClassifier(random_state=seed, **options).fit(X, y)`` on the Dask array, timed;
    its test predictions (numpy)."""
    import gpugrad as gg
    clf, seconds = timed(lambda: gg.SoftmaxClassifier(random_state=seed, **options).fit(X, y))
    return {"seconds": seconds, "pred": clf.predict(X_test).compute(), "iterations": clf.n_iter_}


def incremental_fit(X, y, X_test, classes, seed=0):
    """dask-ml's ``Incremental(SGDClassifier(loss="log_loss"))``, timed; its test predictions."""
    from dask_ml.wrappers import Incremental
    from sklearn.linear_model import SGDClassifier
    inc = Incremental(SGDClassifier(loss="log_loss", random_state=seed))
    _, seconds = timed(lambda: inc.fit(X, y, classes=classes))
    return {"seconds": seconds, "pred": np.asarray(inc.predict(X_test).compute()), "iterations": 1}


def task_profile(client, run):
    """run() under the scheduler's task stream: (run's result, {task kind: (tasks, compute
    seconds summed over the workers)}); a gpugrad task's kind is the word after 'gpugrad-'."""
    from distributed import get_task_stream
    with get_task_stream(client) as stream:
        out = run()
    kinds = {}
    for rec in stream.data:
        key = str(rec["key"])
        kind = (key.split("gpugrad-", 1)[1].split("-")[0] if "gpugrad-" in key
                else key.strip("('\"").split("-")[0])
        busy = sum(s["stop"] - s["start"] for s in rec["startstops"] if s["action"] == "compute")
        n, t = kinds.get(kind, (0, 0.0))
        kinds[kind] = (n + 1, t + busy)
    return out, kinds


def default_vs_incremental(client, rounds=5, rows=350_000, test_rows=50_000, features=100,
                           classes=10, chunk=50_000, seed=0, profile=False, lbfgs=False):
    """The estimator's defaults against Incremental (see the module docstring); returns the
    figures as a dict and prints them."""
    import dask.array as da
    from distributed import wait
    import gpugrad as gg
    X_all, y_all = gaussian_mixture(rows + test_rows, features, classes, seed=seed)
    X_np, y_np, Xt_np, yt_np = X_all[:rows], y_all[:rows], X_all[rows:], y_all[rows:]
    parts = client.persist([da.from_array(X_np, chunks=(chunk, features)),
                            da.from_array(y_np, chunks=chunk),
                            da.from_array(Xt_np, chunks=(chunk, features))])
    wait(parts)
    X, y, X_test = parts
    in_memory = gg.SoftmaxClassifier(random_state=seed, backend="numpy").fit(X_np, y_np)
    in_memory = in_memory.predict(Xt_np)
    runs = {"gpugrad SoftmaxClassifier() default": lambda: default_fit(X, y, X_test, seed)}
    if lbfgs:
        runs["gpugrad SoftmaxClassifier(solver='lbfgs')"] = lambda: default_fit(
            X, y, X_test, seed, solver="lbfgs")
    if have_dask_ml():
        runs["dask-ml Incremental(SGDClassifier log_loss)"] = lambda: incremental_fit(
            X, y, X_test, np.arange(classes), seed)
    else:
        print("dask-ml is not installed: Incremental(SGDClassifier) is not measured "
              "(pip install dask-ml)", flush=True)
    for run in runs.values():   # untimed: imports and first calls on the workers
        run()
    names = list(runs)
    times, last = {k: [] for k in names}, {}
    for r in range(rounds):
        for k in (names if r % 2 == 0 else names[::-1]):
            last[k] = runs[k]()
            times[k].append(last[k]["seconds"])
    out = {"rows": rows, "chunk": chunk, "rounds": rounds, "methods": {}}
    print(f"{rows} x {features} float32, {classes} classes, chunks of {chunk} rows; "
          f"{rounds} rounds taking turns; fit time:", flush=True)
    for k in names:
        t = np.array(times[k])
        acc = float((last[k]["pred"] == yt_np).mean())
        agree = float((last[k]["pred"] == in_memory).mean())
        out["methods"][k] = {"seconds": t.tolist(), "median": float(np.median(t)), "accuracy": acc,
                             "agreement_with_in_memory": agree, "iterations": last[k]["iterations"]}
        print(f"  {k:45s} median {np.median(t):6.2f} s (min {t.min():.2f}, max {t.max():.2f})  "
              f"test accuracy {acc:.4f}  agrees with in-memory fit {agree:.4f}", flush=True)
    peer = next((k for k in names if k.startswith("dask-ml")), None)
    for k in names if peer else ():
        if k == peer:
            continue
        ratios = np.array(times[k]) / np.array(times[peer])
        out.setdefault("ratio", {})[k] = {"median": float(np.median(ratios)),
                                          "min": float(ratios.min()), "max": float(ratios.max())}
        print(f"  ratio {k} / Incremental: median {np.median(ratios):.2f} "
              f"(rounds {ratios.min():.2f}-{ratios.max():.2f})", flush=True)
    if profile:
        fit, kinds = task_profile(client, runs[names[0]])
        out["profile"] = {"seconds": fit["seconds"], "tasks": kinds}
        print(f"  where gpugrad's {fit['seconds']:.2f} s went "
              "(task compute summed over the workers):")
        for kind, (n, busy) in sorted(kinds.items(), key=lambda kv: -kv[1][1]):
            print(f"    {kind:12s} {n:4d} tasks  {busy:6.2f} s")
    return out


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
    p.add_argument("--default", action="store_true",
                   help="the estimator's defaults against Incremental(SGDClassifier) (see above)")
    p.add_argument("--rounds", type=int, default=5, help="--default: timed rounds")
    p.add_argument("--profile", action="store_true",
                   help="--default: where gpugrad's fit time goes")
    p.add_argument("--lbfgs", action="store_true",
                   help="--default: also time SoftmaxClassifier(solver='lbfgs') in the rounds")
    args = p.parse_args(argv)

    from distributed import Client, LocalCluster
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=None, silence_logs=50)
    client = Client(cluster)
    if args.default:   # its own sizes unless given: 350,000 rows in chunks of 50,000
        rows = 350_000 if args.rows == p.get_default("rows") else args.rows
        chunk = 50_000 if args.chunk == p.get_default("chunk") else args.chunk
        test_rows = 50_000 if args.test_rows == p.get_default("test_rows") else args.test_rows
        results = default_vs_incremental(client, args.rounds, rows=rows, test_rows=test_rows,
                                         features=args.features, chunk=chunk, seed=args.seed,
                                         profile=args.profile, lbfgs=args.lbfgs)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
        client.close()
        cluster.close()
        return results
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

"""Training on Dask arrays (gpugrad.distributed) on a 2-process LocalCluster and on the local scheduler.

The reference is the in-memory computation the estimators make: ``gpugrad.optim.lbfgs`` over
``be.linear_grad`` on the whole array, from the same start and with the same normalisation.
"""
import os
import signal
import types

import numpy as np
import pytest

import deps

da = deps.require("dask.array")
distributed = deps.require("distributed")
import dask  # noqa: E402

from gpugrad.sklearn_dask import distributed as ggd  # noqa: E402
from gpugrad import get_backend  # noqa: E402
from gpugrad.training.data import normalisation  # noqa: E402
from gpugrad.training.models import LinearClassifier  # noqa: E402
from gpugrad.training.optim import lbfgs  # noqa: E402
from references import sgd_reference  # noqa: E402

# A cluster that stops answering (a worker that never comes back, a machine far overloaded) must fail
# its test, not hold the whole run: each test has a deadline (pytest-timeout, thread method so that
# it also ends a test blocked inside the client's event loop).
pytestmark = pytest.mark.timeout(240, method="thread")

N, D, C, ROWS = 4000, 8, 3, 500
LAM = 1e-3


def make_problem(seed=0, n=N, rows=ROWS):
    """X (n, D) float64 and labels in {"a", "b", "c"}, built by the workers block by block
    (nothing but the graph leaves this process), plus per-row weights."""
    rng = da.random.default_rng(seed)
    X = rng.standard_normal((n, D), chunks=(rows, D)) * np.arange(1, D + 1) + 2.0
    W = np.random.default_rng(seed + 1).standard_normal((D, C))
    noise = rng.standard_normal((n, C), chunks=(rows, C)) * 6.0
    y = da.from_array(np.array(["a", "b", "c"]), chunks=-1)[(X @ W + noise).argmax(axis=1)]
    w = rng.uniform(0.5, 2.0, n, chunks=rows)
    return X, y, w


def in_memory_fit(Xn, yn, wn=None, *, loss="softmax", lam=LAM, seed=0, tol=1e-10, max_iter=500):
    """L-BFGS over the whole array in memory: the same start, normalisation and cost."""
    classes, y_idx = np.unique(yn, return_inverse=True)
    mean, std = normalisation(Xn)
    be = get_backend("numpy")
    start = LinearClassifier(Xn.shape[1], len(classes), loss, dtype="float64", backend="numpy",
                             seed=seed).params

    def value_and_grad(p):
        J, dW, db = be.linear_grad(Xn, y_idx, p["W"], p["b"], lam, loss, mean, std, wn)
        return float(J), {"W": dW, "b": db}

    params, n_iter, _ = lbfgs(value_and_grad, {k: v.astype(np.float64) for k, v in start.items()},
                              max_iter=max_iter, tol=tol)
    return params, classes, mean, std


def relative_error(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=":0", silence_logs=50)
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


@pytest.fixture(scope="module")
def problem():
    X, y, w = make_problem()
    with dask.config.set(scheduler="sync"):
        Xn, yn, wn = dask.compute(X, y, w)
    return X, y, w, Xn, yn, wn


# ---- L-BFGS equals the in-memory fit ---------------------------------------------------------------

def test_lbfgs_on_local_scheduler_equals_in_memory_fit(problem):
    X, y, _, Xn, yn, _ = problem
    ref, classes, mean, std = in_memory_fit(Xn, yn)
    with dask.config.set(scheduler="threads"):
        fit = ggd.fit_linear(X, y, lam=LAM, tol=1e-10, max_iter=500)
    model = fit["model"]
    assert fit["classes_"].tolist() == classes.tolist()
    np.testing.assert_allclose(model.buffers["x_mean"], mean, rtol=1e-12)
    np.testing.assert_allclose(model.buffers["x_std"], std, rtol=1e-12)
    assert relative_error(model.params["W"], ref["W"]) < 1e-6
    assert relative_error(model.params["b"], ref["b"]) < 1e-6
    assert len(fit["loss_curve_"]) == fit["n_iter_"]


def test_weighted_lbfgs_on_cluster_equals_in_memory_fit(client, problem):
    X, y, w, Xn, yn, wn = problem
    ref, _, _, _ = in_memory_fit(Xn, yn, wn, seed=5, tol=1e-8)
    fit = ggd.fit_linear(X, y, sample_weight=w, lam=LAM, tol=1e-8, max_iter=500, random_state=5)
    assert relative_error(fit["model"].params["W"], ref["W"]) < 1e-6
    assert relative_error(fit["model"].params["b"], ref["b"]) < 1e-6


def test_svm_lbfgs_on_cluster_equals_in_memory_fit(client, problem):
    X, y, _, Xn, yn, _ = problem
    ref, _, _, _ = in_memory_fit(Xn, yn, loss="svm", lam=1e-2, tol=1e-8, max_iter=30)
    fit = ggd.fit_linear(X, y, loss="svm", lam=1e-2, tol=1e-8, max_iter=30)
    assert relative_error(fit["model"].params["W"], ref["W"]) < 1e-6


# ---- data locality -----------------------------------------------------------------------------------

def transfers(client):
    """{(worker, direction): [{key: bytes}]}: each worker's transfers so far, in and out (to
    other workers, to the scheduler and so to the client), one dict a message."""
    def logs(dask_worker):
        return {d: [dict(t["keys"]) for t in log] for d, log in
                (("in", dask_worker.transfer_incoming_log), ("out", dask_worker.transfer_outgoing_log))}
    return {(w, d): log for w, per_worker in client.run(logs).items() for d, log in per_worker.items()}


def test_no_block_of_X_travels_during_fit_or_predict(client):
    X, y, _ = make_problem(seed=11, n=8000, rows=1000)
    X, y = client.persist([X, y])  # the test data are made (y from X) before the log is read
    distributed.wait([X, y])
    # Making y copied some blocks of X between the workers; Dask drops such copies on its own
    # schedule, and a task sent to a copy just dropped fetches it again. One copy of each block
    # here, so that the log shows what the fit moves.
    client.replicate(distributed.futures_of(X), n=1)
    before = {k: len(log) for k, log in transfers(client).items()}
    fit = ggd.fit_linear(X, y, lam=LAM, max_iter=20)
    for solver in ("sgd", "adam"):
        ggd.fit_linear(X, y, lam=LAM, solver=solver, max_iter=2)
    (ggd.predict(fit["model"], fit["classes_"], X) == "a").sum().compute()
    moved = [t for k, log in transfers(client).items() for t in log[before.get(k, 0):]]
    block_bytes = 1000 * D * 8
    assert moved, "the transfer log recorded nothing: the check would prove nothing"
    # Labels, weights, parameters and partial sums move (one task's partials of several chunks
    # in one value, several labels blocks in one message); nothing the size of a block of X.
    for keys in moved:
        assert not any(isinstance(k, tuple) and k[0] == X.name for k in keys), keys
        assert all(nbytes < block_bytes / 2 for nbytes in keys.values()), keys


# ---- a worker lost mid-fit ---------------------------------------------------------------------------

def test_worker_killed_mid_fit_is_recovered_and_gives_the_same_model(client):
    X, y, _ = make_problem(seed=3)
    undisturbed = ggd.fit_linear(X, y, lam=LAM, tol=1e-8, max_iter=40)
    pid = next(iter(client.run(os.getpid).values()))
    killed = []

    def kill_at_iteration_3(iteration, J):
        if iteration == 3 and not killed:
            os.kill(pid, signal.SIGKILL)
            killed.append(iteration)

    fit = ggd.fit_linear(X, y, lam=LAM, tol=1e-8, max_iter=40, callback=kill_at_iteration_3)
    assert killed == [3]
    assert pid not in client.run(os.getpid).values()
    assert fit["n_iter_"] == undisturbed["n_iter_"]
    np.testing.assert_allclose(fit["model"].params["W"], undisturbed["model"].params["W"],
                               rtol=0, atol=1e-12)
    client.wait_for_workers(2, timeout=60)  # the nanny restarts it for the tests after this one


def test_worker_killed_between_sequential_epochs_is_recovered_and_gives_the_same_model(client):
    """The sequential pass keeps its state on a worker between epochs: killing that worker costs a
    recomputation from the graph, not the fit."""
    X, y, _ = make_problem(seed=3, n=2000)
    kw = dict(lam=LAM, solver="sgd", sgd_pass="sequential", batch_size=100, learning_rate_init=0.05, max_iter=3)
    undisturbed = ggd.fit_linear(X, y, **kw)
    killed = []

    def kill_after_epoch_1(epoch, J):
        if epoch == 1 and not killed:  # a worker holding the state (not the start's or a cost's leftovers)
            state = lambda k: "gpugrad-pass" in str(k) and not any(w in str(k) for w in ("start", "cost"))  # noqa: E731
            holder = sorted(w for w, keys in client.has_what().items() if any(map(state, keys)))[0]
            pid = client.run(os.getpid, workers=[holder])[holder]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    fit = ggd.fit_linear(X, y, callback=kill_after_epoch_1, **kw)
    assert killed and killed[0] not in client.run(os.getpid).values()
    assert fit["loss_curve_"] == undisturbed["loss_curve_"]
    np.testing.assert_array_equal(fit["model"].params["W"], undisturbed["model"].params["W"])
    client.wait_for_workers(2, timeout=60)


def test_a_loss_dask_gives_up_on_names_the_worker_and_rows(monkeypatch, problem):
    X, y, _, _, _, _ = problem
    from distributed.scheduler import KilledWorker
    calls = []
    real_compute = dask.compute

    def compute_losing_chunk_2(*args, **kw):
        calls.append(1)
        if len(calls) == 3:  # the survey, then one gradient, then the worker is "lost"
            key = next(k for a in args for k in a.__dask_graph__()
                       if str(k[0]).startswith("gpugrad-grad") and k[1] == 2)
            raise KilledWorker(key, types.SimpleNamespace(address="tcp://10.0.0.7:4000"), 3)
        return real_compute(*args, **kw)

    monkeypatch.setattr(dask, "compute", compute_losing_chunk_2)
    with dask.config.set(scheduler="sync"):
        with pytest.raises(RuntimeError, match=r"lost worker tcp://10\.0\.0\.7:4000 .*"
                                               r"chunk 2, rows 1000:1500.*no model"):
            ggd.fit_linear(X, y, lam=LAM)


# ---- mini-batch solvers ------------------------------------------------------------------------------

@pytest.mark.parametrize("solver, sync_every, scheduler", [("sgd", None, "cluster"),
                                                           ("adam", 10, "threads")])
def test_local_sgd_is_reproducible_and_reaches_the_optimum(client, problem, solver, sync_every,
                                                           scheduler):
    X, y, _, Xn, yn, _ = problem
    kw = dict(lam=LAM, solver=solver, max_iter=8, random_state=2, sync_every=sync_every,
              batch_size=25, learning_rate_init=0.02 if solver == "sgd" else 0.01)
    with dask.config.set(scheduler=None if scheduler == "cluster" else scheduler):
        a = ggd.fit_linear(X, y, **kw)
        b = ggd.fit_linear(X, y, **kw)
    assert np.array_equal(a["model"].params["W"], b["model"].params["W"])
    assert a["loss_curve_"] == b["loss_curve_"] and a["n_iter_"] == 8
    ref, classes, mean, std = in_memory_fit(Xn, yn)
    be = get_backend("numpy")
    y_idx = np.searchsorted(classes, yn)

    def cost(p):
        return float(be.linear_grad(Xn, y_idx, p["W"], p["b"], LAM, "softmax", mean, std)[0])

    # 8 epochs of local steps come within a few percent of the optimal cost, and to its accuracy.
    assert cost(a["model"].params) < cost(ref) * 1.05
    acc = lambda p: np.mean((((Xn - mean) / std) @ p["W"].T + p["b"]).argmax(1) == y_idx)  # noqa: E731
    assert acc(a["model"].params) > acc(ref) - 0.01


def test_sequential_pass_on_cluster_is_the_in_memory_sgd_and_reaches_the_optimum(client, problem):
    """sgd_pass="sequential": the parameters and velocity travel from chunk to chunk (worker to
    worker), so the fit is the in-memory momentum SGD over the same rows in the same order, step
    for step; 3 epochs come to the exact optimum's test accuracy."""
    X, y, _, Xn, yn, _ = problem
    kw = dict(lam=LAM, solver="sgd", sgd_pass="sequential", momentum=0.9, learning_rate_init=0.05,
              learning_rate="linear", batch_size=50, max_iter=3, random_state=4)
    fit = ggd.fit_linear(X, y, **kw)
    assert fit["n_iter_"] == 3
    model = fit["model"]
    mean, std = model.buffers["x_mean"], model.buffers["x_std"]
    classes, y_idx = np.unique(yn, return_inverse=True)
    start = LinearClassifier(D, C, "softmax", dtype="float64", backend="numpy", seed=4).params
    want, curve = sgd_reference((Xn - mean) / std, y_idx, start, X.chunks[0], lam=LAM, lr=0.05,
                                momentum=0.9, batch_size=50, epochs=3, seed=4)
    np.testing.assert_allclose(fit["loss_curve_"], curve, rtol=1e-10)
    np.testing.assert_allclose(model.params["W"], want["W"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(model.params["b"], want["b"], rtol=1e-9, atol=1e-12)
    ref, _, ref_mean, ref_std = in_memory_fit(Xn, yn)
    acc = lambda p, m, s: np.mean((((Xn - m) / s) @ p["W"].T + p["b"]).argmax(1) == y_idx)  # noqa: E731
    assert acc(model.params, mean, std) > acc(ref, ref_mean, ref_std) - 0.01


# ---- the estimators' default on a Dask array --------------------------------------------------------

def mixture(n, d=8, C=3, seed=0):
    """A Gaussian mixture (class c's rows N(mu_c, I), mu_c ~ N(0, 1.5^2 I): about 99% separable),
    float32: the benchmark's kind of problem at a small size."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, n)
    return (1.5 * rng.standard_normal((C, d))[y] + rng.standard_normal((n, d))).astype(np.float32), y


@pytest.mark.parametrize("standardize", [False, True])
def test_the_default_solver_on_large_chunks_takes_a_few_epochs_and_agrees_with_memory(client,
                                                                                     standardize):
    from gpugrad import SoftmaxClassifier
    X, y = mixture(10000)
    X, y, Xt, yt = X[:8000], y[:8000], X[8000:], y[8000:]
    # chunks of 2000 rows, 10-row batches: 200 steps an epoch, so "auto" takes 2 epochs of local SGD
    kw = dict(random_state=0, batch_size=10, standardize=standardize)
    on_dask = SoftmaxClassifier(**kw).fit(da.from_array(X, chunks=(2000, 8)), da.from_array(y, chunks=2000))
    assert on_dask.solver == "auto" and on_dask.n_iter_ == 2 and len(on_dask.loss_curve_) == 2
    assert on_dask.model_.normalised == standardize and on_dask.model_.dtype == np.float32
    in_memory = SoftmaxClassifier(**kw, backend="numpy").fit(X, y)   # "auto" in memory: L-BFGS
    assert in_memory.n_iter_ > 2
    pred = on_dask.predict(da.from_array(Xt, chunks=1000)).compute()
    assert np.mean(pred == in_memory.predict(Xt)) >= 0.99
    assert np.mean(pred == yt) >= np.mean(in_memory.predict(Xt) == yt) - 0.01


def test_the_default_solver_on_small_chunks_is_lbfgs_and_equals_the_in_memory_fit(client):
    from gpugrad import SoftmaxClassifier
    X, y = mixture(3000)
    X = X.astype(np.float64)   # float64: the two fits' sums differ by round-off only
    kw = dict(random_state=0, tol=1e-6)   # chunks of 500 rows: 3 steps an epoch
    on_dask = SoftmaxClassifier(**kw).fit(da.from_array(X, chunks=(500, 8)), da.from_array(y, chunks=500))
    in_memory = SoftmaxClassifier(**kw, backend="numpy").fit(X, y)
    assert not on_dask.model_.normalised and on_dask.n_iter_ == in_memory.n_iter_
    np.testing.assert_allclose(on_dask.coef_, in_memory.coef_, rtol=1e-6)


def test_the_dask_benchmark_runs_at_a_small_size(client, monkeypatch, capsys):
    """benchmarks/dask_bench.py --default, both peers where dask-ml is installed (the gpugrad side
    alone, with a message, where it is not)."""
    from pathlib import Path
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import dask_bench
    out = dask_bench.default_vs_incremental(client, rounds=1, rows=4000, test_rows=1000,
                                            features=8, classes=3, chunk=2000)
    gg_row = out["methods"]["gpugrad SoftmaxClassifier() default"]
    assert gg_row["agreement_with_in_memory"] >= 0.99 and gg_row["accuracy"] > 0.5
    printed = capsys.readouterr().out
    if dask_bench.have_dask_ml():
        assert out["ratio"]["gpugrad SoftmaxClassifier() default"]["median"] > 0
        assert len(out["methods"]) == 2
    else:
        assert "dask-ml is not installed" in printed and "ratio" not in out


# ---- inference -----------------------------------------------------------------------------------------

def test_predictions_are_lazy_dask_arrays_equal_to_the_model_in_memory(client, problem):
    X, y, _, Xn, _, _ = problem
    fit = ggd.fit_linear(X, y, lam=LAM, max_iter=15)
    model, classes = fit["model"], fit["classes_"]
    S, P, labels = (ggd.decision_function(model, X), ggd.predict_proba(model, X),
                    ggd.predict(model, classes, X))
    assert all(isinstance(a, da.Array) for a in (S, P, labels))
    assert S.chunks == (X.chunks[0], (C,)) and labels.chunks == (X.chunks[0],)
    S_ref = model.scores(model.prepare(Xn))
    np.testing.assert_allclose(S.compute(), S_ref, rtol=1e-12)
    P_ref = np.exp(S_ref - S_ref.max(1, keepdims=True))
    np.testing.assert_allclose(P.compute(), P_ref / P_ref.sum(1, keepdims=True), rtol=1e-12)
    assert labels.compute().tolist() == classes[S_ref.argmax(1)].tolist()


# ---- refused input, naming the chunk -------------------------------------------------------------------

def test_nan_in_one_chunk_is_refused_naming_its_rows(problem):
    X, y, _, _, _, _ = problem
    bad = da.where((da.arange(N) == 1717)[:, None] & (da.arange(D) == 4), np.nan, X)
    with dask.config.set(scheduler="sync"):
        with pytest.raises(ValueError, match=r"chunk 3 \(rows 1500:2000\): X contains NaN at row "
                                             r"1717, column 4"):
            ggd.fit_linear(bad, y)


def test_nan_label_is_refused_naming_its_rows(problem):
    X, _, _, _, _, _ = problem
    y = da.where(da.arange(N) == 2345, np.nan, da.arange(N) % 2.0).rechunk(ROWS)
    with dask.config.set(scheduler="sync"):
        with pytest.raises(ValueError, match=r"chunk 4 \(rows 2000:2500\): label NaN at row 2345"):
            ggd.fit_linear(X, y)


def test_label_outside_classes_is_refused_naming_its_rows(problem):
    X, y, _, _, _, _ = problem
    with dask.config.set(scheduler="sync"):
        with pytest.raises(ValueError, match=r"chunk 0 \(rows 0:500\): label 'c' at row \d+ is "
                                             r"not one of classes \['a', 'b'\]"):
            ggd.fit_linear(X, y, classes=["a", "b"])


def test_chunks_of_another_dtype_are_refused_naming_their_rows(problem):
    X, y, _, _, _, _ = problem

    def float32_from_row_2000(block, block_info=None):
        start = block_info[0]["array-location"][0][0]
        return block.astype(np.float32) if start >= 2000 else block

    mixed = X.map_blocks(float32_from_row_2000, dtype=np.float64)
    with dask.config.set(scheduler="sync"):
        with pytest.raises(TypeError, match=r"chunk 4 \(rows 2000:2500\) has dtype float32 but "
                                            r"chunk 0 \(rows 0:500\) has float64"):
            ggd.fit_linear(mixed, y)


def test_bad_options_and_shapes_are_refused_by_name(problem):
    X, y, _, _, _, _ = problem
    with pytest.raises(ValueError, match="unknown solver 'newton'"):
        ggd.fit_linear(X, y, solver="newton")
    with pytest.raises(ValueError, match=r"learning_rate must be one of \('constant', 'linear'\), got 'cosine'"):
        ggd.fit_linear(X, y, solver="sgd", learning_rate="cosine")
    with pytest.raises(ValueError, match=r"sgd_pass must be None or one of \('averaged', 'sequential'\), got 'ring'"):
        ggd.fit_linear(X, y, solver="sgd", sgd_pass="ring")
    with pytest.raises(ValueError, match="sync_every=5 applies to sgd_pass='averaged' only"):
        ggd.fit_linear(X, y, solver="sgd", sgd_pass="sequential", sync_every=5)
    with pytest.raises(ValueError, match="chunked by rows only"):
        ggd.fit_linear(X.rechunk((500, 4)), y)
    with pytest.raises(ValueError, match=r"y must have shape \(4000,\)"):
        ggd.fit_linear(X, y[:-1])
    with pytest.raises(TypeError, match="X must be a dask.array.Array"):
        ggd.fit_linear(np.zeros((4, 2)), y)
    with pytest.raises(ValueError, match="X has 8 features, but the model was trained on 3"):
        ggd.predict_proba(LinearClassifier(3, 2, backend="numpy"), X)
    assert ggd.is_dask_collection(X) and not ggd.is_dask_collection(np.zeros(2))

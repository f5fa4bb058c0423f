"""Sparse inputs (gpugrad.sparse): scipy.sparse X through linear_grad, the models, the Trainer, the
estimators and gpugrad.distributed, never made dense, against independent references: the same
computation on X made dense (numpy backend, float64), scikit-learn on the same sparse data, and
central differences. The CuPy path runs here on the kernel emulator (tests/emu) with an emulated
device CSR matrix; tests/test_sparse_kernels.py checks its kernels in detail.

The matrices carry what real sparse data carry: empty rows and columns, duplicate entries,
unsorted indices, int64 indices, CSC and COO input.
"""
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import gpugrad as gg
from gpugrad.engine import sparse as gsp
from gpugrad.training import sparse_sgd

from conftest import EMULATOR
from kernel_checks import check_sparse_step, sparse_case
from references import sgd_reference

NP = gg.get_backend("numpy")


def awkward(rng, n=60, d=40, C=4, idx64=False):
    """(X CSR with an empty row and column, duplicates and unsorted indices; y, W, b, x_std), float64."""
    return sparse_case(rng, n, d, C, np.float64, idx64=idx64)


@pytest.fixture(params=["numpy"] + (["emu"] if EMULATOR else []))
def sparse_be(request, monkeypatch):
    """(backend, to_device(X)): numpy with scipy CSR, or the emulated CUDA backend with its device CSR."""
    if request.param == "numpy":
        return NP, lambda X: X
    from emu import emu_sparse, emulator
    emulator.use(None)
    emulator.configure("forward", 1, True)
    be = emu_sparse.install(emulator.as_cuda_backend(monkeypatch))
    return be, lambda X: emu_sparse.csr_matrix((be.asarray(X.data), be.asarray(X.indices), be.asarray(X.indptr)),
                                               shape=X.shape)


# ---- the fused step -----------------------------------------------------------------------------
@pytest.mark.parametrize("loss", ["softmax", "svm"])
@pytest.mark.parametrize("norm", ["none", "scale", "centre"])
def test_linear_grad_on_sparse_X_is_the_dense_step(sparse_be, loss, norm, rng):
    """gg.linear_grad on CSR X (awkward features, int64 indices) equals the numpy step on X made
    dense, with no normalisation, x_std alone (dense: mean 0) and x_mean with x_std (the centring
    applied through the bias and dW, never to X)."""
    be, dev = sparse_be
    X, y, W, b, std = awkward(rng, idx64=True)
    mean = rng.standard_normal(X.shape[1]) if norm == "centre" else None
    std = std if norm != "none" else None
    kw = {} if std is None else {"x_std": std} if mean is None else {"x_mean": mean, "x_std": std}
    args = [be.asarray(a) for a in (y, W, b)]
    got = gg.linear_grad(dev(X), *args, lam=0.01, loss=loss, **{k: be.asarray(v) for k, v in kw.items()})
    check_sparse_step(X, y, W, b, [be.to_numpy(g) for g in got], loss, 0.01, x_mean=mean, x_std=std)


@pytest.mark.parametrize("fmt", ["csc", "coo", "csr_array"])
def test_linear_grad_takes_other_formats_and_float32(fmt, rng):
    X, y, W, b, _ = awkward(rng)
    Xf = sp.csr_array(X) if fmt == "csr_array" else X.asformat(fmt)
    J, dW, db = gg.linear_grad(Xf.astype(np.float32), y, W.astype(np.float32), b.astype(np.float32), 0.1)
    assert dW.dtype == np.float32 and dW.flags.c_contiguous
    check_sparse_step(X.astype(np.float32).astype(np.float64), y, W.astype(np.float32), b.astype(np.float32),
                      (J, dW, db), "softmax", 0.1)


def test_sample_weights_and_the_backend_step(rng):
    """The backend's sparse step with sample weights equals the dense step with them."""
    X, y, W, b, std = awkward(rng)
    w = rng.uniform(0, 2, X.shape[0])
    got = NP.linear_grad(X, y, W, b, 0.0, "svm", None, std, w)
    check_sparse_step(X, y, W, b, got, "svm", 0.0, x_std=std, sample_weight=w)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nonfinite_stored_value_is_named_by_row_and_column(sparse_be, value, rng):
    be, dev = sparse_be
    X, y, W, b, _ = awkward(rng)
    X = X.copy()
    row = 7 + int(np.argmax(np.diff(X.indptr)[7:] >= 2))  # from row 7 on, the first with two values
    pos = X.indptr[row] + 1  # its second stored value
    X.data[pos] = value
    col = int(X.indices[pos])
    kind = "NaN" if value != value else ("inf" if value > 0 else "-inf")
    with pytest.raises(ValueError, match=rf"X contains {kind} at row {row}, column {col} \(a stored value"):
        gg.linear_grad(dev(X), *(be.asarray(a) for a in (y, W, b)))
    with np.errstate(all="ignore"):
        gg.linear_grad(dev(X), *(be.asarray(a) for a in (y, W, b)), check_finite=False)  # skipped: no error


def test_bad_inputs_are_refused_by_name(rng):
    X, y, W, b, std = awkward(rng)
    with pytest.raises(TypeError, match="labels y must be a 1-D array of labels, got a sparse matrix"):
        gg.linear_grad(X, sp.csr_matrix(y[None, :]), W, b)
    with pytest.raises(TypeError, match="sparse X must hold float32 or float64 values, got dtype int64"):
        gg.linear_grad(X.astype(np.int64), y, W, b)
    with pytest.raises(ValueError, match="x_mean needs x_std"):
        gg.linear_grad(X, y, W, b, x_mean=std)
    with pytest.raises(ValueError, match=r"x_std must have shape \(40,\)"):
        gg.linear_grad(X, y, W, b, x_std=std[:-1])
    with pytest.raises(ValueError, match=r"W must be \(C, d\) with d = 40"):
        gg.linear_grad(X, y, W[:, :-1], b)
    with pytest.raises(ValueError, match=r"label y\[3\] = 9 is outside \[0, 4\)"):
        gg.linear_grad(X, np.where(np.arange(len(y)) == 3, 9, y), W, b, validate=False)


def test_column_scale_is_standard_scalers_without_mean(rng):
    from sklearn.preprocessing import StandardScaler
    X, *_ = awkward(rng)
    X.data[:5] = 3.0  # a column or two with a repeated value
    got = gsp.column_scale(X)  # X has duplicate entries: the matrix's values are their sums
    assert np.allclose(got, np.where(X.toarray().std(0) > 0, X.toarray().std(0), 1), rtol=1e-12)
    X.sum_duplicates()
    assert np.allclose(got, StandardScaler(with_mean=False).fit(X).scale_, rtol=1e-12)
    assert got[0] == 1.0  # the empty column


def test_sparse_linear_op_gradients_match_central_differences(rng):
    """ops.sparse_linear's VJPs (dW, db, with x_mean and x_std) against central differences."""
    X, y, W, b, std = awkward(rng, n=8, d=6, C=3)
    mean = rng.standard_normal(6)
    # h = 1e-5: at 1e-6 the differences' rounding alone reaches 2.6e-6 on some seeds' small entries
    # (1,500 seeds: at most 2.7e-7 at 1e-5); a wrong rule is off by 1e-3 or more
    err = gg.gradcheck(lambda W, b: gg.cross_entropy(gg.ops.sparse_linear(X, W, b, mean, std), y), [W, b], h=1e-5)
    assert max(err) < 1e-6


# ---- models, trainer ------------------------------------------------------------------------------
@pytest.mark.parametrize("loss", ["softmax", "svm"])
@pytest.mark.parametrize("scaled", [False, True])
@pytest.mark.parametrize("momentum,nesterov", [(0.0, False), (0.9, False), (0.8, True)])
def test_sgd_on_sparse_X_takes_the_same_steps(loss, scaled, momentum, nesterov, rng, monkeypatch):
    """The epochs that bring only the batch's columns up to date (gpugrad.sparse_sgd: W = aV without
    momentum, the 2 x 2 catch-up with it, over windows of 5 steps here) against the ordinary dense
    step on the same sparse data and on X made dense: the same per-step costs, weights and
    velocities within rounding, with a decaying learning rate, sample weights and x_std."""
    monkeypatch.setattr(sparse_sgd, "WINDOW", 5)
    X, y, W, b, std = awkward(rng, n=120)
    w = rng.uniform(0, 2, X.shape[0])
    runs = []
    for data, lazy in ((X, True), (X, False), (X.toarray(), False)):
        m = gg.models.LinearClassifier(X.shape[1], 4, loss, backend="numpy", dtype="float64", seed=1,
                                       x_mean=np.zeros(X.shape[1]) if scaled else None, x_std=std if scaled else None)
        opt = gg.optim.SGD(gg.optim.InvScaling(0.5, 0.5, 4), momentum=momentum, nesterov=nesterov)
        t = gg.Trainer(m, opt, epochs=3, batch_size=30, lam=0.01, progress=False)
        assert sparse_sgd.applies(t, X)
        if not lazy:
            t._sparse_epoch = t._epoch
        cost = np.array(t.fit(data, y, sample_weight=w)["cost"])
        runs.append((cost, m.params["W"].copy(), m.params["b"].copy(), {k: v.copy() for k, v in opt.slots.items()}))
    for cost, Wf, bf, slots in runs[:2]:
        assert np.allclose(cost, runs[2][0], rtol=1e-12)
        assert np.allclose(Wf, runs[2][1], rtol=1e-10, atol=1e-14) and np.allclose(bf, runs[2][2], rtol=1e-10)
        assert all(np.allclose(slots[k], runs[2][3][k], rtol=1e-10, atol=1e-14) for k in slots)


@pytest.mark.parametrize("momentum,nesterov", [(0.5, False), (0.2, False), (0.3, True)])
@pytest.mark.parametrize("compiled", [True, False])
def test_lazy_momentum_with_a_small_mu_over_whole_windows(momentum, nesterov, compiled, monkeypatch):
    """The lazy steps' catch-up maps over the real WINDOW with a small momentum (mu^-64 = 1.8e19 at
    mu = 0.5: maps made through an inverse of the window's product lose every digit) against the
    dense step: the same weights within rounding after 3 epochs of 60 steps."""
    from gpugrad.backends import host
    if compiled and not host.available():
        pytest.skip("the compiled loops are not built")
    monkeypatch.setattr(host, "_ON", compiled)
    rng = np.random.default_rng(5)
    n, d, C = 1200, 150, 4
    X = sp.random(n, d, density=0.05, format="csr", random_state=rng, dtype=np.float64)
    X.indices, X.indptr = X.indices.astype(np.int32), X.indptr.astype(np.int32)
    y = rng.integers(0, C, n)
    out = []
    for lazy in (True, False):
        m = gg.models.LinearClassifier(d, C, "svm", backend="numpy", dtype="float64", seed=1)
        opt = gg.optim.SGD(0.5, momentum=momentum, nesterov=nesterov)
        t = gg.Trainer(m, opt, epochs=3, batch_size=20, lam=0.01, progress=False)
        assert sparse_sgd.applies(t, X) and 3 * n // 20 > 2 * sparse_sgd.WINDOW
        if not lazy:
            t._sparse_epoch = t._epoch
        t.fit(X, y)
        out.append(m.params["W"].copy())
    np.testing.assert_allclose(out[0], out[1], rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("momentum,nesterov", [(0.0, False), (0.9, False), (0.9, True)])
def test_lazy_sgd_where_the_decay_leaves_nothing_of_W(momentum, nesterov, rng):
    """lr 2 lam = 1 (alpha = 1, rate 1): the decay's factor is 0 (plain SGD's W = aV form cannot
    take a = 0: it divided by it; Nesterov's map is singular: no inverse of it may be taken); the
    lazy steps give the dense step's weights."""
    X = sp.random(300, 50, density=0.1, format="csr", random_state=1)
    y = rng.integers(0, 3, 300)
    fits = [gg.SVMClassifier(momentum=momentum, nesterovs_momentum=nesterov, learning_rate_init=1.0, alpha=1.0,
                             max_iter=3, tol=None, random_state=0, backend="numpy").fit(data, y).model_.params["W"]
            for data in (X, X.toarray())]
    np.testing.assert_allclose(fits[0], fits[1], rtol=1e-12, atol=1e-15)


def test_lazy_momentum_catch_up_over_more_columns_than_one_block(rng, monkeypatch):
    """The catch-up brings W and V up to date a block of rows at a time (d = 9,000: three blocks);
    the same weights and velocities as the dense step."""
    monkeypatch.setattr(sparse_sgd, "WINDOW", 3)
    X, y, *_ = awkward(rng, n=40, d=9000, C=3)
    out = []
    for lazy in (True, False):
        m = gg.models.LinearClassifier(X.shape[1], 3, "svm", backend="numpy", dtype="float64", seed=1)
        opt = gg.optim.SGD(0.5, momentum=0.9, nesterov=True)
        t = gg.Trainer(m, opt, epochs=2, batch_size=10, lam=0.01, progress=False)
        if not lazy:
            t._sparse_epoch = t._epoch
        out.append((np.array(t.fit(X, y)["cost"]), m.params["W"].copy(), opt.slots["velocity/W"].copy()))
    assert np.allclose(out[0][0], out[1][0], rtol=1e-12)
    assert np.allclose(out[0][1], out[1][1], rtol=1e-10, atol=1e-14)
    assert np.allclose(out[0][2], out[1][2], rtol=1e-10, atol=1e-14)


def test_lazy_path_applies_only_where_it_is_exact(rng):
    X, *_ = awkward(rng)
    m = gg.models.LinearClassifier(40, 4, backend="numpy")
    assert sparse_sgd.applies(gg.Trainer(m, gg.optim.SGD(0.1, momentum=0.9, nesterov=True)), X)
    assert not sparse_sgd.applies(gg.Trainer(m, "adam"), X)
    assert not sparse_sgd.applies(gg.Trainer(m, "sgd"), X.toarray())
    centred = gg.models.LinearClassifier(40, 4, backend="numpy", x_mean=np.ones(40), x_std=np.ones(40))
    assert not sparse_sgd.applies(gg.Trainer(centred, "sgd"), X)
    mlp = gg.models.MLP(40, 4, hidden=(5,), backend="numpy")
    assert not sparse_sgd.applies(gg.Trainer(mlp, "sgd"), X)


def test_trainer_names_a_nan_and_refuses_sparse_labels(rng):
    X, y, *_ = awkward(rng)
    X = X.copy()
    X.data[X.indptr[4]] = np.nan
    m = gg.models.LinearClassifier(40, 4, backend="numpy")
    with pytest.raises(ValueError, match=rf"X contains NaN at row 4, column {X.indices[X.indptr[4]]}"):
        gg.Trainer(m, "sgd", progress=False).fit(X, y)
    with pytest.raises(TypeError, match="got a sparse matrix"):
        gg.Trainer(m, "sgd", progress=False).fit(X, sp.csr_matrix(y[None, :]))


def test_mlp_first_layer_reads_sparse_X(rng):
    """An MLP (batch norm, x_std) trained on sparse X takes the steps it takes on X made dense."""
    X, y, _, _, std = awkward(rng, n=90)
    out = []
    for data in (X, X.toarray()):
        m = gg.models.MLP(40, 4, hidden=(7,), batchnorm=True, backend="numpy", dtype="float64",
                          x_mean=np.zeros(40), x_std=std)
        # (momentum, not Adam: under batch norm b1's gradient is 0 but for rounding, which Adam's
        # m / sqrt(v) would blow up to a step of its own)
        gg.Trainer(m, "momentum", epochs=2, batch_size=30, lam=1e-3, progress=False).fit(data, y)
        out.append((m.state(), m.scores(m.prepare(data[:5]))))
    assert all(np.allclose(out[0][0][k], out[1][0][k], rtol=1e-10, atol=1e-14) for k in out[0][0])
    assert np.allclose(out[0][1], out[1][1])


# ---- estimators --------------------------------------------------------------------------------
def test_softmax_classifier_matches_logistic_regression_on_sparse_data(rng):
    """The same objective (alpha = 1 / (C n)) on the same sparse data: scikit-learn's optimum."""
    from sklearn.linear_model import LogisticRegression
    X, y, *_ = awkward(rng, n=150)
    X.data *= 3
    ref = LogisticRegression(C=1.0, tol=1e-8, max_iter=1000).fit(X, y)
    for Xf in (X.tocoo(),):  # (converted to CSR once, by the estimator)
        clf = gg.SoftmaxClassifier(alpha=1 / X.shape[0], tol=1e-6, max_iter=1000, backend="numpy").fit(Xf, y)
        assert np.allclose(clf.predict_proba(X), ref.predict_proba(X), atol=1e-4)
        assert (clf.predict(Xf) == ref.predict(X)).all()


@pytest.mark.parametrize("cls", ["SVMClassifier", "SoftmaxClassifier", "MLPClassifier"])
@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_estimators_fit_sparse_as_dense(cls, solver, rng):
    """Every stochastic solver (SGD: the epochs of gpugrad.sparse_sgd; Adam: the ordinary step) reaches
    the weights the same fit reaches on X made dense; predictions of sparse X equal dense X's."""
    X, y, *_ = awkward(rng, n=100)
    kw = dict(solver=solver, backend="numpy", random_state=0, max_iter=3, tol=None)
    if cls == "MLPClassifier":
        kw["hidden_layer_sizes"] = (6,)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for momentum in ((0.9, 0.0) if solver == "sgd" and cls != "MLPClassifier" else (0.9,)):
            a = getattr(gg, cls)(momentum=momentum, **kw).fit(X, y)
            b = getattr(gg, cls)(momentum=momentum, **kw).fit(X.toarray(), y)
            sa, sb = a.model_.state(), b.model_.state()
            assert all(np.allclose(sa[k], sb[k], rtol=1e-9, atol=1e-13) for k in sa), (cls, momentum)
            assert (a.predict(X) == b.predict(X.toarray())).all()
            assert np.allclose(a.decision_function(X), b.decision_function(X.toarray()))


def test_partial_fit_and_standardize_on_sparse_data(rng):
    from sklearn.preprocessing import StandardScaler
    X, y, *_ = awkward(rng, n=100)
    clf = gg.SVMClassifier(backend="numpy", random_state=0, momentum=0.0, standardize=True)
    clf.partial_fit(X[:50], y[:50], classes=np.arange(4)).partial_fit(X[50:].tocsc(), y[50:])
    first = X[:50].copy()
    first.sum_duplicates()  # (StandardScaler reads duplicate entries as separate values)
    assert np.allclose(clf.model_.buffers["x_std"], StandardScaler(with_mean=False).fit(first).scale_)
    assert not clf.model_.buffers["x_mean"].any()  # scaled, never centred
    assert clf.n_iter_ == 2 and np.isfinite(clf.coef_).all()
    ref = gg.SVMClassifier(backend="numpy", random_state=0, momentum=0.0, standardize=True)
    ref.partial_fit(X[:50].toarray(), y[:50], classes=np.arange(4))
    assert not np.allclose(ref.model_.buffers["x_mean"], 0)  # dense data are centred


def test_estimators_refuse_sparse_labels_and_name_a_nan(rng):
    X, y, *_ = awkward(rng)
    with pytest.raises(TypeError, match="labels y must be a 1-D array of labels, got a sparse matrix"):
        gg.SoftmaxClassifier(backend="numpy").fit(X, sp.csr_matrix(y[:, None]))
    X = X.copy()
    X.data[X.indptr[9]] = np.inf
    with pytest.raises(ValueError, match=rf"X contains inf at row 9, column {X.indices[X.indptr[9]]}"):
        gg.SVMClassifier(backend="numpy").fit(X, y)


@pytest.mark.skipif(not EMULATOR, reason="needs the kernel emulator")
def test_estimator_on_the_emulated_device_with_device_csr(rng, monkeypatch):
    """SoftmaxClassifier on the emulated CUDA backend: a scipy X is moved to the device once (its
    CSR arrays), L-BFGS runs the sparse kernels; the model equals the numpy fit within float32."""
    from emu import emu_sparse, emulator
    emulator.use(None)
    emulator.configure("forward", 1, True)
    be = emu_sparse.install(emulator.as_cuda_backend(monkeypatch))
    X, y, *_ = awkward(rng, n=40, d=12, C=3)
    kw = dict(alpha=1e-2, max_iter=300, tol=1e-5)  # both at the optimum: float32 rounding does not steer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = gg.SoftmaxClassifier(backend="cupy", **kw).fit(X, y)
        want = gg.SoftmaxClassifier(backend="numpy", dtype="float32", **kw).fit(X, y)
    assert "gg_sparse_f32_t4" in be.launches
    assert np.allclose(got.predict_proba(X), want.predict_proba(X), atol=2e-3)


# ---- Dask ----------------------------------------------------------------------------------------
def test_dask_array_of_sparse_chunks(rng, monkeypatch):
    """fit_linear on a Dask array whose chunks are CSR: L-BFGS reaches the in-memory optimum of the
    same (scaled, not centred) problem; SGD takes the lazy steps (W = aV, the momentum catch-up; a
    constant or a linear rate) the dense step takes; predictions come back
    chunk by chunk; a NaN is named by chunk, row and column."""
    da = pytest.importorskip("dask.array")
    import dask
    from gpugrad.sklearn_dask import distributed as ggd
    X, y, *_ = awkward(rng, n=200, d=30, C=3)
    A = da.from_array(X, chunks=(50, 30), asarray=False)
    with dask.config.set(scheduler="sync"):
        fit = ggd.fit_linear(A, y, lam=1e-2, max_iter=200, tol=1e-10)
        assert not fit["model"].buffers["x_mean"].any()
        std = gsp.column_scale(X)
        assert np.allclose(fit["model"].buffers["x_std"], std)
        clf = gg.SoftmaxClassifier(alpha=2e-2, tol=1e-10, max_iter=500, backend="numpy", dtype="float64")
        clf.fit(X.multiply(1 / std).tocsr(), y)
        assert np.allclose(fit["model"].params["W"], clf.model_.params["W"], atol=1e-5)
        pred = ggd.predict(fit["model"], fit["classes_"], A).compute()
        assert (pred == clf.predict(X.multiply(1 / std).tocsr())).all()
        for momentum, schedule in ((0.0, "constant"), (0.9, "constant"), (0.9, "linear")):
            kw = dict(lam=1e-3, solver="sgd", momentum=momentum, learning_rate_init=0.5, max_iter=3, batch_size=20,
                      learning_rate=schedule)
            lazy = ggd.fit_linear(A, y, **kw)
            with monkeypatch.context() as m:
                m.setattr(ggd, "_lazy_sgd", lambda *a: False)  # the ordinary step on the same chunks
                plain = ggd.fit_linear(A, y, **kw)
            assert np.allclose(lazy["loss_curve_"], plain["loss_curve_"], rtol=1e-12)
            assert np.allclose(lazy["model"].params["W"], plain["model"].params["W"], rtol=1e-9, atol=1e-13)
        # the sequential pass (an empty chunk among them) takes the dense step's steps in order
        chunks = (70, 0, 90, 40)
        seq = ggd.fit_linear(da.from_array(X, chunks=(chunks, 30), asarray=False), y, lam=1e-3, solver="sgd",
                             sgd_pass="sequential", momentum=0.9, learning_rate_init=0.5, learning_rate="linear",
                             batch_size=20, max_iter=2, standardize=False, random_state=3)
        start = gg.models.LinearClassifier(30, 3, "softmax", dtype="float64", backend="numpy", seed=3).params
        want, curve = sgd_reference(X.toarray(), np.unique(y, return_inverse=True)[1], start, chunks, lam=1e-3,
                                    lr=0.5, momentum=0.9, batch_size=20, epochs=2, seed=3)
        assert np.allclose(seq["loss_curve_"], curve, rtol=1e-10)
        assert np.allclose(seq["model"].params["W"], want["W"], rtol=1e-9, atol=1e-12)
        # float32 steps on float64 chunks (converted once, next to them): the fit on float32 chunks
        kw = dict(lam=1e-3, solver="sgd", momentum=0.9, max_iter=2, batch_size=20, dtype="float32", standardize=False)
        on64, on32 = (ggd.fit_linear(da.from_array(Xc, chunks=(50, 30), asarray=False), y, **kw)
                      for Xc in (X, type(X)((X.data.astype(np.float32), X.indices, X.indptr), shape=X.shape)))
        np.testing.assert_array_equal(on64["model"].params["W"], on32["model"].params["W"])
        Xbad = X.copy()
        Xbad.data[Xbad.indptr[120] + 0] = np.nan
        with pytest.raises(ValueError, match=rf"chunk 2 \(rows 100:150\): X contains NaN at row 120, "
                                             rf"column {Xbad.indices[Xbad.indptr[120]]}"):
            ggd.fit_linear(da.from_array(Xbad, chunks=(50, 30), asarray=False), y)

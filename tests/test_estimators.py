"""The scikit-learn estimators: behaviour against scikit-learn's own estimators and against
gpugrad's numpy backend, on numpy and on the emulated CUDA backend ("emu", small data).

scikit-learn's ``check_estimator`` suite runs in tests/test_estimators_sklearn_checks.py.
"""
import pickle
import sys
import warnings

import numpy as np
import pytest
from sklearn.datasets import load_digits, load_iris, make_blobs
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.class_weight import compute_sample_weight

import deps
import gpugrad as gg
from gpugrad.backends import is_cupy_array
from gpugrad.sklearn_dask.estimators import MLPClassifier, SoftmaxClassifier, SVMClassifier

ALL = (SoftmaxClassifier, SVMClassifier, MLPClassifier)
# Few steps (each is a kernel launch on the emulator, ~50 ms) at a larger rate: blobs are easy.
SMALL = {SoftmaxClassifier: {"max_iter": 12}, SVMClassifier: {"max_iter": 10, "learning_rate_init": 0.05},
         MLPClassifier: {"hidden_layer_sizes": (6,), "max_iter": 50, "learning_rate_init": 0.02}}


@pytest.fixture(autouse=True)
def _quiet_convergence():
    """Short runs on purpose: max_iter is small in most tests."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


def blobs(n=60, d=4, centers=3, seed=0):
    X, y = make_blobs(n_samples=n, n_features=d, centers=centers, cluster_std=1.0, random_state=seed)
    return StandardScaler().fit_transform(X), y


def small(E, backend, **kw):
    return E(backend=backend, random_state=0, **{**SMALL[E], **kw})


def host(a):
    return a.get() if is_cupy_array(a) else np.asarray(a)


# ---- labels, dtypes, array types ------------------------------------------------------------

@pytest.mark.parametrize("E", ALL)
def test_labels_of_any_values_come_back_as_given(E, backend):
    X, y = blobs()
    for labels in (np.array(["cat", "dog", "eel"]), np.array([-7, 0, 12])):
        clf = small(E, backend).fit(X, labels[y])
        assert clf.classes_.tolist() == sorted(labels.tolist())
        pred = host(clf.predict(X))
        assert set(pred.tolist()) <= set(labels.tolist())
        assert np.mean(pred == labels[y]) > 0.9


@pytest.mark.parametrize("E", ALL)
def test_float64_and_integer_input_just_work_with_defaults(E, backend):
    X, y = blobs()
    X10 = np.round(X * 10)
    as_float = small(E, backend).fit(X10, y).predict(X10)
    assert np.mean(host(as_float) == y) > 0.9
    for Xin in (X10.astype(np.int32), X10.tolist()):  # the same numbers: the same fit, the same labels
        clf = small(E, backend).fit(Xin, y)
        np.testing.assert_array_equal(host(clf.predict(Xin)), host(as_float))
    # The documented compute dtype: float64 data stays float64 on numpy, float32 on CuPy.
    expected = np.float64 if backend.xp is np else np.float32
    assert clf.model_.dtype == expected
    assert small(E, backend).fit(X.astype(np.float32), y).model_.dtype == np.float32


@pytest.mark.parametrize("E", ALL)
def test_results_come_back_in_the_callers_array_type(E, backend):
    X, y = blobs(n=40)
    clf = small(E, backend).fit(X, y)
    methods = ["predict", "decision_function"] + (["predict_proba"] if hasattr(clf, "predict_proba") else [])
    for method in methods:
        out_np = getattr(clf, method)(X)
        assert type(out_np) is np.ndarray, method
        if backend.xp is not np:  # CuPy in, CuPy out
            out_dev = getattr(clf, method)(backend.xp.asarray(X))
            assert is_cupy_array(out_dev), method
            np.testing.assert_allclose(host(out_dev), out_np, rtol=1e-5, atol=1e-6)


def test_cupy_training_data_is_taken_on_the_device(backend):
    if backend.xp is np:
        pytest.skip("needs the CUDA backend (a GPU or the emulator)")
    X, y = blobs(n=40)
    Xd, yd = backend.xp.asarray(X), backend.xp.asarray(y)
    clf = SoftmaxClassifier(backend=backend).fit(Xd, yd, sample_weight=backend.xp.ones(40))
    assert clf.n_features_in_ == 4 and clf.score(Xd, yd) > 0.9
    with pytest.raises(ValueError, match="NaN or infinity"):
        SoftmaxClassifier(backend=backend).fit(backend.xp.asarray(np.full((3, 2), np.nan)), yd[:3])


# ---- agreement with references ----------------------------------------------------------------

def test_predict_proba_agrees_with_logistic_regression():
    """With alpha = 1 / (C n) the cost is LogisticRegression's divided by n: the same minimiser."""
    X, y = load_iris(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    lr = LogisticRegression(C=1.0, tol=1e-10, max_iter=10000).fit(X, y)
    clf = SoftmaxClassifier(alpha=1 / len(y), tol=1e-10, max_iter=10000, backend="numpy").fit(X, y)
    P = clf.predict_proba(X)
    np.testing.assert_allclose(P.sum(axis=1), 1, rtol=1e-12)
    np.testing.assert_allclose(P, lr.predict_proba(X), atol=1e-5)
    np.testing.assert_allclose(clf.coef_, lr.coef_, atol=1e-4)
    np.testing.assert_allclose(clf.intercept_ - clf.intercept_.mean(), lr.intercept_ - lr.intercept_.mean(),
                               atol=1e-4)


@pytest.mark.parametrize("E", ALL)
def test_predict_proba_rows_sum_to_one_and_rank_like_decision_function(E, backend):
    X, y = blobs()
    clf = small(E, backend).fit(X, y)
    if not hasattr(clf, "predict_proba"):
        assert E is SVMClassifier  # the hinge loss has no probabilities, as SGDClassifier(loss="hinge")
        return
    P = host(clf.predict_proba(X))
    np.testing.assert_allclose(P.sum(axis=1), 1, rtol=1e-5)
    assert (P >= 0).all()
    np.testing.assert_array_equal(P.argmax(axis=1), host(clf.decision_function(X)).argmax(axis=1))


def test_binary_problems_score_like_scikit_learn():
    """Two classes: decision_function is (n,), positive for classes_[1]; coef_ is (1, d) and
    reproduces it from the raw input, also when the model standardises internally."""
    X, y = blobs(centers=2)
    X = X * 5 + 3
    for clf in (SoftmaxClassifier(backend="numpy"), SVMClassifier(backend="numpy", standardize=True,
                                                                  random_state=0)):
        clf.fit(X, np.where(y == 1, "yes", "no"))
        d = clf.decision_function(X)
        assert d.shape == (len(y),)
        np.testing.assert_array_equal(np.where(d > 0, "yes", "no"), clf.predict(X))
        np.testing.assert_allclose(X @ clf.coef_.T + clf.intercept_, d[:, None], rtol=1e-6, atol=1e-6)


def test_multiclass_coef_reproduces_the_scores_of_a_standardising_model():
    X, y = blobs()
    X = X * [1, 10, 100, 0.1] + 5
    clf = SoftmaxClassifier(standardize=True, backend="numpy").fit(X, y)
    assert clf.coef_.shape == (3, 4)
    np.testing.assert_allclose(X @ clf.coef_.T + clf.intercept_, clf.decision_function(X),
                               rtol=1e-8, atol=1e-8)


def test_cuda_backend_trains_like_numpy_with_sample_weights(cuda_backend):
    """The same epochs (float64, one batch order) on the backend and on numpy: the CUDA path's
    fused kernels read the per-row weights as numpy's formulas do."""
    X, y = blobs(n=48)
    w = np.random.default_rng(0).uniform(0.2, 3, 48)
    kw = dict(solver="sgd", max_iter=4, tol=None, batch_size=16, dtype="float64", random_state=3,
              learning_rate_init=0.05)
    for E in (SoftmaxClassifier, SVMClassifier):
        ref = E(backend="numpy", **kw).fit(X, y, sample_weight=w)
        got = E(backend=cuda_backend, **kw).fit(X, y, sample_weight=w)
        np.testing.assert_allclose(got.coef_, ref.coef_, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(got.loss_curve_, ref.loss_curve_, rtol=1e-9)
        unweighted = E(backend="numpy", **kw).fit(X, y)
        assert not np.allclose(unweighted.coef_, ref.coef_)


# ---- weights ----------------------------------------------------------------------------------

@pytest.mark.parametrize("E", [SoftmaxClassifier, MLPClassifier])
def test_integer_sample_weights_equal_repeated_rows_with_lbfgs(E):
    X, y = blobs(n=30)
    sw = np.random.default_rng(1).integers(0, 4, 30)
    kw = dict(solver="lbfgs", tol=1e-10, max_iter=2000, backend="numpy", random_state=0)
    if E is MLPClassifier:  # a strong penalty: one clear minimum for both runs to reach
        kw.update(hidden_layer_sizes=(5,), alpha=0.1)
    weighted = E(**kw).fit(X, y, sample_weight=sw)
    repeated = E(**kw).fit(np.repeat(X, sw, axis=0), np.repeat(y, sw))
    np.testing.assert_allclose(weighted.predict_proba(X), repeated.predict_proba(X), atol=1e-6)


def test_sample_weight_is_not_modified_and_bad_weights_are_refused():
    X, y = blobs(n=20)
    sw = np.ones(20)
    SoftmaxClassifier(backend="numpy", class_weight="balanced").fit(X, y, sample_weight=sw)
    assert (sw == 1).all()
    for bad, match in ((np.ones(19), r"shape \(19,\).*20 rows"), (-np.ones(20), r"sample_weight\[0\] = -1"),
                       (np.zeros(20), "every weight is zero")):
        with pytest.raises(ValueError, match=match):
            SoftmaxClassifier(backend="numpy").fit(X, y, sample_weight=bad)


@pytest.mark.parametrize("E", ALL)
def test_class_weight_is_folded_into_the_row_weights(E, backend):
    X, y = blobs(n=40)
    y = np.array(["a", "b", "c"])[y]
    kw = dict(max_iter=8, tol=None) if E is not SoftmaxClassifier else {}
    cw = {"a": 3.0, "b": 0.5, "c": 1.0}
    by_class = small(E, backend, class_weight=cw, **kw).fit(X, y)
    by_row = small(E, backend, **kw).fit(X, y, sample_weight=np.vectorize(cw.get)(y))
    np.testing.assert_allclose(host(by_class.decision_function(X)), host(by_row.decision_function(X)),
                               rtol=1e-6, atol=1e-6)
    balanced = small(E, backend, class_weight="balanced", **kw).fit(X[5:], y[5:])
    by_row = small(E, backend, **kw).fit(X[5:], y[5:], sample_weight=compute_sample_weight("balanced", y[5:]))
    np.testing.assert_allclose(host(balanced.decision_function(X)), host(by_row.decision_function(X)),
                               rtol=1e-6, atol=1e-6)


def test_class_weight_naming_an_unknown_label_is_refused():
    X, y = blobs(n=20)
    with pytest.raises(ValueError, match="class_weight names the label 7"):
        SoftmaxClassifier(backend="numpy", class_weight={7: 2.0}).fit(X, y)


# ---- the scikit-learn workflow ------------------------------------------------------------------

def test_pipeline_after_standard_scaler_on_digits():
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, stratify=y, random_state=0)
    pipe = make_pipeline(StandardScaler(), SoftmaxClassifier(backend="numpy")).fit(X_train, y_train)
    assert pipe.score(X_test, y_test) >= 0.96  # LogisticRegression: 0.969


@pytest.mark.parametrize("param, value", [
    ("alpha", -1.0), ("solver", "newton"), ("batch_size", 0), ("learning_rate", "adaptive"),
    ("learning_rate_init", 0.0), ("momentum", 1.5), ("max_iter", 0), ("tol", -1e-3),
    ("validation_fraction", 1.0), ("n_iter_no_change", 0), ("class_weight", "even"),
    ("backend", "tpu"), ("dtype", "float16"), ("warm_start", "yes"), ("random_state", -1),
])
def test_bad_parameters_are_refused_at_fit_naming_them(param, value):
    clf = SoftmaxClassifier(**{param: value})  # __init__ only stores
    assert clf.get_params()[param] == value
    X, y = blobs(n=20)
    with pytest.raises(ValueError, match=f"{param}"):
        clf.fit(X, y)


def test_bad_hidden_layer_sizes_are_refused_naming_them():
    X, y = blobs(n=20)
    for bad in ((10, 0), "big", (2.5,)):
        with pytest.raises(ValueError, match="hidden_layer_sizes"):
            MLPClassifier(hidden_layer_sizes=bad, backend="numpy").fit(X, y)


def test_one_class_is_refused_naming_it():
    with pytest.raises(ValueError, match="at least 2 classes.*only one class"):
        SoftmaxClassifier(backend="numpy").fit(np.ones((4, 2)), [3, 3, 3, 3])


@pytest.mark.parametrize("E", ALL)
def test_pickle_round_trip_predicts_the_same(E, backend):
    X, y = blobs(n=30)
    # A backend name, not the object: the estimator pickles its model as arrays and reloads it.
    clf = small(E, "cupy" if backend.xp is not np else "numpy").fit(X, y)
    again = pickle.loads(pickle.dumps(clf))
    assert again.model_.backend.name == clf.model_.backend.name
    np.testing.assert_array_equal(host(again.decision_function(X)), host(clf.decision_function(X)))


# ---- continuing training -----------------------------------------------------------------------

@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_partial_fit_keeps_the_optimiser_state(solver):
    """Full-batch epochs: k partial_fit calls take the same steps as fit with max_iter=k
    (momentum / Adam moments and the step count carry over between calls)."""
    X, y = blobs(n=40)
    kw = dict(solver=solver, batch_size=40, tol=None, random_state=0, backend="numpy", learning_rate_init=0.1)
    fitted = SoftmaxClassifier(max_iter=3, **kw).fit(X, y)
    partial = SoftmaxClassifier(**kw)
    for _ in range(3):
        partial.partial_fit(X, y, classes=np.unique(y))
    np.testing.assert_allclose(partial.coef_, fitted.coef_, rtol=1e-10, atol=1e-12)
    assert partial.n_iter_ == 3 and partial.t_ == 3
    np.testing.assert_allclose(partial.loss_curve_, fitted.loss_curve_, rtol=1e-10)


def test_partial_fit_needs_classes_first_and_refuses_unknown_labels():
    X, y = blobs(n=30)
    clf = SVMClassifier(backend="numpy", random_state=0)
    with pytest.raises(ValueError, match="classes must be passed on the first call"):
        clf.partial_fit(X, y)
    clf.partial_fit(X[:10], y[:10], classes=[0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"label y\[0\] = 9 is not one of the classes \[0, 1, 2, 3\]"):
        clf.partial_fit(X[:2], [9, 0])
    with pytest.raises(ValueError, match="X has 3 features, but SVMClassifier is expecting 4"):
        clf.partial_fit(X[:, :3], y)
    assert not hasattr(SoftmaxClassifier(), "partial_fit")  # L-BFGS is full batch, as scikit-learn's


@pytest.mark.parametrize("E", ALL)
def test_partial_fit_works_on_every_backend(E, backend):
    X, y = blobs(n=40)
    clf = small(E, backend, solver="sgd" if E is SoftmaxClassifier else small(E, "numpy").solver)
    for epoch in range(3):
        clf.partial_fit(X, y, classes=[0, 1, 2])
    assert clf.n_iter_ == 3 and len(clf.loss_curve_) == 3
    assert clf.loss_curve_[-1] < clf.loss_curve_[0]


def test_warm_start_continues_from_the_previous_weights():
    X, y = blobs(n=40)
    clf = SoftmaxClassifier(solver="sgd", max_iter=5, tol=None, warm_start=True, backend="numpy",
                            random_state=0).fit(X, y)
    first = list(clf.loss_curve_)
    model = clf.model_
    clf.fit(X, y)
    assert clf.model_ is model and clf.loss_curve_[0] < first[0]
    with pytest.raises(ValueError, match="warm_start needs y to have the classes"):
        clf.fit(X, np.where(y == 2, 1, y))
    cold = SoftmaxClassifier(solver="sgd", max_iter=5, tol=None, backend="numpy", random_state=0).fit(X, y)
    np.testing.assert_allclose(cold.loss_curve_, first)


def test_lbfgs_warm_start_converges_at_once():
    X, y = blobs()
    clf = SoftmaxClassifier(warm_start=True, backend="numpy").fit(X, y)
    n_first = clf.n_iter_
    clf.fit(X, y)
    assert clf.n_iter_ < n_first


def test_stops_when_the_cost_stops_improving_and_warns_otherwise():
    X, y = blobs()
    clf = SVMClassifier(backend="numpy", random_state=0, max_iter=500, tol=1e-2, n_iter_no_change=3).fit(X, y)
    assert clf.n_iter_ < 500
    with pytest.warns(ConvergenceWarning, match="max_iter=2") as caught:
        SVMClassifier(backend="numpy", random_state=0, max_iter=2).fit(X, y)
    assert caught[0].filename == __file__  # the warning names the fit call, not gpugrad's code


def test_early_stopping_keeps_validation_scores():
    X, y = blobs(n=100)
    clf = MLPClassifier(hidden_layer_sizes=(8,), early_stopping=True, n_iter_no_change=3,
                        max_iter=200, backend="numpy", random_state=0).fit(X, y)
    assert len(clf.validation_scores_) == clf.n_iter_
    assert clf.best_validation_score_ == max(clf.validation_scores_) > 0.9
    held = np.asarray(clf.validation_scores_) * 10  # 10 rows held out: accuracies are tenths
    np.testing.assert_allclose(held, np.round(held), atol=1e-9)


@pytest.mark.parametrize("learning_rate, rate", [
    ("constant", lambda t: 0.1),
    ("invscaling", lambda t: 0.1 / (1 + t / 4) ** 0.5),
    ("step", lambda t: 0.1 * 0.1 ** (t // 8)),            # max_iter // 3 = 2 epochs of 4 steps
    ("cyclical", lambda t: 0.001 + (0.1 - 0.001) * (1 - abs(t % 16 - 8) / 8)),  # n_s = 2 epochs
    ("linear", lambda t: 0.1 * (1 - t / 24)),                  # 0 after max_iter = 6 epochs of 4 steps
])
def test_learning_rate_schedules_follow_their_formulas(learning_rate, rate):
    X, y = blobs(n=40)
    clf = SoftmaxClassifier(solver="sgd", learning_rate=learning_rate, learning_rate_init=0.1, batch_size=10,
                            max_iter=6, tol=None, backend="numpy", random_state=0).fit(X, y)
    # The trainer's history holds the rate of each epoch's last step (t = 4 epoch - 1).
    np.testing.assert_allclose(clf._trainer.history["lr"], [rate(4 * e - 1) for e in range(1, 7)], rtol=1e-12)


def test_a_schedule_object_is_taken_as_the_learning_rate():
    X, y = blobs(n=40)
    clf = SVMClassifier(learning_rate=gg.optim.StepDecay(0.05, 4, 0.5), batch_size=10, max_iter=3, tol=None,
                        backend="numpy", random_state=0).fit(X, y)
    assert clf._trainer.history["lr"] == [0.05, 0.025, 0.0125]


@pytest.mark.parametrize("E, kw", [
    (SoftmaxClassifier, dict(max_iter=5, tol=0.0)),                    # L-BFGS: one line an iteration
    (SVMClassifier, dict(max_iter=3, tol=None)),                        # SGD: one line an epoch
    (MLPClassifier, dict(hidden_layer_sizes=(4,), max_iter=3, tol=None)),   # Adam
], ids=["lbfgs", "sgd", "adam"])
def test_verbose_prints_a_line_per_iteration_and_no_bar_off_a_terminal(E, kw, capsys):
    """scikit-learn's verbose: "Iteration k, loss = J" after each epoch (L-BFGS: iteration), the
    J of loss_curve_; no progress bar where stderr is no terminal (a log, a notebook): no carriage
    return anywhere. verbose=0 prints nothing."""
    X, y = blobs(n=30)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = E(verbose=1, backend="numpy", random_state=0, **kw).fit(X, y)
        out, err = capsys.readouterr()
        assert out.splitlines() == [f"Iteration {k}, loss = {J:.8f}" for k, J in enumerate(clf.loss_curve_, 1)]
        assert len(out.splitlines()) == clf.n_iter_ >= 3 and "\r" not in out + err
        E(verbose=0, backend="numpy", random_state=0, **kw).fit(X, y)
        assert capsys.readouterr() == ("", "")


def test_verbose_shows_a_bar_on_a_terminal_and_numbers_partial_fit_calls(capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    X, y = blobs(n=30)
    clf = SVMClassifier(verbose=1, backend="numpy", random_state=0, batch_size=10)
    clf.partial_fit(X, y, classes=[0, 1, 2])
    clf.partial_fit(X, y)
    out, err = capsys.readouterr()
    assert [line.split(",")[0] for line in out.splitlines()] == ["Iteration 1", "Iteration 2"]
    assert "3/3" in err  # tqdm's bar over the 3 steps of each call


# ---- MLP specifics -----------------------------------------------------------------------------

def test_mlp_layers_and_batchnorm(backend):
    X, y = blobs(n=40)
    clf = MLPClassifier(hidden_layer_sizes=(7, 5), batchnorm=True, max_iter=40, learning_rate_init=0.02,
                        backend=backend, random_state=0).fit(X, y)
    assert [W.shape for W in clf.coefs_] == [(4, 7), (7, 5), (5, 3)]
    assert [b.shape for b in clf.intercepts_] == [(7,), (5,), (3,)]
    assert "running_mean1" in clf.model_.buffers
    assert clf.score(X, y) > 0.9


def test_standardize_keeps_uint8_pixels_on_the_device(backend):
    X, y = blobs(n=40)
    X8 = np.clip(X * 40 + 128, 0, 255).astype(np.uint8)
    clf = SoftmaxClassifier(standardize=True, backend=backend, tol=1e-8, max_iter=1000).fit(X8, y)
    assert clf.model_.normalised
    # The same optimum as scikit-learn's: StandardScaler then LogisticRegression, whose C = 1 / (alpha n)
    # is the same penalty (an independent fit of a convex cost, not gpugrad's numpy backend again).
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=1 / (1e-3 * 40), tol=1e-10, max_iter=10_000))
    ref.fit(X8, y)
    np.testing.assert_allclose(host(clf.predict_proba(X8)), ref.predict_proba(X8), atol=2e-3)


# ---- Dask --------------------------------------------------------------------------------------

def test_dask_arrays_train_through_gpugrad_distributed():
    da = deps.require("dask.array")
    X, y = blobs(n=80)
    y = np.array(["p", "q", "r"])[y]
    Xd, yd = da.from_array(X, chunks=20), da.from_array(y, chunks=20)
    for E in (SoftmaxClassifier, SVMClassifier):
        kw = dict(solver="lbfgs", random_state=0, backend="numpy", tol=1e-8, max_iter=500)
        on_dask = E(**kw).fit(Xd, yd)
        assert on_dask.classes_.tolist() == ["p", "q", "r"]
        pred = on_dask.predict(Xd)
        assert hasattr(pred, "compute")
        assert np.mean(pred.compute() == y) > 0.9
        np.testing.assert_allclose(on_dask.decision_function(Xd).compute(),
                                   X @ on_dask.coef_.T + on_dask.intercept_, rtol=1e-6, atol=1e-6)
        if E is SoftmaxClassifier:
            np.testing.assert_allclose(on_dask.predict_proba(Xd).compute().sum(axis=1), 1, rtol=1e-10)
            in_memory = E(**kw).fit(X, y)
            np.testing.assert_allclose(on_dask.predict_proba(Xd).compute(), in_memory.predict_proba(X),
                                       atol=1e-4)


def test_dask_fit_takes_the_linear_learning_rate():
    """learning_rate="linear" reaches local SGD on a Dask array (other schedules: the constant rate)."""
    da = deps.require("dask.array")
    from gpugrad import distributed
    X, y = blobs(n=80)
    Xd, yd = da.from_array(X, chunks=40), da.from_array(y, chunks=40)
    clf = SVMClassifier(solver="sgd", learning_rate="linear", learning_rate_init=0.1, batch_size=10, max_iter=2,
                        tol=None, random_state=0, backend="numpy", dtype="float64").fit(Xd, yd)
    kw = dict(loss="svm", lam=clf.alpha / 2, solver="sgd", batch_size=10, learning_rate_init=0.1, max_iter=2,
              tol=0.0, random_state=0, dtype="float64", standardize=False)
    for rate, same in (("linear", True), ("constant", False)):
        W = distributed.fit_linear(Xd, yd, learning_rate=rate, **kw)["model"].params["W"]
        assert np.allclose(W, clf.model_.params["W"], rtol=1e-12) == same


def test_dask_class_and_sample_weights_match_the_in_memory_fit():
    da = deps.require("dask.array")
    X, y = blobs(n=60)
    sw = np.random.default_rng(0).uniform(0.5, 2, 60)
    kw = dict(random_state=0, backend="numpy", tol=1e-8, max_iter=500, class_weight={0: 2.0, 1: 1.0, 2: 0.5})
    on_dask = SoftmaxClassifier(**kw).fit(da.from_array(X, chunks=20), da.from_array(y, chunks=20),
                                          sample_weight=da.from_array(sw, chunks=20))
    in_memory = SoftmaxClassifier(**kw).fit(X, y, sample_weight=sw)
    np.testing.assert_allclose(on_dask.predict_proba(da.from_array(X, chunks=20)).compute(),
                               in_memory.predict_proba(X), atol=1e-4)


def test_mlp_refuses_dask_arrays_by_name():
    da = deps.require("dask.array")
    X, y = blobs(n=20)
    with pytest.raises(TypeError, match="MLPClassifier does not take Dask arrays"):
        MLPClassifier(backend="numpy").fit(da.from_array(X, chunks=10), da.from_array(y, chunks=10))

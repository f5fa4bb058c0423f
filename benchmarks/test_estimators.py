"""The scikit-learn estimators against their peers and against a hand-written loop (pytest-benchmark).

    python -m pytest benchmarks/test_estimators.py --benchmark-only --benchmark-group-by=group -s

The targets, each measured side by side in one run:

- digits (stratified 75/25 split, random_state=0, in a Pipeline after StandardScaler, default
  parameters): test accuracy >= 0.96 (SoftmaxClassifier), >= 0.95 (SVMClassifier), >= 0.97
  (MLPClassifier); scikit-learn's LogisticRegression, SGDClassifier(loss="hinge") and
  MLPClassifier on the same split for time and accuracy (``extra_info``);
- CPU, numpy backend: 10 epochs of the course's shape (10,000 x 3072 float32, C = 10, batch 100,
  plain SGD) through ``SoftmaxClassifier.fit`` take at most 1.1x the same loop written by hand in
  numpy;
- an MLPClassifier on digits fits in at most 0.7x the time of scikit-learn's with the same
  layers, solver and epochs (``benchmarks/mlp_epoch.py`` measures it with the MLP epoch's targets,
  median and range over alternating rounds).

The ratio tests alternate the two sides round by round and compare the fastest round of each, so
a machine shared with other work slows both alike; they print the figures (``-s``) and record
them (``extra_info``). A ratio that misses its target is reported (a warning), not failed: add
``--benchmark-targets`` to make it fail, on a machine quiet enough to judge.
``GPUGRAD_BENCH_SIZE=tiny`` runs it all at smoke-test sizes.
"""
import os
import time
import warnings

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier as SkMLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from gpugrad.sklearn_dask.estimators import MLPClassifier, SoftmaxClassifier, SVMClassifier

DIGITS_TARGETS = {"SoftmaxClassifier": 0.96, "SVMClassifier": 0.95, "MLPClassifier": 0.97}
DIGITS_MODELS = {
    "SoftmaxClassifier": lambda: SoftmaxClassifier(backend="numpy"),
    "SVMClassifier": lambda: SVMClassifier(backend="numpy"),
    "MLPClassifier": lambda: MLPClassifier(backend="numpy"),
    "sklearn LogisticRegression": lambda: LogisticRegression(),
    "sklearn SGDClassifier(hinge)": lambda: SGDClassifier(loss="hinge"),
    "sklearn MLPClassifier": lambda: SkMLPClassifier(),
}


def digits_split():
    X, y = load_digits(return_X_y=True)
    return train_test_split(X, y, test_size=0.25, stratify=y, random_state=0)


@pytest.mark.parametrize("model", list(DIGITS_MODELS))
def test_digits_default_parameters(benchmark, model):
    """Fit time and test accuracy with default parameters; gpugrad's must reach its target."""
    X_train, X_test, y_train, y_test = digits_split()
    benchmark.group = "digits, Pipeline(StandardScaler, model), default parameters"
    fitted = []

    def fit():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            fitted.append(make_pipeline(StandardScaler(), DIGITS_MODELS[model]()).fit(X_train, y_train))

    benchmark.pedantic(fit, rounds=1, iterations=1)
    accuracy = fitted[-1].score(X_test, y_test)
    benchmark.extra_info["test_accuracy"] = round(accuracy, 4)
    print(f"\n{model}: digits test accuracy {accuracy:.4f}")
    if model in DIGITS_TARGETS:
        assert accuracy >= DIGITS_TARGETS[model]


# ---- the course's shape: the estimator against the loop written by hand ----------------------

TINY = os.environ.get("GPUGRAD_BENCH_SIZE") == "tiny"
N, D, C, BATCH, EPOCHS, ETA = (300, 64, 10, 100, 2, 0.001) if TINY else (10_000, 3072, 10, 100, 10, 0.001)


def course_data(seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((N, D), dtype=np.float32), rng.integers(0, C, N)


def sgd_by_hand(X, y, epochs=EPOCHS, seed=0, tuned=False):
    """The course's mini-batch gradient descent in plain numpy: shuffle each epoch, then for each
    batch S = X W^T + b, P = softmax(S), G = (P - Y) / n, W -= eta G^T X, b -= eta sum G.
    ``tuned``: dW as (X^T G)^T, the product shape BLAS runs several times faster for small C."""
    rng = np.random.default_rng(seed)
    n = X.shape[0]
    W = (rng.standard_normal((C, D)) * 0.01).astype(np.float32)
    b = np.zeros(C, np.float32)
    for _ in range(epochs):
        order = rng.permutation(n)
        for start in range(0, n, BATCH):
            idx = order[start:start + BATCH]
            Xb, yb = X[idx], y[idx]
            S = Xb @ W.T + b
            P = np.exp(S - S.max(axis=1, keepdims=True))
            P /= P.sum(axis=1, keepdims=True)
            P[np.arange(len(yb)), yb] -= 1
            P /= len(yb)
            W -= ETA * ((Xb.T @ P).T if tuned else P.T @ Xb)
            b -= ETA * P.sum(axis=0)
    return W, b


def sgd_estimator(X, y, epochs=EPOCHS):
    """The same loop through the estimator: plain SGD (no momentum, no penalty), fixed epochs."""
    return SoftmaxClassifier(solver="sgd", batch_size=BATCH, max_iter=epochs, tol=None, momentum=0.0,
                             learning_rate_init=ETA, alpha=0.0, backend="numpy",
                             random_state=0).fit(X, y)


HAND = {"SoftmaxClassifier.fit": sgd_estimator,
        "numpy by hand": sgd_by_hand,
        "numpy by hand, tuned dW": lambda X, y: sgd_by_hand(X, y, tuned=True)}


@pytest.mark.parametrize("impl", list(HAND))
def test_course_shape_sgd(benchmark, impl):
    X, y = course_data()
    benchmark.group = f"{EPOCHS} epochs of SGD, {N} x {D} float32, C={C}, batch {BATCH}, numpy"
    benchmark.pedantic(HAND[impl], args=(X, y), rounds=3, iterations=1)


def alternate(rounds, *funcs):
    """Fastest time of each callable, run in turn ``rounds`` times each."""
    best = [np.inf] * len(funcs)
    for _ in range(rounds):
        for k, f in enumerate(funcs):
            t0 = time.perf_counter()
            f()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def test_course_shape_sgd_ratio(benchmark, target):
    """Target: the estimator's fit at most 1.1x the hand-written loop, side by side, against the
    faster of the two hand-written loops, as a user runs them (BLAS's own threads). The same
    comparison with BLAS held to one thread is printed and recorded too (``extra_info``): the
    hand loop's small products lose most on a busy machine when BLAS threads them."""
    from threadpoolctl import threadpool_limits
    X, y = course_data()
    benchmark.group = "ratios"
    sides = (lambda: sgd_estimator(X, y), lambda: sgd_by_hand(X, y), lambda: sgd_by_hand(X, y, tuned=True))
    est, obvious, tuned = alternate(3, *sides)
    with threadpool_limits(1):
        est1, obvious1, tuned1 = alternate(3, *sides)
    ratio, ratio1 = est / min(obvious, tuned), est1 / min(obvious1, tuned1)
    benchmark.extra_info.update(estimator_s=round(est, 3), by_hand_s=round(obvious, 3),
                                by_hand_tuned_s=round(tuned, 3), ratio=round(ratio, 3),
                                one_blas_thread=dict(estimator_s=round(est1, 3),
                                                     by_hand_s=round(obvious1, 3),
                                                     by_hand_tuned_s=round(tuned1, 3),
                                                     ratio=round(ratio1, 3)))
    for what, e, o, t, r in (("BLAS threads", est, obvious, tuned, ratio),
                             ("one BLAS thread", est1, obvious1, tuned1, ratio1)):
        print(f"\ncourse shape, {EPOCHS} epochs, {what}: estimator {e:.3f} s, by hand {o:.3f} s, by hand "
              f"with the tuned dW {t:.3f} s, ratio to the faster {r:.3f} (target <= 1.1)")
    benchmark.pedantic(lambda: None, rounds=1)
    target(ratio <= 1.1, f"SoftmaxClassifier.fit took {ratio:.3f}x the hand-written loop at the course's "
                         f"shape (target <= 1.1)")


# ---- the MLP against scikit-learn's on digits ---------------------------------------------------

MLP_EPOCHS = 3 if TINY else 50


def mlp_pair(epochs=MLP_EPOCHS):
    """gpugrad's and scikit-learn's MLPClassifier with the same layers (100,), Adam at 0.001,
    batches of 200, the same penalty (scikit-learn's alpha 1e-4 is divided by the batch size) and
    exactly `epochs` epochs (no early stop)."""
    ours = MLPClassifier(hidden_layer_sizes=(100,), solver="adam", learning_rate_init=0.001,
                         alpha=1e-4 / 200, max_iter=epochs, tol=None, backend="numpy", random_state=0)
    theirs = SkMLPClassifier(hidden_layer_sizes=(100,), solver="adam", max_iter=epochs,
                             n_iter_no_change=epochs + 1, random_state=0)
    return ours, theirs


@pytest.mark.parametrize("impl", ["gpugrad MLPClassifier", "sklearn MLPClassifier"])
def test_mlp_digits_same_epochs(benchmark, impl):
    X_train, X_test, y_train, y_test = digits_split()
    scaler = StandardScaler().fit(X_train)
    X_train, X_test = scaler.transform(X_train), scaler.transform(X_test)
    clf = mlp_pair()[0 if impl.startswith("gpugrad") else 1]
    benchmark.group = f"MLP (100,), adam, {MLP_EPOCHS} epochs, digits"

    def fit():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(X_train, y_train)

    benchmark.pedantic(fit, rounds=3, iterations=1)
    benchmark.extra_info["test_accuracy"] = round(clf.score(X_test, y_test), 4)


def test_mlp_digits_ratio(benchmark, target):
    """Target: gpugrad's MLPClassifier fits digits in at most 0.7x scikit-learn's time, same settings."""
    X_train, _, y_train, _ = digits_split()
    X_train = StandardScaler().fit_transform(X_train)
    ours, theirs = mlp_pair()
    benchmark.group = "ratios"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        t_ours, t_theirs = alternate(3, lambda: ours.fit(X_train, y_train),
                                     lambda: theirs.fit(X_train, y_train))
    assert ours.n_iter_ == theirs.n_iter_ == MLP_EPOCHS
    benchmark.extra_info.update(gpugrad_s=round(t_ours, 3), sklearn_s=round(t_theirs, 3),
                                ratio=round(t_ours / t_theirs, 3))
    print(f"\nMLP on digits, {MLP_EPOCHS} epochs: gpugrad {t_ours:.2f} s, scikit-learn {t_theirs:.2f} s, "
          f"ratio {t_ours / t_theirs:.3f} (target <= 0.7)")
    benchmark.pedantic(lambda: None, rounds=1)
    target(t_ours <= 0.7 * t_theirs, f"gpugrad's MLPClassifier took {t_ours / t_theirs:.3f}x scikit-learn's on "
                                      f"digits (target <= 0.7)")

"""scikit-learn's own estimator checks (``check_estimator``), run on gpugrad's estimators.

The peer's standard: every check scikit-learn applies to a classifier, for each estimator and
each kind of solver (full-batch L-BFGS; mini-batch SGD / Adam, which also brings in partial_fit),
on the numpy backend. The iteration counts are small where the checks allow, as scikit-learn's
own test suite sets them for its estimators (max_iter=5 to 100), so the suite stays fast on a
2-core CI machine. No check is declared an expected failure: each one runs and must pass.
"""
import warnings

from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.estimator_checks import parametrize_with_checks

from gpugrad.sklearn_dask.estimators import MLPClassifier, SoftmaxClassifier, SVMClassifier

ESTIMATORS = [
    SoftmaxClassifier(backend="numpy", max_iter=50),                       # full-batch L-BFGS
    SoftmaxClassifier(backend="numpy", solver="sgd", max_iter=20),         # mini-batch, partial_fit
    SVMClassifier(backend="numpy", max_iter=20),
    MLPClassifier(backend="numpy", hidden_layer_sizes=(16,), max_iter=100),
    MLPClassifier(backend="numpy", hidden_layer_sizes=(8,), solver="lbfgs", max_iter=50),
]


@parametrize_with_checks(ESTIMATORS)
def test_passes_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # the short runs above, on purpose
        check(estimator)

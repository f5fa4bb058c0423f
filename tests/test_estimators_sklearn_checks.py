"""scikit-learn's own estimator checks (``check_estimator``), run on gpugrad's estimators.

The peer's standard: every check scikit-learn applies to a classifier, for each estimator and
each kind of solver (full-batch L-BFGS; mini-batch SGD / Adam, which also brings in partial_fit),
on the numpy backend. The iteration counts are small where the checks allow, as scikit-learn's
own test suite sets them for its estimators (max_iter=5 to 100), so the suite stays fast on a
2-core CI machine. One check is declared an expected failure, for one instance, with its reason
in ``expected_failed_checks``.
"""
import warnings

from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.estimator_checks import parametrize_with_checks

from gpugrad.estimators import MLPClassifier, SoftmaxClassifier, SVMClassifier

ESTIMATORS = [
    SoftmaxClassifier(backend="numpy", max_iter=50),                       # full-batch L-BFGS
    SoftmaxClassifier(backend="numpy", solver="sgd", max_iter=20),         # mini-batch, partial_fit
    SVMClassifier(backend="numpy", max_iter=20),
    MLPClassifier(backend="numpy", hidden_layer_sizes=(16,), max_iter=100),
    MLPClassifier(backend="numpy", hidden_layer_sizes=(8,), solver="lbfgs", max_iter=50),
]


NONCONVEX_WEIGHTS = (
    "a non-convex cost: weighted and repeated rows give the same cost function (tests/"
    "test_estimators.py checks the optimum at a strong penalty), but L-BFGS paths that differ in "
    "rounding from the first step may settle in different minima (at alpha=1e-4: ~1e-4 apart in "
    "predict_proba), above the check's rtol of 1e-7; at the default alpha it passes here, not by "
    "design")


def expected_failed_checks(estimator):
    if isinstance(estimator, MLPClassifier) and estimator.solver == "lbfgs":
        return {"check_sample_weight_equivalence_on_dense_data": NONCONVEX_WEIGHTS}
    return {}


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=expected_failed_checks)
def test_passes_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # the short runs above, on purpose
        check(estimator)

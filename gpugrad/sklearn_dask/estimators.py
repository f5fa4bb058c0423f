"""scikit-learn estimators on gpugrad's models, optimisers and trainer: the drop-in.

- `SoftmaxClassifier` for ``LogisticRegression`` (multinomial): s = W x + b, softmax cross-entropy.
- `SVMClassifier` for ``SGDClassifier(loss="hinge")``: s = W x + b, the multi-class SVM loss
  sum_{j != y} max(0, s_j - s_y + 1) (Weston-Watkins, the lecture's), one model for all classes.
- `MLPClassifier` for ``MLPClassifier``: ReLU layers, optional batch normalisation, softmax.

They follow scikit-learn's contract (``__init__`` stores the parameters, ``fit`` validates and
learns attributes ending in ``_``) and pass its ``check_estimator`` suite; the work is done by
`gpugrad.models` (the model), `gpugrad.optim` (the optimiser; ``lbfgs`` for full-batch) and
`gpugrad.trainer.Trainer` (the mini-batch loop, on the GPU when ``backend`` picks CuPy).

The cost minimised, for every estimator and solver (n rows, weights w_i, weight matrices W_l)::

    J = sum_i w_i l_i / sum_i w_i  +  (alpha / 2) * sum_l ||W_l||^2

where w_i = sw_i * cw_{y_i} (``sample_weight`` times ``class_weight``; 1 when not given): a
weighted mean of the row losses, as scikit-learn's MLPClassifier takes it, so integer sample
weights are the same as repeating rows and no weight scale changes the step size. Without
weights this is the lecture's J = (1/n) sum_i l_i + lam ||W||^2 with **lam = alpha / 2**, and
scikit-learn's ``SGDClassifier`` objective exactly (its alpha * ||W||^2 / 2). Peers' parameters map as follows: ``LogisticRegression(C=c)`` is
``alpha = 1 / (c * n)`` on n training rows; scikit-learn's ``MLPClassifier(alpha=a)`` divides its
penalty by the batch size, which is ``alpha = a / batch_size`` here. Biases (and batch-norm
scales) are not penalised.

Backends and dtypes: ``backend="auto"`` trains on the GPU (CuPy, the fused kernels) when one is
usable, else on numpy; ``"numpy"``/``"cupy"`` force one. The model computes in ``dtype``; by
default float32 on CuPy (the fused kernels' fast path) and on numpy X's own precision (float32
stays float32, every other input, float64 and integers, computes in float64). X may be numpy
(any dtype scikit-learn accepts, a list, a DataFrame) or CuPy; results come back in the caller's
array type (CuPy in, CuPy out; numpy otherwise). With ``standardize=True`` the model keeps the
training data's per-feature mean and std and normalises on the fly, so uint8 pixels stay uint8
on the device. Dask arrays go to `gpugrad.distributed` (linear estimators).

    >>> from sklearn.datasets import load_iris
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.preprocessing import StandardScaler
    >>> X, y = load_iris(return_X_y=True)
    >>> clf = make_pipeline(StandardScaler(), SoftmaxClassifier(backend="numpy")).fit(X, y)
    >>> round(clf.score(X, y), 2)
    0.98
"""
from __future__ import annotations

import numbers

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted

from .. import _warn
from ..training import models
from ..backends import backend_for, get_backend, is_cupy_array, to_host
from ..backends.arrays import is_dask_collection
from ..engine.ops import stable_softmax
from . import _fitting
from ._fitting import LEARNING_RATES, PREDICT_BATCH, SOLVERS  # noqa: F401 (this module's names before)

__all__ = ["SoftmaxClassifier", "SVMClassifier", "MLPClassifier"]

# The parameters' constraints, in the order fit checks them (scikit-learn's _parameter_constraints):
# a number's bounds for gpugrad.checks.number ("allow": the one other value it may take), or the
# name of a check of another kind (``_fitting.KIND_CHECKS``, or the estimator's _check_<name>).
CONSTRAINTS = (
    ("alpha", dict(low=0)),
    ("solver", "solver"),
    ("batch_size", dict(integer=True, low=1, allow="auto")),
    ("learning_rate", "schedule"),
    ("learning_rate_init", dict(low=0, low_open=True)),
    ("power_t", dict(low=0)),
    ("momentum", dict(low=0, high=1, high_open=True)),
    ("nesterovs_momentum", "bool"), ("early_stopping", "bool"), ("warm_start", "bool"), ("standardize", "bool"),
    ("max_iter", dict(integer=True, low=1)),
    ("tol", dict(low=0, allow=None)),
    ("validation_fraction", dict(low=0, high=1, low_open=True, high_open=True)),
    ("n_iter_no_change", dict(integer=True, low=1)),
    ("beta_1", dict(low=0, high=1, high_open=True)),
    ("beta_2", dict(low=0, high=1, high_open=True)),
    ("epsilon", dict(low=0, low_open=True)),
    ("class_weight", "class_weight"),
    ("verbose", "verbose"),
    ("dtype", "dtype"),
)


class _GpugradClassifier(ClassifierMixin, BaseEstimator):
    """What the three estimators share. Subclasses set ``_loss`` and build their model in
    ``_new_model``; their ``__init__`` lists the parameters (scikit-learn reads the signature).
    The work is done by the functions of ``_fitting``, the model, the optimiser and the Trainer."""

    _loss = "softmax"
    _solvers = SOLVERS
    _constraints = CONSTRAINTS

    # ---- training ----------------------------------------------------------------------------
    def fit(self, X, y, sample_weight=None):
        """Fit the model on (X, y).

        X: (n, d) numbers (numpy, CuPy, a list or DataFrame; a Dask array for the linear models),
        y: (n,) labels of any values, sample_weight: (n,) weights >= 0 or None.
        ``max_iter`` epochs at most (iterations for L-BFGS). Returns self.
        """
        _fitting.check_params(self)
        if is_dask_collection(X):
            return self._fit_dask(X, y, sample_weight)
        return self._fit(X, y, sample_weight, classes=None, partial=False)

    def _partial_fit_available(self):
        if self.solver not in ("sgd", "adam"):
            raise AttributeError(f"partial_fit is only available for the stochastic solvers 'sgd' and "
                                 f"'adam'; {type(self).__name__} has solver={self.solver!r}")
        return True

    @available_if(_partial_fit_available)
    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """One epoch over (X, y), continuing the model and the optimiser's state (momentum, Adam's
        moments, the step count of the schedule). ``classes`` (every label the model will see)
        is required on the first call. Returns self."""
        first = not hasattr(self, "model_")
        if first:
            _fitting.check_params(self)
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit")
        elif classes is not None:
            given = np.unique(to_host(classes))
            if not np.array_equal(given, self.classes_):
                raise ValueError(f"classes={given.tolist()} differs from the classes of the first call "
                                 f"to partial_fit, {self.classes_.tolist()}")
        return self._fit(X, y, sample_weight, classes=classes, partial=True)

    def _fit(self, X, y, sample_weight, classes, partial):
        """fit and partial_fit: validate, learn classes_ and the row weights, then train the model
        (a new one, or the previous fit's when warm) with L-BFGS or the Trainer."""
        first_partial = partial and not hasattr(self, "model_")
        warm = (partial and not first_partial) or (self.warm_start and hasattr(self, "model_"))
        X, y = _fitting.validate_Xy(self, X, y, reset=not warm)
        self.classes_ = _fitting.fit_classes(self, y, classes, partial, first_partial, warm)
        y_enc = _fitting.encode(y, self.classes_)
        w = _fitting.sample_weights(self, sample_weight, y_enc, X.shape[0], partial)
        model = self.model_ if warm else _fitting.new_model(self, X, len(self.classes_))
        Xd = model.prepare(X, contiguous=True)  # uint8 kept when the model normalises
        if self.solver in ("lbfgs", "auto"):   # "auto" in memory: L-BFGS
            self.model_ = model
            _fitting.fit_lbfgs(self, model, Xd, y_enc, w, self.alpha / 2)
            return self
        if partial:
            trainer = _fitting.partial_trainer(self, model, X.shape[0], first_partial)
        else:
            trainer = _fitting.fit_trainer(self, model, X.shape[0])
        # X passed scikit-learn's checks (finite) and y_enc indexes classes_: no second pass over X.
        history = trainer.fit(Xd, y_enc, sample_weight=w, check_input=False)
        self.model_, self._trainer = model, trainer
        _fitting.learned(self, history.rows, partial, first_partial)
        self.t_ = trainer.optimizer.t
        return self

    def _fit_dask(self, X, y, sample_weight):
        raise TypeError(f"{type(self).__name__} does not take Dask arrays; fit it on a numpy or CuPy "
                        "array (SoftmaxClassifier and SVMClassifier take Dask arrays)")

    # ---- inference ---------------------------------------------------------------------------
    def decision_function(self, X):
        """Scores of X (n, d): (n, C) S = the model's class scores; (n,) s_1 - s_0 for two classes
        (positive means ``classes_[1]``), as scikit-learn's binary classifiers give them."""
        if is_dask_collection(X):
            return self._dask_call("decision_function", X)
        S = _fitting.scores(self, X)
        if S.shape[1] == 2:
            S = S[:, 1] - S[:, 0]
        return _fitting.in_callers_type(self, S, X)

    def predict(self, X):
        """(n,) labels (values of ``classes_``) of the highest score: a CuPy array for CuPy X when
        the labels are numbers, numpy otherwise (CuPy holds no strings)."""
        if is_dask_collection(X):
            return self._dask_call("predict", X)
        idx = _fitting.scores(self, X).argmax(axis=1)
        if is_cupy_array(X) and self.classes_.dtype.kind in "iufb":
            xp = backend_for(X).xp
            return xp.asarray(self.classes_)[xp.asarray(idx)]
        # Labels that CuPy cannot hold (strings, objects) come back as numpy.
        return self.classes_[np.asarray(self.model_.backend.to_numpy(idx))]

    def score(self, X, y, sample_weight=None):
        """Mean accuracy of ``predict(X)`` against y (weighted by sample_weight), as a float."""
        from sklearn.metrics import accuracy_score
        pred = self.predict(X)
        host = lambda a: a.get() if is_cupy_array(a) else a  # noqa: E731
        return float(accuracy_score(host(y), host(pred),
                                    sample_weight=None if sample_weight is None else host(sample_weight)))

    def _dask_call(self, method, X):
        raise TypeError(f"{type(self).__name__} does not take Dask arrays")

    # ---- pickling: the model as its config and numpy arrays, whatever backend it lives on ------
    def __getstate__(self):
        state = dict(super().__getstate__())
        model = state.pop("model_", None)
        if model is not None:
            state["_model_saved"] = (model.config(), model.state())
        # The trainer holds the model and device arrays; a restored estimator continues partial_fit
        # with a fresh optimiser state.
        state.pop("_trainer", None)
        return state

    def __setstate__(self, state):
        saved = state.pop("_model_saved", None)
        super().__setstate__(state)
        if saved is not None:
            config, arrays = saved
            try:
                be = get_backend(self.backend)
            except (ValueError, RuntimeError) as e:
                _warn.warn(f"{type(self).__name__}: backend={self.backend!r} is not usable here ({e}); "
                           "the model is loaded on numpy")
                be = get_backend("numpy")
            model = models.model_from_config(config, backend=be)
            model.load_state(arrays)
            self.model_ = model

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.input_tags.sparse = True
        tags.classifier_tags.multi_class = True
        return tags


class _ProbaMixin:
    """predict_proba and predict_log_proba of the softmax estimators (the hinge loss gives none)."""

    def predict_proba(self, X):
        """(n, C) class probabilities softmax(S) (rows sum to 1, columns in the order of ``classes_``)."""
        if is_dask_collection(X):
            return self._dask_call("predict_proba", X)
        return _fitting.in_callers_type(self, stable_softmax(_fitting.scores(self, X)), X)

    def predict_log_proba(self, X):
        """(n, C) log of ``predict_proba``."""
        P = self.predict_proba(X)
        return backend_for(P).xp.log(P)


class _LinearMixin:
    """The model, coef_/intercept_ and the Dask path of the linear estimators."""

    _solvers = SOLVERS + ("auto",)

    def _new_model(self, be, d, C, dtype, x_mean, x_std, seed):
        return models.LinearClassifier(d, C, loss=self._loss, dtype=dtype, backend=be,
                                       x_mean=x_mean, x_std=x_std, seed=seed)

    @property
    def coef_(self):
        """(C, d) weights in the units of the raw input X (n_features); (1, d) for two classes
        (w_1 - w_0), as scikit-learn's linear classifiers; numpy."""
        W, b = self._raw_weights()
        return W if W.shape[0] != 2 else (W[1] - W[0])[None, :]

    @property
    def intercept_(self):
        """(C,) biases in the units of the raw input; (1,) for two classes (b_1 - b_0); numpy."""
        W, b = self._raw_weights()
        return b if b.shape[0] != 2 else np.array([b[1] - b[0]])

    def _raw_weights(self):
        check_is_fitted(self)
        state = self.model_.state()
        W, b = state["W"].astype(np.float64), state["b"].astype(np.float64)
        if "x_mean" in state:  # s = W (x - m) / s + b = (W / s) x + (b - W m / s)
            W = W / state["x_std"]
            b = b - W @ state["x_mean"]
        return W, b

    def _fit_dask(self, X, y, sample_weight):
        """Fit on a Dask array across the current cluster (``_fitting.fit_dask``)."""
        return _fitting.fit_dask(self, X, y, sample_weight)

    def _dask_call(self, method, X):
        return _fitting.dask_call(self, method, X)


_COMMON_DOC = """
    Parameters (scikit-learn's names where the idea is the same):
        alpha: L2 strength; the cost is mean weighted loss + (alpha / 2) * sum ||W||^2, i.e. the
            lecture's lam = alpha / 2 (see the module docstring for LogisticRegression's C).
        solver: "lbfgs" (full batch, scipy's L-BFGS-B on the exact cost; max_iter iterations),
            "sgd" (mini-batch SGD with ``momentum``, Nesterov when ``nesterovs_momentum``) or
            "adam" (``beta_1``, ``beta_2``, ``epsilon``); max_iter epochs for these two.
            Linear models also take "auto": "lbfgs" in memory; on a Dask array, where every
            pass over the data is a round of tasks on the cluster, a few epochs of local SGD
            (``momentum``, ``learning_rate_init``, ``batch_size``) on standardised features
            with the parameters averaged once an epoch, when the chunks are large enough for
            that (250 steps in at most 4 epochs), and "lbfgs" otherwise (see
            ``gpugrad.distributed.fit_linear``).
        batch_size: rows per step, "auto" = min(200, n).
        learning_rate: the schedule of the stochastic solvers: "constant" (learning_rate_init),
            "invscaling" (learning_rate_init / (1 + t / steps_per_epoch) ** power_t after t
            updates: it shrinks with the epochs),
            "linear" (learning_rate_init (1 - t / (max_iter steps_per_epoch)): down to 0 at the
            end of max_iter epochs, and 0 after them, so partial_fit beyond max_iter epochs learns
            nothing; for a fixed number of epochs, it reaches a given accuracy in fewer of them),
            "step" (divided by 10 after each third of max_iter epochs), "cyclical" (the course's
            triangle between learning_rate_init / 100 and learning_rate_init, 2 epochs up and 2
            down), or a ``gpugrad.optim`` schedule object (``optim.Cyclical(1e-5, 0.1, 500)``).
            On a Dask array, "linear" as here and every other schedule the constant
            learning_rate_init (``gpugrad.distributed.fit_linear``).
        max_iter, tol, n_iter_no_change: stop after max_iter epochs, or earlier when the epoch's
            cost (validation loss with early_stopping) has not improved by tol for
            n_iter_no_change epochs; tol=None never stops early. L-BFGS: gradient tolerance.
        early_stopping, validation_fraction: hold out that stratified fraction, stop on its loss
            and keep the best epoch's weights.
        class_weight: None, "balanced" (n / (C * class count)) or {label: weight}, multiplying
            the rows' weights.
        random_state: None, an int or a RandomState: the initial weights and the shuffles.
        warm_start: fit continues from the previous fit's weights (same classes).
        verbose: 0 is silent; 1 or more prints "Iteration k, loss = J" after each epoch (L-BFGS:
            each iteration) on stdout, as scikit-learn does, and, on a terminal only, a progress
            bar over the steps (no bar in logs or notebooks).
        standardize: keep the training data's per-feature mean and std in the model and
            normalise inputs on the fly (uint8 stays uint8 on the GPU). Off by default: the
            objective is then the peer's, e.g. after a StandardScaler. A sparse X is scaled by
            the std only (mean 0: no centring, so its zeros stay zero, as
            StandardScaler(with_mean=False) does).
        dtype: what the model computes in: None (float32 on CuPy; on numpy float32 for float32
            X, else float64), "float32" or "float64".
        backend: "auto" (the GPU when one is usable), "numpy", "cupy" or a backend object.
            On Dask arrays the chunks decide (numpy or CuPy).

    Attributes:
        classes_ (C,), n_features_in_, feature_names_in_ (DataFrames), n_iter_ (epochs, or
        L-BFGS iterations), loss_curve_ (the cost of each epoch: mean over its batches; L-BFGS:
        per iteration), t_ (optimiser steps), model_ (the ``gpugrad.models`` model),
        validation_scores_ / best_validation_score_ (validation accuracy, early stopping).
"""


class SoftmaxClassifier(_ProbaMixin, _LinearMixin, _GpugradClassifier):
    __doc__ = """Multinomial logistic regression, s = W x + b with the softmax cross-entropy: a
    drop-in for ``sklearn.linear_model.LogisticRegression`` (defaults: full-batch L-BFGS, as its,
    through ``solver="auto"``, which on a Dask array of large chunks takes a few passes of local
    SGD instead: ``solver="lbfgs"`` gives the exact optimum there too; alpha = 1e-3, about its
    C = 1 on 1000 rows).

    Attributes besides the common ones: coef_ (C, d) / (1, d) for two classes, intercept_.
""" + _COMMON_DOC + """
        >>> import numpy as np
        >>> X = np.array([[0., 0.], [0., 1.], [2., 0.], [2., 1.]])
        >>> clf = SoftmaxClassifier(backend="numpy").fit(X, ["a", "a", "b", "b"])
        >>> clf.predict([[0.1, 0.5], [1.9, 0.5]]).tolist()
        ['a', 'b']
        >>> clf.predict_proba([[1.0, 0.5]]).round(2).tolist()
        [[0.5, 0.5]]
    """

    _loss = "softmax"

    def __init__(self, *, alpha=1e-3, solver="auto", batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.01, power_t=0.5, momentum=0.9, nesterovs_momentum=True,
                 max_iter=100, tol=1e-4, early_stopping=False, validation_fraction=0.1,
                 n_iter_no_change=10, beta_1=0.9, beta_2=0.999, epsilon=1e-8, class_weight=None,
                 random_state=None, warm_start=False, verbose=0, standardize=False, dtype=None,
                 backend="auto"):
        self.alpha = alpha
        self.solver = solver
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.max_iter = max_iter
        self.tol = tol
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.class_weight = class_weight
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.standardize = standardize
        self.dtype = dtype
        self.backend = backend


class SVMClassifier(_LinearMixin, _GpugradClassifier):
    __doc__ = """The multi-class linear SVM, s = W x + b with the loss sum_{j != y} max(0, s_j - s_y + 1):
    a drop-in for ``sklearn.linear_model.SGDClassifier(loss="hinge")`` (one model for all classes
    instead of one-vs-rest; no predict_proba, as the hinge loss gives none).

    Defaults: mini-batch SGD with Nesterov momentum 0.9, rate 0.001, 200 rows a batch, until the
    cost stops improving (1000 epochs at most); alpha = 1e-3 (about LinearSVC's C = 1 on 1000 rows).
    Attributes besides the common ones: coef_ (C, d) / (1, d) for two classes, intercept_.
""" + _COMMON_DOC + """
        >>> import numpy as np
        >>> X = np.array([[0., 0.], [0., 1.], [2., 0.], [2., 1.]])
        >>> SVMClassifier(backend="numpy", random_state=0).fit(X, [-1, -1, 3, 3]).predict(X).tolist()
        [-1, -1, 3, 3]
    """

    _loss = "svm"

    def __init__(self, *, alpha=1e-3, solver="sgd", batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, momentum=0.9, nesterovs_momentum=True,
                 max_iter=1000, tol=1e-4, early_stopping=False, validation_fraction=0.1,
                 n_iter_no_change=10, beta_1=0.9, beta_2=0.999, epsilon=1e-8, class_weight=None,
                 random_state=None, warm_start=False, verbose=0, standardize=False, dtype=None,
                 backend="auto"):
        self.alpha = alpha
        self.solver = solver
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.max_iter = max_iter
        self.tol = tol
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.class_weight = class_weight
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.standardize = standardize
        self.dtype = dtype
        self.backend = backend


class MLPClassifier(_ProbaMixin, _GpugradClassifier):
    __doc__ = """A multi-layer perceptron with ReLU hidden layers, optional batch normalisation and
    the softmax cross-entropy: a drop-in for ``sklearn.neural_network.MLPClassifier``.

    hidden_layer_sizes: (m1, ..., m_{k-1}) hidden units (an int for one layer);
    batchnorm: batch normalisation after each hidden linear map (batch statistics in training,
    running averages in predict). He initialisation. Defaults: Adam at rate 0.002, 200 rows a
    batch, alpha = 1e-3, until the cost stops improving (500 epochs at most; digits: ~250).
    Attributes besides the common ones: coefs_ (list of (in, out) weight matrices, numpy, as
    scikit-learn's), intercepts_.
""" + _COMMON_DOC + """
        >>> from sklearn.datasets import load_iris
        >>> from sklearn.preprocessing import StandardScaler
        >>> X, y = load_iris(return_X_y=True)
        >>> X = StandardScaler().fit_transform(X)
        >>> clf = MLPClassifier(hidden_layer_sizes=(20,), solver="lbfgs", backend="numpy",
        ...                     random_state=0).fit(X, y)
        >>> clf.score(X, y) > 0.95, [W.shape for W in clf.coefs_]
        (True, [(4, 20), (20, 3)])
    """

    _loss = "softmax"
    _constraints = CONSTRAINTS + (("hidden_layer_sizes", "hidden"), ("batchnorm", "bool"))

    def __init__(self, hidden_layer_sizes=(100,), *, batchnorm=False, alpha=1e-3, solver="adam",
                 batch_size="auto", learning_rate="constant", learning_rate_init=0.002, power_t=0.5,
                 momentum=0.9, nesterovs_momentum=True, max_iter=500, tol=1e-4, early_stopping=False,
                 validation_fraction=0.1, n_iter_no_change=10, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-8, class_weight=None, random_state=None, warm_start=False, verbose=0,
                 standardize=False, dtype=None, backend="auto"):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.batchnorm = batchnorm
        self.alpha = alpha
        self.solver = solver
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.max_iter = max_iter
        self.tol = tol
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.class_weight = class_weight
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.standardize = standardize
        self.dtype = dtype
        self.backend = backend

    def _hidden(self):
        h = self.hidden_layer_sizes
        sizes = (h,) if isinstance(h, numbers.Integral) else h
        try:
            sizes = tuple(sizes)
        except TypeError:
            raise _fitting.param_error(self, "hidden_layer_sizes", "a positive int or a sequence of them") from None
        if not all(isinstance(m, numbers.Integral) and not isinstance(m, bool) and m >= 1 for m in sizes):
            raise _fitting.param_error(self, "hidden_layer_sizes", "a positive int or a sequence of them")
        return tuple(int(m) for m in sizes)

    def _check_hidden(self, name, value):
        self._hidden()

    def _new_model(self, be, d, C, dtype, x_mean, x_std, seed):
        return models.MLP(d, C, hidden=self._hidden(), loss="softmax", batchnorm=bool(self.batchnorm),
                          dtype=dtype, backend=be, x_mean=x_mean, x_std=x_std, seed=seed)

    @property
    def coefs_(self):
        """Weight matrices as scikit-learn lays them out: (n_in, n_out) each, numpy."""
        check_is_fitted(self)
        state = self.model_.state()
        return [state[f"W{l}"].T for l in range(1, self.model_.n_layers + 1)]

    @property
    def intercepts_(self):
        """Biases (n_out,) of each layer, numpy."""
        check_is_fitted(self)
        state = self.model_.state()
        return [state[f"b{l}"] for l in range(1, self.model_.n_layers + 1)]

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

import math
import numbers
import sys
import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from ..engine import _validation
from ..training import models, optim
from .. import checks
from ..engine import sparse as _sparse
from ..backends import backend_for, get_backend, is_cupy_array, move_to, to_host
from ..backends.arrays import is_dask_collection
from ..engine.ops import stable_softmax
from ..training.trainer import Plateau, Trainer
from ..training.data import normalisation

__all__ = ["SoftmaxClassifier", "SVMClassifier", "MLPClassifier"]

SOLVERS = ("sgd", "adam", "lbfgs")
LEARNING_RATES = ("constant", "invscaling", "step", "cyclical", "linear")
# The parameters' constraints, in the order fit checks them (scikit-learn's _parameter_constraints):
# a number's bounds for gpugrad.checks.number ("allow": the one other value it may take), or the
# name of a check of another kind (the estimator's _check_<name>).
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
_NOTHING = object()  # no "allow" value
PREDICT_BATCH = 65536  # rows scored at once by predict & co.: bounds the memory of S (and hidden layers)


def _stop_on_plateau(tol, patience):
    """The Trainer callback that stops when the epoch's cost has not improved by ``tol`` for
    ``patience`` epochs in a row (scikit-learn's rule without early stopping: ``trainer.Plateau``)."""
    plateau = Plateau(tol, patience)

    def callback(trainer, epoch, row):
        plateau.update(row["cost"])
        return plateau.stop
    return callback


def _print_iteration(iteration, cost, val_accuracy=math.nan):
    """scikit-learn's line for each epoch (L-BFGS: each iteration) when verbose >= 1, on stdout;
    above the progress bar when one is on screen (on a terminal)."""
    val = "" if math.isnan(val_accuracy) else f", validation accuracy = {val_accuracy:.4f}"
    line = f"Iteration {iteration}, loss = {cost:.8f}{val}"
    if "tqdm" in sys.modules:  # a bar may be drawn: tqdm.write keeps it whole
        from tqdm import tqdm
        tqdm.write(line, file=sys.stdout)
    else:
        print(line, flush=True)


def _epoch_lines(trainer, epoch, row):
    """The Trainer callback that prints ``_print_iteration``'s line after each epoch."""
    _print_iteration(epoch, row["cost"], row["val_accuracy"])


class _GpugradClassifier(ClassifierMixin, BaseEstimator):
    """What the three estimators share. Subclasses set ``_loss`` and build their model in
    ``_new_model``; their ``__init__`` lists the parameters (scikit-learn reads the signature)."""

    _loss = "softmax"
    _solvers = SOLVERS
    _constraints = CONSTRAINTS

    # ---- parameters --------------------------------------------------------------------------
    def _param_error(self, name, expected):
        return ValueError(f"{type(self).__name__}: parameter {name} must be {expected}, "
                          f"got {getattr(self, name)!r}")

    def _check_params(self):
        """Every parameter checked at fit against ``_constraints`` (scikit-learn's contract), in
        its order, each error naming the estimator and the parameter."""
        for name, rule in self._constraints:
            value = getattr(self, name)
            if isinstance(rule, dict):   # a number within bounds, or the one other value it may be
                bounds = dict(rule)
                allow = bounds.pop("allow", _NOTHING)
                if not (value is allow or (isinstance(allow, str) and isinstance(value, str) and value == allow)):
                    checks.number(name, value, owner=type(self).__name__, **bounds)
            else:
                getattr(self, f"_check_{rule}")(name, value)

    def _check_bool(self, name, value):
        if not isinstance(value, (bool, np.bool_)):
            raise self._param_error(name, "True or False")

    def _check_solver(self, name, value):
        if value not in self._solvers:
            raise self._param_error(name, f"one of {self._solvers}")

    def _check_schedule(self, name, value):
        if not (callable(value) and hasattr(value, "config")) and value not in LEARNING_RATES:
            raise self._param_error(name, f"one of {LEARNING_RATES} or a gpugrad.optim schedule")

    def _check_class_weight(self, name, cw):
        if not (cw is None or (isinstance(cw, str) and cw == "balanced") or isinstance(cw, dict)):
            raise self._param_error(name, "None, 'balanced' or a dict {label: weight}")
        for label, w in (cw.items() if isinstance(cw, dict) else ()):
            # a bool weight is taken as 0 or 1, as it always was: not checks.within, which refuses bools
            if not isinstance(w, numbers.Real) or not math.isfinite(w) or w < 0:
                raise ValueError(f"{type(self).__name__}: class_weight[{label!r}] must be a "
                                 f"finite number >= 0, got {w!r}")

    def _check_verbose(self, name, value):
        if not isinstance(value, (numbers.Integral, bool)):
            raise self._param_error(name, "an integer or a bool")

    def _check_dtype(self, name, value):
        if value is None:
            return
        try:
            dt = np.dtype(value)
        except TypeError:
            dt = None
        if dt not in (np.float32, np.float64):
            raise self._param_error(name, "None, 'float32' or 'float64'")

    def _backend(self):
        try:
            return get_backend(self.backend)
        except (ValueError, RuntimeError) as e:
            raise ValueError(f"{type(self).__name__}: parameter backend={self.backend!r}: {e}") from None

    def _seed(self) -> int:
        """An integer seed: random_state itself when it is one (the Dask path uses it the same way),
        else drawn from it (None: numpy's global generator, as scikit-learn does)."""
        rs = self.random_state
        if isinstance(rs, numbers.Integral) and not isinstance(rs, bool):
            if not 0 <= rs < 2 ** 32:
                raise self._param_error("random_state", "None, an integer in [0, 2**32) or a RandomState")
            return int(rs)
        try:
            return int(check_random_state(rs).randint(0, 2 ** 31 - 1))
        except ValueError:
            raise self._param_error("random_state",
                                    "None, an integer in [0, 2**32) or a RandomState") from None

    def _compute_dtype(self, be, X_dtype) -> np.dtype:
        if self.dtype is not None:
            return np.dtype(self.dtype)
        if be.xp is not np:
            return np.dtype(np.float32)
        return np.dtype(np.float32) if X_dtype == np.float32 else np.dtype(np.float64)

    # ---- inputs ------------------------------------------------------------------------------
    def _validate_X(self, X, reset):
        """X checked as scikit-learn checks it: numpy (2-D, numeric, finite, non-empty) through
        ``validate_data``; a CuPy array checked on its device (one read for the finiteness); a
        sparse matrix as ``_validate_sparse``."""
        if _sparse.is_sparse(X):
            return self._validate_sparse(X, reset)
        if not is_cupy_array(X):
            return validate_data(self, X, reset=reset, dtype="numeric")
        name = type(self).__name__
        if X.ndim != 2:
            raise ValueError(f"Expected a 2-D array (n_samples, n_features), got shape {tuple(X.shape)}")
        if X.shape[0] == 0 or X.shape[1] == 0:
            raise ValueError(f"Found array with shape {tuple(X.shape)}, while {name} needs at least "
                             "1 sample and 1 feature")
        if X.dtype.kind not in "fiub":
            raise TypeError(f"X must hold numbers, got dtype {X.dtype}")
        if X.dtype.kind == "f":
            xp = backend_for(X).xp
            if not bool(xp.isfinite(X).all()):
                raise ValueError("Input X contains NaN or infinity.")
        self._check_n_features(X, reset)
        return X

    def _validate_sparse(self, X, reset):
        """A sparse X (scipy.sparse, or cupyx.scipy.sparse on CuPy) as CSR (other formats converted
        once), never made dense: 2-D, numbers, at least a row and a column, and its stored values
        finite (a NaN or Inf is named by row and column)."""
        if _sparse.is_cupy_sparse(X):
            X = _sparse.as_csr(X)
            if X.dtype.kind not in "fiub":
                raise TypeError(f"X must hold numbers, got dtype {X.dtype}")
            if X.shape[0] == 0 or X.shape[1] == 0:
                raise ValueError(f"Found array with shape {tuple(X.shape)}, while {type(self).__name__} "
                                 "needs at least 1 sample and 1 feature")
            self._check_n_features(X, reset)
        else:
            X = validate_data(self, X, reset=reset, accept_sparse="csr", dtype="numeric", ensure_all_finite=False)
        _sparse.check_finite(X)
        return X

    def _check_n_features(self, X, reset):
        """n_features_in_ set (reset) or X's columns checked against it, for inputs validate_data
        does not take."""
        if reset:
            self.n_features_in_ = int(X.shape[1])
            if hasattr(self, "feature_names_in_"):
                del self.feature_names_in_
        elif X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, but {type(self).__name__} is expecting "
                             f"{self.n_features_in_} features as input.")

    def _validate_Xy(self, X, y, reset):
        """(X, y): X as ``_validate_X``; y as a 1-D numpy array of class labels."""
        _sparse.refuse_sparse_labels(y)
        if _sparse.is_sparse(X):
            X = self._validate_sparse(X, reset)
            y = column_or_1d(y.get() if is_cupy_array(y) else np.asarray(y), warn=True)
            if y.shape[0] != X.shape[0]:
                raise ValueError(f"X has {X.shape[0]} rows but y has {y.shape[0]} labels")
            check_classification_targets(y)
            return X, y
        if not is_cupy_array(X):
            X, y = validate_data(self, X, y, reset=reset, dtype="numeric")
        else:
            X = self._validate_X(X, reset)
            y = column_or_1d(y.get() if is_cupy_array(y) else np.asarray(y), warn=True)
            if y.shape[0] != X.shape[0]:
                raise ValueError(f"X has {X.shape[0]} rows but y has {y.shape[0]} labels")
        check_classification_targets(y)
        return X, y

    def _sample_weights(self, sample_weight, y_enc, n, partial):
        """The per-row weights w_i = sw_i * cw_{y_i}, scaled to sum to n so that the trainer's
        (1/n) sum_i w_i l_i is the weighted mean sum_i w_i l_i / sum_i w_i; None when all are 1."""
        name = type(self).__name__
        sw = None
        if sample_weight is not None:
            raw = sample_weight.get() if is_cupy_array(sample_weight) else sample_weight
            sw = np.asarray(raw, dtype=np.float64)
            if sw.ndim == 0:
                sw = np.full(n, float(sw))
            if sw.shape != (n,):
                raise ValueError(f"sample_weight has shape {sw.shape}, but X has {n} rows: expected ({n},)")
            bad = ~np.isfinite(sw) | (sw < 0)
            if bad.any():
                i = int(np.argmax(bad))
                raise ValueError(f"sample_weight[{i}] = {sw[i]}: weights must be finite and >= 0")
            if not sw.any():
                raise ValueError("sample_weight: every weight is zero; at least one must be positive")
        cw = self._class_weights(y_enc, partial)
        if sw is None and cw is None:
            return None
        w = np.ones(n) if sw is None else sw.copy()  # never write into the caller's array
        if cw is not None:
            w *= cw[y_enc]
        total = float(w.sum())
        if total <= 0:
            raise ValueError(f"{name}: with class_weight={self.class_weight!r} every row has weight zero")
        return w * (n / total)

    def _class_weights(self, y_enc, partial):
        """(C,) weight per class index from ``class_weight``, or None."""
        cw = self.class_weight
        if cw is None:
            return None
        C = len(self.classes_)
        if isinstance(cw, str):  # "balanced": n / (C * count of the class), as scikit-learn
            if partial:
                raise ValueError(f"{type(self).__name__}: class_weight='balanced' is not supported by "
                                 "partial_fit (the class counts of one batch are not the data's); pass "
                                 "sklearn.utils.class_weight.compute_class_weight's result as a dict")
            present = np.unique(y_enc)
            out = np.ones(C)
            out[present] = compute_class_weight("balanced", classes=present, y=y_enc)
            return out
        out = np.ones(C)
        index = {label: i for i, label in enumerate(self.classes_.tolist())}
        for label, w in cw.items():
            key = label.item() if isinstance(label, np.generic) else label
            if key not in index:
                raise ValueError(f"{type(self).__name__}: class_weight names the label {label!r}, which "
                                 f"is not a class of y (classes: {self.classes_.tolist()})")
            out[index[key]] = float(w)
        return out

    def _encode(self, y, classes=None):
        """Labels as class indices into ``self.classes_`` (int64), refusing unknown labels by name."""
        classes = self.classes_ if classes is None else classes
        idx = np.searchsorted(classes, y)
        idx = np.clip(idx, 0, len(classes) - 1)
        unknown = classes[idx] != y
        if unknown.any():
            i = int(np.argmax(unknown))
            value = y[i].item() if isinstance(y[i], np.generic) else y[i]
            raise ValueError(f"label y[{i}] = {value!r} is not one of the classes {classes.tolist()}")
        return idx.astype(np.int64)

    def _device_X(self, model, X):
        """X on the model's backend as it takes it (``model.prepare``: uint8 kept when the model
        normalises, otherwise the model's dtype), C-contiguous."""
        return model.prepare(X, contiguous=True)

    # ---- training ----------------------------------------------------------------------------
    def _batch_size(self, n):
        return min(200, n) if isinstance(self.batch_size, str) else min(int(self.batch_size), n)

    def _schedule(self, steps_per_epoch):
        lr = self.learning_rate
        if callable(lr):
            return lr
        eta = float(self.learning_rate_init)
        if lr == "constant":
            return optim.Constant(eta)
        if lr == "invscaling":
            return optim.InvScaling(eta, self.power_t, steps_per_epoch)
        if lr == "linear":  # down to 0 at the end of max_iter epochs
            return optim.Linear(eta, self.max_iter * steps_per_epoch)
        if lr == "step":  # a tenth of the rate after each third of max_iter
            return optim.StepDecay(eta, max(1, self.max_iter // 3) * steps_per_epoch, 0.1)
        # "cyclical": the course's triangle from eta/100 up to eta and back, 2 epochs each way
        return optim.Cyclical(eta / 100, eta, 2 * steps_per_epoch)

    def _new_optimizer(self, steps_per_epoch):
        lr = self._schedule(steps_per_epoch)
        if self.solver == "adam":
            return optim.Adam(lr, beta1=self.beta_1, beta2=self.beta_2, eps=self.epsilon)
        return optim.SGD(lr, momentum=self.momentum, nesterov=bool(self.nesterovs_momentum and self.momentum))

    def _partial_seed(self, first):
        """The shuffle seed of a partial_fit call: drawn once from random_state, then one more a call."""
        if first or not hasattr(self, "_base_seed"):
            self._base_seed = self._seed()
        return self._base_seed + getattr(self, "n_iter_", 0) * (not first)

    def _standardisation(self, X):
        """(x_mean, x_std) kept by the model when ``standardize``: the per-feature mean and std; for
        a sparse X mean 0 and the std (``gpugrad.sparse.column_scale``), which keeps its zeros zero."""
        if not self.standardize:
            return None, None
        if _sparse.is_sparse(X):
            return np.zeros(X.shape[1]), _sparse.column_scale(X)
        return normalisation(X)

    def fit(self, X, y, sample_weight=None):
        """Fit the model on (X, y).

        X: (n, d) numbers (numpy, CuPy, a list or DataFrame; a Dask array for the linear models),
        y: (n,) labels of any values, sample_weight: (n,) weights >= 0 or None.
        ``max_iter`` epochs at most (iterations for L-BFGS). Returns self.
        """
        self._check_params()
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
            self._check_params()
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit")
        elif classes is not None:
            given = np.unique(to_host(classes))
            if not np.array_equal(given, self.classes_):
                raise ValueError(f"classes={given.tolist()} differs from the classes of the first call "
                                 f"to partial_fit, {self.classes_.tolist()}")
        return self._fit(X, y, sample_weight, classes=classes, partial=True)

    def _partial_line(self, first):
        """The verbose line of a partial_fit call, numbered as n_iter_ will count it."""
        iteration = 1 if first else getattr(self, "n_iter_", 0) + 1
        return lambda trainer, epoch, row: _print_iteration(iteration, row["cost"])

    def _fit(self, X, y, sample_weight, classes, partial):
        """fit and partial_fit: validate, learn classes_ and the row weights, then train the model
        (a new one, or the previous fit's when warm) with L-BFGS or the Trainer."""
        first_partial = partial and not hasattr(self, "model_")
        warm = (partial and not first_partial) or (self.warm_start and hasattr(self, "model_"))
        X, y = self._validate_Xy(X, y, reset=not warm)
        self.classes_ = self._fit_classes(y, classes, partial, first_partial, warm)
        y_enc = self._encode(y)
        w = self._sample_weights(sample_weight, y_enc, X.shape[0], partial)
        if warm:
            model = self.model_
        else:
            be = self._backend()
            x_mean, x_std = self._standardisation(X)
            model = self._new_model(be, X.shape[1], len(self.classes_), self._compute_dtype(be, X.dtype),
                                    x_mean, x_std, self._seed())
        Xd = self._device_X(model, X)
        if self.solver in ("lbfgs", "auto"):   # "auto" in memory: L-BFGS
            self.model_ = model
            self._fit_lbfgs(model, Xd, y_enc, w, self.alpha / 2)
            return self
        trainer = self._trainer_for(model, X.shape[0], partial, first_partial, warm)
        # X passed scikit-learn's checks (finite) and y_enc indexes classes_: no second pass over X.
        history = trainer.fit(Xd, y_enc, sample_weight=w, check_input=False)
        self.model_, self._trainer = model, trainer
        self._learned(history.rows, partial, first_partial)
        self.t_ = trainer.optimizer.t
        return self

    def _fit_classes(self, y, classes, partial, first_partial, warm):
        """classes_ of this fit: all labels of y; the ``classes`` argument of partial_fit's first
        call; the previous fit's otherwise (warm_start must see the same)."""
        name = type(self).__name__
        if first_partial:
            all_classes = np.unique(to_host(classes))
        elif partial:
            all_classes = self.classes_
        else:
            all_classes = np.unique(y)
        if warm and not partial and not np.array_equal(all_classes, self.classes_):
            raise ValueError(f"{name}: warm_start needs y to have the classes of the previous fit, "
                             f"{self.classes_.tolist()}; y has {all_classes.tolist()}")
        _validation.check_two_classes(all_classes.tolist(), name)
        return all_classes

    def _trainer_for(self, model, n, partial, first_partial, warm):
        """The Trainer of a stochastic fit (max_iter epochs, stopping on a plateau or early
        stopping) or of a partial_fit call (one epoch, continuing the previous optimiser)."""
        bs = self._batch_size(n)
        steps = -(-n // bs)
        lam = self.alpha / 2
        previous = getattr(self, "_trainer", None) if warm else None
        # verbose: a line per epoch wherever the output goes; a bar only on a terminal (None: the
        # trainer draws it when stderr is one), never carriage returns in a log or a notebook.
        progress = None if self.verbose else False
        if partial:
            # One epoch on this batch of data with the optimiser of the previous calls (its state,
            # momentum or Adam's moments and the schedule's step count, carries on); a new shuffle
            # seed each call. No early stopping, as in scikit-learn.
            keep = previous is not None and previous.model is model
            return Trainer(model, previous.optimizer if keep else self._new_optimizer(steps), epochs=1,
                           batch_size=bs, lam=lam, seed=self._partial_seed(first_partial),
                           eval_train=False, progress=progress,
                           callbacks=[self._partial_line(first_partial)] if self.verbose else [])
        callbacks = [_epoch_lines] if self.verbose else []
        if not self.early_stopping and self.tol is not None:
            callbacks.append(_stop_on_plateau(self.tol, self.n_iter_no_change))
        return Trainer(
            model, self._new_optimizer(steps), epochs=self.max_iter, batch_size=bs, lam=lam,
            seed=self._seed(),
            validation_fraction=self.validation_fraction if self.early_stopping else 0.0,
            early_stopping=bool(self.early_stopping), n_iter_no_change=self.n_iter_no_change,
            tol=0.0 if self.tol is None else self.tol, eval_train=False, callbacks=callbacks,
            progress=progress)

    def _learned(self, rows, partial, first_partial):
        """n_iter_, loss_curve_ (and the validation scores) from the trainer's history rows; the
        ConvergenceWarning of a fit that ran out of epochs while still improving."""
        if partial:
            self.n_iter_ = getattr(self, "n_iter_", 0) + 1 if not first_partial else 1
            before = [] if first_partial else getattr(self, "loss_curve_", [])
            self.loss_curve_ = before + [rows[-1]["cost"]]
            return
        self.n_iter_ = len(rows)
        self.loss_curve_ = [r["cost"] for r in rows]
        if self.early_stopping:
            self.validation_scores_ = [r["val_accuracy"] for r in rows]
            self.best_validation_score_ = float(np.nanmax(self.validation_scores_))
        if self.n_iter_ >= self.max_iter and self.tol is not None:
            warnings.warn(f"{type(self).__name__}: the {self.solver} solver ran max_iter={self.max_iter} "
                          f"epochs and its cost was still improving by more than tol={self.tol}; raise "
                          "max_iter to train further", ConvergenceWarning)

    def _fit_lbfgs(self, model, X, y_enc, w, lam):
        """Full-batch L-BFGS (``gpugrad.optim.lbfgs``) over the model's whole-data cost and gradient
        (``model.loss_grad`` on all rows: on CuPy, one fused step per evaluation)."""
        be = model.backend
        y_dev = be.asarray(y_enc)
        w_dev = None if w is None else be.asarray(w, dtype=model.dtype)
        names = list(model.params)

        def value_and_grad(params):
            for k in names:
                model.params[k][...] = be.asarray(params[k], dtype=model.dtype)
            cost, _, grads = model.loss_grad(X, y_dev, lam, w_dev)
            return float(cost), {k: np.asarray(be.to_numpy(grads[k]), dtype=np.float64) for k in names}

        start = {k: np.asarray(be.to_numpy(v), dtype=np.float64) for k, v in model.params.items()}
        params, n_iter, losses = optim.lbfgs(value_and_grad, start, max_iter=self.max_iter,
                                             tol=0.0 if self.tol is None else self.tol,
                                             callback=_print_iteration if self.verbose else None)
        for k in names:
            model.params[k][...] = be.asarray(params[k], dtype=model.dtype)
        if not math.isfinite(losses[-1] if losses else 0.0):
            raise FloatingPointError(f"{type(self).__name__}: the L-BFGS cost became {losses[-1]}")
        self.n_iter_ = max(1, n_iter)
        self.loss_curve_ = losses
        self.t_ = n_iter
        if n_iter >= self.max_iter:
            warnings.warn(f"{type(self).__name__}: lbfgs stopped at max_iter={self.max_iter} iterations "
                          f"before its gradient fell below tol={self.tol}; raise max_iter to train further",
                          ConvergenceWarning)

    # ---- Dask --------------------------------------------------------------------------------
    def _fit_dask(self, X, y, sample_weight):
        raise TypeError(f"{type(self).__name__} does not take Dask arrays; fit it on a numpy or CuPy "
                        "array (SoftmaxClassifier and SVMClassifier take Dask arrays)")

    # ---- inference ---------------------------------------------------------------------------
    def _scores(self, X):
        """(S, X as given): the model's (n, C) scores on its backend, scored in row batches."""
        check_is_fitted(self)
        Xv = self._validate_X(X, reset=False)
        model = self.model_
        Xd = self._device_X(model, Xv)
        if Xd.shape[0] <= PREDICT_BATCH:
            return model.scores(Xd)
        xp = model.backend.xp
        return xp.concatenate([model.scores(Xd[i:i + PREDICT_BATCH])
                               for i in range(0, Xd.shape[0], PREDICT_BATCH)])

    def _caller(self, a, X):
        """``a`` (on the model's backend) in the caller's array type: CuPy for CuPy X, else numpy."""
        if is_cupy_array(X):
            return a if is_cupy_array(a) else backend_for(X).xp.asarray(a)
        return np.asarray(self.model_.backend.to_numpy(a))

    def decision_function(self, X):
        """Scores of X (n, d): (n, C) S = the model's class scores; (n,) s_1 - s_0 for two classes
        (positive means ``classes_[1]``), as scikit-learn's binary classifiers give them."""
        if is_dask_collection(X):
            return self._dask_call("decision_function", X)
        S = self._scores(X)
        if S.shape[1] == 2:
            S = S[:, 1] - S[:, 0]
        return self._caller(S, X)

    def predict(self, X):
        """(n,) labels (values of ``classes_``) of the highest score: a CuPy array for CuPy X when
        the labels are numbers, numpy otherwise (CuPy holds no strings)."""
        if is_dask_collection(X):
            return self._dask_call("predict", X)
        S = self._scores(X)
        idx = S.argmax(axis=1)
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
                warnings.warn(f"{type(self).__name__}: backend={self.backend!r} is not usable here ({e}); "
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
        return self._caller(stable_softmax(self._scores(X)), X)

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
        """Fit on a Dask array across the current cluster with ``gpugrad.distributed.fit_linear``:
        the same objective, compute dtype and ``standardize`` as in memory, so the same model."""
        from . import distributed  # the Dask path loads when a Dask array comes (start-up time)
        name = type(self).__name__
        if self.warm_start and hasattr(self, "model_"):
            warnings.warn(f"{name}: warm_start is not supported on Dask arrays; fitting from scratch")
        classes = None
        if self.class_weight is not None:
            classes, sample_weight = self._dask_class_weights(y, sample_weight)
        if sample_weight is not None:
            # fit_linear's cost is (1/n) sum_i w_i l_i: weights scaled to sum to n make it the
            # weighted mean, as in memory.
            sample_weight = sample_weight * (X.shape[0] / sample_weight.sum())
        out = distributed.fit_linear(
            X, y, loss=self._loss, lam=self.alpha / 2, solver=self.solver, max_iter=self.max_iter,
            tol=0.0 if self.tol is None else self.tol,
            batch_size=self._batch_size(X.shape[0]),
            learning_rate_init=self.learning_rate_init, momentum=self.momentum,
            learning_rate="linear" if self.learning_rate == "linear" else "constant",
            random_state=self._seed(), sample_weight=sample_weight,
            dtype=None if self.dtype is None else str(np.dtype(self.dtype)),
            standardize=bool(self.standardize), verbose=bool(self.verbose), classes=classes)
        self.model_ = out["model"]
        self.classes_ = np.asarray(out["classes_"])
        self.n_iter_ = int(out["n_iter_"])
        self.loss_curve_ = list(out["loss_curve_"])
        self.n_features_in_ = int(X.shape[1])
        return self

    def _dask_class_weights(self, y, sample_weight):
        """(classes, sample_weight times class_weight[y]): the labels are read once here (only y;
        X stays on the workers), the weights are built lazily per chunk."""
        import dask.array as da  # optional dependency: only on the Dask path
        y_host = to_host(y.compute() if hasattr(y, "compute") else y)
        classes = np.unique(y_host)
        self.classes_ = classes
        cw = self._class_weights(self._encode(y_host), partial=False)
        y_dask = y if hasattr(y, "map_blocks") else da.from_array(y if is_cupy_array(y) else y_host,
                                                                  chunks=len(y_host))
        per_row = y_dask.map_blocks(_row_class_weights, classes, cw, dtype=np.float64)
        return classes, per_row if sample_weight is None else per_row * sample_weight

    def _dask_call(self, method, X):
        from . import distributed  # the Dask path loads when a Dask array comes (start-up time)
        check_is_fitted(self)
        if method == "predict":
            return distributed.predict(self.model_, self.classes_, X)
        out = getattr(distributed, method)(self.model_, X)
        if method == "decision_function" and len(self.classes_) == 2:
            return out[:, 1] - out[:, 0]
        return out


def _row_class_weights(labels, classes, cw):
    """class_weight of each label of a block, on the block's backend (a CuPy block stays on its
    device: only the (C,) classes and weights move there)."""
    xp = backend_for(labels).xp
    return move_to(xp, cw)[xp.searchsorted(move_to(xp, classes), labels)]


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
            raise self._param_error("hidden_layer_sizes", "a positive int or a sequence of them") from None
        if not all(isinstance(m, numbers.Integral) and not isinstance(m, bool) and m >= 1 for m in sizes):
            raise self._param_error("hidden_layer_sizes", "a positive int or a sequence of them")
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

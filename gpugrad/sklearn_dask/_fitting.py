"""The estimators' work, as functions of the estimator (scikit-learn's ``validate_data(self, X)``
style): their parameters checked, X and y validated, labels encoded, row weights built, the model,
optimiser and Trainer made, L-BFGS run, the learned attributes set, Dask arrays routed, and
scores computed in row batches. `gpugrad.estimators` holds the classes, which call these.

    >>> import numpy as np
    >>> encode(np.array(["b", "a", "b"]), np.array(["a", "b"])).tolist()
    [1, 0, 1]
"""
from __future__ import annotations

import math
import numbers
import sys

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from .. import _warn, checks
from ..backends import backend_for, get_backend, is_cupy_array, move_to, to_host
from ..engine import _validation
from ..engine import sparse as _sparse
from ..training import optim
from ..training.data import n_batches, normalisation
from ..training.trainer import Plateau, Trainer

SOLVERS = ("sgd", "adam", "lbfgs")
LEARNING_RATES = optim.EPOCH_SCHEDULES
_NOTHING = object()  # no "allow" value
PREDICT_BATCH = 65536  # rows scored at once by predict & co.: bounds the memory of S (and hidden layers)


# ---- parameters ----------------------------------------------------------------------------------
def param_error(est, name, expected):
    """The ValueError of a bad parameter: the estimator, the parameter, what it must be, its value."""
    return ValueError(f"{type(est).__name__}: parameter {name} must be {expected}, "
                      f"got {getattr(est, name)!r}")


def check_params(est):
    """Every parameter checked at fit against ``est._constraints`` (scikit-learn's contract), in
    its order, each error naming the estimator and the parameter: a dict of bounds goes to
    ``gpugrad.checks.number`` (its "allow": the one other value it may take), a name to the check
    of that kind here (``KIND_CHECKS``) or the estimator's ``_check_<name>``."""
    for name, rule in est._constraints:
        value = getattr(est, name)
        if isinstance(rule, dict):   # a number within bounds, or the one other value it may be
            bounds = dict(rule)
            allow = bounds.pop("allow", _NOTHING)
            if not (value is allow or (isinstance(allow, str) and isinstance(value, str) and value == allow)):
                checks.number(name, value, owner=type(est).__name__, **bounds)
        elif rule in KIND_CHECKS:
            KIND_CHECKS[rule](est, name, value)
        else:
            getattr(est, f"_check_{rule}")(name, value)


def _check_bool(est, name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise param_error(est, name, "True or False")


def _check_solver(est, name, value):
    if value not in est._solvers:
        raise param_error(est, name, f"one of {est._solvers}")


def _check_schedule(est, name, value):
    if not (callable(value) and hasattr(value, "config")) and value not in LEARNING_RATES:
        raise param_error(est, name, f"one of {LEARNING_RATES} or a gpugrad.optim schedule")


def _check_class_weight(est, name, cw):
    if not (cw is None or (isinstance(cw, str) and cw == "balanced") or isinstance(cw, dict)):
        raise param_error(est, name, "None, 'balanced' or a dict {label: weight}")
    for label, w in (cw.items() if isinstance(cw, dict) else ()):
        # a bool weight is taken as 0 or 1, as it always was: not checks.within, which refuses bools
        if not isinstance(w, numbers.Real) or not math.isfinite(w) or w < 0:
            raise ValueError(f"{type(est).__name__}: class_weight[{label!r}] must be a "
                             f"finite number >= 0, got {w!r}")


def _check_verbose(est, name, value):
    if not isinstance(value, (numbers.Integral, bool)):
        raise param_error(est, name, "an integer or a bool")


def _check_dtype(est, name, value):
    if value is None:
        return
    try:
        dt = np.dtype(value)
    except TypeError:
        dt = None
    if dt not in (np.float32, np.float64):
        raise param_error(est, name, "None, 'float32' or 'float64'")


KIND_CHECKS = {"bool": _check_bool, "solver": _check_solver, "schedule": _check_schedule,
               "class_weight": _check_class_weight, "verbose": _check_verbose, "dtype": _check_dtype}


def backend(est):
    """The backend ``est.backend`` names, its error naming the estimator and the parameter."""
    try:
        return get_backend(est.backend)
    except (ValueError, RuntimeError) as e:
        raise ValueError(f"{type(est).__name__}: parameter backend={est.backend!r}: {e}") from None


def seed(est) -> int:
    """An integer seed: random_state itself when it is one (the Dask path uses it the same way),
    else drawn from it (None: numpy's global generator, as scikit-learn does)."""
    rs = est.random_state
    if isinstance(rs, numbers.Integral) and not isinstance(rs, bool):
        if not 0 <= rs < 2 ** 32:
            raise param_error(est, "random_state", "None, an integer in [0, 2**32) or a RandomState")
        return int(rs)
    try:
        return int(check_random_state(rs).randint(0, 2 ** 31 - 1))
    except ValueError:
        raise param_error(est, "random_state",
                          "None, an integer in [0, 2**32) or a RandomState") from None


def compute_dtype(est, be, X_dtype) -> np.dtype:
    """``est.dtype``; else float32 on CuPy, and on numpy float32 for float32 X, else float64."""
    if est.dtype is not None:
        return np.dtype(est.dtype)
    if be.xp is not np:
        return np.dtype(np.float32)
    return np.dtype(np.float32) if X_dtype == np.float32 else np.dtype(np.float64)


# ---- inputs --------------------------------------------------------------------------------------
def validate_X(est, X, reset):
    """X checked as scikit-learn checks it: numpy (2-D, numeric, finite, non-empty) through
    ``validate_data``; a CuPy array checked on its device (one read for the finiteness); a
    sparse matrix as ``validate_sparse``."""
    if _sparse.is_sparse(X):
        return validate_sparse(est, X, reset)
    if not is_cupy_array(X):
        return validate_data(est, X, reset=reset, dtype="numeric")
    name = type(est).__name__
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
    check_n_features(est, X, reset)
    return X


def validate_sparse(est, X, reset):
    """A sparse X (scipy.sparse, or cupyx.scipy.sparse on CuPy) as CSR (other formats converted
    once), never made dense: 2-D, numbers, at least a row and a column, and its stored values
    finite (a NaN or Inf is named by row and column)."""
    if _sparse.is_cupy_sparse(X):
        X = _sparse.as_csr(X)
        if X.dtype.kind not in "fiub":
            raise TypeError(f"X must hold numbers, got dtype {X.dtype}")
        if X.shape[0] == 0 or X.shape[1] == 0:
            raise ValueError(f"Found array with shape {tuple(X.shape)}, while {type(est).__name__} "
                             "needs at least 1 sample and 1 feature")
        check_n_features(est, X, reset)
    else:
        X = validate_data(est, X, reset=reset, accept_sparse="csr", dtype="numeric", ensure_all_finite=False)
    _sparse.check_finite(X)
    return X


def check_n_features(est, X, reset):
    """n_features_in_ set (reset) or X's columns checked against it, for inputs validate_data
    does not take."""
    if reset:
        est.n_features_in_ = int(X.shape[1])
        if hasattr(est, "feature_names_in_"):
            del est.feature_names_in_
    elif X.shape[1] != est.n_features_in_:
        raise ValueError(f"X has {X.shape[1]} features, but {type(est).__name__} is expecting "
                         f"{est.n_features_in_} features as input.")


def validate_Xy(est, X, y, reset):
    """(X, y): X as ``validate_X``; y as a 1-D numpy array of class labels, one per row of X."""
    _sparse.refuse_sparse_labels(y)
    if _sparse.is_sparse(X) or is_cupy_array(X):
        X = validate_X(est, X, reset)
        y = column_or_1d(y.get() if is_cupy_array(y) else np.asarray(y), warn=True)
        if y.shape[0] != X.shape[0]:
            raise ValueError(f"X has {X.shape[0]} rows but y has {y.shape[0]} labels")
    else:
        X, y = validate_data(est, X, y, reset=reset, dtype="numeric")
    check_classification_targets(y)
    return X, y


def standardisation(est, X):
    """(x_mean, x_std) kept by the model when ``standardize``: the per-feature mean and std; for
    a sparse X mean 0 and the std (``gpugrad.sparse.column_scale``), which keeps its zeros zero."""
    if not est.standardize:
        return None, None
    if _sparse.is_sparse(X):
        return np.zeros(X.shape[1]), _sparse.column_scale(X)
    return normalisation(X)


# ---- classes and row weights ---------------------------------------------------------------------
def fit_classes(est, y, classes, partial, first_partial, warm):
    """classes_ of this fit: all labels of y; the ``classes`` argument of partial_fit's first
    call; the previous fit's otherwise (warm_start must see the same)."""
    name = type(est).__name__
    if first_partial:
        all_classes = np.unique(to_host(classes))
    elif partial:
        all_classes = est.classes_
    else:
        all_classes = np.unique(y)
    if warm and not partial and not np.array_equal(all_classes, est.classes_):
        raise ValueError(f"{name}: warm_start needs y to have the classes of the previous fit, "
                         f"{est.classes_.tolist()}; y has {all_classes.tolist()}")
    _validation.check_two_classes(all_classes.tolist(), name)
    return all_classes


def encode(y, classes):
    """Labels as class indices into ``classes`` (sorted; int64), refusing unknown labels by name."""
    idx = np.searchsorted(classes, y)
    idx = np.clip(idx, 0, len(classes) - 1)
    unknown = classes[idx] != y
    if unknown.any():
        i = int(np.argmax(unknown))
        value = y[i].item() if isinstance(y[i], np.generic) else y[i]
        raise ValueError(f"label y[{i}] = {value!r} is not one of the classes {classes.tolist()}")
    return idx.astype(np.int64)


def _checked_sample_weight(sample_weight, n):
    """``sample_weight`` as a (n,) float64 numpy array (a scalar repeated), finite and >= 0 with
    one positive at least, or None."""
    if sample_weight is None:
        return None
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
    return sw


def sample_weights(est, sample_weight, y_enc, n, partial):
    """The per-row weights w_i = sw_i * cw_{y_i}, scaled to sum to n so that the trainer's
    (1/n) sum_i w_i l_i is the weighted mean sum_i w_i l_i / sum_i w_i; None when all are 1."""
    sw = _checked_sample_weight(sample_weight, n)
    cw = class_weights(est, y_enc, partial)
    if sw is None and cw is None:
        return None
    w = np.ones(n) if sw is None else sw.copy()  # never write into the caller's array
    if cw is not None:
        w *= cw[y_enc]
    total = float(w.sum())
    if total <= 0:
        raise ValueError(f"{type(est).__name__}: with class_weight={est.class_weight!r} every row has weight zero")
    return w * (n / total)


def class_weights(est, y_enc, partial):
    """(C,) weight per class index from ``est.class_weight``, or None."""
    cw = est.class_weight
    if cw is None:
        return None
    C = len(est.classes_)
    if isinstance(cw, str):  # "balanced": n / (C * count of the class), as scikit-learn
        if partial:
            raise ValueError(f"{type(est).__name__}: class_weight='balanced' is not supported by "
                             "partial_fit (the class counts of one batch are not the data's); pass "
                             "sklearn.utils.class_weight.compute_class_weight's result as a dict")
        present = np.unique(y_enc)
        out = np.ones(C)
        out[present] = compute_class_weight("balanced", classes=present, y=y_enc)
        return out
    out = np.ones(C)
    index = {label: i for i, label in enumerate(est.classes_.tolist())}
    for label, w in cw.items():
        key = label.item() if isinstance(label, np.generic) else label
        if key not in index:
            raise ValueError(f"{type(est).__name__}: class_weight names the label {label!r}, which "
                             f"is not a class of y (classes: {est.classes_.tolist()})")
        out[index[key]] = float(w)
    return out


# ---- training ------------------------------------------------------------------------------------
def print_iteration(iteration, cost, val_accuracy=math.nan):
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
    """The Trainer callback that prints ``print_iteration``'s line after each epoch."""
    print_iteration(epoch, row["cost"], row["val_accuracy"])


def _stop_on_plateau(tol, patience):
    """The Trainer callback that stops when the epoch's cost has not improved by ``tol`` for
    ``patience`` epochs in a row (scikit-learn's rule without early stopping: ``trainer.Plateau``)."""
    plateau = Plateau(tol, patience)

    def callback(trainer, epoch, row):
        plateau.update(row["cost"])
        return plateau.stop
    return callback


def new_model(est, X, n_classes):
    """A new model for X (n, d) and n_classes on the estimator's backend, dtype, standardisation
    and seed (``est._new_model`` builds the estimator's kind)."""
    be = backend(est)
    x_mean, x_std = standardisation(est, X)
    return est._new_model(be, X.shape[1], n_classes, compute_dtype(est, be, X.dtype), x_mean, x_std, seed(est))


def batch_size(est, n):
    """Rows per step: ``batch_size`` ("auto": 200), at most n."""
    return min(200, n) if isinstance(est.batch_size, str) else min(int(est.batch_size), n)


def new_optimizer(est, steps_per_epoch):
    """The stochastic solver's optimiser (``gpugrad.optim``) on the ``learning_rate`` schedule."""
    lr = optim.epoch_schedule(est.learning_rate, est.learning_rate_init, steps_per_epoch,
                              epochs=est.max_iter, power_t=est.power_t)
    if est.solver == "adam":
        return optim.Adam(lr, beta1=est.beta_1, beta2=est.beta_2, eps=est.epsilon)
    return optim.SGD(lr, momentum=est.momentum, nesterov=bool(est.nesterovs_momentum and est.momentum))


def partial_seed(est, first):
    """The shuffle seed of a partial_fit call: drawn once from random_state, then one more a call."""
    if first or not hasattr(est, "_base_seed"):
        est._base_seed = seed(est)
    return est._base_seed + getattr(est, "n_iter_", 0) * (not first)


def partial_trainer(est, model, n, first_partial):
    """The Trainer of a partial_fit call: one epoch on this batch of data with the optimiser of the
    previous calls (its state, momentum or Adam's moments and the schedule's step count, carries
    on); a new shuffle seed each call. No early stopping, as in scikit-learn."""
    bs = batch_size(est, n)
    previous = None if first_partial else getattr(est, "_trainer", None)
    keep = previous is not None and previous.model is model
    optimizer = previous.optimizer if keep else new_optimizer(est, n_batches(n, bs))
    iteration = 1 if first_partial else getattr(est, "n_iter_", 0) + 1  # as n_iter_ will count it
    line = lambda trainer, epoch, row: print_iteration(iteration, row["cost"])  # noqa: E731
    # verbose: a line per epoch wherever the output goes; a bar only on a terminal (None: the
    # trainer draws it when stderr is one), never carriage returns in a log or a notebook.
    return Trainer(model, optimizer, epochs=1, batch_size=bs, lam=est.alpha / 2,
                   seed=partial_seed(est, first_partial), eval_train=False,
                   progress=None if est.verbose else False, callbacks=[line] if est.verbose else [])


def fit_trainer(est, model, n):
    """The Trainer of a stochastic fit: max_iter epochs, stopping on a plateau of the cost (tol,
    n_iter_no_change) or, with early_stopping, of the validation loss."""
    bs = batch_size(est, n)
    callbacks = [_epoch_lines] if est.verbose else []
    if not est.early_stopping and est.tol is not None:
        callbacks.append(_stop_on_plateau(est.tol, est.n_iter_no_change))
    return Trainer(
        model, new_optimizer(est, n_batches(n, bs)), epochs=est.max_iter, batch_size=bs, lam=est.alpha / 2,
        seed=seed(est),
        validation_fraction=est.validation_fraction if est.early_stopping else 0.0,
        early_stopping=bool(est.early_stopping), n_iter_no_change=est.n_iter_no_change,
        tol=0.0 if est.tol is None else est.tol, eval_train=False, callbacks=callbacks,
        progress=None if est.verbose else False)


def learned(est, rows, partial, first_partial):
    """n_iter_, loss_curve_ (and the validation scores) from the trainer's history rows; the
    ConvergenceWarning of a fit that ran out of epochs while still improving."""
    if partial:
        est.n_iter_ = getattr(est, "n_iter_", 0) + 1 if not first_partial else 1
        before = [] if first_partial else getattr(est, "loss_curve_", [])
        est.loss_curve_ = before + [rows[-1]["cost"]]
        return
    est.n_iter_ = len(rows)
    est.loss_curve_ = [r["cost"] for r in rows]
    if est.early_stopping:
        est.validation_scores_ = [r["val_accuracy"] for r in rows]
        est.best_validation_score_ = float(np.nanmax(est.validation_scores_))
    if est.n_iter_ >= est.max_iter and est.tol is not None:
        _warn.warn(f"{type(est).__name__}: the {est.solver} solver ran max_iter={est.max_iter} "
                   f"epochs and its cost was still improving by more than tol={est.tol}; raise "
                   "max_iter to train further", ConvergenceWarning)


# ---- full-batch L-BFGS ---------------------------------------------------------------------------
def _whole_data_cost(model, X, y_enc, w, lam):
    """value_and_grad for ``optim.lbfgs``: float64 numpy params in, the model's cost and float64
    gradients on all rows out (``model.loss_grad``: on CuPy, one fused step per evaluation)."""
    be = model.backend
    y_dev = be.asarray(y_enc)
    w_dev = None if w is None else be.asarray(w, dtype=model.dtype)
    names = list(model.params)

    def value_and_grad(params):
        for k in names:
            model.params[k][...] = be.asarray(params[k], dtype=model.dtype)
        cost, _, grads = model.loss_grad(X, y_dev, lam, w_dev)
        return float(cost), {k: np.asarray(be.to_numpy(grads[k]), dtype=np.float64) for k in names}
    return value_and_grad


def fit_lbfgs(est, model, X, y_enc, w, lam):
    """Full-batch L-BFGS (``gpugrad.optim.lbfgs``) of the model's whole-data cost from its current
    parameters; n_iter_, loss_curve_, t_ learned, a ConvergenceWarning at max_iter."""
    be = model.backend
    start = {k: np.asarray(be.to_numpy(v), dtype=np.float64) for k, v in model.params.items()}
    params, n_iter, losses = optim.lbfgs(_whole_data_cost(model, X, y_enc, w, lam), start,
                                         max_iter=est.max_iter, tol=0.0 if est.tol is None else est.tol,
                                         callback=print_iteration if est.verbose else None)
    for k in model.params:
        model.params[k][...] = be.asarray(params[k], dtype=model.dtype)
    if not math.isfinite(losses[-1] if losses else 0.0):
        raise FloatingPointError(f"{type(est).__name__}: the L-BFGS cost became {losses[-1]}")
    est.n_iter_ = max(1, n_iter)
    est.loss_curve_ = losses
    est.t_ = n_iter
    if n_iter >= est.max_iter:
        _warn.warn(f"{type(est).__name__}: lbfgs stopped at max_iter={est.max_iter} iterations "
                   f"before its gradient fell below tol={est.tol}; raise max_iter to train further",
                   ConvergenceWarning)


# ---- Dask arrays (the linear estimators) ---------------------------------------------------------
def fit_dask(est, X, y, sample_weight):
    """Fit on a Dask array across the current cluster with ``gpugrad.distributed.fit_linear``:
    the same objective, compute dtype and ``standardize`` as in memory, so the same model."""
    from . import distributed  # the Dask path loads when a Dask array comes (start-up time)
    if est.warm_start and hasattr(est, "model_"):
        _warn.warn(f"{type(est).__name__}: warm_start is not supported on Dask arrays; fitting from scratch")
    classes = None
    if est.class_weight is not None:
        classes, sample_weight = _dask_class_weights(est, y, sample_weight)
    if sample_weight is not None:
        # fit_linear's cost is (1/n) sum_i w_i l_i: weights scaled to sum to n make it the
        # weighted mean, as in memory.
        sample_weight = sample_weight * (X.shape[0] / sample_weight.sum())
    out = distributed.fit_linear(
        X, y, loss=est._loss, lam=est.alpha / 2, solver=est.solver, max_iter=est.max_iter,
        tol=0.0 if est.tol is None else est.tol,
        batch_size=batch_size(est, X.shape[0]),
        learning_rate_init=est.learning_rate_init, momentum=est.momentum,
        learning_rate="linear" if est.learning_rate == "linear" else "constant",
        random_state=seed(est), sample_weight=sample_weight,
        dtype=None if est.dtype is None else str(np.dtype(est.dtype)),
        standardize=bool(est.standardize), verbose=bool(est.verbose), classes=classes)
    est.model_ = out["model"]
    est.classes_ = np.asarray(out["classes_"])
    est.n_iter_ = int(out["n_iter_"])
    est.loss_curve_ = list(out["loss_curve_"])
    est.n_features_in_ = int(X.shape[1])
    return est


def _dask_class_weights(est, y, sample_weight):
    """(classes, sample_weight times class_weight[y]): the labels are read once here (only y;
    X stays on the workers), the weights are built lazily per chunk."""
    import dask.array as da  # optional dependency: only on the Dask path
    y_host = to_host(y.compute() if hasattr(y, "compute") else y)
    classes = np.unique(y_host)
    est.classes_ = classes
    cw = class_weights(est, encode(y_host, classes), partial=False)
    y_dask = y if hasattr(y, "map_blocks") else da.from_array(y if is_cupy_array(y) else y_host,
                                                              chunks=len(y_host))
    per_row = y_dask.map_blocks(_row_class_weights, classes, cw, dtype=np.float64)
    return classes, per_row if sample_weight is None else per_row * sample_weight


def _row_class_weights(labels, classes, cw):
    """class_weight of each label of a block, on the block's backend (a CuPy block stays on its
    device: only the (C,) classes and weights move there)."""
    xp = backend_for(labels).xp
    return move_to(xp, cw)[xp.searchsorted(move_to(xp, classes), labels)]


def dask_call(est, method, X):
    """``method`` ("predict", "decision_function", "predict_proba") of a fitted linear estimator
    on a Dask array, chunk by chunk (``gpugrad.distributed``)."""
    from . import distributed  # the Dask path loads when a Dask array comes (start-up time)
    check_is_fitted(est)
    if method == "predict":
        return distributed.predict(est.model_, est.classes_, X)
    out = getattr(distributed, method)(est.model_, X)
    if method == "decision_function" and len(est.classes_) == 2:
        return out[:, 1] - out[:, 0]
    return out


# ---- inference -----------------------------------------------------------------------------------
def scores(est, X):
    """The fitted model's (n, C) scores of X on its backend, scored in row batches of PREDICT_BATCH."""
    check_is_fitted(est)
    model = est.model_
    Xd = model.prepare(validate_X(est, X, reset=False), contiguous=True)
    if Xd.shape[0] <= PREDICT_BATCH:
        return model.scores(Xd)
    return model.backend.xp.concatenate([model.scores(Xd[i:i + PREDICT_BATCH])
                                         for i in range(0, Xd.shape[0], PREDICT_BATCH)])


def in_callers_type(est, a, X):
    """``a`` (on the model's backend) in the caller's array type: CuPy for CuPy X, else numpy."""
    if is_cupy_array(X):
        return a if is_cupy_array(a) else backend_for(X).xp.asarray(a)
    return np.asarray(est.model_.backend.to_numpy(a))

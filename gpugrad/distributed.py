"""Training the linear classifier on Dask arrays, where the data already live.

X is a ``dask.array`` of shape (n, d) chunked by rows (numpy or CuPy chunks), y its (n,) labels.
Work runs on the cluster of the current ``distributed.Client`` (``LocalCUDACluster`` from dask-cuda
gives one worker per GPU), or on Dask's local scheduler when there is none. The loop that updates
the parameters runs here, on the client (the dask-glm pattern); the workers do the passes over
the data, each on its own chunks, with the backend of the chunk's type (numpy, or the fused CUDA
step for CuPy chunks).

What travels, and what does not:

- X is persisted on the workers once (``dask.persist``, so a lost chunk is recomputed from its
  graph) and never moves: every task that reads a block of X is pinned to the worker holding it
  (a loose restriction, so it runs elsewhere only when that worker is gone). The labels are
  encoded to class indices once, next to their X block.
- One pass gives the normalisation (per-feature mean and std in float64, std 1 for a constant
  column, as ``gpugrad.data.normalisation``), ``classes_`` and the input checks: chunks of
  another dtype or array type, NaN/Inf, labels outside ``classes`` are refused by chunk, naming
  its rows.
- Each step sends the parameters (C x d and C) to the workers and brings back, per chunk, the
  partial sums of the fused ``linear_grad`` (loss, dW, db), added pairwise-in-groups as a tree
  (fan-in 8) on the workers, so the client receives one (C x d) sum.

Solvers (``solver=``):

- ``"lbfgs"``: full-batch L-BFGS (``gpugrad.optim.lbfgs``) over the exact gradient of the whole
  data set, J(W, b) = (1/n) sum_i w_i l_i + lam ||W||^2, one pass over the data per function
  evaluation. It converges to the same minimiser as the in-memory fit (the same iterates up to
  the order of the sums: equal to ~1e-6 relative in float64). Use it when a few dozen passes over
  the data are affordable and you want the exact regularised optimum (any lam > 0 makes it
  unique); it has no learning rate to tune.
- ``"sgd"`` (``momentum`` > 0: heavy-ball momentum) and ``"adam"``: local SGD with parameter
  averaging. Every chunk is a partition: each takes mini-batch steps (``batch_size`` rows,
  its rows in a fresh random order each epoch) from the common parameters with its own copy of
  the optimiser, and after one pass over its rows (or every ``sync_every`` steps) the
  parameters and optimiser states are averaged, weighted by the rows each chunk used. This
  converges to a neighbourhood of the same minimiser whose size shrinks with the learning rate
  and with more frequent averaging; with chunks of similar content (shuffled data) a few epochs
  reach the test accuracy of the exact optimum. Use it for very large data where one or a few
  passes must do; prefer ``"lbfgs"`` when the chunks differ systematically (e.g. data sorted by
  class: each chunk then drifts to its own optimum between averagings).

Both are deterministic: the same data, chunks, seed and options give the same model on any
cluster (the tree of sums and the per-chunk random orders depend only on the chunk index).

A worker lost during a fit (its process killed) costs only time: Dask recomputes the chunks it
held and the pass is repeated; when that fails too (Dask gives up on a task after
``distributed.scheduler.allowed-failures`` lost workers) the fit raises a ``RuntimeError`` naming
the lost worker and the rows, and returns no model.

    >>> import numpy as np, dask.array as da
    >>> from gpugrad import distributed as ggd
    >>> rng = np.random.default_rng(0)
    >>> X = da.from_array(rng.standard_normal((300, 4)), chunks=(100, 4))
    >>> y = da.from_array(np.where(rng.standard_normal(300) > 0, "yes", "no"), chunks=100)
    >>> fit = ggd.fit_linear(X, y, lam=1e-2)
    >>> fit["classes_"].tolist(), fit["model"].params["W"].shape
    (['no', 'yes'], (2, 4))
    >>> ggd.predict(fit["model"], fit["classes_"], X).compute().shape
    (300,)
"""
from __future__ import annotations

import math
import sys
import uuid

import numpy as np

from . import _validation
from .backends import backend_for, is_cupy_array, to_host
from .trainer import _positive_int

__all__ = ["is_dask_collection", "fit_linear", "decision_function", "predict", "predict_proba"]

SOLVERS = ("lbfgs", "sgd", "adam")
TREE_FAN_IN = 8     # partial sums added 8 at a time: depth log_8(chunks), no single hot task
N_ITER_NO_CHANGE = 10   # SGD/Adam: epochs without a tol improvement of the loss before stopping
SURVEY_ROWS = 4096      # rows per float64 block in the statistics pass: the block stays in cache


def is_dask_collection(a) -> bool:
    """Whether ``a`` is a Dask collection (array, dataframe, delayed, ...).

    Never imports Dask: when it has not been imported, nothing can be a Dask collection.

        >>> is_dask_collection([1, 2])
        False
    """
    if "dask" not in sys.modules:
        return False
    import dask
    return dask.is_dask_collection(a)


# ---- inputs ----------------------------------------------------------------------------------

def _check_X(X):
    import dask.array as da
    if not isinstance(X, da.Array):
        hint = " (a Dask DataFrame: use df.to_dask_array(lengths=True))" if hasattr(X, "columns") else ""
        raise TypeError(f"X must be a dask.array.Array, got {type(X).__name__}{hint}")
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n, d) with one example per row, got shape {X.shape}")
    if any(math.isnan(c) for c in X.chunks[0]):
        raise ValueError("X has unknown chunk sizes; call X.compute_chunk_sizes() first")
    if X.numblocks[1] != 1:
        raise ValueError(f"X must be chunked by rows only (one block across its {X.shape[1]} "
                         f"columns), got column chunks {X.chunks[1]}: rechunk it once with "
                         "X.rechunk({1: -1})")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"X is empty: shape {X.shape}")
    if X.dtype not in _validation.FLOAT_DTYPES and X.dtype != np.uint8:
        raise TypeError(f"X must be float32, float64 or uint8, got dtype {X.dtype}")


def _as_rows_like(v, X, name):
    """``v`` (n,) as a Dask array chunked like the rows of X (numpy input is wrapped; only these
    1-D values move, never X)."""
    import dask.array as da
    if v is None:
        return None
    lazy = isinstance(v, da.Array)
    if not lazy and not is_cupy_array(v):  # a CuPy array stays on its device, chunked as it is
        v = np.asarray(v)
    if v.ndim != 1 or v.shape[0] != X.shape[0]:
        raise ValueError(f"{name} must have shape ({X.shape[0]},) (one per row of X), got {v.shape}")
    if not lazy:
        return da.from_array(v, chunks=(X.chunks[0],))
    return v if v.chunks[0] == X.chunks[0] else v.rechunk((X.chunks[0],))


def _row_ranges(X):
    """[(start, stop)] of the row chunks of X."""
    stops = np.cumsum((0,) + X.chunks[0])
    return [(int(a), int(b)) for a, b in zip(stops[:-1], stops[1:])]


def _blocks(a):
    """The row blocks of a (n, ...) Dask array as a list of Delayed objects."""
    return list(a.to_delayed().ravel())


# ---- where the tasks run ---------------------------------------------------------------------

class _Placement:
    """Pins each chunk's tasks to the worker holding that chunk of X (distributed only)."""

    def __init__(self, X):
        self.client = _active_client()
        self.keys = [k[0] if isinstance(k, list) else k for k in X.__dask_keys__()]
        self.futures = None
        if self.client is not None:
            from distributed import futures_of
            self.futures = futures_of(X)

    def workers(self):
        """[addresses holding chunk i (or None)] as the scheduler knows them now: one call."""
        if self.client is None or not self.futures:
            return [None] * len(self.keys)
        who = self.client.who_has(self.futures)
        return [list(who.get(k, ())) or None for k in self.keys]


def _active_client():
    """The distributed Client that dask.compute uses now, or None (local scheduler)."""
    if "distributed" not in sys.modules:
        return None
    try:
        from distributed import default_client
        client = default_client()
    except (ImportError, ValueError):
        return None
    import dask.base
    return client if dask.base.get_scheduler() == client.get else None


def _pinned(func, args, workers, key):
    """delayed(func)(*args) named ``key``, restricted (loosely) to ``workers`` when given."""
    import dask
    if workers is None:
        return dask.delayed(func, pure=False)(*args, dask_key_name=key)
    with dask.annotate(workers=workers, allow_other_workers=True):
        return dask.delayed(func, pure=False)(*args, dask_key_name=key)


def _shared(value, name):
    """``value`` (the parameters) under one graph key that every chunk's task reads: sent to the
    cluster once per pass rather than copied into every task. (Not ``client.scatter``: a broadcast
    to a worker that has just died fails, where a graph key is simply computed elsewhere.)"""
    import dask
    return dask.delayed(value, name=name, traverse=False)


def _tree(parts, combine, name):
    """Reduce Delayed ``parts`` with ``combine(*group)`` in groups of TREE_FAN_IN, level by level
    (a fixed shape, so the sums are added in the same order on any cluster)."""
    import dask
    level = 0
    while len(parts) > 1:
        parts = [dask.delayed(combine, pure=False)(*parts[i:i + TREE_FAN_IN],
                                                   dask_key_name=(f"{name}-L{level}", i))
                 for i in range(0, len(parts), TREE_FAN_IN)]
        level += 1
    return parts[0]


def _compute(obj, ranges, keyname, what):
    """dask.compute(obj); a lost worker that Dask could not recover from becomes a RuntimeError
    naming the worker, the task and its rows."""
    import dask
    try:
        return dask.compute(obj)[0]
    except Exception as e:
        if type(e).__name__ != "KilledWorker":
            raise
        task = getattr(e, "task", None)
        worker = getattr(getattr(e, "last_worker", None), "address", "?")
        rows = ""
        if isinstance(task, tuple) and len(task) >= 2 and isinstance(task[1], int) \
                and str(task[0]).startswith(keyname) and task[1] < len(ranges):
            a, b = ranges[task[1]]
            rows = f" (chunk {task[1]}, rows {a}:{b})"
        raise RuntimeError(f"lost worker {worker} while computing {what}: task {task!r}{rows} "
                           "failed on every worker Dask tried; the fit is abandoned and no "
                           "model is returned") from e


# ---- the pass over the data: normalisation, classes, checks ------------------------------------

def _chunk_summary(Xc, yc, wc, index, start, classes):
    """Per-chunk statistics (float64, on the host) and the first problem of the chunk, if any."""
    be = backend_for(Xc)
    xp = be.xp
    n = int(Xc.shape[0])
    out = {"n": n, "dtypes": {str(Xc.dtype): index}, "kinds": {_validation._kind(Xc): index}, "problem": None}
    if n == 0:
        out.update(mean=0.0, m2=0.0, lo=np.inf, hi=-np.inf, labels=None)
        return out
    problem = None
    lo = be.to_numpy(Xc.min(axis=0)).astype(np.float64)
    hi = be.to_numpy(Xc.max(axis=0)).astype(np.float64)
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):  # min/max carry any NaN or Inf
        r = int(xp.argmax(~xp.isfinite(Xc).all(axis=1)))
        c = int(xp.argmax(~xp.isfinite(Xc[r])))
        v = float(Xc[r, c])
        problem = f"X contains {'NaN' if v != v else v} at row {start + r}, column {c}"
    y = np.asarray(be.to_numpy(yc))
    if problem is None and y.dtype.kind in "fc" and np.isnan(y).any():
        problem = f"label NaN at row {start + int(np.argmax(np.isnan(y)))}"
    if problem is None and classes is not None:
        unknown = ~np.isin(y, classes)
        if unknown.any():
            r = int(np.argmax(unknown))
            problem = f"label {y[r].item()!r} at row {start + r} is not one of classes {classes.tolist()}"
    if problem is None and wc is not None:
        w = np.asarray(be.to_numpy(wc), dtype=np.float64)
        bad = ~np.isfinite(w) | (w < 0)
        if bad.any():
            r = int(np.argmax(bad))
            problem = f"sample_weight {w[r]} at row {start + r} is not a finite number >= 0"
    if problem is not None:
        out.update(mean=0.0, m2=0.0, lo=np.inf, hi=-np.inf, labels=None,
                   problem=(index, problem))
        return out
    mean = Xc.mean(axis=0, dtype=np.float64)   # accumulated in float64, X not copied
    m2 = xp.zeros(Xc.shape[1], np.float64)
    for r in range(0, n, SURVEY_ROWS):  # float64 deviations a few thousand rows at a time
        dev = Xc[r:r + SURVEY_ROWS] - mean
        m2 += xp.einsum("ij,ij->j", dev, dev)
    out.update(mean=be.to_numpy(mean), m2=be.to_numpy(m2), lo=lo, hi=hi, labels=np.unique(y))
    return out


def _merge_summaries(*parts):
    """Chan et al.'s pairwise update of (n, mean, M2), min/max, label sets, first problem."""
    acc = dict(parts[0])
    for p in parts[1:]:
        na, nb = acc["n"], p["n"]
        n = na + nb
        if nb and na:
            delta = p["mean"] - acc["mean"]
            acc["mean"] = acc["mean"] + delta * (nb / n)
            acc["m2"] = acc["m2"] + p["m2"] + delta ** 2 * (na * nb / n)
        elif nb:
            acc["mean"], acc["m2"] = p["mean"], p["m2"]
        acc["n"] = n
        acc["lo"], acc["hi"] = np.minimum(acc["lo"], p["lo"]), np.maximum(acc["hi"], p["hi"])
        if acc["labels"] is None or p["labels"] is None:
            acc["labels"] = p["labels"] if acc["labels"] is None else acc["labels"]
        else:
            acc["labels"] = np.union1d(acc["labels"], p["labels"])
        for key in ("dtypes", "kinds"):
            acc[key] = _first_seen(acc[key], p[key])
        problems = [q for q in (acc["problem"], p["problem"]) if q is not None]
        acc["problem"] = min(problems) if problems else None
    return acc


def _first_seen(a: dict, b: dict) -> dict:
    """{value: first chunk index where seen} of two such dicts."""
    out = dict(a)
    for k, i in b.items():
        out[k] = min(i, out.get(k, i))
    return out


def _survey(X, y, w, classes, ranges, placement):
    """One distributed pass: (x_mean, x_std, classes_) or a ValueError/TypeError naming a chunk."""
    tag = f"gpugrad-survey-{uuid.uuid4().hex[:8]}"
    wb = _blocks(w) if w is not None else [None] * len(ranges)
    parts = [_pinned(_chunk_summary, (xb, yb, wbi, i, ranges[i][0], classes), where, (tag, i))
             for i, (xb, yb, wbi, where) in enumerate(zip(_blocks(X), _blocks(y), wb,
                                                           placement.workers()))]
    s = _compute(_tree(parts, _merge_summaries, tag), ranges, tag, "the pass over the data")

    def chunk(i):
        a, b = ranges[i]
        return f"chunk {i} (rows {a}:{b})"

    for key, what in (("kinds", "array type"), ("dtypes", "dtype")):
        if len(s[key]) > 1:
            (v0, i0), (v1, i1) = sorted(s[key].items(), key=lambda kv: kv[1])[:2]
            raise TypeError(f"X's {chunk(i1)} has {what} {v1} but {chunk(i0)} has {v0}: all chunks "
                            f"must share one {what}" + (" (X.dtype says " + str(X.dtype) + ")"
                                                        if key == "dtypes" else ""))
    (dtype, i0), = s["dtypes"].items()
    if dtype != str(X.dtype):
        raise TypeError(f"X's chunks have dtype {dtype} but X.dtype is {X.dtype} "
                        f"(first seen in {chunk(i0)}): build X with the dtype its chunks hold")
    if s["problem"] is not None:
        i, message = s["problem"]
        raise ValueError(f"{chunk(i)}: {message}")
    classes_ = np.asarray(classes) if classes is not None else s["labels"]
    if classes_ is None or len(classes_) < 2:
        raise ValueError(f"y has {0 if classes_ is None else len(classes_)} distinct label(s); "
                         "at least 2 classes are needed")
    x_mean = np.asarray(s["mean"], dtype=np.float64)
    x_std = np.sqrt(np.asarray(s["m2"], dtype=np.float64) / s["n"])
    x_std[s["lo"] == s["hi"]] = 1.0   # constant column: (x - mean) / 1 = 0
    return x_mean, x_std, classes_


def _encode(yc, classes):
    """Labels -> class indices (int64) on the chunk's backend."""
    if is_cupy_array(yc):
        import cupy
        return cupy.searchsorted(cupy.asarray(classes), yc).astype(np.int64)
    return np.searchsorted(classes, np.asarray(yc)).astype(np.int64)


# ---- the distributed gradient (L-BFGS) ----------------------------------------------------------

def _chunk_grad(Xc, yc, wc, shared, loss, dtype):
    """(sum_i w_i l_i, sum_i w_i dl_i/dW, sum_i w_i dl_i/db) over a chunk, float64 on the host.

    ``linear_grad`` returns means over its rows, so each is multiplied by the chunk's n."""
    W, b, x_mean, x_std = shared
    n = Xc.shape[0]
    if n == 0:
        return 0.0, np.zeros(W.shape), np.zeros(b.shape)
    be = backend_for(Xc)
    yc, wc = be.asarray(yc), (be.asarray(wc) if wc is not None else None)  # next to X (GPU)
    J, dW, db = be.linear_grad(Xc, yc, be.asarray(W, dtype), be.asarray(b, dtype), 0.0, loss,
                               be.asarray(x_mean), be.asarray(x_std), wc)
    return (float(J) * n, be.to_numpy(dW).astype(np.float64) * n,
            be.to_numpy(db).astype(np.float64) * n)


def _add_grads(*parts):
    J, dW, db = parts[0]
    dW, db = dW.copy(), db.copy()
    for Jp, dWp, dbp in parts[1:]:
        J += Jp
        dW += dWp
        db += dbp
    return J, dW, db


# ---- local SGD / Adam with parameter averaging ---------------------------------------------------

def _chunk_steps(Xc, yc, wc, start_state, x_mean, x_std, *, loss, lam, dtype, solver, lr,
                 momentum, batch_size, seed, first_step, n_steps):
    """Mini-batch steps first_step .. first_step + n_steps - 1 of this chunk's epoch, from the
    common parameters and optimiser state. Returns the rows used as weight, and the weighted
    (float64) parameters, optimiser slots and summed batch costs, ready to be added."""
    from .optim import SGD, Adam
    n = Xc.shape[0]
    steps = range(first_step, min(first_step + n_steps, -(-n // batch_size)))
    if len(steps) == 0:
        return {"rows": 0, "cost": 0.0, "params": None, "slots": None, "t": 0}
    be = backend_for(Xc)
    xp = be.xp
    yc, wc = be.asarray(yc), (be.asarray(wc) if wc is not None else None)  # next to X (GPU)
    # Copies: the task's inputs may be shared with other tasks in this worker process.
    params = {k: xp.array(be.asarray(v), dtype=dtype, copy=True) for k, v in start_state["params"].items()}
    opt = Adam(lr=lr) if solver == "adam" else SGD(lr=lr, momentum=momentum)
    if start_state["opt"] is None:
        opt.init(params)
    else:
        opt.load_state(start_state["opt"], params)
    order = xp.asarray(np.random.default_rng(seed).permutation(n))
    mean, std = be.asarray(x_mean, dtype), be.asarray(x_std, dtype)
    cost = xp.zeros((), np.float64)
    rows = 0
    for s in steps:
        idx = order[s * batch_size:(s + 1) * batch_size]
        wb = wc[idx] if wc is not None else None
        J, dW, db = be.linear_grad(Xc[idx], yc[idx], params["W"], params["b"], lam, loss,
                                   mean, std, wb)
        opt.step(params, {"W": dW, "b": db})
        cost += J * len(idx)
        rows += len(idx)
    state = opt.state()
    return {"rows": rows, "cost": float(cost), "t": int(state.pop("t")),
            "params": {k: be.to_numpy(v).astype(np.float64) * rows for k, v in params.items()},
            "slots": {k: np.asarray(v, np.float64) * rows for k, v in state.items()}}


def _add_steps(*parts):
    """Sum the weighted parameters and slots of chunks; the step count t is the largest."""
    acc = {"rows": 0, "cost": 0.0, "t": 0, "params": None, "slots": None}
    for p in parts:
        if not p["rows"]:
            continue
        acc["rows"] += p["rows"]
        acc["cost"] += p["cost"]
        acc["t"] = max(acc["t"], p["t"])
        for key in ("params", "slots"):
            if acc[key] is None:
                acc[key] = {k: v.copy() for k, v in p[key].items()}
            else:
                for k, v in p[key].items():
                    acc[key][k] += v
    return acc


# ---- fitting --------------------------------------------------------------------------------------

def _check_options(loss, lam, solver, max_iter, tol, batch_size, learning_rate_init, momentum,
                   sync_every, dtype):
    _validation.check_loss_name(loss)
    lam = _validation.check_lam(lam)
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; expected one of {', '.join(map(repr, SOLVERS))}")
    _positive_int("max_iter", max_iter)
    _positive_int("batch_size", batch_size)
    if sync_every is not None and (not isinstance(sync_every, (int, np.integer)) or sync_every < 1):
        raise ValueError(f"sync_every must be None (once an epoch) or an integer >= 1, got {sync_every!r}")
    if not float(tol) >= 0:
        raise ValueError(f"tol must be >= 0, got {tol!r}")
    if not float(learning_rate_init) > 0:
        raise ValueError(f"learning_rate_init must be > 0, got {learning_rate_init!r}")
    if not 0 <= float(momentum) < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    dtype = np.dtype(dtype)
    if dtype not in _validation.FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    return lam, dtype


def fit_linear(X, y, *, loss="softmax", lam=0.0, solver="lbfgs", max_iter=100, tol=1e-4,
               batch_size=200, learning_rate_init=0.01, momentum=0.9, sync_every=None,
               random_state=0, sample_weight=None, dtype="float64", verbose=False,
               classes=None, callback=None):
    """Train a ``LinearClassifier`` on a Dask array across the current cluster.

    Minimises J(W, b) = (1/n) sum_i w_i l(W x_i' + b, y_i) + lam ||W||^2, x' = (x - mean) / std,
    l the softmax cross-entropy or the multi-class hinge (``loss``), w the sample weights (1).

    Args:
        X: dask.array (n, d) chunked by rows only; float32, float64 or uint8; numpy or CuPy chunks.
        y: (n,) labels of any values (dask.array, or array-like: only these move to the workers).
        solver: "lbfgs" (max_iter iterations, gtol ``tol``), or "sgd" / "adam" (max_iter epochs;
            stop once the epoch's mean cost has not improved by ``tol`` for 10 epochs);
            sgd uses ``momentum`` (0: plain SGD). See the module docstring for which to use.
        batch_size, learning_rate_init, sync_every: the mini-batch solvers' batch rows, constant
            learning rate, and steps between averagings (None: once an epoch).
        random_state: seed of the initial W (``LinearClassifier(..., seed=random_state)``) and of
            the mini-batch orders.
        sample_weight: (n,) weights >= 0 or None. dtype: what the workers compute in.
        classes: the labels to expect (others are refused, naming their chunk); default: the
            sorted distinct labels of y.
        callback: optional f(iteration, J) after each L-BFGS iteration or epoch.
    Returns:
        dict(model=LinearClassifier (numpy backend, x_mean/x_std set), classes_=(C,) labels,
        n_iter_=iterations or epochs, loss_curve_=J after each).
    """
    from .models import LinearClassifier

    _check_X(X)
    lam, dtype = _check_options(loss, lam, solver, max_iter, tol, batch_size, learning_rate_init,
                                momentum, sync_every, dtype)
    y = _as_rows_like(y, X, "y")
    w = _as_rows_like(sample_weight, X, "sample_weight")
    if classes is not None:
        classes = np.unique(to_host(classes))
    import dask
    ranges = _row_ranges(X)
    X, y, w = dask.persist(X, y, w)
    placement = _Placement(X)
    x_mean, x_std, classes_ = _survey(X, y, w, classes, ranges, placement)
    # The class indices, encoded once next to each X block and kept there.
    tag = f"gpugrad-labels-{uuid.uuid4().hex[:8]}"
    y_idx = [_pinned(_encode, (yb, classes_), where, (tag, i))
             for i, (yb, where) in enumerate(zip(_blocks(y), placement.workers()))]
    y_idx = list(dask.persist(*y_idx))
    del y
    w_blocks = _blocks(w) if w is not None else [None] * len(ranges)

    n, d = X.shape
    C = len(classes_)
    model = LinearClassifier(d, C, loss, dtype=dtype, backend="numpy", x_mean=x_mean, x_std=x_std,
                             seed=random_state)
    params0 = {k: np.asarray(v, np.float64) for k, v in model.params.items()}
    blocks = list(zip(_blocks(X), y_idx, w_blocks))

    def report(it, J):
        if verbose:
            print(f"gpugrad.distributed: {'iteration' if solver == 'lbfgs' else 'epoch'} {it}: "
                  f"cost {J:.6g}", flush=True)
        if callback is not None:
            callback(it, J)

    if solver == "lbfgs":
        from .optim import lbfgs
        evaluations = [0]

        def value_and_grad(params):
            evaluations[0] += 1
            tag = f"gpugrad-grad-{uuid.uuid4().hex[:8]}"
            W, b = params["W"], params["b"]
            shared = _shared((W, b, x_mean, x_std), f"{tag}-params")
            parts = [_pinned(_chunk_grad, (xb, yb, wb, shared, loss, dtype), where, (tag, i))
                     for i, ((xb, yb, wb), where) in enumerate(zip(blocks, placement.workers()))]
            J, dW, db = _compute(_tree(parts, _add_grads, tag), ranges, tag,
                                 f"the gradient (evaluation {evaluations[0]})")
            return (J / n + lam * float((W * W).sum()),
                    {"W": dW / n + (2 * lam) * W, "b": db / n})

        params, n_iter, losses = lbfgs(value_and_grad, params0, max_iter=max_iter, tol=tol,
                                       callback=report)
    else:
        params, n_iter, losses = _local_sgd(blocks, ranges, params0, x_mean, x_std, placement,
                                            loss=loss, lam=lam, dtype=dtype, solver=solver,
                                            lr=float(learning_rate_init),
                                            momentum=float(momentum) if solver == "sgd" else 0.0,
                                            batch_size=int(batch_size), sync_every=sync_every,
                                            max_iter=int(max_iter), tol=float(tol),
                                            seed=random_state, report=report)
    for k, v in params.items():
        model.params[k][...] = v
    return {"model": model, "classes_": classes_, "n_iter_": int(n_iter), "loss_curve_": list(losses)}


def _local_sgd(blocks, ranges, params0, x_mean, x_std, placement, *, loss, lam, dtype, solver, lr,
               momentum, batch_size, sync_every, max_iter, tol, seed, report):
    """Epochs of per-chunk mini-batch steps and weighted averaging; (params, epochs, loss curve)."""
    steps_per_epoch = max(-(-(b - a) // batch_size) for a, b in ranges)
    per_round = sync_every or steps_per_epoch
    rounds = -(-steps_per_epoch // per_round)
    state = {"params": params0, "opt": None}
    losses, best, stale = [], np.inf, 0
    seed_root = 0 if seed is None else int(seed)
    for epoch in range(max_iter):
        cost = rows = 0.0
        for r in range(rounds):
            tag = f"gpugrad-steps-{uuid.uuid4().hex[:8]}"
            shared = _shared((state, x_mean, x_std), f"{tag}-params")
            parts = [_pinned(_chunk_steps_task, (xb, yb, wb, shared,
                                                 dict(loss=loss, lam=lam, dtype=dtype, solver=solver,
                                                      lr=lr, momentum=momentum,
                                                      batch_size=batch_size,
                                                      seed=[seed_root, epoch, i],
                                                      first_step=r * per_round,
                                                      n_steps=per_round)),
                             where, (tag, i))
                     for i, ((xb, yb, wb), where) in enumerate(zip(blocks, placement.workers()))]
            total = _compute(_tree(parts, _add_steps, tag), ranges, tag,
                             f"the steps of epoch {epoch + 1}")
            m = total["rows"]
            new = {"params": {k: v / m for k, v in total["params"].items()}, "opt": None}
            if total["slots"] is not None:
                new["opt"] = {"t": np.array(total["t"], np.int64),
                              **{k: v / m for k, v in total["slots"].items()}}
            state = new
            cost += total["cost"]
            rows += m
        J = cost / rows
        if not np.isfinite(J):
            raise FloatingPointError(f"the cost became {J} in epoch {epoch + 1} "
                                     f"(learning_rate_init={lr} may be too large)")
        losses.append(J)
        report(epoch + 1, J)
        stale = stale + 1 if J > best - tol else 0
        best = min(best, J)
        if stale >= N_ITER_NO_CHANGE:
            break
    return state["params"], len(losses), losses


def _chunk_steps_task(Xc, yc, wc, shared, options):
    state, x_mean, x_std = shared
    return _chunk_steps(Xc, yc, wc, state, x_mean, x_std, **options)


# ---- inference, lazily, chunk by chunk ------------------------------------------------------------

def _model_arrays(model):
    s = model.state()
    return s["W"], s["b"], s.get("x_mean"), s.get("x_std"), model.dtype


def _block_scores(Xc, W, b, x_mean, x_std, dtype):
    """S = ((X - mean) / std) W^T + b of one block, on the block's backend."""
    be = backend_for(Xc)
    Xn = (be.normalise(Xc, be.asarray(x_mean), be.asarray(x_std), dtype) if x_mean is not None
          else Xc.astype(dtype))
    return Xn @ be.asarray(W, dtype).T + be.asarray(b, dtype)


def _block_proba(Xc, W, b, x_mean, x_std, dtype):
    S = _block_scores(Xc, W, b, x_mean, x_std, dtype)
    xp = backend_for(S).xp
    E = xp.exp(S - S.max(axis=1, keepdims=True))   # the row max keeps exp in range
    return E / E.sum(axis=1, keepdims=True)


def _block_predict(Xc, W, b, x_mean, x_std, dtype, classes):
    idx = _block_scores(Xc, W, b, x_mean, x_std, dtype).argmax(axis=1)
    if is_cupy_array(idx) and classes.dtype.kind in "biuf":
        import cupy
        return cupy.asarray(classes)[idx]
    return classes[backend_for(idx).to_numpy(idx)]


def _check_inference_X(model, X):
    _check_X(X)
    if X.shape[1] != model.n_features:
        raise ValueError(f"X has {X.shape[1]} features, but the model was trained on {model.n_features}")


def _scores_like(X, func, model, *extra):
    import dask.array as da
    W, b, mean, std, dtype = _model_arrays(model)
    C = model.n_classes
    return da.map_blocks(func, X, W, b, mean, std, dtype, *extra, chunks=(X.chunks[0], (C,)),
                         dtype=dtype, meta=X._meta.astype(dtype)[:0, :0])


def decision_function(model, X):
    """(n, C) Dask array of scores S = x' W^T + b (x' the normalised row), one task per block of X.

    Nothing is computed until the result is; blocks stay numpy or CuPy as X's are.

        >>> import numpy as np, dask.array as da, gpugrad as gg
        >>> model = gg.models.LinearClassifier(2, 3, backend="numpy", dtype="float64")
        >>> model.params["b"][:] = [0.0, 1.0, 2.0]
        >>> S = decision_function(model, da.zeros((5, 2), chunks=(2, 2)))
        >>> S.chunks, S[0].compute().tolist()
        (((2, 2, 1), (3,)), [0.0, 1.0, 2.0])
    """
    _check_inference_X(model, X)
    return _scores_like(X, _block_scores, model)


def predict_proba(model, X):
    """(n, C) Dask array of the softmax of the scores, p_ij = exp(s_ij) / sum_k exp(s_ik).

        >>> import dask.array as da, gpugrad as gg
        >>> model = gg.models.LinearClassifier(2, 4, backend="numpy", init_scale=0)
        >>> predict_proba(model, da.ones((3, 2), chunks=(2, 2))).compute().tolist()[0]
        [0.25, 0.25, 0.25, 0.25]
    """
    _check_inference_X(model, X)
    return _scores_like(X, _block_proba, model)


def predict(model, classes, X):
    """(n,) Dask array of the labels classes[argmax_j s_ij], one task per block of X.

        >>> import numpy as np, dask.array as da, gpugrad as gg
        >>> model = gg.models.LinearClassifier(1, 2, backend="numpy", dtype="float64")
        >>> model.params["W"][:] = [[-1.0], [1.0]]
        >>> predict(model, np.array(["neg", "pos"]), da.from_array([[-2.0], [3.0]])).compute().tolist()
        ['neg', 'pos']
    """
    import dask.array as da
    _check_inference_X(model, X)
    classes = to_host(classes)
    if classes.shape != (model.n_classes,):
        raise ValueError(f"classes must have shape ({model.n_classes},) (one per class of the "
                         f"model), got {classes.shape}")
    W, b, mean, std, dtype = _model_arrays(model)
    on_gpu = is_cupy_array(X._meta) and classes.dtype.kind in "biuf"
    if on_gpu:
        import cupy
        meta = cupy.empty((0,), classes.dtype)
    else:
        meta = np.empty((0,), classes.dtype)
    return da.map_blocks(_block_predict, X, W, b, mean, std, dtype, classes, drop_axis=1,
                         chunks=(X.chunks[0],), dtype=classes.dtype, meta=meta)

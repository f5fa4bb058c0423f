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
- One pass gives ``classes_``, the input checks (chunks of another dtype or array type, NaN/Inf,
  labels outside ``classes`` are refused by chunk, naming its rows) and, with ``standardize``
  (or for ``"auto"``'s SGD), the normalisation: per-feature mean and std in float64, std 1 for a
  constant column, as ``gpugrad.data.normalisation``.
- Each pass sends the parameters (C x d and C) to the workers and brings back, per chunk, the
  partial sums of the fused ``linear_grad`` (loss, dW, db), added in a fixed tree (fan-in 8,
  by chunk index). Where these partials are small (up to CLIENT_SUM_BYTES for the pass) one
  task per worker thread covers the chunks that worker holds and the client adds them: on a
  small cluster the scheduler's cost per task was most of a pass. Larger partials are added as
  the same tree on the workers, so that the client receives one (C x d) sum.

Solvers (``solver=``):

- ``"auto"`` (what the estimators' default ``solver="auto"`` runs on a Dask array): ``"sgd"``'s
  local SGD on standardised features for the epochs that give every chunk AUTO_STEPS mini-batch
  steps, when that is at most AUTO_MAX_EPOCHS epochs (chunks of more than 12,400 rows at the
  default 200-row batches), so a fit reads the data 2 to 5 times; ``"lbfgs"`` otherwise, where
  those epochs would cost more passes than L-BFGS takes. Without ``standardize`` the model is
  returned in the units of the raw input (W / std, b - W mean / std; the penalty was on the
  standardised weights). It reaches the exact optimum's neighbourhood, not the optimum: on the
  benchmark's well-separated mixture (benchmarks/RESULTS.md, "The Dask default") its test
  predictions agree with the in-memory L-BFGS fit on 99.6%; on classes that overlap more,
  about 99%. Ask for ``"lbfgs"`` for the exact optimum.
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
  and with more frequent averaging (``learning_rate="linear"`` shrinks it to 0 by the last
  epoch); with chunks of similar content (shuffled data) a few epochs reach the test accuracy
  of the exact optimum. Use it for very large data where one or a few
  passes must do; prefer ``"lbfgs"`` when the chunks differ systematically (e.g. data sorted by
  class: each chunk then drifts to its own optimum between averagings).

  ``sgd_pass="sequential"`` passes over the chunks one after another instead: the parameters,
  the optimiser state and the update count travel from chunk i's task to chunk i+1's (worker to
  worker, in the compute dtype; they stay on the workers between epochs and only the epochs'
  costs and, at the end, the parameters come to the client), so every step sees the latest
  parameters and an epoch is the in-memory epoch over the same rows (chunk 0's in its seeded
  order, then chunk 1's, ...), step for step. One worker works at a time, so an epoch takes
  the time of all the chunks' steps rather than of one chunk's, but nothing is lost to
  averaging: on the sparse benchmark (2 chunks of 100,000 rows, benchmarks/RESULTS.md, "Dask:
  the sequential pass"), 2 sequential epochs reached a better test accuracy than 4 averaged
  ones in about the same time. Use it when the workers are few, or when accuracy per epoch
  matters more than using every worker at once.

All are deterministic: the same data, chunks, seed and options give the same model on any
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

from ..engine import _validation
from .. import checks
from ..engine.ops import stable_softmax
from ..training.trainer import Plateau
from ..training import sparse_sgd
from ..training.data import batch_rows, n_batches
from ..training.models import LinearClassifier
from ..training.optim import SGD, Adam, Linear, lbfgs
from ..engine import sparse as _sparse
from ..backends import backend_for, is_cupy_array, to_host
from ..backends.arrays import is_dask_collection

__all__ = ["is_dask_collection", "fit_linear", "decision_function", "predict", "predict_proba"]

SOLVERS = ("lbfgs", "sgd", "adam", "auto")
LEARNING_RATES = ("constant", "linear")   # the mini-batch solvers' schedules (optim.Constant, optim.Linear)
SGD_PASSES = ("averaged", "sequential")   # the mini-batch solvers' pass over the chunks
AUTO_STEPS = 250        # "auto": the mini-batch steps each chunk's model takes (one epoch of 50,000 rows)
AUTO_MAX_EPOCHS = 4     # "auto": local SGD when AUTO_STEPS take at most this many epochs, else L-BFGS
TREE_FAN_IN = 8     # partial sums added 8 at a time: depth log_8(chunks), no single hot task
N_ITER_NO_CHANGE = 10   # SGD/Adam: epochs without a tol improvement of the loss before stopping
SURVEY_ROWS = 1024      # rows per float64 block in the statistics pass: the block stays in cache
CLIENT_SUM_BYTES = 16 << 20   # a pass's partials up to this size in all are added by the client


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
    if _sparse.is_sparse(X._meta) and X.dtype not in _validation.FLOAT_DTYPES:
        raise TypeError(f"X's sparse chunks must hold float32 or float64 values, got dtype {X.dtype}")


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
    """Where each chunk of X is held (distributed only), so that its tasks run there."""

    def __init__(self, X):
        self.client = _active_client()
        self.keys = [k[0] if isinstance(k, list) else k for k in X.__dask_keys__()]
        self.futures = None
        self.threads = {}
        if self.client is not None:
            from distributed import futures_of
            self.futures = futures_of(X)
            self.threads = self.client.nthreads()

    def workers(self):
        """[addresses holding chunk i (or None)] as the scheduler knows them now: one call."""
        if self.client is None or not self.futures:
            return [None] * len(self.keys)
        who = self.client.who_has(self.futures)
        return [sorted(who.get(k, ())) or None for k in self.keys]

    def groups(self):
        """[(workers, [chunk indices])]: the chunks a worker holds, split into as many groups (in
        chunk order, dealt round-robin) as it has threads, so that one task a thread covers them.
        A chunk held by several workers (a copy made by some other computation, which Dask drops
        again soon) is a group of its own, pinned to all of them, so that the scheduler picks
        one of those still holding it when the task runs; a chunk no worker holds now (lost, to
        be recomputed) is a group of its own, unpinned. On the local scheduler every chunk is
        its own group."""
        held = {}
        out = []
        for i, where in enumerate(self.workers()):
            if where is None or len(where) > 1:
                out.append((where, [i]))
            else:
                held.setdefault(where[0], []).append(i)
        for worker, chunks in held.items():
            k = max(1, min(len(chunks), int(self.threads.get(worker, 1))))
            out += [([worker], chunks[j::k]) for j in range(k)]
        return sorted(out, key=lambda g: g[1][0])


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


def _tree_here(parts, combine):
    """``_tree``'s sums, made here: the same groups, levels and order, so the same bits."""
    while len(parts) > 1:
        parts = [combine(*parts[i:i + TREE_FAN_IN]) for i in range(0, len(parts), TREE_FAN_IN)]
    return parts[0]


def _run_group(func, indices, chunk_args, extra):
    """[(i, func(*args_i, *extra))] for the chunks of one group, in chunk order."""
    return [(i, func(*args, *extra)) for i, args in zip(indices, chunk_args)]


def _map_sum(func, chunk_args, combine, placement, ranges, name, what, part_bytes, shared=None):
    """combine-sum over the chunks i of ``func(*chunk_args[i], shared)`` (``shared``, the
    parameters, left out when None), each computed where chunk i of X is held, added in
    ``_tree``'s fixed order (so the same data give the same bits on any cluster).

    Where the partials are small (``part_bytes`` each, CLIENT_SUM_BYTES in all) one task per
    worker thread computes its chunks' partials and they are added here: a pass then costs the
    scheduler a few tasks, not one per chunk and per tree node, which on a small cluster is most
    of a pass's time (benchmarks/RESULTS.md, "The Dask default"). Each of these tasks carries
    ``shared`` itself, so it needs nothing from another worker and starts at once (a task kept
    waiting on its worker may be handed to an idle one, and the chunks of X with it). Larger
    partials are added as a tree on the workers, so that the client receives one; there the
    tasks read ``shared`` from one graph key, sent once."""
    tag = f"{name}-{uuid.uuid4().hex[:8]}"
    extra = () if shared is None else (shared,)
    if part_bytes * len(chunk_args) > CLIENT_SUM_BYTES:
        extra = extra and (_shared(shared, f"{tag}-shared"),)
        parts = [_pinned(func, (*args, *extra), where, (tag, i))
                 for i, (args, where) in enumerate(zip(chunk_args, placement.workers()))]
        return _compute([_tree(parts, combine, tag)], ranges, tag, what, None)[0]
    groups = placement.groups()
    tasks = [_pinned(_run_group, (func, chunks, [chunk_args[i] for i in chunks], extra), where,
                     (tag, chunks[0])) for where, chunks in groups]
    done = _compute(tasks, ranges, tag, what, {chunks[0]: chunks for _, chunks in groups})
    parts = [part for _, part in sorted((p for group in done for p in group), key=lambda p: p[0])]
    return _tree_here(parts, combine)


def _compute(objs, ranges, keyname, what, groups):
    """dask.compute(*objs); a lost worker that Dask could not recover from becomes a RuntimeError
    naming the worker, the task and the rows it covers (``groups``: {key index: chunk indices})."""
    import dask
    try:
        return dask.compute(*objs)
    except Exception as e:
        if type(e).__name__ != "KilledWorker":
            raise
        task = getattr(e, "task", None)
        worker = getattr(getattr(e, "last_worker", None), "address", "?")
        rows = ""
        if isinstance(task, tuple) and len(task) >= 2 and isinstance(task[1], int) \
                and str(task[0]).startswith(keyname) and task[1] < len(ranges):
            chunks = (groups or {}).get(task[1], [task[1]])
            spans = ", ".join(f"{ranges[i][0]}:{ranges[i][1]}" for i in chunks)
            rows = (f" (chunk {chunks[0]}, rows {spans})" if len(chunks) == 1 else
                    f" (chunks {', '.join(map(str, chunks))}, rows {spans})")
        raise RuntimeError(f"lost worker {worker} while computing {what}: task {task!r}{rows} "
                           "failed on every worker Dask tried; the fit is abandoned and no "
                           "model is returned") from e


# ---- the pass over the data: normalisation, classes, checks ------------------------------------

def _chunk_summary(Xc, yc, wc, index, start, classes, moments=True):
    """Per-chunk statistics (float64, on the host) and the first problem of the chunk, if any;
    the per-feature mean and M2 only with ``moments`` (for the normalisation)."""
    be = backend_for(Xc)
    xp = be.xp
    n = int(Xc.shape[0])
    out = {"n": n, "dtypes": {str(Xc.dtype): index}, "kinds": {_validation._kind(Xc): index}, "problem": None}
    if n == 0:
        out.update(mean=0.0, m2=0.0, lo=np.inf, hi=-np.inf, labels=None)
        return out
    if _sparse.is_sparse(Xc):
        return _sparse_chunk_summary(Xc, yc, wc, index, start, classes, out, moments)
    problem = None
    lo = be.to_numpy(Xc.min(axis=0)).astype(np.float64)
    hi = be.to_numpy(Xc.max(axis=0)).astype(np.float64)
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):  # min/max carry any NaN or Inf
        r = int(xp.argmax(~xp.isfinite(Xc).all(axis=1)))
        c = int(xp.argmax(~xp.isfinite(Xc[r])))
        v = float(Xc[r, c])
        problem = f"X contains {'NaN' if v != v else v} at row {start + r}, column {c}"
    y = np.asarray(be.to_numpy(yc))
    problem = problem or _label_problem(y, start, classes, wc, be)
    if problem is not None:
        out.update(mean=0.0, m2=0.0, lo=np.inf, hi=-np.inf, labels=None,
                   problem=(index, problem))
        return out
    if not moments:
        out.update(mean=0.0, m2=0.0, lo=lo, hi=hi, labels=np.unique(y))
        return out
    mean = Xc.mean(axis=0, dtype=np.float64)   # accumulated in float64, X not copied
    m2 = xp.zeros(Xc.shape[1], np.float64)
    # float64 deviations SURVEY_ROWS rows at a time, in one buffer: a Dask worker's malloc
    # returns large blocks to the system on free, so a new block each time would be page-faulted in
    buf = xp.empty((min(n, SURVEY_ROWS), Xc.shape[1]), np.float64)
    for r in range(0, n, SURVEY_ROWS):
        block = Xc[r:r + SURVEY_ROWS]
        dev = buf[:block.shape[0]]
        xp.subtract(block, mean, out=dev)
        m2 += xp.einsum("ij,ij->j", dev, dev)
    out.update(mean=be.to_numpy(mean), m2=be.to_numpy(m2), lo=lo, hi=hi, labels=np.unique(y))
    return out


def _label_problem(y, start, classes, wc, be):
    """The first problem with a chunk's labels or weights (a NaN label, a label outside classes, a
    weight that is not a finite number >= 0), or None."""
    if y.dtype.kind in "fc" and np.isnan(y).any():
        return f"label NaN at row {start + int(np.argmax(np.isnan(y)))}"
    if classes is not None:
        unknown = ~np.isin(y, classes)
        if unknown.any():
            r = int(np.argmax(unknown))
            return f"label {y[r].item()!r} at row {start + r} is not one of classes {classes.tolist()}"
    if wc is not None:
        w = np.asarray(be.to_numpy(wc), dtype=np.float64)
        bad = ~np.isfinite(w) | (w < 0)
        if bad.any():
            r = int(np.argmax(bad))
            return f"sample_weight {w[r]} at row {start + r} is not a finite number >= 0"
    return None


def _sparse_chunk_summary(Xc, yc, wc, index, start, classes, out, moments=True):
    """``_chunk_summary`` of a sparse chunk, from its stored values only: the first NaN/Inf named
    by row and column, and with ``moments`` the per-column (mean, M2) over all its rows, zeros
    included, for the scale (the mean itself is not used: sparse X is scaled, never centred)."""
    Xc = _sparse.as_csr(Xc)
    be = backend_for(Xc.data)
    bad = _sparse.first_nonfinite(Xc)
    problem = None
    if bad is not None:
        row, col, value = bad
        problem = f"X contains {'NaN' if value != value else value} at row {start + row}, column {col}"
    y = np.asarray(be.to_numpy(yc))
    problem = problem or _label_problem(y, start, classes, wc, be)
    if problem is not None:
        out.update(mean=0.0, m2=0.0, lo=np.inf, hi=-np.inf, labels=None, problem=(index, problem))
        return out
    if not moments:
        out.update(mean=0.0, m2=0.0, lo=-np.inf, hi=np.inf, labels=np.unique(y))
        return out
    n = Xc.shape[0]
    std = _sparse.column_scale(Xc)  # 1 for a constant column
    mean = np.asarray(be.to_numpy(Xc.sum(axis=0)), dtype=np.float64).ravel() / n
    m2 = np.where(std == 1.0, 0.0, std * std * n)
    constant = m2 == 0
    out.update(mean=mean, m2=m2, lo=np.where(constant, mean, -np.inf), hi=np.where(constant, mean, np.inf),
               labels=np.unique(y))
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


def _survey(X, y, w, classes, ranges, placement, standardize=True):
    """One distributed pass: (x_mean, x_std, classes_) or a ValueError/TypeError naming a chunk;
    x_mean and x_std are None without ``standardize``."""
    wb = _blocks(w) if w is not None else [None] * len(ranges)
    args = [(xb, yb, wbi, i, ranges[i][0], classes, standardize)
            for i, (xb, yb, wbi) in enumerate(zip(_blocks(X), _blocks(y), wb))]
    s = _map_sum(_chunk_summary, args, _merge_summaries, placement, ranges, "gpugrad-survey",
                 "the pass over the data", 8 * 4 * X.shape[1] + 1024)

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
    if not standardize:
        return None, None, classes_
    x_mean = np.asarray(s["mean"], dtype=np.float64)
    x_std = np.sqrt(np.asarray(s["m2"], dtype=np.float64) / s["n"])
    x_std[s["lo"] == s["hi"]] = 1.0   # constant column: (x - mean) / 1 = 0
    if _sparse.is_sparse(X._meta):  # scaled, never centred: its zeros stay zero
        x_std[x_std == 0] = 1.0
        x_mean = np.zeros_like(x_mean)
    return x_mean, x_std, classes_


def _encode(yc, classes):
    """Labels -> class indices (int64) on the chunk's backend."""
    if is_cupy_array(yc):
        import cupy
        return cupy.searchsorted(cupy.asarray(classes), yc).astype(np.int64)
    return np.searchsorted(classes, np.asarray(yc)).astype(np.int64)


# ---- the distributed gradient (L-BFGS) ----------------------------------------------------------

def _chunk_grad(Xc, yc, wc, loss, dtype, shared):
    """(sum_i w_i l_i, sum_i w_i dl_i/dW, sum_i w_i dl_i/db) over a chunk, float64 on the host.

    ``linear_grad`` returns means over its rows, so each is multiplied by the chunk's n."""
    W, b, x_mean, x_std = shared
    n = Xc.shape[0]
    if n == 0:
        return 0.0, np.zeros(W.shape), np.zeros(b.shape)
    be = backend_for(Xc.data if _sparse.is_sparse(Xc) else Xc)
    if _sparse.is_sparse(Xc):
        Xc = _sparse.as_csr(Xc, dtype)
    yc, wc = be.asarray(yc), (be.asarray(wc) if wc is not None else None)  # next to X (GPU)
    Xc, mean, std = _chunk_inputs(be, Xc, x_mean, x_std, dtype)
    J, dW, db = be.linear_grad(Xc, yc, be.asarray(W, dtype), be.asarray(b, dtype), 0.0, loss,
                               mean, std, wc)
    return (float(J) * n, be.to_numpy(dW).astype(np.float64) * n,
            be.to_numpy(db).astype(np.float64) * n)


def _chunk_inputs(be, Xc, x_mean, x_std, dtype):
    """(X, x_mean, x_std) of a chunk as the step takes them: the normalisation on the chunk's
    backend, or without one X in the compute dtype (a copy only when its dtype differs)."""
    if x_mean is None:
        return (Xc if Xc.dtype == dtype else Xc.astype(dtype)), None, None
    return Xc, be.asarray(x_mean), be.asarray(x_std)


def _add_grads(*parts):
    J, dW, db = parts[0]
    dW, db = dW.copy(), db.copy()
    for Jp, dWp, dbp in parts[1:]:
        J += Jp
        dW += dWp
        db += dbp
    return J, dW, db


# ---- local SGD / Adam with parameter averaging ---------------------------------------------------

def _chunk_steps(Xc, yc, wc, start_state, x_mean, x_std, **options):
    """Mini-batch steps first_step .. first_step + n_steps - 1 of this chunk's epoch, from the
    common parameters and optimiser state (``_chunk_run``). Returns the rows used as weight, and the
    weighted (float64) parameters, optimiser slots and summed batch costs, ready to be added."""
    out = _chunk_run(Xc, yc, wc, start_state, x_mean, x_std, **options)
    if out is None:
        return {"rows": 0, "cost": 0.0, "params": None, "slots": None, "t": 0}
    be, params, state, cost, rows = out
    return {"rows": rows, "cost": cost, "t": int(state.pop("t")),
            "params": {k: be.to_numpy(v).astype(np.float64) * rows for k, v in params.items()},
            "slots": {k: np.asarray(v, np.float64) * rows for k, v in state.items()}}


def _chunk_run(Xc, yc, wc, start_state, x_mean, x_std, *, loss, lam, dtype, solver, lr, momentum,
               batch_size, seed, first_step, n_steps):
    """Mini-batch steps first_step .. first_step + n_steps - 1 of this chunk's epoch (its rows in
    the order ``seed`` draws), from ``start_state`` ({"params": W, b; "opt": None or the
    optimiser's state}). Returns (backend, params in ``dtype`` on the chunk's backend, the
    optimiser's state (numpy, with "t"), summed batch costs, rows used), or None when the chunk
    has no such steps."""
    n = Xc.shape[0]
    steps = range(first_step, min(first_step + n_steps, n_batches(n, batch_size)))
    if len(steps) == 0:
        return None
    be = backend_for(Xc.data if _sparse.is_sparse(Xc) else Xc)
    xp = be.xp
    if _sparse.is_sparse(Xc):
        Xc = _sparse.as_csr(Xc, dtype)
    yc, wc = be.asarray(yc), (be.asarray(wc) if wc is not None else None)  # next to X (GPU)
    # Copies: the task's inputs may be shared with other tasks in this worker process.
    params = {k: xp.array(be.asarray(v), dtype=dtype, copy=True) for k, v in start_state["params"].items()}
    opt = Adam(lr=lr) if solver == "adam" else SGD(lr=lr, momentum=momentum)
    if start_state["opt"] is None:
        opt.init(params)
    else:
        opt.load_state(start_state["opt"], params)
    order = xp.asarray(np.random.default_rng(seed).permutation(n))
    Xc, mean, std = _chunk_inputs(be, Xc, x_mean, x_std, dtype)
    if mean is not None:
        mean, std = mean.astype(dtype), std.astype(dtype)
    if _lazy_sgd(Xc, solver, xp):
        cost, rows = _chunk_lazy_steps(be, Xc, yc, wc, params, opt, std, order, steps, loss=loss, lam=lam,
                                       batch_size=batch_size)
    else:
        cost = xp.zeros((), np.float64)
        rows = 0
        for s in steps:
            idx = batch_rows(order, s, batch_size)
            wb = wc[idx] if wc is not None else None
            Xb, mb, sb = Xc[idx], mean, std
            if mean is not None and xp is np and not _sparse.is_sparse(Xb):
                # the gathered rows normalised in place (CuPy: in the kernel; sparse: by W's scale)
                Xb = Xb.astype(dtype, copy=False)
                Xb -= mean
                Xb /= std
                mb = sb = None
            J, dW, db = be.linear_grad(Xb, yc[idx], params["W"], params["b"], lam, loss, mb, sb, wb)
            opt.step(params, {"W": dW, "b": db})
            cost += J * len(idx)
            rows += len(idx)
    return be, params, opt.state(copy=False), float(cost), rows


def _lazy_sgd(Xc, solver, xp) -> bool:
    """Whether a chunk's steps bring only the batch's columns up to date (``gpugrad.sparse_sgd``):
    SGD on a sparse chunk on the host (a sparse X is scaled, never centred)."""
    return _sparse.is_sparse(Xc) and solver == "sgd" and xp is np


def _chunk_lazy_steps(be, Xc, yc, wc, params, opt, std, order, steps, *, loss, lam, batch_size):
    """The chunk's steps through ``gpugrad.sparse_sgd`` (the same updates as ``opt.step`` within
    rounding); returns (summed batch costs, rows)."""
    velocity = (opt.slots["velocity/W"], opt.slots["velocity/b"]) if opt.momentum else None
    per_step, opt.t, _ = sparse_sgd.run(be, Xc, yc, wc, params["W"], params["b"], loss=loss, lam=lam,
                                        schedule=opt.schedule, t=opt.t, order=order, batch_size=batch_size,
                                        batches=steps, x_std=std, momentum=opt.momentum, velocity=velocity)
    sizes = np.array([len(batch_rows(order, s, batch_size)) for s in steps], dtype=np.float64)
    return float(per_step[0] @ sizes), int(sizes.sum())


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
                   sync_every, dtype, learning_rate="constant", sgd_pass=None):
    _validation.check_loss_name(loss)
    lam = _validation.check_lam(lam)
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; expected one of {', '.join(map(repr, SOLVERS))}")
    checks.number("max_iter", max_iter, integer=True, low=1)
    checks.number("batch_size", batch_size, integer=True, low=1)
    if sync_every is not None:
        checks.number("sync_every", sync_every, integer=True, low=1,
                     what="None (once an epoch) or an integer >= 1")
    checks.number("tol", tol, convert=float, finite=False, low=0, what=">= 0")
    checks.number("learning_rate_init", learning_rate_init, convert=float, finite=False, low=0,
                 low_open=True, what="> 0")
    if learning_rate not in LEARNING_RATES:
        raise ValueError(f"learning_rate must be one of {LEARNING_RATES}, got {learning_rate!r}")
    if sgd_pass is not None and sgd_pass not in SGD_PASSES:
        raise ValueError(f"sgd_pass must be None or one of {SGD_PASSES}, got {sgd_pass!r}")
    if sgd_pass == "sequential" and sync_every is not None:
        raise ValueError(f"sync_every={sync_every!r} applies to sgd_pass='averaged' only: the "
                         "sequential pass carries the parameters from step to step")
    checks.number("momentum", momentum, convert=float, finite=False, low=0, high=1, high_open=True,
                 what="in [0, 1)")
    if dtype is None:
        return lam, None
    dtype = np.dtype(dtype)
    if dtype not in _validation.FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    return lam, dtype


def _default_dtype(X):
    """The compute dtype the in-memory estimators pick: float32 for float32 X or CuPy chunks,
    float64 otherwise."""
    return np.dtype(np.float32 if X.dtype == np.float32 or is_cupy_array(X._meta) else np.float64)


def fit_linear(X, y, *, loss="softmax", lam=0.0, solver="lbfgs", max_iter=100, tol=1e-4,
               batch_size=200, learning_rate_init=0.01, momentum=0.9, sync_every=None,
               learning_rate="constant", sgd_pass=None, random_state=0, sample_weight=None, dtype=None,
               standardize=True, verbose=False, classes=None, callback=None):
    """Train a ``LinearClassifier`` on a Dask array across the current cluster.

    Minimises J(W, b) = (1/n) sum_i w_i l(W x_i' + b, y_i) + lam ||W||^2, x' = (x - mean) / std
    (x' = x without ``standardize``), l the softmax cross-entropy or the multi-class hinge
    (``loss``), w the sample weights (1).

    Args:
        X: dask.array (n, d) chunked by rows only; float32, float64 or uint8; numpy or CuPy chunks,
            or sparse chunks (scipy.sparse: ``da.from_array(X_csr, chunks=(rows, d),
            asarray=False)``) with float values, never made dense.
        y: (n,) labels of any values (dask.array, or array-like: only these move to the workers).
        solver: "lbfgs" (max_iter iterations, gtol ``tol``), or "sgd" / "adam" (max_iter epochs;
            stop once the epoch's mean cost has not improved by ``tol`` for 10 epochs);
            sgd uses ``momentum`` (0: plain SGD); "auto": a few epochs of "sgd" on large chunks,
            else "lbfgs". See the module docstring for which to use.
        batch_size, learning_rate_init, sync_every: the mini-batch solvers' batch rows, learning
            rate, and steps between averagings (None: once an epoch).
        learning_rate: "constant" (learning_rate_init throughout) or "linear" (down in a straight
            line from learning_rate_init to 0 at the end of max_iter epochs, ``optim.Linear``:
            for a fixed number of epochs, fewer of them reach a given accuracy).
        sgd_pass: how the mini-batch solvers go over the chunks: None or "averaged" (every
            chunk's steps at once from the common parameters, averaged once an epoch or every
            ``sync_every`` steps) or "sequential" (one chunk after another, the (C, d) W, (C,) b,
            the optimiser's slots of the same shapes and the update count t carried from each
            chunk's task to the next; ``sync_every`` does not apply). E.g.
            ``fit_linear(X, y, solver="sgd", sgd_pass="sequential", momentum=0.9,
            learning_rate="linear", learning_rate_init=4.0, batch_size=500, max_iter=2)``.
            See the module docstring for which to use.
        random_state: seed of the initial W (``LinearClassifier(..., seed=random_state)``) and of
            the mini-batch orders.
        sample_weight: (n,) weights >= 0 or None.
        dtype: what the workers compute in; None: float32 for float32 X or CuPy chunks, else
            float64 (as the in-memory estimators).
        standardize: normalise the features by the data's per-feature mean and std (kept in the
            model; a sparse X by the std alone, so its zeros stay zero); without it the model takes
            X as it is (TF-IDF rows, say, already scaled), and the pass over the data skips the
            moments.
        classes: the labels to expect (others are refused, naming their chunk); default: the
            sorted distinct labels of y.
        callback: optional f(iteration, J) after each L-BFGS iteration or epoch.
    Returns:
        dict(model=LinearClassifier (numpy backend; x_mean/x_std set with ``standardize``),
        classes_=(C,) labels, n_iter_=iterations or epochs, loss_curve_=J after each).
    """

    _check_X(X)
    lam, dtype = _check_options(loss, lam, solver, max_iter, tol, batch_size, learning_rate_init,
                                momentum, sync_every, dtype, learning_rate, sgd_pass)
    y = _as_rows_like(y, X, "y")
    w = _as_rows_like(sample_weight, X, "sample_weight")
    if classes is not None:
        classes = np.unique(to_host(classes))
    import dask
    ranges = _row_ranges(X)
    if dtype is None:
        dtype = _default_dtype(X)
    if solver == "auto":
        solver, max_iter = _auto_solver(ranges, int(batch_size), int(max_iter))
    few_passes = solver == "auto-sgd"   # trains on standardised features whatever `standardize` says
    X, y, w = dask.persist(X, y, w)
    placement = _Placement(X)
    x_mean, x_std, classes_ = _survey(X, y, w, classes, ranges, placement,
                                      standardize or few_passes)
    # (the sequential pass's first task waits on its chunk's inputs anyway: no round trip for them,
    # the model made here while the workers make them)
    x_blocks, y_idx = _inputs_next_to_X(X, y, classes_, dtype, placement,
                                        wait=not (sgd_pass == "sequential" and solver != "lbfgs"))
    del y
    w_blocks = _blocks(w) if w is not None else [None] * len(ranges)

    n, d = X.shape
    C = len(classes_)
    model = LinearClassifier(d, C, loss, dtype=dtype, backend="numpy",
                             x_mean=x_mean if standardize else None,
                             x_std=x_std if standardize else None, seed=random_state)
    params0 = {k: np.asarray(v, np.float64) for k, v in model.params.items()}
    blocks = list(zip(x_blocks, y_idx, w_blocks))

    report = _reporter(solver, verbose, callback)
    if solver == "lbfgs":
        params, n_iter, losses = _fit_lbfgs(blocks, ranges, placement, params0, x_mean, x_std, n=n, loss=loss,
                                            lam=lam, dtype=dtype, max_iter=max_iter, tol=tol, report=report)
    else:
        # "auto"'s few passes train on standardised features whatever `standardize` says: from
        # the model's W, b in standardised units, and back to raw ones at the end.
        raw = few_passes and not standardize
        kw = dict(loss=loss, lam=lam, dtype=dtype, solver="adam" if solver == "adam" else "sgd",
                  lr=float(learning_rate_init), learning_rate=learning_rate,
                  momentum=0.0 if solver == "adam" else float(momentum), batch_size=int(batch_size),
                  max_iter=int(max_iter), tol=float(tol), seed=random_state, report=report,
                  stop_early=not few_passes)
        start = _to_standardised(params0, x_mean, x_std) if raw else params0
        if sgd_pass == "sequential":
            params, n_iter, losses = _sequential_sgd(blocks, ranges, start, x_mean, x_std, placement,
                                                     live=verbose or callback is not None, **kw)
        else:
            params, n_iter, losses = _local_sgd(blocks, ranges, start, x_mean, x_std, placement,
                                                sync_every=sync_every, **kw)
        if raw:
            params = _to_raw(params, x_mean, x_std)
    for k, v in params.items():
        model.params[k][...] = v
    return {"model": model, "classes_": classes_, "n_iter_": int(n_iter), "loss_curve_": list(losses)}


def _inputs_next_to_X(X, y, classes_, dtype, placement, wait=True):
    """(X's row blocks, y's blocks as class indices) as the workers' tasks take them, made once next
    to each block of X and kept there: the labels encoded; sparse blocks whose values are not in
    the compute dtype converted (their index arrays shared with X's), rather than by every task of
    every pass; other blocks of X as they are. With ``wait``, made before this returns (on a
    cluster)."""
    import dask
    tag, where = uuid.uuid4().hex[:8], placement.workers()

    def next_to_X(func, blocks, *args, name):  # func(block i, *args), pinned to where block i of X is
        return [_pinned(func, (block, *args), w, (f"{name}-{tag}", i))
                for i, (block, w) in enumerate(zip(blocks, where))]

    tasks = next_to_X(_encode, _blocks(y), classes_, name="gpugrad-labels")
    if _sparse.is_sparse(X._meta) and X.dtype != dtype:
        tasks += next_to_X(_sparse.as_csr, _blocks(X), dtype, name="gpugrad-X")
    made = list(dask.persist(*tasks))
    if wait and placement.client is not None:
        # Done before the first pass: its one task per worker thread would otherwise queue behind
        # them, and the scheduler may give a queued task (loosely pinned) to an idle worker,
        # moving that worker's chunks of X with it.
        import distributed
        distributed.wait(made)
    n = len(where)
    return (made[n:] if len(made) > n else _blocks(X)), made[:n]


def _reporter(solver, verbose, callback):
    """report(it, J) after each L-BFGS iteration or epoch: a line on stdout with ``verbose``, then
    the user's callback."""
    def report(it, J):
        if verbose:
            print(f"gpugrad.distributed: {'iteration' if solver == 'lbfgs' else 'epoch'} {it}: "
                  f"cost {J:.6g}", flush=True)
        if callback is not None:
            callback(it, J)
    return report


def _fit_lbfgs(blocks, ranges, placement, params0, x_mean, x_std, *, n, loss, lam, dtype, max_iter, tol, report):
    """Full-batch L-BFGS, each evaluation one distributed pass (``_chunk_grad`` per block, summed):
    J = (1/n) sum of the blocks' row losses + lam ||W||^2 and its gradient. Returns (params,
    iterations, costs)."""
    C, d = params0["W"].shape
    evaluations = [0]

    def value_and_grad(params):
        evaluations[0] += 1
        W, b = params["W"], params["b"]
        args = [(xb, yb, wb, loss, dtype) for xb, yb, wb in blocks]
        J, dW, db = _map_sum(_chunk_grad, args, _add_grads, placement, ranges, "gpugrad-grad",
                             f"the gradient (evaluation {evaluations[0]})", 8 * (C * d + C + 1),
                             shared=(W, b, x_mean, x_std))
        return (J / n + lam * float((W * W).sum()),
                {"W": dW / n + (2 * lam) * W, "b": db / n})

    return lbfgs(value_and_grad, params0, max_iter=max_iter, tol=tol, callback=report)


def _to_standardised(params, x_mean, x_std):
    """(W, b) on raw x as the same scores on standardised x' = (x - m) / s: W s, b + W m."""
    return {"W": params["W"] * x_std, "b": params["b"] + params["W"] @ x_mean}


def _to_raw(params, x_mean, x_std):
    """The inverse of ``_to_standardised``: W' (x - m) / s + b' = (W' / s) x + (b' - W' m / s)."""
    W = params["W"] / x_std
    return {"W": W, "b": params["b"] - W @ x_mean}


def _auto_solver(ranges, batch_size, max_iter):
    """("auto-sgd", epochs) when AUTO_STEPS mini-batch steps take each chunk at most
    AUTO_MAX_EPOCHS epochs (and max_iter allows them), else ("lbfgs", max_iter)."""
    steps_per_epoch = max(n_batches(b - a, batch_size) for a, b in ranges)
    epochs = -(-AUTO_STEPS // steps_per_epoch)
    if epochs <= min(AUTO_MAX_EPOCHS, max_iter):
        return "auto-sgd", epochs
    return "lbfgs", max_iter


def _local_sgd(blocks, ranges, params0, x_mean, x_std, placement, *, loss, lam, dtype, solver, lr,
               momentum, batch_size, sync_every, max_iter, tol, seed, report, stop_early=True,
               learning_rate="constant"):
    """Epochs of per-chunk mini-batch steps and weighted averaging; (params, epochs, loss curve).
    Without ``stop_early`` it runs max_iter epochs whatever the cost does. The chunks' steps share
    the update count t (each round starts from the largest), hence the learning rate."""
    steps_per_epoch = max(n_batches(b - a, batch_size) for a, b in ranges)
    if learning_rate == "linear":
        schedule = Linear(lr, max_iter * steps_per_epoch)
    else:
        schedule = lr
    slots = 2 if solver == "adam" else int(momentum > 0)
    part_bytes = 8 * (1 + slots) * sum(v.size for v in params0.values())
    per_round = sync_every or steps_per_epoch
    rounds = -(-steps_per_epoch // per_round)
    state = {"params": params0, "opt": None}
    losses, plateau = [], Plateau(tol, N_ITER_NO_CHANGE)
    seed_root = 0 if seed is None else int(seed)
    for epoch in range(max_iter):
        cost = rows = 0.0
        for r in range(rounds):
            args = [(xb, yb, wb, dict(loss=loss, lam=lam, dtype=dtype, solver=solver, lr=schedule,
                                      momentum=momentum, batch_size=batch_size,
                                      seed=[seed_root, epoch, i], first_step=r * per_round,
                                      n_steps=per_round))
                    for i, (xb, yb, wb) in enumerate(blocks)]
            total = _map_sum(_chunk_steps_task, args, _add_steps, placement, ranges, "gpugrad-steps",
                             f"the steps of epoch {epoch + 1}", part_bytes,
                             shared=(state, x_mean, x_std))
            m = total["rows"]
            new = {"params": {k: v / m for k, v in total["params"].items()}, "opt": None}
            if total["slots"] is not None:
                new["opt"] = {"t": np.array(total["t"], np.int64),
                              **{k: v / m for k, v in total["slots"].items()}}
            state = new
            cost += total["cost"]
            rows += m
        if _close_epoch(cost / rows, epoch, lr, losses, report, plateau) and stop_early:
            break
    return state["params"], len(losses), losses


def _close_epoch(J, epoch, lr, losses, report, plateau) -> bool:
    """The mini-batch solvers' end of an epoch: its mean batch cost J recorded in ``losses`` and
    reported, a cost that is not finite refused naming the epoch and the rate; returns whether
    the plateau rule says stop."""
    if not np.isfinite(J):
        raise FloatingPointError(f"the cost became {J} in epoch {epoch + 1} "
                                 f"(learning_rate_init={lr} may be too large)")
    losses.append(J)
    report(epoch + 1, J)
    plateau.update(J)
    return plateau.stop


def _chunk_steps_task(Xc, yc, wc, options, shared):
    state, x_mean, x_std = shared
    return _chunk_steps(Xc, yc, wc, state, x_mean, x_std, **options)


# ---- the sequential pass: the model travels from chunk to chunk ----------------------------------

def _sequential_sgd(blocks, ranges, params0, x_mean, x_std, placement, *, loss, lam, dtype, solver, lr,
                    momentum, batch_size, max_iter, tol, seed, report, stop_early=True,
                    learning_rate="constant", live=True):
    """Epochs of one pass over the chunks in index order, each chunk's steps run where it is held,
    the parameters and optimiser state (t included) carried from one chunk's task to the next
    (worker to worker, in the compute dtype); (params, epochs, loss curve).

    Every step sees the latest parameters: an epoch is the in-memory epoch over the same rows in
    the same order (chunk 0's rows in its seeded order, then chunk 1's, ...), step for step. On a
    cluster the state stays on the workers between epochs (the last task's result, a Future, is
    the next epoch's start): only each epoch's cost comes here, and the state once at the end.
    Where nothing needs an epoch's cost before the next begins (no ``live`` report, and no stop
    the plateau rule can make within max_iter epochs), every epoch's tasks go to the cluster at
    once and the costs come with the parameters, the epochs then closed in order here.
    Without ``stop_early`` it runs max_iter epochs whatever the cost does."""
    import dask
    counts = [n_batches(b - a, batch_size) for a, b in ranges]
    schedule = Linear(lr, max_iter * sum(counts)) if learning_rate == "linear" else lr
    start = {"params": {k: np.asarray(v, dtype) for k, v in params0.items()}, "opt": None}
    carried = _shared(start, f"gpugrad-pass-start-{uuid.uuid4().hex[:8]}")
    losses, plateau = [], Plateau(tol, N_ITER_NO_CHANGE)
    seed_root = 0 if seed is None else int(seed)
    chained = placement.client is not None and not live and (not stop_early or max_iter <= N_ITER_NO_CHANGE)
    for epoch in range(max_iter):
        tag = f"gpugrad-pass-{uuid.uuid4().hex[:8]}"
        for i, ((xb, yb, wb), where) in enumerate(zip(blocks, placement.workers())):
            options = dict(loss=loss, lam=lam, dtype=dtype, solver=solver, lr=schedule, momentum=momentum,
                           batch_size=batch_size, seed=[seed_root, epoch, i], first_step=0, n_steps=counts[i])
            carried = _pinned(_chunk_relay, (xb, yb, wb, options, carried, i == 0, x_mean, x_std), where,
                              (tag, i))
        what = f"the steps of epoch {epoch + 1}"
        if chained:
            continue
        if placement.client is not None:
            carried = placement.client.compute(carried)
            cost, rows = _compute([dask.delayed(_pass_cost)(carried, dask_key_name=f"{tag}-cost")],
                                  ranges, tag, what, None)[0]
        else:
            state = _compute([carried], ranges, tag, what, None)[0]
            cost, rows = _pass_cost(state)
            carried = _shared(state, f"{tag}-state")
        if _close_epoch(cost / rows, epoch, lr, losses, report, plateau) and stop_early:
            break
    if chained:  # the parameters and every epoch's (cost, rows)
        params, costs = _compute([dask.delayed(_pass_params)(carried, dask_key_name=f"{tag}-params"),
                                  dask.delayed(_pass_costs)(carried, dask_key_name=f"{tag}-costs")], ranges, tag,
                                 f"the steps of epochs 1 to {max_iter}", None)
        for epoch, (cost, rows) in enumerate(costs):
            _close_epoch(cost / rows, epoch, lr, losses, report, plateau)
        return params, len(losses), losses
    if placement.client is not None:  # the parameters (not the optimiser's slots) come here
        return (_compute([dask.delayed(_pass_params)(carried, dask_key_name=f"{tag}-params")], ranges, tag,
                         "the parameters", None)[0], len(losses), losses)
    return _pass_params(state), len(losses), losses


def _chunk_relay(Xc, yc, wc, options, carried, first, x_mean, x_std):
    """One chunk's steps of the sequential pass from the state ``carried`` by the chunk before
    (by the last chunk of the epoch before when ``first``): the state after them, with the
    chunk's summed batch costs and rows added to the epoch's, and the (cost, rows) of the epochs
    before in "epochs"."""
    epochs = list(carried.get("epochs", ()))
    if first and "cost" in carried:  # the epoch before ended with the chunk before
        epochs.append((carried["cost"], carried["rows"]))
    cost, rows = (0.0, 0) if first else (carried["cost"], carried["rows"])
    out = _chunk_run(Xc, yc, wc, carried, x_mean, x_std, **options)
    if out is None:  # an empty chunk passes the state on
        return {**carried, "cost": cost, "rows": rows, "epochs": epochs}
    be, params, opt_state, chunk_cost, chunk_rows = out
    return {"params": {k: be.to_numpy(v) for k, v in params.items()}, "opt": opt_state,
            "cost": cost + chunk_cost, "rows": rows + chunk_rows, "epochs": epochs}


def _pass_cost(state):
    """(summed batch costs, rows) of the epoch that made ``state``."""
    return state["cost"], state["rows"]


def _pass_costs(state):
    """[(summed batch costs, rows)] of every epoch up to the one that made ``state``."""
    return state["epochs"] + [_pass_cost(state)]


def _pass_params(state):
    """The parameters {"W", "b"} of the state a sequential pass carries."""
    return state["params"]


# ---- inference, lazily, chunk by chunk ------------------------------------------------------------

def _model_arrays(model):
    s = model.state()
    return s["W"], s["b"], s.get("x_mean"), s.get("x_std"), model.dtype


def _block_scores(Xc, W, b, x_mean, x_std, dtype):
    """S = ((X - mean) / std) W^T + b of one block, on the block's backend."""
    if _sparse.is_sparse(Xc):
        be = backend_for(Xc.data)
        Xc = _sparse.as_csr(Xc, dtype)
        return be.sparse_scores(Xc, be.asarray(W, dtype), be.asarray(b, dtype),
                                None if x_mean is None else be.asarray(x_mean, dtype),
                                None if x_std is None else be.asarray(x_std, dtype))
    be = backend_for(Xc)
    Xn = (be.normalise(Xc, be.asarray(x_mean), be.asarray(x_std), dtype) if x_mean is not None
          else Xc.astype(dtype))
    return Xn @ be.asarray(W, dtype).T + be.asarray(b, dtype)


def _block_proba(Xc, W, b, x_mean, x_std, dtype):
    return stable_softmax(_block_scores(Xc, W, b, x_mean, x_std, dtype))


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
    meta = np.empty((0, 0), dtype) if _sparse.is_sparse(X._meta) else X._meta.astype(dtype)[:0, :0]
    return da.map_blocks(func, X, W, b, mean, std, dtype, *extra, chunks=(X.chunks[0], (C,)),
                         dtype=dtype, meta=meta)


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

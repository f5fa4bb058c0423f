"""The mini-batch trainer: epochs of shuffled batches, history, early stopping, checkpoints.

``Trainer(model, optimizer, ...).fit(X, y)`` runs mini-batch gradient descent on
J = (1/n) sum_i w_i l_i + lam sum ||W||^2 (the lecture's cost) with any model of
``gpugrad.models`` and any optimiser of ``gpugrad.optim``:

- the data move to the model's backend once (on CuPy they live on the GPU, uint8 stays uint8)
  and each batch is the rows of a permutation drawn from a seeded generator;
- a step is the model's program for the batch's shape (``model.program``: the MLP's compiled
  step, or the linear classifier's fused step, which reads the batch's rows where they lie),
  writing every gradient into the model's flat gradient buffer, then one fused update of the
  whole flat parameter buffer that also adds the penalty's gradient and writes the step's cost
  and loss into the epoch's per-step array. On CuPy a step allocates nothing and never
  synchronises with the host (the linear classifier's: three launches); the host reads the
  epoch's figures once, at its end, for the history (and to stop on a NaN or Inf cost, naming
  the epoch and the step);
- after each epoch a checkpoint (model, optimiser state, generator state, epoch, history) is
  written atomically, so a run killed at any moment leaves a loadable checkpoint, and
  ``fit(..., resume=path)`` continues it exactly: on numpy the weights end bit-identical to an
  uninterrupted run.

    >>> import numpy as np, gpugrad as gg
    >>> rng = np.random.default_rng(0)
    >>> X, y = rng.standard_normal((200, 5)), rng.integers(0, 3, 200)
    >>> model = gg.models.LinearClassifier(5, 3, backend="numpy", dtype="float64")
    >>> history = gg.Trainer(model, "sgd", epochs=3, batch_size=50, progress=False).fit(X, y)
    >>> len(history), sorted(history.rows[0])[:3]
    (3, ['accuracy', 'cost', 'epoch'])
"""
from __future__ import annotations

import csv
import json
import math
import os
import sys
import time

import numpy as np

from ..engine import _validation
from .. import _warn, checks
from .models import model_from_config
from .saving import atomic_savez, decode_json, encode_json, json_safe, read_npz
from . import sparse_sgd
from .optim import make_optimizer
from .data import batch_rows, n_batches, stratified_split
from ..engine.sparse import check_finite, is_sparse, refuse_sparse_labels

__all__ = ["Trainer", "History", "load_checkpoint", "COLUMNS", "RisingCostWarning", "cost_too_high"]

COLUMNS = ("epoch", "loss", "cost", "accuracy", "val_loss", "val_cost", "val_accuracy", "lr", "seconds")
CHECKPOINT_FORMAT = 1
EVAL_BATCH = 8192  # rows scored at once when evaluating: bounds the memory of S
# The rising-cost alarm: the epoch's training cost above RISE_FACTOR times the lowest so far, for
# RISE_EPOCHS epochs in a row. Mini-batch noise and a cyclical rate's upswing move the cost by
# tens of percent at most; a rate too high for the data throws it up by multiples (digits at
# lr 100: 23, 189, 88, 17, 37, 14, 174, 132, 22, ...), and that rarely settles by itself.
RISE_FACTOR, RISE_EPOCHS = 1.5, 3


class RisingCostWarning(RuntimeWarning):
    """The training cost has stayed well above its lowest value for several epochs: the
    learning rate is probably too high (the run diverges or oscillates)."""


def cost_too_high(costs, factor=RISE_FACTOR):
    """For each epoch, whether its cost is above ``factor`` times the lowest cost of the epochs
    up to it (a NaN is not counted as lowest; it is too high). The trainer warns when the last
    RISE_EPOCHS are all too high; ``gpugrad.plots.plot_history`` shades them.

        >>> cost_too_high([23.0, 189.3, 88.7, 17.1, 20.0, 37.0]).tolist()
        [False, True, True, False, False, True]
    """
    costs = np.asarray(costs, dtype=np.float64)
    finite = np.where(np.isfinite(costs), costs, np.inf)
    lowest = np.minimum.accumulate(finite) if len(costs) else finite
    return ~(costs <= factor * lowest)


class Plateau:
    """The stop-on-plateau rule: count the epochs in a row whose value (a cost or a loss, lower is
    better) has not improved on the best so far by more than ``tol``; ``stop`` once ``patience``
    have passed. ``update(value)`` feeds an epoch and says whether it set a new best.

    Two ways of keeping the best, both of scikit-learn's MLP:
    - ``strict=False`` (its rule on the training loss): an epoch counts as no change when
      value > best - tol, and the best is the lowest value seen, whatever the margin;
    - ``strict=True`` (the trainer's early stopping, which restores the best epoch's parameters):
      an epoch improves only when value < best - tol, and only such an epoch becomes the best.

        >>> p = Plateau(tol=0.1, patience=2)   # 0.86 is not 0.1 below 0.95, the lowest
        >>> [(p.update(v), p.stop) for v in (1.0, 0.95, 0.86)]
        [(True, False), (True, False), (True, True)]
        >>> q = Plateau(tol=0.1, patience=2, strict=True)   # 0.86 is 0.1 below 1.0, the best
        >>> [(q.update(v), q.stop) for v in (1.0, 0.95, 0.86)]
        [(True, False), (False, False), (True, False)]
    """

    def __init__(self, tol, patience, *, strict=False, best=math.inf, stale=0):
        self.tol, self.patience, self.strict = tol, patience, strict
        self.best, self.stale = best, stale

    def update(self, value) -> bool:
        improved = value < self.best - self.tol if self.strict else value <= self.best - self.tol
        self.stale = 0 if improved else self.stale + 1
        lower = value < self.best
        if improved or (lower and not self.strict):
            self.best = value
        return improved or (lower and not self.strict)

    @property
    def stop(self) -> bool:
        return self.stale >= self.patience


class History:
    """Per-epoch figures: ``rows`` (one dict per epoch, keys in ``COLUMNS``), by column with
    ``history["val_loss"]``. NaN where a figure was not computed (no validation set;
    training accuracy when the trainer does not evaluate the training set)."""

    def __init__(self, rows=()):
        self.rows = [dict(r) for r in rows]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, column):
        return [r.get(column, math.nan) for r in self.rows]

    def append(self, row):
        self.rows.append(dict(row))

    def to_csv(self, path):
        """One row per epoch, the columns of ``COLUMNS``."""
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
            w.writeheader()
            w.writerows(self.rows)
        return path

    def to_json(self, path):
        """A JSON list of the per-epoch rows (NaN written as null)."""
        with open(path, "w") as f:
            json.dump(json_safe(self.rows), f, indent=1)
        return path


class Trainer:
    """Mini-batch training of a model (see the module docstring).

    Args:
        model: a ``gpugrad.models`` model (its ``backend`` is where training runs).
        optimizer: an optimiser object or a name for ``gpugrad.optim.make_optimizer``
            ("sgd", "momentum", "nesterov", "adam"; rate 0.01).
        epochs: the total number of epochs; a trainer whose history already holds k epochs
            (a previous ``fit``, or a resumed checkpoint) continues with epoch k + 1.
        batch_size: rows per step (the last batch of an epoch may be smaller).
        lam: the L2 strength of J (>= 0).
        seed: seeds the per-epoch shuffles and the validation split.
        validation_fraction: when no validation set is given, hold out this fraction of the
            training rows (stratified) to validate on.
        early_stopping, n_iter_no_change, tol: stop when the validation loss (the training loss
            without a validation set) has not improved by ``tol`` for ``n_iter_no_change`` epochs,
            and restore the parameters of the best epoch.
        eval_train: after each epoch score the whole training set (loss, cost, accuracy in
            inference mode). False: loss and cost are the means over the epoch's batches and
            the training accuracy is NaN (cheaper: no extra pass over X).
        callbacks: callables ``cb(trainer, epoch, row)`` run after each epoch; True stops.
        progress: a tqdm bar over the steps; None shows it when stderr is a terminal.
        checkpoint: path of the checkpoint .npz, written atomically every ``checkpoint_every``
            epochs and after the last one.
    """

    def __init__(self, model, optimizer="sgd", *, epochs=10, batch_size=100, lam=0.0, seed=0,
                 validation_fraction=0.0, early_stopping=False, n_iter_no_change=10, tol=1e-4,
                 eval_train=True, callbacks=(), progress=None, checkpoint=None, checkpoint_every=1):
        self.model = model
        self.optimizer = make_optimizer(optimizer)
        self.epochs = checks.number("epochs", epochs, integer=True, low=0)
        self.batch_size = checks.number("batch_size", batch_size, integer=True, low=1)
        self.lam = _validation.check_lam(lam)
        self.seed = seed
        self.validation_fraction = float(checks.number("validation_fraction", validation_fraction, low=0,
                                                      high=1, high_open=True, what="in [0, 1)"))
        self.early_stopping = bool(early_stopping)
        self.n_iter_no_change = checks.number("n_iter_no_change", n_iter_no_change, integer=True, low=1)
        self.tol = float(tol)
        self.eval_train = bool(eval_train)
        self.callbacks = list(callbacks)
        self.progress = progress
        self.checkpoint = None if checkpoint is None else os.fspath(checkpoint)
        self.checkpoint_every = checks.number("checkpoint_every", checkpoint_every, integer=True, low=1)
        self.history = History()
        self.rng = np.random.default_rng(seed)  # the shuffles; its state is checkpointed
        self._best = None  # early stopping: (metric, epoch, params as numpy)
        self._plateau = Plateau(self.tol, self.n_iter_no_change, strict=True)
        self._step_fn = None  # the epoch's step function while fit runs (_Step)
        self._warned_rising = False  # the rising-cost warning is given once a fit

    # ---- data ----------------------------------------------------------------------------------
    def _labels(self, y, n, what):
        be = self.model.backend
        refuse_sparse_labels(y)
        y = be.asarray(y)
        _validation.check_labels_shape(y, n, f"rows of {what}")
        return y.astype(np.int64, copy=False)

    def _check_values(self, X, y, w, what):
        """Labels in range and finite values: one backend call for the whole data set."""
        be, C = self.model.backend, self.model.n_classes
        if is_sparse(X):  # its stored values only; a NaN/Inf is named by row and column
            check_finite(X, what)
        named = [(what, X)] if X.dtype.kind == "f" and not is_sparse(X) else []
        if w is not None:
            named.append(("sample_weight", w))
        label_pos, bad = be.first_invalid(y, C, [a for _, a in named])
        _validation.raise_first_invalid(label_pos, bad, y, C, named, hint="")

    def _data(self, X, y, sample_weight, X_val, y_val, check_input):
        """Everything on the model's backend, checked once: (X, y, w, X_val, y_val)."""
        model, be = self.model, self.model.backend
        X = model.prepare(X)
        y = self._labels(y, X.shape[0], "X")
        w = None
        if sample_weight is not None:
            w = be.asarray(sample_weight, dtype=model.dtype)
            if tuple(w.shape) != (X.shape[0],):
                raise ValueError(f"sample_weight must have shape ({X.shape[0]},), got {tuple(w.shape)}")
        if X.shape[0] == 0:
            raise ValueError("X has no rows to train on")
        if check_input:
            self._check_values(X, y, w, "X")
        if w is not None and bool((w < 0).any()):
            raise ValueError("sample_weight must be >= 0")
        if X_val is None and self.validation_fraction:
            keep, held = stratified_split(be.to_numpy(y), self.validation_fraction, self.seed)
            keep, held = be.asarray(keep), be.asarray(held)
            X, X_val, y, y_val = X[keep], X[held], y[keep], y[held]
            w = None if w is None else w[keep]
        elif X_val is not None:
            X_val = model.prepare(X_val)
            y_val = self._labels(y_val, X_val.shape[0], "X_val")
            if check_input:
                self._check_values(X_val, y_val, None, "X_val")
        return X, y, w, X_val, y_val

    # ---- training ------------------------------------------------------------------------------
    def fit(self, X, y, X_val=None, y_val=None, sample_weight=None, resume=None, check_input=True) -> History:
        """Train until ``self.epochs`` epochs in all; returns the history.

        Args:
            X: (n, d) training inputs (numpy or the backend's arrays; uint8 pixels when the model
               normalises; a scipy.sparse / cupyx.scipy.sparse matrix, kept sparse, batches taken
               as row selections, and for a linear model trained by SGD on numpy steps that touch
               only the batch's columns, ``gpugrad.sparse_sgd``). y: (n,) integer labels in [0, C).
            X_val, y_val: a validation set (else ``validation_fraction`` of X, or none).
            sample_weight: (n,) per-row weights w_i >= 0 of the cost.
            resume: a checkpoint path written by a trainer with the same settings: continue it.
            check_input: check labels in [0, C) and finite X (one pass over the data, one host
                read); False when the caller has checked them already (the estimators do).
        Raises:
            FloatingPointError: the cost became NaN or Inf (the message names the epoch and step;
                the last checkpoint written is left intact).
        """
        model, opt = self.model, self.optimizer
        if resume is not None:  # first: the checkpoint may set the model's input normalisation
            self._restore(resume)
        elif not opt.initialised_for(model.params):
            opt.init(model.params)
        X, y, w, X_val, y_val = self._data(X, y, sample_weight, X_val, y_val, check_input)
        self._warned_rising = False
        n, bs = X.shape[0], self.batch_size
        steps = n_batches(n, bs)
        first = len(self.history) + 1
        bar = self._bar(steps * max(0, self.epochs - first + 1))
        try:
            for epoch in range(first, self.epochs + 1):
                if self._fit_epoch(epoch, X, y, w, X_val, y_val, steps, bar):
                    break
        finally:
            if bar is not None:
                bar.close()
            self._step_fn = None  # its programs stay cached in the model; a trainer keeps no buffers
        if self._best is not None and self.early_stopping and self._plateau.stop:
            model.load_state({**model.state(), **self._best[2]})
        return self.history

    def _fit_epoch(self, epoch, X, y, w, X_val, y_val, steps, bar) -> bool:
        """One epoch of ``fit``: the steps, the history row, the stopping rules and callbacks, the
        bar's figures and the checkpoint. Returns whether training stops here."""
        if bar is not None:
            bar.set_description(f"epoch {epoch}/{self.epochs}")
        t0 = time.perf_counter()
        # A diverging run overflows before the epoch's end, where a NaN or Inf cost stops it
        # with a message naming the step: numpy's warnings on the way would only bury it.
        with np.errstate(over="ignore", invalid="ignore"):
            run_epoch = self._sparse_epoch if sparse_sgd.applies(self, X) else self._epoch
            figures, lr = run_epoch(X, y, w, steps, bar)
            row = self._row(epoch, figures, steps, X.shape[0], X, y, X_val, y_val, lr)
        row["seconds"] = time.perf_counter() - t0
        self.history.append(row)
        self._watch_cost()
        stop = self._early_stop(row)
        stop = any([bool(cb(self, epoch, row)) for cb in self.callbacks]) or stop
        if bar is not None:
            bar.set_postfix({k: f"{row[k]:.4g}" for k in ("loss", "accuracy", "val_accuracy")
                             if not math.isnan(row.get(k, math.nan))})
        last = stop or epoch == self.epochs
        if self.checkpoint and (last or epoch % self.checkpoint_every == 0):
            self.save_checkpoint(self.checkpoint)
        return stop

    def _epoch(self, X, y, w, steps, bar):
        """One pass over shuffled batches. Returns (the epoch's per-step costs and losses, still on
        the device, as a (2, steps) array; the last learning rate)."""
        be = self.model.backend
        order = be.asarray(self.rng.permutation(X.shape[0]))
        per_step = be.xp.empty((2, steps), dtype=np.float64)
        step = self._steps(X, w, steps)
        lr = math.nan
        for i in range(steps):
            lr = self._step(step, X, y, w, order, i, per_step)
            if bar is not None:
                bar.update(1)
        return per_step, lr

    def _sparse_epoch(self, X, y, w, steps, bar):
        """``_epoch`` for plain SGD on a sparse X: steps that touch only the batch's columns
        (``gpugrad.sparse_sgd``), the same algorithm within rounding."""
        return sparse_sgd.epoch(self, X, y, w, steps, bar)

    def _step(self, step, X, y, w, order, i, per_step) -> float:
        """The i-th step of the epoch (``step``, the epoch's ``_Step``); returns its learning rate."""
        return step(X, y, w, order, i, per_step)

    def _steps(self, X, w, steps):
        """The epoch's step function (``_Step``), made once a fit and again only when the model or
        optimiser it was made for has changed."""
        key = (X.shape[0], X.dtype, w is not None, steps, self.batch_size, self.lam)
        step = self._step_fn
        if step is None or step.key != key or step.model is not self.model or step.opt is not self.optimizer \
                or not step.valid():
            step = self._step_fn = _Step(self.model, self.optimizer, self.batch_size, self.lam, X, w, steps, key)
        return step

    def _sums(self, X, y):
        """Device (3,) [sum of row losses, correct predictions, rows] of the model on (X, y)."""
        model, be = self.model, self.model.backend
        xp = be.xp
        loss_sum, correct = xp.zeros((), np.float64), xp.zeros((), np.float64)
        for start in range(0, X.shape[0], EVAL_BATCH):
            Xb, yb = X[start:start + EVAL_BATCH], y[start:start + EVAL_BATCH]
            S = model.scores(Xb)
            loss_sum = loss_sum + be.row_losses(S, yb, model.loss).sum(dtype=np.float64)
            correct = correct + (xp.argmax(S, axis=1) == yb).sum()
        return xp.stack([loss_sum, correct, xp.asarray(float(X.shape[0]))])

    def _row(self, epoch, per_step, steps, n, X, y, X_val, y_val, lr):
        """The history row of an epoch, from one read of the device: the per-step costs (for the
        NaN check and the batch means) and the evaluation sums."""
        be, xp = self.model.backend, self.model.backend.xp
        parts = [per_step.ravel()]
        if self.eval_train:
            parts.append(self._sums(X, y))
        if X_val is not None:
            parts.append(self._sums(X_val, y_val))
        parts.append(xp.asarray(self.model.penalty(), dtype=np.float64).reshape(1))
        host = be.to_numpy(xp.concatenate(parts))  # the epoch's one read
        costs, losses, rest = host[:steps], host[steps:2 * steps], host[2 * steps:]
        bad = ~np.isfinite(costs)
        if bad.any():
            i = int(np.argmax(bad))
            kept = (f"; the last checkpoint, {self.checkpoint} (epoch {epoch - 1}), is left intact"
                    if self.checkpoint and epoch > 1 else "")
            raise FloatingPointError(f"the cost became {costs[i]} at epoch {epoch}, step {i + 1} of "
                                     f"{steps}: training stopped (lower the learning rate or check the "
                                     f"data){kept}")
        penalty = float(rest[-1])
        sizes = np.full(steps, self.batch_size, dtype=np.float64)
        sizes[-1] = n - self.batch_size * (steps - 1)
        row = {"epoch": epoch, "loss": float(losses @ sizes / n), "cost": float(costs @ sizes / n),
               "accuracy": math.nan}
        k = 0
        if self.eval_train:
            loss_sum, correct, rows = rest[0:3]
            row.update(loss=loss_sum / rows, cost=loss_sum / rows + self.lam * penalty, accuracy=correct / rows)
            k = 3
        if X_val is not None:
            loss_sum, correct, rows = rest[k:k + 3]
            row.update(val_loss=loss_sum / rows, val_cost=loss_sum / rows + self.lam * penalty,
                       val_accuracy=correct / rows)
        else:
            row.update(val_loss=math.nan, val_cost=math.nan, val_accuracy=math.nan)
        row["lr"] = lr
        return {k: (float(v) if k != "epoch" else v) for k, v in row.items()}

    def _watch_cost(self):
        """Warn (``RisingCostWarning``, once a fit) when the training cost of the last RISE_EPOCHS
        epochs has stayed above RISE_FACTOR times its lowest: the run is diverging or
        oscillating, which a user should hear about while it trains, not after."""
        rows = self.history.rows
        if self._warned_rising or len(rows) <= RISE_EPOCHS:
            return
        costs = [r["cost"] for r in rows]
        if not cost_too_high(costs)[-RISE_EPOCHS:].all():
            return
        best = int(np.nanargmin(costs))
        lr = rows[-1].get("lr", math.nan)
        self._warned_rising = True
        _warn.warn(
            f"the training cost has stayed above {RISE_FACTOR:g}x its lowest ({costs[best]:.4g}, epoch "
            f"{rows[best]['epoch']}) for the last {RISE_EPOCHS} epochs (epoch {rows[-1]['epoch']}: "
            f"{costs[-1]:.4g}; highest {max(costs):.4g}): the learning rate"
            f"{'' if math.isnan(lr) else f' ({lr:g})'} is probably too high", RisingCostWarning)

    def _early_stop(self, row) -> bool:
        """Track the best epoch; True when ``n_iter_no_change`` epochs passed without improving."""
        if not self.early_stopping:
            return False
        metric = row["val_loss"] if not math.isnan(row["val_loss"]) else row["loss"]
        if self._plateau.update(metric):
            self._best = (metric, row["epoch"], {k: v for k, v in self.model.state().items()
                                                 if k in self.model.params})
        return self._plateau.stop

    def _bar(self, total):
        show = sys.stderr.isatty() if self.progress is None else bool(self.progress)
        if not show or total == 0:
            return None
        from tqdm.auto import tqdm
        return tqdm(total=total, unit="step", leave=False, dynamic_ncols=True)

    # ---- evaluation ------------------------------------------------------------------------------
    def evaluate(self, X, y, lam=None) -> dict:
        """{"loss", "cost", "accuracy"} of the model on (X, y) in inference mode (one host read)."""
        X = self.model.prepare(X)
        y = self._labels(y, X.shape[0], "X")
        loss_sum, correct, rows = (float(v) for v in self.model.backend.to_numpy(self._sums(X, y)))
        lam = self.lam if lam is None else lam
        return {"loss": loss_sum / rows, "cost": loss_sum / rows + lam * float(self.model.penalty()),
                "accuracy": correct / rows}

    # ---- checkpoints -------------------------------------------------------------------------------
    def settings(self) -> dict:
        """What a resumed run must share with the run it continues (``epochs`` may grow)."""
        return {"batch_size": self.batch_size, "lam": self.lam, "seed": self.seed,
                "validation_fraction": self.validation_fraction, "early_stopping": self.early_stopping,
                "n_iter_no_change": self.n_iter_no_change, "tol": self.tol, "eval_train": self.eval_train}

    def save_checkpoint(self, path):
        """Model, optimiser state, generator state, epoch, history and early-stopping state, in one
        .npz written atomically."""
        meta = {"format": CHECKPOINT_FORMAT, "epoch": len(self.history), "epochs": self.epochs,
                "history": self.history.rows, "rng": self.rng.bit_generator.state,
                "model": self.model.config(), "optimizer": self.optimizer.config(),
                "trainer": self.settings(), "stale": self._plateau.stale,
                "best": None if self._best is None else list(self._best[:2])}
        arrays = {f"model/{k}": v for k, v in self.model.state().items()}
        arrays.update({f"optimizer/{k}": v for k, v in self.optimizer.state().items()})
        if self._best is not None:
            arrays.update({f"best/{k}": v for k, v in self._best[2].items()})
        arrays["__meta__"] = encode_json(meta)
        return atomic_savez(path, arrays)

    def _restore(self, path):
        """Take model, optimiser, generator, history and early-stopping state from a checkpoint."""
        ck = load_checkpoint(path, backend=self.model.backend, model=self.model)
        mine, theirs = self.settings(), ck["meta"]["trainer"]
        for k in mine:
            if mine[k] != theirs.get(k):
                raise ValueError(f"{path}: the checkpoint was written with {k}={theirs.get(k)!r}, this "
                                 f"trainer has {k}={mine[k]!r}; an exact continuation needs the same")
        if self.optimizer.config() != ck["meta"]["optimizer"]:
            raise ValueError(f"{path}: the checkpoint's optimiser is {ck['meta']['optimizer']}, this "
                             f"trainer's {self.optimizer.config()}")
        self.optimizer.load_state(ck["optimizer"], self.model.params)
        self.rng.bit_generator.state = ck["meta"]["rng"]
        self.history = History(ck["meta"]["history"])
        best = ck["meta"]["best"]
        self._best = None if best is None else (best[0], best[1], ck["best"])
        self._plateau = Plateau(self.tol, self.n_iter_no_change, strict=True, stale=ck["meta"]["stale"],
                                best=math.inf if best is None else best[0])


class _Step:
    """A training step: the model's program for the batch's shape (its gradients into
    ``model.flat_grads``), then one fused update over ``model.flat_params`` and the optimiser's
    flat slots, which also adds 2 lam W and records the step's cost and loss in the epoch's
    (2, steps) array. The programs of the epoch's two batch shapes (the last batch may be
    smaller) and the packed slots are made once."""

    def __init__(self, model, opt, bs, lam, X, w, steps, key):
        model.ensure_packed()
        self.model, self.opt, self.bs, self.lam, self.key = model, opt, bs, lam, key
        self.slots = opt.pack(model.layout, model.flat_params)
        n = X.shape[0]
        sizes = {bs if steps > 1 else n, n - bs * (steps - 1)}
        self.programs = {m: model.program(m, X.dtype, w is not None, gather=True, sparse=is_sparse(X)) for m in sizes}
        self._flat = model.flat_params

    def valid(self) -> bool:
        """Whether the model's buffers and the optimiser's slots are still the ones packed."""
        self.model.ensure_packed()
        return self.model.flat_params is self._flat and self.opt.pack(self.model.layout, self._flat) is self.slots

    def __call__(self, X, y, w, order, i, per_step) -> float:
        idx = batch_rows(order, i, self.bs)
        loss = self.programs[idx.shape[0]].run(X, y, w, idx)
        m = self.model
        return self.opt.fused_step(m.backend, m.flat_params, m.flat_grads, self.slots, lam=self.lam,
                                   n_decay=m.n_decay, loss=loss, record=per_step, index=i)


def load_checkpoint(path, backend="numpy", model=None) -> dict:
    """A checkpoint's contents: {"model": the model with its saved state (``model`` when given,
    after checking it has the saved shape), "optimizer": the optimiser state arrays, "best": the
    best epoch's parameters (early stopping), "meta": epoch, history, generator state, settings}.

    A missing, torn or foreign file, or a model of another shape, is refused naming the file."""
    arrays = read_npz(path, "checkpoint")
    if "__meta__" not in arrays:
        raise ValueError(f"{path}: not a gpugrad checkpoint (no __meta__ entry)")
    try:
        meta = decode_json(arrays.pop("__meta__"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: its metadata is corrupt ({e})") from None
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: checkpoint format {meta.get('format')!r}, expected {CHECKPOINT_FORMAT}")
    groups = {"model": {}, "optimizer": {}, "best": {}}
    for key, a in arrays.items():
        group, _, name = key.partition("/")
        if group in groups:
            groups[group][name] = a
    if model is None:
        model = model_from_config(meta["model"], backend)
    elif model.config() != meta["model"] and {**model.config(), "normalised": True} != meta["model"]:
        raise ValueError(f"{path}: the checkpoint holds a {meta['model']}, not this {model.describe()}")
    model.load_state(groups["model"], source=str(path))
    return {"model": model, "optimizer": groups["optimizer"], "best": groups["best"], "meta": meta}

"""Optimisers and learning-rate schedules: mini-batch gradient descent and its relatives.

An optimiser updates a model's ``params`` (name -> array) in place from ``grads`` of the same
names, on the arrays' own backend, with no host synchronisation: the learning rate comes from a
schedule, a function of the update count t evaluated on the host. Its state (t and the slot
arrays: velocities, moments) is plain data, so a checkpoint holds it and a resumed run continues
exactly (the optax idea, with in-place updates). Each rule is written once, as
``backend.optimizer_update``: ``step`` calls it per parameter, and the trainer's ``fused_step``
once for a whole model, on its flat parameter buffer and flat slots (``pack``).

    >>> import numpy as np, gpugrad as gg
    >>> params = {"W": np.ones(3)}
    >>> opt = gg.optim.SGD(lr=0.5)
    >>> opt.init(params)
    >>> opt.step(params, {"W": np.full(3, 2.0)}), params["W"].tolist()
    (0.5, [0.0, 0.0, 0.0])
"""
from __future__ import annotations

import math

import numpy as np

from .. import checks
from ..backends import backend_for

__all__ = ["Constant", "StepDecay", "Cyclical", "InvScaling", "Linear", "make_schedule", "epoch_schedule", "SGD",
           "Adam", "make_optimizer", "lbfgs", "OPTIMIZERS", "SCHEDULES", "EPOCH_SCHEDULES"]


def _positive(name, value, allow_zero=False) -> float:
    try:
        float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    return checks.number(name, value, convert=float, low=0, low_open=not allow_zero,
                        what=f"{'>= 0' if allow_zero else '> 0'} and finite")


def _positive_int(name, value, what="a positive integer") -> int:
    return checks.number(name, value, convert=checks.integral, integer=True, low=1, what=what)


# ---- schedules: learning rate as a function of the update step t (0-based) -------------------

class Constant:
    """eta_t = lr."""

    def __init__(self, lr):
        self.lr = _positive("lr", lr, allow_zero=True)

    def __call__(self, t: int) -> float:
        return self.lr

    def config(self) -> dict:
        return {"schedule": "constant", "lr": self.lr}


class StepDecay:
    """eta_t = lr * gamma ** (t // step_size): the rate drops by ``gamma`` every ``step_size`` updates.

        >>> [gg_lr for gg_lr in map(StepDecay(1.0, 2, 0.5), range(5))]
        [1.0, 1.0, 0.5, 0.5, 0.25]
    """

    def __init__(self, lr, step_size, gamma=0.1):
        self.lr = _positive("lr", lr, allow_zero=True)
        self.step_size = _positive_int("step_size", step_size)
        self.gamma = _positive("gamma", gamma)

    def __call__(self, t: int) -> float:
        return self.lr * self.gamma ** (t // self.step_size)

    def config(self) -> dict:
        return {"schedule": "step", "lr": self.lr, "step_size": self.step_size, "gamma": self.gamma}


class Cyclical:
    """The triangular cyclical rate (Smith 2017; the course's second assignment): eta rises
    linearly from eta_min to eta_max over n_s updates, falls back over the next n_s, and repeats
    with period 2 n_s.

        >>> s = Cyclical(0.0, 1.0, 2)
        >>> [s(t) for t in range(6)]
        [0.0, 0.5, 1.0, 0.5, 0.0, 0.5]
    """

    def __init__(self, eta_min, eta_max, n_s):
        self.eta_min = _positive("eta_min", eta_min, allow_zero=True)
        self.eta_max = _positive("eta_max", eta_max, allow_zero=True)
        if self.eta_max < self.eta_min:
            raise ValueError(f"eta_max ({eta_max}) must be >= eta_min ({eta_min})")
        self.n_s = _positive_int("n_s", n_s, "a positive integer (updates per half cycle)")

    def __call__(self, t: int) -> float:
        phase = t % (2 * self.n_s)
        rise = phase if phase <= self.n_s else 2 * self.n_s - phase
        return self.eta_min + rise / self.n_s * (self.eta_max - self.eta_min)

    def config(self) -> dict:
        return {"schedule": "cyclical", "eta_min": self.eta_min, "eta_max": self.eta_max, "n_s": self.n_s}


class InvScaling:
    """eta_t = eta0 / (1 + t / steps_per_epoch) ** power_t: the rate shrinks with the epochs
    (scikit-learn's "invscaling", counted in epochs rather than samples).

        >>> s = InvScaling(1.0, 0.5, steps_per_epoch=2)
        >>> [round(s(t), 3) for t in range(0, 8, 2)]
        [1.0, 0.707, 0.577, 0.5]
    """

    def __init__(self, eta0, power_t, steps_per_epoch):
        self.eta0 = _positive("eta0", eta0, allow_zero=True)
        self.power_t = _positive("power_t", power_t, allow_zero=True)
        self.steps_per_epoch = _positive_int("steps_per_epoch", steps_per_epoch)

    def __call__(self, t: int) -> float:
        return self.eta0 / (1.0 + t / self.steps_per_epoch) ** self.power_t

    def config(self) -> dict:
        return {"schedule": "invscaling", "eta0": self.eta0, "power_t": self.power_t,
                "steps_per_epoch": self.steps_per_epoch}


class Linear:
    """eta_t = eta0 (1 - t / total): the rate falls in a straight line to 0 after ``total`` updates
    (and stays 0). For a run of known length, the small last steps average the noise of the
    mini-batch gradients out, which reaches a given accuracy in fewer epochs than invscaling.

        >>> s = Linear(1.0, total=4)
        >>> [s(t) for t in range(6)]
        [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    """

    def __init__(self, eta0, total):
        self.eta0 = _positive("eta0", eta0, allow_zero=True)
        self.total = _positive_int("total", total, "a positive integer (updates to reach 0)")

    def __call__(self, t: int) -> float:
        return self.eta0 * max(0.0, 1.0 - t / self.total)

    def config(self) -> dict:
        return {"schedule": "linear", "eta0": self.eta0, "total": self.total}


SCHEDULES = {"constant": Constant, "step": StepDecay, "cyclical": Cyclical, "invscaling": InvScaling,
             "linear": Linear}


def make_schedule(spec):
    """A schedule from a number (constant rate), a schedule object, or a ``config()`` dict."""
    if callable(spec) and hasattr(spec, "config"):
        return spec
    if isinstance(spec, dict):
        kw = dict(spec)
        name = kw.pop("schedule", None)
        if name not in SCHEDULES:
            raise ValueError(f"unknown schedule {name!r}; expected one of {sorted(SCHEDULES)}")
        return SCHEDULES[name](**kw)
    return Constant(spec)


EPOCH_SCHEDULES = ("constant", "invscaling", "step", "cyclical", "linear")


def epoch_schedule(name, lr, steps_per_epoch, *, epochs, power_t=0.5):
    """A schedule named by its shape over the epochs (the estimators' ``learning_rate``), in steps.

    "constant": lr; "invscaling": lr / (1 + t / steps_per_epoch) ** power_t; "linear": lr down
    to 0 at the end of ``epochs`` (``Linear``); "step": lr / 10 after each third of ``epochs``;
    "cyclical": the course's triangle from lr / 100 up to lr and back, 2 epochs each way. A
    schedule object passes through.

        >>> [epoch_schedule("step", 1.0, 10, epochs=9)(t) for t in (29, 30)]
        [1.0, 0.1]
    """
    if callable(name):
        return name
    eta = float(lr)
    if name == "constant":
        return Constant(eta)
    if name == "invscaling":
        return InvScaling(eta, power_t, steps_per_epoch)
    if name == "linear":
        return Linear(eta, epochs * steps_per_epoch)
    if name == "step":
        return StepDecay(eta, max(1, epochs // 3) * steps_per_epoch, 0.1)
    if name == "cyclical":
        return Cyclical(eta / 100, eta, 2 * steps_per_epoch)
    raise ValueError(f"unknown schedule {name!r}; expected one of {EPOCH_SCHEDULES}")


# ---- optimisers ---------------------------------------------------------------------------------

class _Optimizer:
    """t (updates taken), a schedule, and per-parameter slot arrays named "<slot>/<param>"."""

    name = ""
    slot_names: tuple = ()

    def __init__(self, lr):
        self.schedule = make_schedule(lr)
        self.t = 0
        self.slots: dict = {}

    def init(self, params) -> None:
        """Allocate the slot arrays (zeros like each parameter, on its backend) and reset t."""
        self.t = 0
        self.slots = {f"{s}/{k}": _zeros_like(v) for s in self.slot_names for k, v in params.items()}
        self._flat = None

    def initialised_for(self, params) -> bool:
        """Whether the slots match ``params`` (names and shapes), so ``step`` can go on."""
        want = {f"{s}/{k}": tuple(v.shape) for s in self.slot_names for k, v in params.items()}
        return (self.t > 0 or bool(self.slots) or not self.slot_names) and \
            want == {k: tuple(v.shape) for k, v in self.slots.items()}

    def step(self, params, grads) -> float:
        """Update every parameter in place from its gradient; returns the learning rate used.

        One backend call per parameter (``backend.optimizer_update``: the rules' one definition).
        ``fused_step`` updates a model's whole flat parameter buffer in one call."""
        lr = self.schedule(self.t)
        rule = self.rule(lr, self.t + 1)
        for k, p in params.items():
            backend_for(p).optimizer_update(rule, p, grads[k], [self.slots[f"{s}/{k}"] for s in self.slot_names])
        self.t += 1
        return lr

    def rule(self, lr: float, t: int) -> tuple:
        """(name, hyperparameters) of update t (counted from 1) at rate lr, as
        ``backend.optimizer_update`` takes them (``numpy_backend.UPDATE_RULES``)."""
        raise NotImplementedError

    def pack(self, layout, like) -> tuple:
        """Keep the slots in flat buffers laid out as a model's flat parameter buffer ``like``:
        ``layout`` lists (name, offset, shape) of each parameter in it (``model.layout``). The slot
        values are kept; ``slots`` then holds views of the flat buffers, which are returned, one
        per slot name. Nothing is copied when the slots are already so packed."""
        flats = getattr(self, "_flat", None)
        if flats is not None and self._packed_as == (tuple(layout), id(like)) and all(
                self.slots[f"{s}/{k}"] is self._flat_views[f"{s}/{k}"] for s in self.slot_names for k, _, _ in layout):
            return flats
        xp = _xp(like)
        flats, views = [], {}
        for s in self.slot_names:
            flat = xp.zeros_like(like)
            for k, offset, shape in layout:
                view = flat[offset:offset + math.prod(shape)].reshape(shape)
                view[...] = self.slots[f"{s}/{k}"]
                views[f"{s}/{k}"] = view
            flats.append(flat)
        self.slots.update(views)
        self._flat, self._flat_views, self._packed_as = tuple(flats), views, (tuple(layout), id(like))
        return self._flat

    def fused_step(self, be, p, g, slots, *, lam=0.0, n_decay=0, loss=None, record=None, index=0) -> float:
        """One update of a whole model in one backend call: p, g its flat parameter and gradient
        buffers, slots the flat slot buffers (``pack``); lam, n_decay, loss, record, index as in
        ``backend.optimizer_update`` (the penalty's gradient added, the step's cost recorded).
        Returns the learning rate used."""
        lr = self.schedule(self.t)
        be.optimizer_update(self.rule(lr, self.t + 1), p, g, slots, lam, n_decay, loss, record, index)
        self.t += 1
        return lr

    def __getstate__(self):
        # A copy's slots are copied one by one, no longer views of flat buffers: it packs anew.
        return {k: v for k, v in self.__dict__.items() if k not in ("_flat", "_flat_views", "_packed_as")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._flat = None

    def state(self, copy=True) -> dict:
        """t and the slot arrays, as numpy; copy=False: numpy slots as they are (for a caller done
        with the optimiser: no copy of arrays the size of the parameters)."""
        out = {"t": np.array(self.t, dtype=np.int64)}
        for k, v in self.slots.items():
            out[k] = np.array(v.get() if hasattr(v, "get") else v, copy=copy or None)
        return out

    def load_state(self, state: dict, params) -> None:
        """Restore t and the slots for ``params`` (their backend and shapes), names checked."""
        self.init(params)
        missing = sorted(set(self.slots) - set(state))
        if missing or "t" not in state:
            raise ValueError(f"the {self.name} optimiser state lacks {missing or ['t']}")
        for k, v in self.slots.items():
            a = np.asarray(state[k])
            if a.shape != tuple(v.shape):
                raise ValueError(f"optimiser slot {k} has shape {a.shape}, the parameter {tuple(v.shape)}")
            v[...] = _like(v, a)
        self.t = int(state["t"])

    def config(self) -> dict:
        return {"optimizer": self.name, "lr": self.schedule.config()}


def _xp(a):
    return backend_for(a).xp


def _zeros_like(a):
    return _xp(a).zeros_like(a)


def _like(target, a):
    return _xp(target).asarray(a, dtype=target.dtype)


class SGD(_Optimizer):
    """Mini-batch gradient descent, with optional (Nesterov) momentum.

    momentum = 0:  p <- p - eta_t g
    momentum mu:   v <- mu v - eta_t g;  p <- p + v           (heavy ball)
    nesterov:      v <- mu v - eta_t g;  p <- p + mu v - eta_t g
    """

    def __init__(self, lr=0.01, momentum=0.0, nesterov=False):
        super().__init__(lr)
        self.momentum = _positive("momentum", momentum, allow_zero=True)
        if self.momentum >= 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        if nesterov and not self.momentum:
            raise ValueError("nesterov momentum needs momentum > 0")
        self.nesterov = bool(nesterov)
        self.slot_names = ("velocity",) if self.momentum else ()
        self.name = "nesterov" if self.nesterov else ("momentum" if self.momentum else "sgd")

    def rule(self, lr, t):
        return (self.name, (lr, self.momentum)) if self.momentum else ("sgd", (lr,))

    def config(self) -> dict:
        return {**super().config(), "momentum": self.momentum, "nesterov": self.nesterov}


class Adam(_Optimizer):
    """Adam (Kingma & Ba 2015), bias-corrected:
    m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;
    p <- p - eta_t * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)   (t counted from 1)."""

    name = "adam"
    slot_names = ("m", "v")

    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999, eps=1e-8):
        super().__init__(lr)
        for name, b in (("beta1", beta1), ("beta2", beta2)):
            if not 0 <= float(b) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {b!r}")
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), _positive("eps", eps)

    def rule(self, lr, t):
        # The bias corrections are host floats: folding them into the rate keeps the update one pass.
        c1, c2 = 1 - self.beta1 ** t, math.sqrt(1 - self.beta2 ** t)
        return "adam", (self.beta1, 1 - self.beta1, self.beta2, 1 - self.beta2, lr * c2 / c1, self.eps * c2)

    def config(self) -> dict:
        return {**super().config(), "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps}


OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam")


def make_optimizer(name="sgd", lr=0.01, momentum=0.9, **kw):
    """An optimiser by name: "sgd" (plain), "momentum", "nesterov" (SGD with that momentum) or
    "adam"; ``lr`` a number, schedule or schedule config. An optimiser object passes through."""
    if isinstance(name, _Optimizer):
        return name
    if isinstance(name, dict):  # a config() dict
        kw = dict(name)
        name, lr = kw.pop("optimizer", None), kw.pop("lr", lr)
        momentum = kw.pop("momentum", momentum)
        kw.pop("nesterov", None)
    if name == "sgd":
        return SGD(lr, **kw)
    if name in ("momentum", "nesterov"):
        return SGD(lr, momentum=momentum, nesterov=name == "nesterov", **kw)
    if name == "adam":
        return Adam(lr, **kw)
    raise ValueError(f"unknown optimizer {name!r}; expected one of {list(OPTIMIZERS)}")


# ---- full-batch L-BFGS ------------------------------------------------------------------------

def lbfgs(value_and_grad, params0: dict, *, max_iter=100, tol=1e-4, callback=None):
    """Minimise a full-batch cost with L-BFGS (scipy's L-BFGS-B, no bounds).

    Args:
        value_and_grad: params (name -> float64 numpy array) -> (J float, grads of the same names).
        params0: the start. max_iter: iterations at most. tol: stop when the largest gradient
            entry is below tol (scipy's gtol), or the cost stops decreasing (ftol 64 eps, as
            scikit-learn's LogisticRegression).
        callback: optional f(iteration, J) after each iteration.
    Returns:
        (params, n_iter, losses): the minimiser, the iterations taken, J after each iteration.

        >>> import numpy as np
        >>> p, n, _ = lbfgs(lambda p: (float(((p["x"] - 3) ** 2).sum()), {"x": 2 * (p["x"] - 3)}),
        ...                 {"x": np.zeros(2)})
        >>> np.round(p["x"], 6).tolist()
        [3.0, 3.0]
    """
    from scipy.optimize import minimize

    names = list(params0)
    shapes = [np.shape(params0[k]) for k in names]
    sizes = [int(np.prod(s)) for s in shapes]

    def unflatten(theta):
        out, i = {}, 0
        for k, s, m in zip(names, shapes, sizes):
            out[k] = theta[i:i + m].reshape(s)
            i += m
        return out

    last = {}

    def fun(theta):
        J, grads = value_and_grad(unflatten(theta))
        last["J"] = float(J)
        return float(J), np.concatenate([np.asarray(grads[k], np.float64).ravel() for k in names])

    losses = []

    def on_iteration(theta):
        losses.append(last["J"])
        if callback is not None:
            callback(len(losses), last["J"])

    theta0 = np.concatenate([np.asarray(params0[k], np.float64).ravel() for k in names])
    res = minimize(fun, theta0, jac=True, method="L-BFGS-B", callback=on_iteration,
                   options={"maxiter": int(max_iter), "gtol": float(tol),
                            "ftol": 64 * np.finfo(float).eps})
    return unflatten(res.x), int(res.nit), losses

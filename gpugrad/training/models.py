"""Models on the engine: the lecture's linear classifier and a k-layer MLP, one interface.

Both keep their trainable arrays in ``model.params`` (updated in place by ``gpugrad.optim``) and
what is not trained in ``model.buffers`` (the input normalisation, batch-norm running averages),
all on ``model.backend`` (numpy or CuPy arrays). The parameters are views of one flat buffer,
``model.flat_params``, weight matrices first (``model.layout``), and gradients land in views of
one buffer of the same layout (``model.grads``, ``model.flat_grads``): an optimiser updates
every parameter in one call. One training step is ``model.loss_grad``, or, in the trainer, a
``model.program`` (the step for one batch shape, written into ``model.grads``) and one fused
update:

- ``LinearClassifier``: s = W x + b, its whole step through the fused ``linear_grad`` (one CUDA
  kernel on CuPy that reads X once, the batch's rows where they lie, normalises uint8 pixels on
  the fly and forms the loss, G, dW and db).
- ``MLP``: k layers s_l = W_l h_{l-1} + b_l, optional batch normalisation, h_l = ReLU(.), defined
  by its computational graph (``gpugrad.ops``) and trained by that graph compiled
  (``gpugrad.compiled``: traced once, replayed for every batch; a handful of fused calls) or, with
  ``compiled=False``, by the generic backward pass (BackOp) on a graph built for each batch.

Cost of a batch: J = (1/n) sum_i w_i l_i + lam sum_l ||W_l||^2 (weight matrices only; biases and
batch-norm scales are not penalised; w_i = 1 without sample weights).

    >>> import numpy as np, gpugrad as gg
    >>> m = gg.models.LinearClassifier(4, 3, backend="numpy", dtype="float64")
    >>> X, y = np.random.default_rng(0).standard_normal((5, 4)), np.array([0, 1, 2, 0, 1])
    >>> cost, loss, grads = m.loss_grad(X, y, lam=0.0)
    >>> sorted(grads), grads["W"].shape
    (['W', 'b'], (3, 4))
"""
from __future__ import annotations

import json
import math

import numpy as np

from ..backends import get_backend, is_array, to_host
from ..engine.graph import no_grad, tensor
from ..engine.ops import batch_norm, linear, relu, sparse_linear
from ..engine import _validation, compiled
from .. import checks
from .saving import atomic_savez, decode_json, encode_json, read_npz
from ..engine import sparse as _sparse

__all__ = ["LinearClassifier", "MLP", "model_from_config", "save_model", "load_model"]

CONFIG_KEY = "__config__"  # the JSON metadata inside a model .npz, stored as uint8 bytes
CLASSES_KEY = "__classes__"  # the class names (label of each class index), JSON as uint8 bytes


def _float_dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in _validation.FLOAT_DTYPES:
        raise ValueError(f"dtype must be float32 or float64, got {dt}")
    return dt


def _positive_int(name, value) -> int:
    return checks.number(name, value, integer=True, low=1, what="a positive integer")


class _Model:
    """What both models share: construction checks, normalisation, state, moving, predicting."""

    kind = ""

    def __init__(self, n_features, n_classes, loss, dtype, backend, x_mean, x_std):
        self.n_features = _positive_int("n_features", n_features)
        self.n_classes = _positive_int("n_classes", n_classes)
        _validation.check_loss_name(loss)
        self.loss = loss
        self.dtype = _float_dtype(dtype)
        self.backend = get_backend(backend)
        self.params: dict = {}
        self.buffers: dict = {}
        self.class_names: list[str] | None = None  # the label of each class index, when known
        if x_mean is not None or x_std is not None:
            self.set_normalisation(x_mean, x_std)

    # ---- input normalisation ---------------------------------------------------------------
    def set_normalisation(self, x_mean, x_std):
        """Normalise inputs as (x - x_mean) / x_std from now on ((d,) each; zeros in x_std refused)."""
        d = self.n_features
        arrays = {}
        for name, v in (("x_mean", x_mean), ("x_std", x_std)):
            if v is None:
                raise ValueError("x_mean and x_std must be given together")
            v = to_host(v).astype(np.float64)  # numpy or CuPy, whatever the model's backend
            if v.shape != (d,):
                raise ValueError(f"{name} must have shape ({d},), got {v.shape}")
            if not np.isfinite(v).all():
                raise ValueError(f"{name} has a NaN or Inf at feature {int(np.argmin(np.isfinite(v)))}")
            arrays[name] = v
        if (arrays["x_std"] == 0).any():
            raise ValueError(f"x_std is 0 at feature {int(np.argmax(arrays['x_std'] == 0))}")
        for name, v in arrays.items():
            self.buffers[name] = self.backend.asarray(v, dtype=self.dtype)

    @property
    def normalised(self) -> bool:
        return "x_mean" in self.buffers

    def input_dtype(self, dtype) -> np.dtype:
        """The dtype an X of ``dtype`` takes on this model: uint8 pixels stay uint8 when the model
        normalises (normalised on the fly, batch by batch), any other numbers the model's dtype."""
        dtype = np.dtype(dtype)
        if dtype == np.uint8 and self.normalised:
            return dtype
        if dtype.kind not in "fiub":
            raise TypeError(f"X must hold numbers, got dtype {dtype}")
        return self.dtype

    def prepare(self, X, contiguous=False):
        """X (n, d) as this model's input on its backend, in ``input_dtype`` (one conversion, none
        when it already is), C-contiguous when ``contiguous``; a sparse X as CSR with values in the
        model's dtype (``gpugrad.sparse.to_backend``), never dense. The trainer and the estimators
        both take their inputs through here."""
        if _sparse.is_sparse(X):
            if len(X.shape) != 2 or X.shape[1] != self.n_features:
                raise ValueError(f"X must have shape (n, {self.n_features}), got a sparse matrix of shape "
                                 f"{tuple(X.shape)}")
            if X.dtype.kind not in "fiub":
                raise TypeError(f"X must hold numbers, got dtype {X.dtype}")
            return _sparse.to_backend(self.backend, X, self.dtype)
        X = X if is_array(X) else self.backend.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"X must have shape (n, {self.n_features}), got {tuple(X.shape)}")
        X = self.backend.asarray(X, dtype=self.input_dtype(X.dtype))
        return self.backend.xp.ascontiguousarray(X) if contiguous else X

    def _normalise(self, X):
        """(X - x_mean) / x_std in the model's dtype (X itself, cast, when not normalising)."""
        return self.backend.normalise(X, self.buffers.get("x_mean"), self.buffers.get("x_std"),
                                      self.dtype) if self.normalised else X.astype(self.dtype, copy=False)

    # ---- inference -------------------------------------------------------------------------
    def predict(self, X):
        """(n,) class indices argmax_j s_j on the backend."""
        return self.backend.xp.argmax(self.scores(self.prepare(X)), axis=1)

    def penalty(self):
        """0-d: sum over the weight matrices of ||W||^2 (the lam term's factor): one dot product of
        the flat buffer's first ``n_decay`` entries with themselves."""
        self.ensure_packed()
        weights = self.flat_params[:self.n_decay]
        return self.backend.xp.vdot(weights, weights)

    # Pickling and deep copies copy each view of the flat buffer on its own: the copy keeps the
    # parameters and packs them again; compiled programs (buffers, bound methods) are a cache.
    _UNPICKLED = ("_programs", "_views", "flat_params", "flat_grads", "grads")

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in self._UNPICKLED}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._pack()

    # ---- the flat parameter buffer -------------------------------------------------------------
    def _pack(self):
        """Put the parameters in one flat buffer, weight matrices first (``flat_params``;
        ``params`` keeps its names and order, each now a view of it), with a gradient buffer of
        the same layout (``flat_grads``, viewed by name in ``grads``). ``layout`` lists
        (name, offset, shape) in buffer order; the first ``n_decay`` entries are the weights the
        penalty lam ||W||^2 covers. Compiled programs hold the old arrays: they are dropped."""
        xp = self.backend.xp
        order = sorted(self.params, key=lambda k: not k.startswith("W"))  # stable: weights first
        layout, offset = [], 0
        for k in order:
            shape = tuple(self.params[k].shape)
            layout.append((k, offset, shape))
            offset += math.prod(shape)
        flat, flat_grads = xp.empty(offset, dtype=self.dtype), xp.zeros(offset, dtype=self.dtype)
        views, grads = {}, {}
        for k, start, shape in layout:
            end = start + math.prod(shape)
            views[k] = flat[start:end].reshape(shape)
            views[k][...] = self.params[k]
            grads[k] = flat_grads[start:end].reshape(shape)
        for k in self.params:
            self.params[k] = views[k]
        self.flat_params, self.flat_grads, self.grads, self.layout = flat, flat_grads, grads, tuple(layout)
        self.n_decay = sum(math.prod(shape) for k, _, shape in layout if k.startswith("W"))
        self._views, self._programs = views, {}

    def ensure_packed(self):
        """Pack the parameters again if an array of ``params`` was replaced (update them in place:
        ``params[k][...] = value``); a no-op otherwise."""
        views = getattr(self, "_views", None)
        if views is None or self.params.keys() != views.keys() or \
                any(self.params[k] is not v for k, v in views.items()):
            self._pack()

    def program(self, n, x_dtype, weighted, gather=True, sparse=False):
        """The training step for batches of n rows, built once and kept (``gpugrad.compiled``):
        ``program.run(X, y, sample_weight, idx)`` returns the batch's loss (lam = 0) and writes
        every parameter's gradient into ``grads``. x_dtype: X's dtype as given (the model's, or
        uint8 pixels); weighted: calls pass sample weights; gather: calls pass row indices into X;
        sparse: X is a sparse matrix."""
        self.ensure_packed()
        key = (n, np.dtype(x_dtype), bool(weighted), bool(gather), bool(sparse), id(self.backend),
               tuple(id(v) for v in self.buffers.values()))
        prog = self._programs.get(key)
        if prog is None:
            prog = self._programs[key] = self._make_program(n, np.dtype(x_dtype), bool(weighted), bool(gather),
                                                            bool(sparse))
        return prog

    # ---- state -----------------------------------------------------------------------------
    def config(self) -> dict:
        return {"kind": self.kind, "n_features": self.n_features, "n_classes": self.n_classes,
                "loss": self.loss, "dtype": self.dtype.name, "normalised": self.normalised}

    def state(self) -> dict:
        """Parameters and buffers as numpy copies, by name."""
        to_np = self.backend.to_numpy
        return {k: np.array(to_np(v)) for k, v in {**self.params, **self.buffers}.items()}

    def load_state(self, state: dict, source="state"):
        """Take parameters and buffers from ``state`` (name -> array), checking every name and shape.

        Arrays are written into the existing ones (in place), so optimisers holding them stay valid.
        """
        expected = {**self.params, **self.buffers}
        if "x_mean" in state and "x_mean" not in expected:
            self.set_normalisation(state["x_mean"], state["x_std"])
            expected = {**self.params, **self.buffers}
        missing = sorted(set(expected) - set(state))
        extra = sorted(set(state) - set(expected))
        if missing or extra:
            raise ValueError(f"{source} does not fit this {self.describe()}: "
                             + (f"missing {missing}" if missing else "")
                             + ("; " if missing and extra else "")
                             + (f"unexpected {extra}" if extra else ""))
        for name, target in expected.items():
            a = to_host(state[name])  # numpy or CuPy, whatever the model's backend
            if a.shape != tuple(target.shape):
                raise ValueError(f"{source}: {name} has shape {a.shape}, but this {self.describe()} "
                                 f"needs {tuple(target.shape)}")
            target[...] = self.backend.asarray(a, dtype=target.dtype)

    def to(self, backend):
        """Move parameters and buffers to ``backend`` (a name or backend object); returns self."""
        be = get_backend(backend)
        for d in (self.params, self.buffers):
            for k, v in d.items():
                d[k] = be.asarray(self.backend.to_numpy(v))
        self.backend = be
        self._pack()
        return self

    def describe(self) -> str:
        return f"{self.kind} model ({self.n_features} features, {self.n_classes} classes)"

    @property
    def n_parameters(self) -> int:
        """The number of trained numbers (the entries of ``params``; buffers not counted)."""
        return int(sum(int(np.prod(v.shape)) for v in self.params.values()))

    def _layers(self) -> str:
        return f"{self.n_features} -> {self.n_classes}"

    def __repr__(self):
        """Kind, layer sizes, loss, parameter count, dtype, backend (and normalisation):

            >>> LinearClassifier(64, 10, backend="numpy")
            LinearClassifier(64 -> 10, softmax, 650 parameters, float32, numpy)
        """
        extra = [self._layers(), self.loss, f"{self.n_parameters:,} parameters", self.dtype.name,
                 self.backend.name]
        if self.normalised:
            extra.append("normalises inputs")
        return f"{type(self).__name__}({', '.join(extra)})"


class LinearClassifier(_Model):
    """s = W x + b with the softmax cross-entropy or multi-class SVM loss and lam ||W||^2.

    Args:
        n_features: d. n_classes: C. loss: "softmax" or "svm".
        dtype: "float32" or "float64", what the model computes in.
        backend: "numpy", "cupy", "auto" (CuPy when a GPU is usable) or a backend object.
        x_mean, x_std: (d,) input normalisation kept by the model, applied on the fly by the fused
            step, so uint8 pixels train unconverted.
        init_scale, seed: W ~ N(0, init_scale^2) from ``numpy.random.default_rng(seed)``, b = 0.
    Attributes:
        params: {"W": (C, d), "b": (C,)}; buffers: {"x_mean", "x_std"} when normalising.

        >>> import numpy as np, gpugrad as gg
        >>> m = gg.models.LinearClassifier(2, 2, backend="numpy", dtype="float64", init_scale=0)
        >>> float(m.loss_grad(np.ones((1, 2)), np.array([1]), lam=0.0)[0])  # log 2
        0.6931471805599453
    """

    kind = "linear"

    def __init__(self, n_features, n_classes, loss="softmax", *, dtype="float32", backend="auto",
                 x_mean=None, x_std=None, init_scale=0.01, seed=0):
        super().__init__(n_features, n_classes, loss, dtype, backend, x_mean, x_std)
        rng = np.random.default_rng(seed)
        W = rng.standard_normal((self.n_classes, self.n_features)) * init_scale
        self.params = {"W": self.backend.asarray(W, dtype=self.dtype),
                       "b": self.backend.asarray(np.zeros(self.n_classes), dtype=self.dtype)}
        self._pack()

    def loss_grad(self, X, y, lam, sample_weight=None):
        """(cost, loss, {"W": dJ/dW, "b": dJ/db}) of a batch, through the fused step (no input checks,
        no host synchronisation). X (n, d) from ``prepare``; y (n,) labels in [0, C)."""
        p = self.params
        mean, std = self.buffers.get("x_mean"), self.buffers.get("x_std")
        loss, dW, db = self.backend.linear_grad(X, y, p["W"], p["b"], 0.0, self.loss, mean, std,
                                                sample_weight)
        if not lam:
            return loss, loss, {"W": dW, "b": db}
        dW += (2 * lam) * p["W"]
        return loss + lam * self.penalty(), loss, {"W": dW, "b": db}

    def scores(self, X):
        """(n, C) scores S = X W^T + b of prepared inputs (normalised like training; a sparse X
        through ``Backend.sparse_scores``, never made dense)."""
        if _sparse.is_sparse(X):
            return self.backend.sparse_scores(X, self.params["W"], self.params["b"], self.buffers.get("x_mean"),
                                              self.buffers.get("x_std"))
        return self._normalise(X) @ self.params["W"].T + self.params["b"]

    def _make_program(self, n, x_dtype, weighted, gather, sparse):
        return compiled.LinearProgram(self)


class MLP(_Model):
    """A k-layer perceptron: s_l = W_l h_{l-1} + b_l, [batch norm], h_l = ReLU; scores s_k.

    Args:
        n_features, n_classes, loss, dtype, backend, x_mean, x_std, seed: as ``LinearClassifier``.
        hidden: the hidden layer sizes, e.g. (50, 50) for the course's 3-layer network.
        batchnorm: batch normalisation after each hidden layer's linear map (batch statistics
            in training, running averages, momentum ``bn_momentum``, for inference).
        compiled: train by the compiled step (``gpugrad.compiled``); False: by the generic
            backward pass on a graph built for each batch (the same results on numpy).
    Attributes:
        params: W1 (m1, d), b1, [gamma1, beta1], ..., Wk (C, m_{k-1}), bk. He initialisation:
            W_l ~ N(0, 2 / fan_in), biases 0, gamma 1, beta 0.
        buffers: running_mean_l, running_var_l (batch norm), x_mean, x_std (normalisation).

        >>> import numpy as np, gpugrad as gg
        >>> m = gg.models.MLP(4, 3, hidden=(8, 8), batchnorm=True, backend="numpy")
        >>> [k for k in m.params]
        ['W1', 'b1', 'gamma1', 'beta1', 'W2', 'b2', 'gamma2', 'beta2', 'W3', 'b3']
    """

    kind = "mlp"

    def __init__(self, n_features, n_classes, hidden=(50,), loss="softmax", *, batchnorm=False,
                 dtype="float32", backend="auto", x_mean=None, x_std=None, seed=0, bn_momentum=0.1,
                 compiled=True):
        super().__init__(n_features, n_classes, loss, dtype, backend, x_mean, x_std)
        self.hidden = tuple(_positive_int("hidden layer size", h) for h in hidden)
        self.batchnorm = bool(batchnorm)
        self.bn_momentum = float(bn_momentum)
        self.compiled = bool(compiled)
        rng = np.random.default_rng(seed)
        sizes = (self.n_features, *self.hidden, self.n_classes)
        asarray = lambda a: self.backend.asarray(a, dtype=self.dtype)  # noqa: E731
        for l, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
            # He et al. (2015): variance 2 / fan_in keeps ReLU activations' scale through depth.
            self.params[f"W{l}"] = asarray(rng.standard_normal((fan_out, fan_in)) * np.sqrt(2 / fan_in))
            self.params[f"b{l}"] = asarray(np.zeros(fan_out))
            if self.batchnorm and l < len(sizes) - 1:
                self.params[f"gamma{l}"] = asarray(np.ones(fan_out))
                self.params[f"beta{l}"] = asarray(np.zeros(fan_out))
                self.buffers[f"running_mean{l}"] = asarray(np.zeros(fan_out))
                self.buffers[f"running_var{l}"] = asarray(np.ones(fan_out))
        self._pack()

    @property
    def n_layers(self) -> int:
        return len(self.hidden) + 1

    def forward_graph(self, params, h, training=True, buffers=None):
        """The scores node S (n, C) built on the graph from ``params`` (name -> Tensor) and the
        input node h (n, d) (``_input``): the model's definition, which the compiled step traces.
        ``buffers``: the running averages to use (name -> array; default the model's own)."""
        buffers = self.buffers if buffers is None else buffers
        for l in range(1, self.n_layers):
            s = self._linear(h, params[f"W{l}"], params[f"b{l}"])
            if self.batchnorm:
                s = batch_norm(s, params[f"gamma{l}"], params[f"beta{l}"],
                               buffers[f"running_mean{l}"], buffers[f"running_var{l}"],
                               training=training, momentum=self.bn_momentum)
            h = relu(s)
        k = self.n_layers
        return self._linear(h, params[f"W{k}"], params[f"b{k}"])

    def _input(self, X):
        """The graph's input node: the normalised X, or a sparse X as it is (its first layer
        applies the normalisation, ``_linear``)."""
        return X if _sparse.is_sparse(X) else tensor(self._normalise(X))

    def _linear(self, h, W, b):
        """A layer's linear map; the first layer reads a sparse X as it is (``ops.sparse_linear``:
        scaled by x_std, never made dense)."""
        if _sparse.is_sparse(h):
            return sparse_linear(h, W, b, self.buffers.get("x_mean"), self.buffers.get("x_std"))
        return linear(h, W, b)

    def loss_grad(self, X, y, lam, sample_weight=None):
        """(cost, loss, grads) of a batch in training mode (batch-norm batch statistics; the running
        averages are updated), grads fresh arrays. Compiled (the default): the step traced once
        for this batch shape and replayed (``program``). ``compiled=False``: the graph gives S; the
        fused loss gives (L, dL/dS); the generic backward pass from S seeded with dL/dS gives
        every parameter's gradient. The two agree bit for bit on numpy."""
        if self.compiled:  # (a sparse X gets the graph's program: ``_make_program``)
            loss = self.program(X.shape[0], X.dtype, sample_weight is not None, gather=False,
                                sparse=_sparse.is_sparse(X)).run(X, y, sample_weight)
            loss, grads = loss.copy(), {k: g.copy() for k, g in self.grads.items()}
        else:
            loss, grads = self.graph_loss_grad(X, y, sample_weight)
        if not lam:
            return loss, loss, grads
        for k, W in self.params.items():
            if k.startswith("W"):
                grads[k] += (2 * lam) * W
        return loss + lam * self.penalty(), loss, grads

    def graph_loss_grad(self, X, y, sample_weight=None):
        """(loss, grads) of a batch by the generic forward and backward passes (lam = 0): the
        definition the compiled step is checked against."""
        params = {k: tensor(v, requires_grad=True) for k, v in self.params.items()}
        S = self.forward_graph(params, self._input(X), training=True)
        loss, dS = self.backend.loss_grad(S.value, y, self.loss, sample_weight)
        S.backward(dS)
        return loss, {k: t.grad for k, t in params.items()}

    def _make_program(self, n, x_dtype, weighted, gather, sparse):
        if self.compiled and not sparse:  # (the compiled step gathers dense rows)
            return compiled.compile_mlp(self, n, x_dtype, weighted=weighted, gather=gather)
        return compiled.GraphProgram(self)

    def scores(self, X):
        """(n, C) scores of prepared inputs in inference mode (batch norm by running averages)."""
        with no_grad():
            params = {k: tensor(v) for k, v in self.params.items()}
            return self.forward_graph(params, self._input(X), training=False).value

    def config(self) -> dict:
        return {**super().config(), "hidden": list(self.hidden), "batchnorm": self.batchnorm,
                "bn_momentum": self.bn_momentum}

    def _layers(self) -> str:
        """The layer sizes, d -> m1 -> ... -> C, and batch norm when used:

            >>> MLP(64, 10, hidden=(50, 50), batchnorm=True, backend="numpy")
            MLP(64 -> 50 -> 50 -> 10 with batch norm, softmax, 6,510 parameters, float32, numpy)
        """
        sizes = " -> ".join(map(str, (self.n_features, *self.hidden, self.n_classes)))
        return sizes + (" with batch norm" if self.batchnorm else "")

    def describe(self) -> str:
        bn = " with batch norm" if self.batchnorm else ""
        return (f"mlp model ({self.n_features} features, hidden {list(self.hidden)}{bn}, "
                f"{self.n_classes} classes)")


MODELS = {"linear": LinearClassifier, "mlp": MLP}


def model_from_config(config: dict, backend="auto"):
    """A freshly initialised model of the kind and shape ``config`` (from ``model.config()``) says."""
    try:
        kind = config["kind"]
        cls = MODELS[kind]
        kw = dict(loss=config["loss"], dtype=config["dtype"], backend=backend)
        if kind == "mlp":
            kw.update(hidden=tuple(config["hidden"]), batchnorm=config["batchnorm"],
                      bn_momentum=config.get("bn_momentum", 0.1))
        return cls(config["n_features"], config["n_classes"], **kw)
    except KeyError as e:
        raise ValueError(f"model config lacks {e} or names an unknown kind: {config!r}") from None


def save_model(model, path, class_names=None) -> str:
    """Save ``model`` as an .npz: one array per parameter and buffer, plus its config as JSON and
    the class names (``class_names``, else ``model.class_names``; the label of each class index,
    which ``gpugrad predict`` writes) when known.

        >>> import os, tempfile, gpugrad as gg
        >>> m = gg.models.LinearClassifier(3, 2, backend="numpy")
        >>> p = gg.models.save_model(m, os.path.join(tempfile.mkdtemp(), "model.npz"))
        >>> gg.models.load_model(p).params["W"].shape
        (2, 3)
    """
    arrays = {**model.state(), CONFIG_KEY: encode_json(model.config())}
    names = model.class_names if class_names is None else [str(c) for c in class_names]
    if names is not None:
        if len(names) != model.n_classes:
            raise ValueError(f"class_names has {len(names)} names for a model of {model.n_classes} classes")
        arrays[CLASSES_KEY] = encode_json(list(names))
    return atomic_savez(path, arrays)


def load_model(path, backend="auto"):
    """The model saved at ``path`` by ``save_model``, on ``backend``. A missing, corrupt or foreign
    file, or arrays that do not fit the saved shape, are refused with an error naming the file."""
    arrays = read_npz(path, "model file")
    if CONFIG_KEY not in arrays:
        raise ValueError(f"{path}: not a gpugrad model file (no {CONFIG_KEY} entry)")
    try:
        config = decode_json(arrays.pop(CONFIG_KEY))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: its model config is corrupt ({e})") from None
    names = arrays.pop(CLASSES_KEY, None)
    model = model_from_config(config, backend)
    model.load_state(arrays, source=str(path))
    if names is not None:
        try:
            model.class_names = [str(c) for c in decode_json(names)]
        except (UnicodeDecodeError, json.JSONDecodeError, TypeError) as e:
            raise ValueError(f"{path}: its class names are corrupt ({e})") from None
        if len(model.class_names) != model.n_classes:
            raise ValueError(f"{path}: {len(model.class_names)} class names for a model of "
                             f"{model.n_classes} classes")
    return model

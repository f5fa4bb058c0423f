"""The compiled step: a model's graph traced once, then replayed for every batch.

The generic forward and backward passes (``gpugrad.graph``: Tensor nodes built for each batch,
BackOp walking them) are the definition of a training step, and the way to inspect and
gradcheck it. Training runs the same step compiled, in four stages:

1. **trace**: the model's forward graph is built once and taken in evaluation order (the
   lecture's generic forward pass). Only its structure is kept, so it is built on host stand-ins
   (numpy zeros of each parameter's and buffer's shape and dtype): no device work, no state
   changed.
2. **lower**: each chain of nodes that feed only one another becomes one instruction calling a
   fused function of the backend (numpy on the CPU, a CUDA kernel on CuPy):
   ``linear -> batch_norm -> relu`` (or ``linear -> relu``) is a matrix product and
   ``backend.layer_forward`` (bias + batch norm + ReLU); the result ``linear`` is a matrix
   product whose bias goes into ``backend.scores_loss`` (bias, loss and dL/dS in one pass).
   The backward schedule is the chains' vector-Jacobian products in reverse order:
   ``backend.layer_backward`` (ReLU mask + batch-norm VJP + the bias's column sums), then
   dW = ds^T x and dx = ds W as matrix products. Gradients are written straight into views of
   one flat gradient buffer (``model.flat_grads``), nothing accumulated in a dict.
3. **allocate** (liveness): every value an instruction writes gets a buffer; a buffer goes back
   to the pool after the last instruction that reads its value, and a later value of the same
   shape and dtype takes it (the layers' pre-activations share one, a gradient takes over an
   activation that is no longer read). An instruction never writes a buffer it reads, except the
   backward layer's ds, which overwrites its own dh entry by entry.
4. **replay**: ``Program.run`` calls the instructions in order on those buffers for every batch
   of that shape: no Tensor, no graph, no allocation (on CuPy no host synchronisation either:
   the loss stays on the device). Another batch shape (the last, smaller batch of an epoch) gets
   a program of its own.

On numpy the fused functions are written with the graph's own operations in the graph's order,
so a compiled step equals the generic backward pass bit for bit (tests/test_compiled.py); on CuPy
they agree within float32 rounding.

    >>> import numpy as np, gpugrad as gg
    >>> model = gg.models.MLP(4, 3, hidden=(5,), batchnorm=True, backend="numpy", dtype="float64")
    >>> X, y = np.random.default_rng(0).standard_normal((6, 4)), np.array([0, 1, 2, 0, 1, 2])
    >>> prog = gg.compiled.compile_mlp(model, 6, X.dtype, weighted=False, gather=False)
    >>> print(prog)
    compiled step for batches of 6 rows: 9 instructions, 7 buffers
      forward:
        matmul(X, W1.T) -> s1
        layer_forward(s1 + b1, batch norm, relu) -> h1, xhat1, inv_std1
        matmul(h1, W2.T) -> s2
        scores_loss(s2 + b2, softmax) -> loss, dS
      backward:
        layer_backward(dS, column sums) -> ds2, db2
        matmul(ds2.T, h1) -> dW2
        matmul(ds2, W2) -> dh1
        layer_backward(dh1, relu mask, batch norm) -> ds1, db1, dgamma1, dbeta1
        matmul(ds1.T, X) -> dW1
    >>> loss = prog.run(X, y)   # the loss; every gradient is in model.grads
    >>> graph_loss, graph_grads = model.graph_loss_grad(X, y)   # the definition (BackOp)
    >>> bool(loss == graph_loss), all((model.grads[k] == g).all() for k, g in graph_grads.items())
    (True, True)
"""
from __future__ import annotations

import numpy as np

from .graph import _toposort, tensor

__all__ = ["Program", "GraphProgram", "LinearProgram", "trace", "compile_mlp"]


def trace(forward, params: dict, buffers: dict, x_shape, dtype):
    """The graph of one forward pass, built once, on host stand-ins.

    Args:
        forward: f(param tensors by name, input tensor, buffers by name) -> the result node (the
            scores S).
        params, buffers: name -> array, the model's parameters (traced as leaves that require
            grad) and the arrays its forward pass reads besides them (batch-norm running averages).
        x_shape, dtype: an input batch's shape (n, d), n > 1, and dtype.
    Only the graph's structure is kept, so it is traced on numpy zeros of each array's shape and
    dtype: no device work, and no state changes (tracing is not a training step).
    Returns:
        (nodes in evaluation order, {id(parameter node): name}, {id(buffer stand-in): name}, the
        input node).
    """
    leaves = {k: tensor(np.zeros(tuple(v.shape), v.dtype), requires_grad=True, name=k) for k, v in params.items()}
    stand_ins = {k: np.zeros(tuple(v.shape), v.dtype) for k, v in buffers.items()}
    x_node = tensor(np.zeros(x_shape, dtype), name="x")
    result = forward(leaves, x_node, stand_ins)
    return (_toposort(result), {id(t): k for k, t in leaves.items()}, {id(a): k for k, a in stand_ins.items()},
            x_node)


class _Val:
    """A value of the schedule (an activation or a gradient), before it has a buffer."""

    def __init__(self, name, shape, dtype):
        self.name, self.shape, self.dtype = name, tuple(shape), np.dtype(dtype)
        self.buffer = None


class _In:
    """An argument bound at each call: the batch's X, y, weights or row indices."""

    def __init__(self, name):
        self.name = name


_X, _Y, _W, _IDX = _In("X"), _In("y"), _In("sample_weight"), _In("idx")


class _Instr:
    """One call of the schedule: backend method `op` on `args` (values, arrays, constants, inputs);
    `outs` are the values it writes; `inplace` maps an output's position to the argument whose
    buffer it takes over."""

    def __init__(self, op, args, outs=(), inplace=None, label=""):
        self.op, self.args, self.outs = op, list(args), list(outs)
        self.inplace = inplace or {}
        self.label = label


class Program:
    """A compiled training step for batches of n rows (see the module docstring).

    ``run(X, y, sample_weight=None, idx=None)`` -> the batch's loss L = (1/n) sum_i w_i l_i (a
    0-d array of the backend, the same array every call), every parameter's dL/dparam written into
    ``grads`` (without the penalty: the optimiser's fused update adds 2 lam W), the batch-norm
    running averages updated. X, y, sample_weight, idx as the program was compiled for: the rows
    idx of X (n of them) when it gathers, else X itself (n rows, in the model's dtype).
    """

    def __init__(self, backend, n, forward, backward, loss, grads, gather):
        self.backend, self.n, self.grads, self.gather = backend, n, grads, gather
        self._forward, self._backward = forward, backward
        instrs = forward + backward
        self.nbuffers = _allocate(backend.xp, instrs, keep={id(loss)})
        self.loss = loss.buffer
        self.schedule = [_concrete(backend, ins) for ins in instrs]

    def run(self, X, y, sample_weight=None, idx=None):
        inputs = {"X": X, "y": y, "sample_weight": sample_weight, "idx": idx}
        for fn, args, bound in self.schedule:
            if bound:
                args = list(args)
                for i, name in bound:
                    args[i] = inputs[name]
            fn(*args)
        return self.loss

    def __str__(self):
        lines = [f"compiled step for batches of {self.n} rows: {len(self.schedule)} instructions, "
                 f"{self.nbuffers} buffers"]
        for part, instrs in (("forward", self._forward), ("backward", self._backward)):
            lines.append(f"  {part}:")
            lines += [f"    {ins.label}" for ins in instrs]
        return "\n".join(lines)


def _allocate(xp, instrs, keep) -> int:
    """Give every value written by `instrs` a buffer, reusing one once its value's last reader has
    run (liveness); values whose id is in `keep` are never given up. Returns the buffers made."""
    last = {}
    for i, ins in enumerate(instrs):
        for a in _reads(ins):
            last[id(a)] = i
    free, made = {}, 0
    for i, ins in enumerate(instrs):
        for k, v in enumerate(ins.outs):
            if k in ins.inplace:
                v.buffer = ins.args[ins.inplace[k]].buffer
                continue
            pool = free.get((v.shape, v.dtype))
            if pool:
                v.buffer = pool.pop()
            else:
                v.buffer = xp.empty(v.shape, dtype=v.dtype)
                made += 1
        handed_on = {id(ins.args[j]) for j in ins.inplace.values()}
        dying = [a for a in _reads(ins) if last[id(a)] == i and id(a) not in handed_on]
        dying += [v for v in ins.outs if id(v) not in last and id(v) not in keep]  # written, never read
        for v in {id(v): v for v in dying}.values():
            if id(v) not in keep:
                free.setdefault((v.shape, v.dtype), []).append(v.buffer)
    return made


def _reads(ins):
    """The values an instruction reads (a transposed operand reads its value; the tuple of outputs
    is written, not read)."""
    for a in ins.args:
        if isinstance(a, _Val):
            yield a
        elif isinstance(a, _T):
            yield a.value


def _concrete(backend, ins):
    """(bound method, arguments with buffers in place of values, [(position, input name)]); for an
    instruction without per-call inputs, the backend's ``fixed_call`` of it where it has one (the
    call with every argument bound, e.g. straight to a compiled loop)."""
    args, bound = [], []
    for i, a in enumerate(ins.args):
        if isinstance(a, _Val):
            a = a.buffer
        elif isinstance(a, _In):
            bound.append((i, a.name))
        elif isinstance(a, _T):
            a = a.value.buffer.T
        elif isinstance(a, tuple):
            a = tuple(x.buffer if isinstance(x, _Val) else x for x in a)
        args.append(a)
    fixed = getattr(backend, "fixed_call", None)
    call = fixed(ins.op, tuple(args)) if fixed is not None and not bound else None
    if call is not None:
        return call, (), ()
    return getattr(backend, ins.op), tuple(args), tuple(bound)


class _T:
    """The transpose of a value, as a matrix product's operand (a view, no copy)."""

    def __init__(self, value):
        self.value = value


# ---- the MLP ------------------------------------------------------------------------------------
def compile_mlp(model, n, x_dtype, *, weighted, gather):
    """The compiled step of ``model`` (a ``gpugrad.models.MLP``) for batches of n rows.

    Args:
        n: rows per batch. x_dtype: the dtype of X as the program receives it (the model's dtype,
            or uint8 pixels the model normalises).
        weighted: whether calls pass per-row sample weights.
        gather: whether calls pass row indices (the batch is rows idx of a larger X); without,
            X is the batch itself, used as it is unless it must be normalised or converted.
    Returns: a ``Program`` writing its gradients into ``model.grads``.
    """
    be, dtype = model.backend, model.dtype
    x_dtype = np.dtype(x_dtype)
    nodes, names, buffer_names, x_node = trace(
        lambda params, x, buffers: model.forward_graph(params, x, training=True, buffers=buffers),
        model.params, model.buffers, (2, model.n_features), dtype)
    forward, values = [], {}
    convert = model.normalised or x_dtype != dtype
    if gather or convert:
        xb, yb = _Val("x", (n, model.n_features), dtype), _Val("y", (n,), np.int64)
        wb = _Val("w", (n,), dtype) if weighted else None
        mean, std = model.buffers.get("x_mean"), model.buffers.get("x_std")
        forward.append(_Instr("gather_rows", [_X, _IDX if gather else None, mean, std, _Y, _W if weighted else None,
                                              (xb, yb, wb)], [xb, yb] + ([wb] if wb is not None else []),
                              label="gather_rows(X[idx], y[idx]" + (", w[idx]" if weighted else "")
                                    + (") normalised" if model.normalised else ")") + " -> x"))
        values[id(x_node)], y_in, w_in = xb, yb, wb
    else:
        values[id(x_node)], y_in, w_in = _X, _Y, (_W if weighted else None)
    layers = _layers(nodes, names, x_node, model.params, {k: model.buffers[v] for k, v in buffer_names.items()})
    if n <= 1 and any(layer.bn is not None for layer in layers):  # (traced at 2 rows: say it as the graph would)
        raise ValueError(f"batch_norm: expected more than 1 value per channel when training, got x of shape "
                         f"({n}, {layers[0].m}) (the batch variance of {n} row(s) is undefined; use training=False)")
    backward = []
    loss = _Val("loss", (), dtype)
    for layer in layers:  # the forward schedule
        layer.forward(forward, values, dtype, n)
    dS = layers[-1].scores_loss(forward, dtype, y_in, w_in, model.loss, loss)
    upstream = dS
    for layer in reversed(layers):  # the backward schedule: the VJPs in reverse order
        upstream = layer.backward(backward, values, upstream, model.grads, dtype, n)
    return Program(be, n, forward, backward, loss, model.grads, gather)


def _consumers(nodes):
    """{id(node): [nodes computed from it]} (the lecture's parents)."""
    out = {id(node): [] for node in nodes}
    for node in nodes:
        for c in node._children:
            if node not in out[id(c)]:
                out[id(c)].append(node)
    return out


def _layers(nodes, names, x_node, params, buffers):
    """The graph as layers: each hidden layer a chain linear -> [batch_norm ->] relu whose nodes
    feed only the next; the result a linear node. Anything else has no compiled form. The
    layers hold the model's own arrays: ``params`` by name, and ``buffers``, {id(the traced
    stand-in): the model's array}, for the running averages."""
    consumers = _consumers(nodes)
    result = nodes[-1]
    layers, covered = [], set()
    for node in nodes:
        if not node._children or id(node) in covered:
            continue
        _check_layer_start(node, names, x_node, layers)
        if node is result:
            layers.append(_Layer(len(layers) + 1, node, names, None, None, params, buffers))
            covered.add(id(node))
            continue
        chain, bn = _hidden_chain(node, consumers, names, buffers)
        layers.append(_Layer(len(layers) + 1, node, names, bn, chain[-1], params, buffers))
        covered.update(id(c) for c in chain)
    if not layers or layers[-1].relu is not None:
        raise NotImplementedError("the compiled step needs the graph's result to be a linear node (the scores)")
    used = [name for layer in layers for name in layer.param_names()]
    if len(used) != len(set(used)):
        raise NotImplementedError("the compiled step writes each parameter's gradient once: a parameter used in "
                                  "two places (tied weights) needs the generic backward pass")
    return layers


def _check_layer_start(node, names, x_node, layers):
    """A layer starts at a linear node on model parameters that reads the input or the previous
    layer's output; anything else raises NotImplementedError naming what the compiled step lacks."""
    if node._op != "linear":
        raise NotImplementedError(f"the compiled step has no instruction for a {node._op!r} node here (it "
                                  "compiles chains linear -> [batch_norm ->] relu and a final linear); "
                                  "train this graph with the generic backward pass")
    x, W, b = node._children
    for leaf in (W, b):
        if id(leaf) not in names:
            raise NotImplementedError("the compiled step needs every linear node's weights and bias to be "
                                      "model parameters")
    if x is not x_node and (not layers or x is not layers[-1].out_node):
        raise NotImplementedError("the compiled step compiles a chain of layers, each reading the previous "
                                  "layer's output")


def _hidden_chain(node, consumers, names, buffers):
    """(chain, bn): the hidden layer's nodes from the linear ``node`` to its relu, each feeding only
    the next, and its batch_norm node (None without one), whose gamma, beta and running averages
    must be the model's own parameters and buffers."""
    chain = [node]
    while len(consumers[id(chain[-1])]) == 1 and chain[-1]._op != "relu":
        chain.append(consumers[id(chain[-1])][0])
    ops = [c._op for c in chain]
    if ops not in (["linear", "relu"], ["linear", "batch_norm", "relu"]) or \
            (ops[1] == "batch_norm" and not chain[1]._params["training"]):
        raise NotImplementedError(f"the compiled step has no instruction for the chain {' -> '.join(ops)} "
                                  "(it compiles linear -> [batch_norm (training) ->] relu)")
    bn = chain[1] if ops[1] == "batch_norm" else None
    if bn is not None:
        if any(id(c) not in names for c in bn._children[1:]):
            raise NotImplementedError("the compiled step needs batch_norm's gamma and beta to be model "
                                      "parameters")
        stats = [bn._params["running_mean"], bn._params["running_var"]]
        if any(r is not None and id(r) not in buffers for r in stats):
            raise NotImplementedError("the compiled step needs batch_norm's running averages to be model "
                                      "buffers")
        if any(r is not None and r.dtype != bn.dtype for r in stats):
            raise NotImplementedError(f"the compiled step keeps batch_norm's running averages in the layer's "
                                      f"dtype {bn.dtype}; got {[r.dtype.name for r in stats]}")
    return chain, bn


class _Layer:
    """One layer of the compiled MLP: s = x W^T (+ b, batch norm, ReLU in one fused call)."""

    def __init__(self, index, linear, names, bn, relu, params, buffers):
        x, W, b = linear._children
        self.l, self.x_node, self.relu, self.bn = index, x, relu, bn
        self.W, self.b = names[id(W)], names[id(b)]
        self.W_array, self.b_array = params[self.W], params[self.b]
        self.m = W.shape[0]
        if bn is not None:
            self.gamma, self.beta = names[id(bn._children[1])], names[id(bn._children[2])]
            self.gamma_array, self.beta_array = params[self.gamma], params[self.beta]
            p = bn._params
            self.running = tuple(None if r is None else buffers[id(r)] for r in (p["running_mean"], p["running_var"]))
            self.momentum, self.eps = p["momentum"], p["eps"]
        self.out_node = relu if relu is not None else linear

    def param_names(self):
        return [self.W, self.b] + ([self.gamma, self.beta] if self.bn is not None else [])

    def forward(self, instrs, values, dtype, n):
        x = values[id(self.x_node)]
        s = self.s = _Val(f"s{self.l}", (n, self.m), dtype)
        instrs.append(_Instr("matmul", [x, self.W_array.T, s], [s], label=f"matmul({_name(x)}, {self.W}.T) -> s{self.l}"))
        if self.relu is None:
            return
        self.h = _Val(f"h{self.l}", (n, self.m), dtype)
        if self.bn is None:
            instrs.append(_Instr("layer_forward", [s, self.b_array, None, None, None, None, 0.0, 1.0,
                                                   (self.h, None, None)], [self.h],
                                 label=f"layer_forward(s{self.l} + {self.b}, relu) -> h{self.l}"))
        else:
            self.xhat, self.inv = _Val(f"xhat{self.l}", (n, self.m), dtype), _Val(f"inv_std{self.l}", (self.m,), dtype)
            instrs.append(_Instr("layer_forward", [s, self.b_array, self.gamma_array, self.beta_array, *self.running,
                                                   self.momentum, self.eps, (self.h, self.xhat, self.inv)],
                                 [self.h, self.xhat, self.inv],
                                 label=f"layer_forward(s{self.l} + {self.b}, batch norm, relu) -> h{self.l}, "
                                       f"xhat{self.l}, inv_std{self.l}"))
        values[id(self.relu)] = self.h

    def scores_loss(self, instrs, dtype, y, w, loss_name, loss):
        """The result layer's bias, the loss and dL/dS (its upstream gradient)."""
        dS = _Val("dS", self.s.shape, dtype)
        instrs.append(_Instr("scores_loss", [self.s, self.b_array, y, w, loss_name, (dS, loss)], [dS, loss],
                             label=f"scores_loss(s{self.l} + {self.b}, {loss_name}) -> loss, dS"))
        return dS

    def backward(self, instrs, values, upstream, grads, dtype, n):
        """This layer's VJPs from dJ/d(its output): ds (over the upstream's buffer), its parameters'
        gradients into `grads`, and dJ/dx (returned) when x is another layer's output."""
        l = self.l
        ds = _Val(f"ds{l}", (n, self.m), dtype)
        if self.relu is None:
            args, what = [upstream, None, None, None, None], "column sums"
        elif self.bn is None:
            args, what = [upstream, self.h, None, None, None], "relu mask, column sums"
        else:
            args, what = [upstream, self.h, self.xhat, self.gamma_array, self.inv], "relu mask, batch norm"
        dg = grads[self.gamma] if self.bn is not None else None
        dbt = grads[self.beta] if self.bn is not None else None
        instrs.append(_Instr("layer_backward", [*args, (dg, dbt, grads[self.b])], [ds], inplace={0: 0},
                             label=f"layer_backward({_name(upstream)}, {what}) -> ds{l}, d{self.b}"
                                   + (f", d{self.gamma}, d{self.beta}" if self.bn is not None else "")))
        x = values[id(self.x_node)]
        instrs.append(_Instr("matmul", [_T(ds), x, grads[self.W]], label=f"matmul(ds{l}.T, {_name(x)}) -> d{self.W}"))
        if isinstance(x, _In) or self.l == 1:
            return None
        dx = _Val(f"dh{l - 1}", x.shape, dtype)
        instrs.append(_Instr("matmul", [ds, self.W_array, dx], [dx], label=f"matmul(ds{l}, {self.W}) -> dh{l - 1}"))
        return dx


def _name(v):
    return v.name if isinstance(v, (_Val, _In)) else "?"


# ---- the other programs: one interface for the trainer -------------------------------------------
class GraphProgram:
    """The generic backward pass as a program (``MLP(compiled=False)``): each ``run`` builds the
    batch's graph, walks it backwards (``MLP.graph_loss_grad``) and copies the gradients into
    ``model.grads``. The definition the compiled ``Program`` is checked against."""

    def __init__(self, model):
        self.model = model

    def run(self, X, y, sample_weight=None, idx=None):
        m = self.model
        if idx is not None:
            X, y = X[idx], y[idx]
            sample_weight = None if sample_weight is None else sample_weight[idx]
        loss, grads = m.graph_loss_grad(X, y, sample_weight)
        for k, g in grads.items():
            m.grads[k][...] = g
        return loss


class LinearProgram:
    """The linear classifier's step as a program: ``backend.linear_step`` on the rows idx of X
    (on CuPy the fused kernel reads them where they lie, and its finish writes the loss, dW and db
    into a loss buffer and ``model.grads``: two launches, nothing allocated)."""

    def __init__(self, model):
        self.model = model
        self.loss = model.backend.xp.empty((), dtype=model.dtype)

    def run(self, X, y, sample_weight=None, idx=None):
        m = self.model
        m.backend.linear_step(X, idx, y, m.params["W"], m.params["b"], m.loss, m.buffers.get("x_mean"),
                              m.buffers.get("x_std"), sample_weight, out=(self.loss, m.grads["W"], m.grads["b"]))
        return self.loss

"""The computational graph: nodes, the generic forward listing and the generic backward pass.

Words as in the lecture: a node's *children* are the nodes it is computed from (its inputs),
its *parents* are the nodes computed from it (its consumers). The forward pass evaluates each
node from its children, ``y.value = f_y(values of y's children)``; the backward pass (BackOp)
gives each node the sum over its parents of parent-gradient x Jacobian,
``dJ/dc = sum_{u in parents(c)} dJ/du du/dc``. (HIPS/autograd calls inputs "parents"; we keep
the lecture's words.)

Jacobians are never built: each op registers one vector-Jacobian product per child
(``defvjp``, filled in by ``gpugrad.ops``), which computes ``g @ du/dc`` directly.

    >>> import numpy as np, gpugrad as gg
    >>> W = gg.tensor(np.ones((2, 3)), requires_grad=True)
    >>> J = (W * W).sum()
    >>> J.backward()
    >>> W.grad.tolist()
    [[2.0, 2.0, 2.0], [2.0, 2.0, 2.0]]
"""
from __future__ import annotations

import contextlib
from collections import namedtuple

import numpy as np

from ..backends import backend_for, is_array, move_to

__all__ = ["Tensor", "tensor", "no_grad", "is_grad_enabled", "record", "defvjp", "VJPS",
           "NodeInfo", "forward_order", "to_dot"]

# op name -> one VJP rule per child: rule(g, ans, *children_values, **params) -> dJ/dchild,
# where g = dJ/d(this node) and ans = this node's value. Filled in by gpugrad.ops.
VJPS: dict[str, tuple] = {}

_grad_enabled = True


def defvjp(op: str, *rules) -> None:
    """Register the local derivatives of ``op``: one VJP rule per child, in argument order."""
    VJPS[op] = rules


def is_grad_enabled() -> bool:
    """False inside ``no_grad()``."""
    return _grad_enabled


@contextlib.contextmanager
def no_grad():
    """Context manager (or decorator) that builds no graph: results do not require grad.

    Use it for evaluation and for updates of parameters in place.

        >>> import numpy as np, gpugrad as gg
        >>> W = gg.tensor(np.ones(3), requires_grad=True)
        >>> with gg.no_grad():
        ...     (W * 2).requires_grad
        False
    """
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        # Restore rather than set True, so nested no_grad blocks behave.
        _grad_enabled = previous


# ---- nodes --------------------------------------------------------------------------------

def _as_value(value):
    """``value`` as a numpy/cupy array of numbers; Python numbers and lists become numpy arrays."""
    if isinstance(value, np.generic):
        # numpy reductions of 0-d arrays return scalars; a node always holds an array.
        return np.asarray(value)
    if is_array(value):
        array = value
    elif isinstance(value, (bool, int, float, list, tuple)):
        array = np.asarray(value)  # Python floats become float64
    else:
        raise TypeError(f"tensor() takes a numpy.ndarray, cupy.ndarray, Python number or "
                        f"(nested) list of numbers, got {type(value).__name__}")
    if array.dtype.kind not in "biuf":
        raise TypeError(f"tensor() takes numbers, got a {type(value).__name__} with dtype "
                        f"{array.dtype}")
    return array


class Tensor:
    """A node of the computational graph: a value, its gradient, and how it was computed.

    Attributes:
        value: the numpy.ndarray or cupy.ndarray computed by the forward pass.
        grad: dJ/d(this node), same shape as ``value``, set by ``J.backward()``; None before.
            Like the lecture's ``s.Grad``, every node that requires grad keeps its gradient.
        requires_grad: whether gradients flow to this node (True when any child requires grad).

    Build one with ``gg.tensor(array, requires_grad=...)``; ops on tensors build the rest.
    Operands that are not Tensors (Python numbers, arrays) become constants.
    """

    # numpy defers to our reflected operators (array * t calls t.__rmul__).
    __array_ufunc__ = None
    __array_priority__ = 1000

    def __init__(self, value, requires_grad=False, *, name=None):
        self.value = _as_value(value.value if isinstance(value, Tensor) else value)
        if requires_grad and self.value.dtype.kind != "f":
            raise TypeError(f"only floating-point tensors can require grad, got dtype "
                            f"{self.value.dtype}")
        self.requires_grad = bool(requires_grad)
        self.grad = None
        self.name = name
        self._op = "param" if requires_grad else "input"
        self._children = ()  # the nodes this one is computed from (empty for a leaf)
        self._params = {}     # what the VJP rules need besides the values (axis, index, ...)

    # ---- array facts ----
    shape = property(lambda self: tuple(self.value.shape))
    ndim = property(lambda self: self.value.ndim)
    size = property(lambda self: self.value.size)
    dtype = property(lambda self: self.value.dtype)
    xp = property(lambda self: backend_for(self.value).xp, doc="numpy or cupy: the value's module")

    def item(self):
        """The value of a one-element tensor as a Python number."""
        return self.value.item()

    def __repr__(self):
        extra = f", op={self._op!r}" + (", requires_grad=True" if self.requires_grad else "")
        return f"Tensor({self.value!r}{extra})"

    # ---- the backward pass ----
    def backward(self, gradient=None):
        """The lecture's generic backward pass, BackOp, from this (result) node.

        The result node gets gradient 1 (or ``gradient``); then, in reverse topological order,
        each node's gradient is the sum over its parents of parent-gradient x Jacobian,
        ``dJ/dc += dJ/du du/dc``, each term a vector-Jacobian product from the op's registered
        rule (no Jacobian is ever materialised). A node is processed only after all its parents,
        the lecture's "AllGradientsComputed" condition. The walk is iterative, so graphs of any
        depth work. Only nodes that require grad get a gradient.

        Args:
            gradient: dJ/d(this node), shape ``self.shape``. May be omitted only for a
                one-element result (then it is 1), as in PyTorch.
        Raises:
            RuntimeError: the result does not require grad, or is not scalar and no gradient
                is given. ValueError: ``gradient`` has the wrong shape.

        Calling backward again (on this or another result) *adds* to ``.grad``, as in PyTorch,
        so a gradient can be summed over several losses; call ``zero_grad()`` (or set
        ``t.grad = None``) on the leaves before each training step.

            >>> import numpy as np, gpugrad as gg
            >>> x = gg.tensor(np.array([1.0, 2.0]), requires_grad=True)
            >>> (x * x).sum().backward()
            >>> x.grad.tolist()
            [2.0, 4.0]
        """
        grads = {id(self): self._seed_gradient(gradient)}
        for node in reversed(_toposort(self, follow=lambda c: c.requires_grad)):
            g = grads.pop(id(node))
            node._keep_grad(g)
            if not node._children:  # a leaf: nothing further down
                continue
            children_values = [c.value for c in node._children]
            for child, rule in zip(node._children, VJPS[node._op]):
                if child.requires_grad:
                    _accumulate(grads, child, rule(g, node.value, *children_values, **node._params))

    def _seed_gradient(self, gradient):
        """dJ/dJ: 1 for a scalar result, else the caller's ``gradient`` of the result's shape."""
        if not self.requires_grad:
            raise RuntimeError("backward(): this tensor does not require grad (no input it was "
                               "computed from has requires_grad=True)")
        xp = self.xp
        if gradient is None:
            if self.size != 1:
                raise RuntimeError(f"grad can be implicitly created only for scalar outputs; "
                                   f"got shape {self.shape} (pass gradient= of that shape)")
            return xp.ones(self.shape, dtype=self.dtype)
        g = move_to(xp, gradient.value if isinstance(gradient, Tensor) else gradient, self.dtype)
        if g.shape != self.value.shape:
            raise ValueError(f"backward(): gradient has shape {tuple(g.shape)} but the result "
                             f"has shape {self.shape}; they must match")
        return g

    def _keep_grad(self, g):
        """self.grad += g (a fresh array in the value's dtype, so it never aliases another)."""
        g = g.astype(self.value.dtype)
        self.grad = g if self.grad is None else self.grad + g

    def zero_grad(self):
        """Forget the accumulated gradient (``grad = None``)."""
        self.grad = None

    # ---- the forward listing ----
    def graph(self):
        """This result's graph in evaluation order (see ``forward_order``)."""
        return forward_order(self)

    def to_dot(self):
        """This result's graph as Graphviz DOT text (see ``to_dot``)."""
        return to_dot(self)

    # Operators (a + b, a @ b, a[i], a.sum(), a.T, ...) are the ops of gpugrad.ops, which
    # installs them on this class as HIPS autograd's numpy_boxes does: the ops build on the graph,
    # the graph does not import them.


def tensor(value, requires_grad=False, *, name=None):
    """A leaf node of the graph holding ``value``.

    Args:
        value: numpy.ndarray or cupy.ndarray (kept as is, no copy), a Python number or a
            (nested) list of numbers (made a numpy array; Python floats become float64).
        requires_grad: compute dJ/d(value) in ``J.backward()`` (floating dtypes only).
        name: optional label shown by ``graph()`` and ``to_dot()``.
    Raises:
        TypeError: anything else (the message names the type).

        >>> import gpugrad as gg
        >>> gg.tensor([1.0, 2.0], requires_grad=True).value.dtype
        dtype('float64')
    """
    return Tensor(value, requires_grad=requires_grad, name=name)


def record(op: str, value, children, **params) -> Tensor:
    """One step of the forward pass: the node ``y`` with ``y.value = f_y(children's values)``.

    The node remembers its children and ``params`` for the backward pass only when it
    requires grad (some child does, and we are not inside ``no_grad()``); otherwise it is a
    constant leaf and the graph behind it can be freed.
    """
    out = Tensor(value)
    out._op = "const"
    if _grad_enabled and any(c.requires_grad for c in children):
        out.requires_grad = True
        out._op, out._children, out._params = op, tuple(children), params
    return out


def _accumulate(grads, node, g):
    """grads[node] += g: a node used by several parents gets the sum of their contributions."""
    g = backend_for(g).xp.asarray(g)  # numpy returns scalars for 0-d results; keep arrays
    if tuple(g.shape) != node.shape:
        raise RuntimeError(f"internal error: the VJP of {node._op!r} returned shape "
                           f"{tuple(g.shape)} for a child of shape {node.shape}")
    key = id(node)
    # A new array rather than an in-place +=: the first contribution may alias the upstream
    # gradient or a caller's array.
    grads[key] = g if key not in grads else grads[key] + g


def _toposort(result, follow=lambda child: True):
    """Nodes reachable from ``result`` through children for which ``follow`` holds, each node
    after all of its children (evaluation order). Iterative depth-first search, so a deep
    graph never reaches Python's recursion limit."""
    order, seen = [], set()
    stack = [(result, False)]
    while stack:
        node, children_done = stack.pop()
        if children_done:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        # Reversed, so that children are listed in argument order.
        stack.extend((c, False) for c in reversed(node._children)
                     if id(c) not in seen and follow(c))
    return order


# ---- the generic forward pass, made visible ----------------------------------------------

NodeInfo = namedtuple("NodeInfo", "index op shape children parents name")
NodeInfo.__doc__ = """One node of a forward listing.

index: position in evaluation order; op: the operation ('param'/'input'/'const' for leaves);
shape: the value's shape; children: indices of the nodes it is computed from, in argument order
(all smaller than index); parents: indices of the nodes computed from it; name: the tensor's
name or None."""


class GraphListing(list):
    """A list of ``NodeInfo`` in evaluation order that prints as a table."""

    def __str__(self):
        lines = [f"{len(self)} nodes in evaluation order (children -> node -> parents):"]
        width = len(str(len(self))) + 2
        for n in self:
            label = n.op if n.name is None else f"{n.op} {n.name}"
            children = ", ".join(map(str, n.children)) or "-"
            parents = ", ".join(map(str, n.parents)) or "-"
            lines.append(f"  {f'[{n.index}]':>{width}} {label:<16} {str(n.shape):<10} "
                         f"children: {children:<8} parents: {parents}")
        return "\n".join(lines)


def forward_order(result: Tensor) -> GraphListing:
    """The lecture's generic forward pass for ``result``: its graph in evaluation order.

    Returns:
        a list of ``NodeInfo(index, op, shape, children, parents, name)``, each node after its
        children; the last entry is ``result``. Only recorded nodes have children (see
        ``record``); ``str()`` of the list is a readable table.

        >>> import numpy as np, gpugrad as gg
        >>> W = gg.tensor(np.ones((2, 3)), requires_grad=True, name="W")
        >>> [(n.op, n.shape, n.children) for n in ((W * W).sum()).graph()]
        [('param', (2, 3), ()), ('mul', (2, 3), (0, 0)), ('sum', (), (1,))]
    """
    nodes = _toposort(result)
    index = {id(node): i for i, node in enumerate(nodes)}
    parents = [[] for _ in nodes]
    for i, node in enumerate(nodes):
        for c in node._children:
            if i not in parents[index[id(c)]]:
                parents[index[id(c)]].append(i)
    return GraphListing(
        NodeInfo(i, node._op, node.shape, tuple(index[id(c)] for c in node._children),
                 tuple(parents[i]), node.name)
        for i, node in enumerate(nodes))


def to_dot(result: Tensor) -> str:
    """``result``'s graph as Graphviz DOT text (render with ``dot -Tpng``).

    One node line ``n<i> [label="op name\\nshape"]`` per node of ``forward_order(result)``,
    one edge ``n<child> -> n<parent>`` per argument (evaluation direction: from the nodes a
    value is computed from to the value). Leaves that require grad are drawn as boxes.

        >>> import numpy as np, gpugrad as gg
        >>> x = gg.tensor(np.ones(3), requires_grad=True)
        >>> print(gg.graph.to_dot(x.sum()))
        digraph forward {
          rankdir=LR;
          n0 [label="param\\n(3,)", shape=box];
          n1 [label="sum\\n()"];
          n0 -> n1;
        }
    """
    listing = forward_order(result)
    lines = ["digraph forward {", "  rankdir=LR;"]
    for n in listing:
        label = (n.op if n.name is None else f"{n.op} {n.name}").replace('"', '\\"')
        box = ", shape=box" if n.op == "param" else ""
        lines.append(f'  n{n.index} [label="{label}\\n{n.shape}"{box}];')
    lines += [f"  n{c} -> n{n.index};" for n in listing for c in n.children]
    lines.append("}")
    return "\n".join(lines)

"""The computational graph: node creation, the forward listing and the backward pass (BackOp).

Gradients are compared with closed forms; the finite-difference checks of every op are in
test_ops_gradcheck.py.
"""
import re

import numpy as np
import pytest

import gpugrad as gg
from gpugrad.engine.graph import forward_order, to_dot


def npy(backend, a):
    return np.asarray(backend.to_numpy(a))


# ---- tensors ------------------------------------------------------------------------------

def test_python_numbers_and_lists_become_numpy_arrays_with_floats_as_float64():
    assert gg.tensor(1.5).value.dtype == np.float64
    assert gg.tensor([[1.0, 2.0]]).value.shape == (1, 2)
    assert gg.tensor([1.0, 2.0]).value.dtype == np.float64
    assert isinstance(gg.tensor(3).value, np.ndarray)


def test_tensor_keeps_the_backend_array_without_copy(backend):
    x = backend.xp.ones((2, 3))
    t = gg.tensor(x, requires_grad=True)
    assert t.value is x and t.xp is backend.xp
    assert t.shape == (2, 3) and t.grad is None and t.requires_grad


@pytest.mark.parametrize("junk, type_name", [("abc", "str"), (object(), "object"),
                                             ({"a": 1}, "dict"), (None, "NoneType"),
                                             (["a", "b"], "list")])
def test_tensor_refuses_junk_naming_its_type(junk, type_name):
    with pytest.raises(TypeError, match=type_name):
        gg.tensor(junk)


def test_only_floating_tensors_can_require_grad():
    with pytest.raises(TypeError, match="floating"):
        gg.tensor(np.arange(3), requires_grad=True)


def test_operators_and_reflected_forms_compute_numpy_values(backend, rng):
    a_np = rng.standard_normal((3, 4)) + 3
    a = gg.tensor(backend.xp.asarray(a_np))
    cases = {
        "a + 2": (a + 2, a_np + 2), "2 + a": (2 + a, 2 + a_np),
        "a - 1": (a - 1, a_np - 1), "1 - a": (1 - a, 1 - a_np),
        "a * 2": (a * 2, a_np * 2), "2 * a": (2 * a, 2 * a_np),
        "a / 2": (a / 2, a_np / 2), "1 / a": (1 / a, 1 / a_np),
        "a ** 2": (a ** 2, a_np ** 2), "2 ** a": (2 ** a, 2 ** a_np),
        "-a": (-a, -a_np), "a.T": (a.T, a_np.T), "a @ a.T": (a @ a.T, a_np @ a_np.T),
        "a.sum(0)": (a.sum(axis=0), a_np.sum(axis=0)),
        "a.mean(1, keepdims)": (a.mean(axis=1, keepdims=True), a_np.mean(axis=1, keepdims=True)),
        "a.reshape(2, 6)": (a.reshape(2, 6), a_np.reshape(2, 6)),
        "a.reshape((4, 3))": (a.reshape((4, 3)), a_np.reshape((4, 3))),
        "a[1:, ::2]": (a[1:, ::2], a_np[1:, ::2]),
        "a[[0, 2]]": (a[[0, 2]], a_np[[0, 2]]),
    }
    for what, (got, want) in cases.items():
        np.testing.assert_allclose(npy(backend, got.value), want, rtol=1e-15, err_msg=what)


def test_python_constants_keep_a_float32_graph_float32(backend):
    a = gg.tensor(backend.xp.ones(3, dtype=np.float32), requires_grad=True)
    for out in (2 * a, a + 1.5, 1 - a, a / 3, a ** 2, 0.5 * (a ** 2).sum()):
        assert out.dtype == np.float32


def test_requires_grad_propagates_when_any_input_requires_it(backend):
    x = gg.tensor(backend.xp.ones(3), requires_grad=True)
    c = gg.tensor(backend.xp.ones(3))
    assert (x + c).requires_grad and (c * x).requires_grad
    assert not (c + c).requires_grad
    assert not (c * 2).requires_grad


def test_matmul_supports_vectors_and_matrices(backend, rng):
    M_np, v_np, u_np = rng.standard_normal((3, 4)), rng.standard_normal(4), rng.standard_normal(3)
    M, v, u = (gg.tensor(backend.xp.asarray(a)) for a in (M_np, v_np, u_np))
    np.testing.assert_allclose(npy(backend, (M @ v).value), M_np @ v_np, rtol=1e-14)
    np.testing.assert_allclose(npy(backend, (u @ M).value), u_np @ M_np, rtol=1e-14)
    np.testing.assert_allclose(npy(backend, (v @ v).value), v_np @ v_np, rtol=1e-14)
    assert (M @ v).shape == (3,) and (u @ M).shape == (4,) and (v @ v).shape == ()


def test_matmul_shape_error_names_both_shapes(backend):
    a = gg.tensor(backend.xp.ones((3, 4)))
    with pytest.raises(ValueError, match=r"matmul: shapes \(3, 4\) and \(5, 2\) do not match"):
        a @ backend.xp.ones((5, 2))
    with pytest.raises(ValueError, match=r"\(3, 4\) and \(3,\)"):
        a @ gg.tensor(backend.xp.ones(3))


# ---- the backward pass ---------------------------------------------------------------------

def test_grad_is_none_until_backward(backend):
    x = gg.tensor(backend.xp.ones(3), requires_grad=True)
    J = (x * 3).sum()
    assert x.grad is None
    J.backward()
    np.testing.assert_array_equal(npy(backend, x.grad), [3.0, 3.0, 3.0])


def test_fan_in_a_node_used_twice_gets_both_contributions(backend, rng):
    x_np = rng.standard_normal(5)
    x = gg.tensor(backend.xp.asarray(x_np), requires_grad=True)
    (x * x).sum().backward()           # d/dx sum x^2 = x + x
    np.testing.assert_allclose(npy(backend, x.grad), 2 * x_np, rtol=1e-15)
    x.zero_grad()
    (x + x + x).sum().backward()
    np.testing.assert_allclose(npy(backend, x.grad), np.full(5, 3.0))


def test_fan_out_W_in_score_and_regulariser_sums_both_gradients(backend, rng):
    """The lecture's J = l(Wx + b) + lam sum W^2: W has two parents, z and r."""
    C, d, lam = 4, 6, 0.3
    W_np, x_np, b_np = rng.standard_normal((C, d)), rng.standard_normal(d), rng.standard_normal(C)
    xp, y = backend.xp, 2

    def grad_W(with_loss, with_reg):
        W = gg.tensor(xp.asarray(W_np), requires_grad=True)
        J = 0
        if with_loss:
            J = J + gg.cross_entropy(W @ xp.asarray(x_np) + xp.asarray(b_np), y)
        if with_reg:
            J = J + lam * (W ** 2).sum()
        J.backward()
        return npy(backend, W.grad)

    both, loss_only, reg_only = grad_W(True, True), grad_W(True, False), grad_W(False, True)
    np.testing.assert_allclose(reg_only, 2 * lam * W_np, rtol=1e-14)
    np.testing.assert_allclose(both, loss_only + reg_only, rtol=1e-13, atol=1e-15)


def test_backward_twice_accumulates_and_zero_grad_resets(backend):
    x = gg.tensor(backend.xp.asarray([1.0, 2.0]), requires_grad=True)
    J = (x * x).sum()
    J.backward()
    J.backward()
    np.testing.assert_array_equal(npy(backend, x.grad), [4.0, 8.0])
    x.zero_grad()
    assert x.grad is None
    J.backward()
    np.testing.assert_array_equal(npy(backend, x.grad), [2.0, 4.0])


def test_backward_on_a_non_scalar_raises_like_pytorch(backend):
    x = gg.tensor(backend.xp.ones(3), requires_grad=True)
    with pytest.raises(RuntimeError, match=r"grad can be implicitly created only for scalar "
                                           r"outputs; got shape \(3,\)"):
        (x * 2).backward()


def test_backward_with_an_explicit_gradient_of_the_result_shape(backend):
    x = gg.tensor(backend.xp.ones(3), requires_grad=True)
    y = x * 3
    y.backward(gradient=backend.xp.asarray([1.0, 10.0, 100.0]))
    np.testing.assert_array_equal(npy(backend, x.grad), [3.0, 30.0, 300.0])
    with pytest.raises(ValueError, match=r"\(2,\).*\(3,\)"):
        y.backward(gradient=backend.xp.ones(2))


def test_backward_without_any_input_requiring_grad_raises(backend):
    with pytest.raises(RuntimeError, match="does not require grad"):
        (gg.tensor(backend.xp.ones(3)) * 2).sum().backward()


def test_only_nodes_that_require_grad_get_gradients(backend):
    x = gg.tensor(backend.xp.ones(3), requires_grad=True)
    c = gg.tensor(backend.xp.ones(3))
    s = x * c
    s.sum().backward()
    assert c.grad is None
    assert x.grad is not None and s.grad is not None  # every grad-requiring node keeps its own


def test_a_long_chain_back_propagates_without_recursion(backend):
    """20,000 nodes (numpy; 5,000 on the emulated device, whose every array operation is a guarded
    allocation): far past Python's recursion limit (1,000), so a recursive walk would fail."""
    x = gg.tensor(backend.xp.asarray([1.0, 2.0]), requires_grad=True)
    y, c, n = x, 1.0001, (20000 if backend.xp is np else 5000)
    for _ in range(n):
        y = y * c
    assert len(forward_order(y)) == 2 * n + 1  # x, then a mul and its constant per step
    y.sum().backward()
    np.testing.assert_allclose(npy(backend, x.grad), [c ** n, c ** n], rtol=1e-10)
    assert to_dot(y).count("->") == 2 * n


def test_no_grad_builds_no_graph_and_restores_on_exit(backend):
    x = gg.tensor(backend.xp.ones(3), requires_grad=True)
    with gg.no_grad():
        y = x * 2
        with gg.no_grad():
            pass
        z = x * 2  # still disabled after the nested block
    assert not y.requires_grad and not z.requires_grad and len(y.graph()) == 1
    assert (x * 2).requires_grad
    with pytest.raises(KeyError):
        with gg.no_grad():
            raise KeyError
    assert (x * 2).requires_grad


def test_bias_gradient_is_unbroadcast_to_its_shape(backend, rng):
    """S = X W^T + b with b (C,): dJ/db sums dJ/dS over the batch (rows)."""
    n, d, C = 5, 3, 4
    xp = backend.xp
    X = xp.asarray(rng.standard_normal((n, d)))
    R_np = rng.standard_normal((n, C))
    for b_shape, want in (((C,), R_np.sum(axis=0)), ((1, C), R_np.sum(axis=0, keepdims=True)),
                          ((), R_np.sum())):
        W = gg.tensor(xp.asarray(rng.standard_normal((C, d))), requires_grad=True)
        b = gg.tensor(xp.zeros(b_shape), requires_grad=True)
        ((X @ W.T + b) * xp.asarray(R_np)).sum().backward()
        assert b.grad.shape == b_shape
        np.testing.assert_allclose(npy(backend, b.grad), want, rtol=1e-14)


def test_integer_array_indexing_scatter_adds_repeated_indices(backend):
    x = gg.tensor(backend.xp.asarray([1.0, 2.0, 3.0]), requires_grad=True)
    x[backend.xp.asarray([0, 0, 2])].sum().backward()
    np.testing.assert_array_equal(npy(backend, x.grad), [2.0, 0.0, 1.0])
    S = gg.tensor(backend.xp.zeros((2, 3)), requires_grad=True)
    S[np.array([0, 1, 1]), np.array([2, 0, 0])].sum().backward()  # numpy indices on any backend
    np.testing.assert_array_equal(npy(backend, S.grad), [[0, 0, 1], [2, 0, 0]])


# ---- the forward listing and DOT ------------------------------------------------------------

def _lecture_graph(backend, rng):
    """J = cross_entropy(W x + b, y) + lam * sum(W ** 2), the lecture's graph."""
    xp = backend.xp
    W = gg.tensor(xp.asarray(rng.standard_normal((3, 4))), requires_grad=True, name="W")
    b = gg.tensor(xp.zeros(3), requires_grad=True, name="b")
    x = gg.tensor(xp.asarray(rng.standard_normal(4)), name="x")
    return gg.cross_entropy(W @ x + b, 1) + 0.01 * (W ** 2).sum()


def test_forward_order_lists_each_node_after_its_children(backend, rng):
    J = _lecture_graph(backend, rng)
    listing = J.graph()
    assert [n.index for n in listing] == list(range(len(listing)))
    assert listing[-1].op == "add" and listing[-1].shape == () and listing[-1].parents == ()
    for n in listing:
        assert all(c < n.index for c in n.children)
        assert all(p > n.index for p in n.parents)
        for c in n.children:
            assert n.index in listing[c].parents
    ops = [n.op for n in listing]
    for op in ("param", "input", "matmul", "add", "cross_entropy", "pow", "sum", "mul"):
        assert op in ops
    W = next(n for n in listing if n.name == "W")
    assert W.shape == (3, 4) and len(W.parents) == 2  # W feeds the score and the regulariser
    text = str(listing)
    assert "matmul" in text and "cross_entropy" in text and str(len(listing)) in text


def test_to_dot_has_one_node_line_per_node_and_one_edge_per_argument(backend, rng):
    J = _lecture_graph(backend, rng)
    dot = J.to_dot()
    listing = forward_order(J)
    lines = dot.strip().splitlines()
    assert lines[0].startswith("digraph") and lines[-1] == "}"
    node_lines = [ln for ln in lines if re.fullmatch(r'\s*n\d+ \[label="[^"]*".*\];', ln)]
    edge_lines = [ln for ln in lines if re.fullmatch(r"\s*n\d+ -> n\d+;", ln)]
    assert len(node_lines) == len(listing)
    assert len(edge_lines) == sum(len(n.children) for n in listing)
    assert 'label="matmul\\n(3,)"' in dot
    for ln in edge_lines:  # every edge goes from an earlier (child) node to a later (parent)
        child, parent = map(int, re.findall(r"n(\d+)", ln))
        assert child < parent

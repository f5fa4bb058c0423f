"""The compiled step (gpugrad/engine/compiled.py) against its definition, the generic backward pass: bit
for bit in float64 on numpy (gradients, loss, cost, batch-norm running averages, whole training
runs with a last smaller batch, sample weights and lam); against PyTorch's autograd for the MLP
with batch normalisation; on the emulated CUDA backend within float32 rounding of numpy."""
import copy

import numpy as np
import pytest

import gpugrad as gg
from gpugrad.training.models import MLP

CONFIGS = [  # (hidden, batchnorm, loss, weighted, lam)
    ((6, 5), True, "softmax", False, 0.0),
    ((6, 5), True, "svm", True, 0.03),
    ((7,), False, "softmax", True, 0.03),
    ((4, 4, 3), True, "softmax", True, 0.0),
    ((5, 6), False, "svm", False, 0.01),
]
IDS = [f"{'-'.join(map(str, h))}{'-bn' if bn else ''}-{loss}{'-weighted' if w else ''}-lam{lam}"
       for h, bn, loss, w, lam in CONFIGS]


def _model(rng, d, C, hidden, batchnorm, loss, dtype="float64", backend="numpy", **kw):
    """An MLP moved off the symmetric start (gamma 1, beta 0, biases 0)."""
    model = MLP(d, C, hidden, loss, batchnorm=batchnorm, dtype=dtype, backend=backend,
                seed=int(rng.integers(1000)), **kw)
    for p in model.params.values():
        p += model.backend.asarray(rng.standard_normal(p.shape) * 0.1, dtype=model.dtype)
    return model


def _pair(rng, d, C, hidden, batchnorm, loss, **kw):
    """A compiled numpy MLP and its graph twin with the same parameters."""
    model = _model(rng, d, C, hidden, batchnorm, loss, **kw)
    graph = copy.deepcopy(model)
    graph.compiled = False
    return model, graph


def _same(a, b):
    return np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("hidden,batchnorm,loss,weighted,lam", CONFIGS, ids=IDS)
def test_compiled_step_equals_the_generic_backward_pass_bit_for_bit(rng, hidden, batchnorm, loss, weighted, lam):
    """Three steps (the running averages carry over) at two batch sizes: the same cost, loss,
    gradients and running averages, to the last bit, as the graph and BackOp."""
    d, C = 5, 4
    model, graph = _pair(rng, d, C, hidden, batchnorm, loss)
    for n in (9, 9, 4):
        X, y = rng.standard_normal((n, d)), rng.integers(0, C, n)
        w = rng.uniform(0.2, 2.0, n) if weighted else None
        got, want = model.loss_grad(X, y, lam, w), graph.loss_grad(X, y, lam, w)
        assert _same(got[0], want[0]) and _same(got[1], want[1])
        assert got[2].keys() == want[2].keys()
        for k in want[2]:
            assert _same(got[2][k], want[2][k]), k
        for k in model.buffers:
            assert _same(model.buffers[k], graph.buffers[k]), k


def test_normalised_uint8_input_is_compiled_too(rng):
    """uint8 pixels with the model's x_mean / x_std: the compiled step gathers and normalises them
    as the graph path does."""
    X = rng.integers(0, 256, (12, 6)).astype(np.uint8)
    model, graph = _pair(rng, 6, 3, (5,), True, "softmax", x_mean=X.mean(0), x_std=X.std(0) + 1)
    y = rng.integers(0, 3, 12)
    got, want = model.loss_grad(model.prepare(X), y, 0.01), graph.loss_grad(graph.prepare(X), y, 0.01)
    assert _same(got[0], want[0]) and all(_same(got[2][k], want[2][k]) for k in want[2])


@pytest.mark.parametrize("optimizer", ["momentum", "nesterov", "adam", "sgd"])
def test_training_compiled_and_by_the_graph_ends_bit_identical(rng, optimizer):
    """Two epochs of 107 rows in batches of 20 (the last batch 7 rows), sample weights, lam: the
    trainer's compiled steps and fused updates give the graph path's weights, running averages
    and history, to the last bit."""
    d, C, n = 6, 3, 107
    X, y, w = rng.standard_normal((n, d)), rng.integers(0, C, n), rng.uniform(0.5, 2, n)
    runs = []
    for compiled in (True, False):
        model = MLP(d, C, (8, 5), batchnorm=True, dtype="float64", backend="numpy", seed=3, compiled=compiled)
        opt = gg.optim.make_optimizer(optimizer, lr=0.05)
        t = gg.Trainer(model, opt, epochs=2, batch_size=20, lam=0.01, progress=False, validation_fraction=0.1)
        history = t.fit(X, y, sample_weight=w)
        runs.append((model, [{k: v for k, v in r.items() if k != "seconds"} for r in history.rows]))
    (a, ha), (b, hb) = runs
    assert ha == hb
    for k in a.params:
        assert _same(a.params[k], b.params[k]), k
    for k in a.buffers:
        assert _same(a.buffers[k], b.buffers[k]), k


def test_fused_update_equals_the_per_parameter_update(rng):
    """An optimiser's fused step over a packed model equals its dict step parameter by parameter,
    for every rule, with the penalty's gradient added to the weights only."""
    for name in ("sgd", "momentum", "nesterov", "adam"):
        model = MLP(4, 3, (5,), batchnorm=True, dtype="float64", backend="numpy", seed=1)
        twin = copy.deepcopy(model)
        grads = {k: rng.standard_normal(p.shape) for k, p in model.params.items()}
        opt, opt2 = gg.optim.make_optimizer(name, lr=0.1), gg.optim.make_optimizer(name, lr=0.1)
        opt.init(model.params)
        opt2.init(twin.params)
        slots = opt.pack(model.layout, model.flat_params)
        for _ in range(3):
            for k, g in grads.items():
                model.grads[k][...] = g
            opt.fused_step(model.backend, model.flat_params, model.flat_grads, slots, lam=0.05, n_decay=model.n_decay)
            opt2.step(twin.params, {k: g + (0.1 * twin.params[k] if k.startswith("W") else 0) for k, g in grads.items()})
        for k in model.params:
            np.testing.assert_allclose(model.params[k], twin.params[k], rtol=1e-14, atol=1e-15, err_msg=f"{name} {k}")


def test_matches_pytorch_autograd_with_batch_norm(rng):
    """The compiled step's loss, gradients and running averages against torch.nn.Sequential of
    Linear, BatchNorm1d and ReLU (float64), with the same parameters."""
    torch = pytest.importorskip("torch")
    d, C, n, hidden = 7, 4, 11, (6, 5)
    model = _pair(rng, d, C, hidden, True, "softmax")[0]
    layers, sizes = [], (d, *hidden, C)
    for l in range(1, len(sizes)):
        lin = torch.nn.Linear(sizes[l - 1], sizes[l]).double()
        lin.weight.data, lin.bias.data = (torch.tensor(model.params[f"W{l}"].copy()),
                                          torch.tensor(model.params[f"b{l}"].copy()))
        layers.append(lin)
        if l < len(sizes) - 1:
            bn = torch.nn.BatchNorm1d(sizes[l], momentum=model.bn_momentum, eps=1e-5).double()
            bn.weight.data, bn.bias.data = (torch.tensor(model.params[f"gamma{l}"].copy()),
                                            torch.tensor(model.params[f"beta{l}"].copy()))
            layers += [bn, torch.nn.ReLU()]
    net = torch.nn.Sequential(*layers).train()
    X, y = rng.standard_normal((n, d)), rng.integers(0, C, n)
    loss = torch.nn.functional.cross_entropy(net(torch.tensor(X)), torch.tensor(y))
    loss.backward()
    J, L, grads = model.loss_grad(X, y, 0.0)
    np.testing.assert_allclose(float(L), loss.item(), rtol=1e-13)
    theirs = {}
    for l, lin in enumerate([m for m in net if isinstance(m, torch.nn.Linear)], start=1):
        theirs[f"W{l}"], theirs[f"b{l}"] = lin.weight.grad, lin.bias.grad
    for l, bn in enumerate([m for m in net if isinstance(m, torch.nn.BatchNorm1d)], start=1):
        theirs[f"gamma{l}"], theirs[f"beta{l}"] = bn.weight.grad, bn.bias.grad
        np.testing.assert_allclose(model.buffers[f"running_mean{l}"], bn.running_mean.numpy(), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(model.buffers[f"running_var{l}"], bn.running_var.numpy(), rtol=1e-12)
    for k, g in theirs.items():
        if k.startswith("b") and f"gamma{k[1:]}" in model.params:  # a bias before batch norm: 0, rounding noise
            assert np.abs(grads[k]).max() < 1e-14 and g.abs().max() < 1e-14, k
        else:
            np.testing.assert_allclose(grads[k], g.numpy(), rtol=1e-10, atol=1e-14, err_msg=k)


def test_schedule_reuses_buffers_by_liveness():
    """The 3-layer network with batch norm: 17 instructions; the two hidden layers' pre-activations
    share a buffer, and the backward pass's dh values take over buffers whose values are dead."""
    model = MLP(8, 3, (5, 5), batchnorm=True, backend="numpy", dtype="float64")
    prog = model.program(10, np.float64, weighted=False, gather=True)
    text = str(prog)
    assert "gather_rows" in text and text.count("layer_backward") == 3 and text.count("matmul") == 8
    assert len(prog.schedule) == 14 + 1
    # values: x, y, s1, h1, xhat1, inv1, s2, h2, xhat2, inv2, s3, dS, loss, dh1, dh2 (15), of which
    # s2 takes s1's buffer and dh2 a dead one, dh1 another dead one
    assert prog.nbuffers <= 12
    written = {v.name: v.buffer for ins in prog._forward + prog._backward for v in ins.outs}
    assert written["s1"] is written["s2"] and written["s1"] is not written["h1"]


def test_a_graph_without_a_compiled_form_is_refused_naming_it():
    from gpugrad.engine.compiled import _layers, trace
    from gpugrad.engine.ops import linear, relu
    params = {"W1": np.ones((3, 4)), "b1": np.zeros(3), "W2": np.ones((3, 3)), "b2": np.zeros(3),
              "W3": np.ones((2, 3)), "b3": np.zeros(2)}

    def layer(p, h, l):
        return relu(linear(h, p[f"W{l}"], p[f"b{l}"]))

    cases = {
        "no instruction for the chain linear -> exp": lambda p, x: linear(gg.exp(linear(x, p["W1"], p["b1"])),
                                                                          p["W3"], p["b3"]),
        "the graph's result to be a linear node": lambda p, x: layer(p, x, 1),
        "tied weights": lambda p, x: linear(layer(p, layer(p, layer(p, x, 1), 2), 2), p["W3"], p["b3"]),
        "no instruction for the chain linear -> add": lambda p, x: (
            linear(layer(p, x, 1), p["W3"], p["b3"]) + linear(layer(p, x, 1), p["W3"], p["b3"])),
    }
    for message, fn in cases.items():
        nodes, names, buffers, x = trace(lambda p, x, b: fn(p, x), params, {}, (2, 4), np.float64)
        with pytest.raises(NotImplementedError, match=message):
            _layers(nodes, names, x, params, buffers)


def test_replaced_parameters_are_packed_again(rng):
    """A parameter array replaced (not updated in place) is picked up: the model packs again and
    its programs are rebuilt on the new arrays."""
    model, graph = _pair(rng, 4, 3, (5,), True, "softmax")
    X, y = rng.standard_normal((6, 4)), rng.integers(0, 3, 6)
    model.loss_grad(X, y, 0.0)
    new = rng.standard_normal(model.params["W1"].shape)
    model.params["W1"] = new.copy()
    graph.params["W1"][...] = new
    got, want = model.loss_grad(X, y, 0.0), graph.loss_grad(X, y, 0.0)
    assert all(_same(got[2][k], want[2][k]) for k in want[2])
    assert np.shares_memory(model.params["W1"], model.flat_params)


# ---- the CUDA backend (a GPU or the emulator) -------------------------------------------------------
def _cuda(backend):
    if backend.name == "numpy":
        pytest.skip("the CUDA backend's kernels against numpy")
    return backend


@pytest.mark.parametrize("hidden,batchnorm,loss,C", [((16, 16), True, "softmax", 10), ((12,), False, "svm", 40),
                                                     ((8, 9), True, "svm", 5)])
def test_cuda_compiled_step_matches_numpy(backend, rng, hidden, batchnorm, loss, C):
    """float32 on the CUDA backend's fused kernels against the float64 numpy step on the same
    float32 values, with sample weights; C = 40 takes two scores a lane."""
    be = _cuda(backend)
    d, n = 24, 37
    model = _model(rng, d, C, hidden, batchnorm, loss, dtype="float32", backend=be)
    ref = MLP(d, C, hidden, loss, batchnorm=batchnorm, dtype="float64", backend="numpy")
    ref.load_state({k: v.astype(np.float64) for k, v in model.state().items()})
    X, y, w = rng.standard_normal((n, d)).astype(np.float32), rng.integers(0, C, n), rng.uniform(0.5, 2, n)
    J, L, grads = model.loss_grad(be.asarray(X), be.asarray(y), 0.01, be.asarray(w))  # float64 weights: converted
    J_r, L_r, grads_r = ref.loss_grad(X.astype(np.float64), y, 0.01, w.astype(np.float32).astype(np.float64))
    assert abs(float(J) - J_r) <= 1e-5 * abs(J_r)
    for k, g in grads_r.items():
        scale = np.linalg.norm(g) if not (batchnorm and k.startswith("b") and f"gamma{k[1:]}" in ref.params) \
            else np.linalg.norm(grads_r[f"beta{k[1:]}"])  # a bias before batch norm: 0, rounding noise
        assert np.linalg.norm(be.to_numpy(grads[k]) - g) <= 3e-5 * scale, k
    for k in ref.buffers:
        np.testing.assert_allclose(be.to_numpy(model.buffers[k]), ref.buffers[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["mlp", "linear"])
def test_cuda_training_matches_numpy(backend, rng, kind):
    """Two epochs through the trainer (momentum, lam, a last smaller batch) on the CUDA backend's
    steps: the numpy run's weights and per-epoch costs within float32 rounding."""
    be = _cuda(backend)
    d, C, n = 20, 4, 130
    X, y = rng.standard_normal((n, d)).astype(np.float32), rng.integers(0, C, n)
    runs = []
    for b in (be, "numpy"):
        model = (MLP(d, C, (12,), batchnorm=True, backend=b, seed=2) if kind == "mlp"
                 else gg.models.LinearClassifier(d, C, backend=b, seed=2))
        t = gg.Trainer(model, gg.optim.SGD(0.05, momentum=0.9), epochs=2, batch_size=50, lam=0.01, progress=False,
                       eval_train=False)
        history = t.fit(X, y)
        runs.append((model, history))
    (m, h), (r, hr) = runs
    for k in r.params:
        np.testing.assert_allclose(be.to_numpy(m.params[k]), r.params[k], rtol=1e-4, atol=2e-5, err_msg=k)
    np.testing.assert_allclose(h["cost"], hr["cost"], rtol=1e-5)


def test_a_copy_trains_on_its_own_parameters(rng):
    """A deep copy (or an unpickled model) keeps the parameters, packed anew in a buffer of its
    own: training the copy and the original from there ends at the same weights, and neither
    touches the other's."""
    import pickle
    X, y = rng.standard_normal((60, 5)), rng.integers(0, 3, 60)
    model = MLP(5, 3, (6,), batchnorm=True, dtype="float64", backend="numpy", seed=1)
    t = gg.Trainer(model, gg.optim.SGD(0.1, momentum=0.9), epochs=1, batch_size=25, progress=False)
    t.fit(X, y)
    copies = [copy.deepcopy(t), pickle.loads(pickle.dumps(t))]
    before = {k: v.copy() for k, v in model.params.items()}
    for c in copies:
        assert not np.shares_memory(c.model.flat_params, model.flat_params)
        c.epochs = 2
        c.fit(X, y)
    assert all(_same(model.params[k], before[k]) for k in before)
    t.epochs = 2
    t.fit(X, y)
    for c in copies:
        for k in model.params:
            assert _same(c.model.params[k], model.params[k]), k


def test_cuda_steps_launch_a_fixed_set_and_neither_allocate_nor_read_back(emulated_cuda, rng):
    """On the emulated CUDA backend, counted (tests/emu/cost.py) after the first step: the linear
    classifier's trainer step is 3 kernels (the fused step on the batch's rows, its finish, the
    update), the MLP's 16 launches (a gather, 8 cuBLAS products, 2 layer forwards, the loss, 3
    layer backwards, the update); no device allocation, no host synchronisation, no upload; the
    last, smaller batch costs the same."""
    E = emulated_cuda
    be = gg.get_backend("cupy")
    X, y = be.asarray(rng.standard_normal((250, 40)).astype(np.float32)), be.asarray(rng.integers(0, 10, 250))
    mlp = ["gg_gather_f32", "cupy.gemm", "gg_layer_fwd_f32", "cupy.gemm", "gg_layer_fwd_f32", "cupy.gemm",
           "gg_scores_loss_f32_k1", "gg_layer_bwd_f32", "cupy.gemm", "cupy.gemm", "gg_layer_bwd_f32", "cupy.gemm",
           "cupy.gemm", "gg_layer_bwd_f32", "cupy.gemm", "gg_update_f32"]
    for kind, per_step in (("linear", ["gg_linear_f32_c10", "gg_linear_finish", "gg_update_f32"]), ("mlp", mlp)):
        model = (MLP(40, 10, (16, 16), batchnorm=True, backend=be) if kind == "mlp"
                 else gg.models.LinearClassifier(40, 10, backend=be))
        t = gg.Trainer(model, gg.optim.SGD(0.01, momentum=0.9), epochs=1, batch_size=100, lam=1e-3, progress=False,
                       eval_train=False)
        t.optimizer.init(model.params)
        step = t._steps(X, None, 3)
        record, order = be.xp.empty((2, 3), dtype=np.float64), be.asarray(rng.permutation(250))
        step(X, y, None, order, 0, record)  # the first step: its scratch is made here
        with E.counting() as cost:
            for i in (1, 2):  # a full batch, then the last one (50 rows): its program was made with the first
                step(X, y, None, order, i, record)
        assert cost.kernels == per_step * 2, kind
        assert (cost.syncs, cost.allocations, cost.uploads) == (0, 0, 0), (kind, cost.as_dict())
        assert np.isfinite(record.get()).all()


def test_cuda_fallbacks_match_numpy(backend, rng):
    """What the kernels do not take goes the reference's way on the device: a gather from a
    strided X, the loss of rows past 1024 classes (the bias added, then the row-loss kernels)."""
    be = _cuda(backend)
    X, idx, y = rng.standard_normal((12, 20)), rng.integers(0, 12, 5), rng.integers(0, 7, 12)
    Xb = be.xp.empty((5, 10), dtype=np.float64)
    yb = be.xp.empty(5, dtype=np.int64)
    be.gather_rows(be.asarray(X)[:, ::2], be.asarray(idx), None, None, be.asarray(y), None, (Xb, yb, None))
    assert _same(be.to_numpy(Xb), X[idx, ::2]) and _same(be.to_numpy(yb), y[idx])
    n, C = 5, 1100
    S, b, y = rng.standard_normal((n, C)), rng.standard_normal(C), rng.integers(0, C, n)
    w = rng.uniform(0.5, 2, n)
    dS, L = be.xp.empty((n, C), dtype=np.float64), be.xp.empty((), dtype=np.float64)
    be.scores_loss(be.asarray(S), be.asarray(b), be.asarray(y), be.asarray(w), "softmax", (dS, L))
    r_dS, r_L = np.empty((n, C)), np.empty(())
    gg.get_backend("numpy").scores_loss(S.copy(), b, y, w, "softmax", (r_dS, r_L))
    np.testing.assert_allclose(be.to_numpy(dS), r_dS, rtol=1e-12, atol=1e-18)
    assert abs(float(be.to_numpy(L)) - float(r_L)) <= 1e-12 * abs(float(r_L))


def test_a_batch_of_one_row_with_batch_norm_is_refused_as_the_graph_refuses_it(rng):
    """The compiled step traces at two rows; a program for one row says what batch_norm says."""
    model, graph = _pair(rng, 4, 3, (5,), True, "softmax")
    X, y = rng.standard_normal((1, 4)), np.array([2])
    for m in (model, graph):
        with pytest.raises(ValueError, match=r"more than 1 value per channel when training.*\(1, 5\)"):
            m.loss_grad(X, y, 0.0)
    t = gg.Trainer(model, "sgd", epochs=1, batch_size=5, progress=False)
    with pytest.raises(ValueError, match="more than 1 value per channel"):  # 11 rows: a last batch of 1
        t.fit(rng.standard_normal((11, 4)), rng.integers(0, 3, 11))

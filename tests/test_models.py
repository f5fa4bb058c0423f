"""The models: gradients against central differences in float64, the fused step against the public
linear_grad, the emulated CUDA backend against numpy, saving and loading."""
import numpy as np
import pytest

import gpugrad as gg
from gpugrad.training.models import MLP, LinearClassifier, load_model, save_model


def numerical_grads(model, X, y, lam, h=1e-6, w=None):
    """Central differences of the model's training cost with respect to every parameter entry."""
    out = {}
    for name, p in model.params.items():
        g = np.zeros_like(p)
        flat, gflat = p.reshape(-1), g.reshape(-1)
        for j in range(flat.size):
            old = flat[j]
            flat[j] = old + h
            plus = float(model.loss_grad(X, y, lam, w)[0])
            flat[j] = old - h
            minus = float(model.loss_grad(X, y, lam, w)[0])
            flat[j] = old
            gflat[j] = (plus - minus) / (2 * h)
        out[name] = g
    return out


def rel_err(a, b):
    """||a - b|| / ||b||: entry-wise ratios blow up on entries near 0, where central differences
    keep only their O(h^2) and rounding error; a wrong rule is off by O(1) either way."""
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


@pytest.mark.parametrize("loss", ["softmax", "svm"])
@pytest.mark.parametrize("layers", ["linear", "mlp", "mlp-batchnorm", "mlp-3-batchnorm", "mlp-3-batchnorm-graph"])
def test_gradients_match_central_differences_in_float64(rng, loss, layers):
    n, d, C = 7, 5, 4
    X, y = rng.standard_normal((n, d)), rng.integers(0, C, n)
    w = rng.uniform(0.2, 2.0, n)
    if layers == "linear":
        model = LinearClassifier(d, C, loss, dtype="float64", backend="numpy", init_scale=0.5,
                                 x_mean=rng.standard_normal(d), x_std=rng.uniform(0.5, 2, d))
    else:
        hidden = (6, 5) if layers.startswith("mlp-3") else (6,)
        model = MLP(d, C, hidden, loss, batchnorm="batchnorm" in layers, dtype="float64",
                    backend="numpy", seed=int(rng.integers(1000)), compiled=not layers.endswith("graph"))
        for k, p in model.params.items():  # move off the symmetric start (gamma 1, beta 0, b 0)
            p += rng.standard_normal(p.shape) * 0.1
    _, _, grads = model.loss_grad(X, y, 0.03, w)
    numeric = numerical_grads(model, X, y, 0.03, w=w)
    for name in model.params:
        if f"gamma{name[1:]}" in model.params and name.startswith("b"):
            # A bias before batch norm cancels out of the cost: its gradient is 0 (rounding noise).
            assert np.abs(grads[name]).max() < 1e-12 and np.abs(numeric[name]).max() < 1e-8, name
            continue
        assert rel_err(grads[name], numeric[name]) < 1e-7, name


def test_linear_model_step_is_the_public_fused_step(rng):
    X, y = rng.integers(0, 256, (30, 12)).astype(np.uint8), rng.integers(0, 3, 30)
    mean, std = X.mean(0), X.std(0) + 1
    m = LinearClassifier(12, 3, dtype="float64", backend="numpy", x_mean=mean, x_std=std, init_scale=0.1)
    cost, loss, grads = m.loss_grad(m.prepare(X), y, 0.01)
    J, dW, db = gg.linear_grad(X, y, m.params["W"], m.params["b"], 0.01, x_mean=mean, x_std=std)
    assert np.isclose(cost, J, rtol=1e-13)
    assert np.isclose(loss, J - 0.01 * (m.params["W"] ** 2).sum(), rtol=1e-12)
    np.testing.assert_allclose(grads["W"], dW, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(grads["b"], db, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_cuda_backend_step_matches_numpy(cuda_backend, rng, kind):
    """On the emulated CUDA backend (fused kernels) and on a GPU: the same step as numpy's, in float32."""
    n, d, C = 40, 24, 5
    X, y = rng.integers(0, 256, (n, d)).astype(np.uint8), rng.integers(0, C, n)
    mean, std = X.mean(0), X.std(0) + 1
    make = (lambda be: LinearClassifier(d, C, backend=be, x_mean=mean, x_std=std, init_scale=0.1)) \
        if kind == "linear" else (lambda be: MLP(d, C, (16,), batchnorm=True, backend=be, x_mean=mean, x_std=std))
    ref, got = make("numpy"), make(cuda_backend)
    cost_r, _, g_r = ref.loss_grad(ref.prepare(X), y, 0.01)
    cost_g, _, g_g = got.loss_grad(got.prepare(X), got.backend.asarray(y), 0.01)
    to_np = got.backend.to_numpy
    assert abs(float(to_np(cost_g)) - float(cost_r)) <= 1e-5 * abs(float(cost_r))
    for k in g_r:
        assert np.linalg.norm(to_np(g_g[k]) - g_r[k]) <= 1e-4 * max(np.linalg.norm(g_r[k]), 1e-3), k
    np.testing.assert_allclose(to_np(got.scores(got.prepare(X))), ref.scores(ref.prepare(X)), rtol=1e-4, atol=1e-4)


def test_batchnorm_running_averages_update_in_training_and_serve_inference(rng):
    m = MLP(3, 2, (4,), batchnorm=True, backend="numpy", dtype="float64")
    X, y = rng.standard_normal((50, 3)) * 3 + 2, rng.integers(0, 2, 50)
    before = m.buffers["running_mean1"].copy()
    m.loss_grad(X, y, 0.0)
    s = X @ m.params["W1"].T + m.params["b1"]
    np.testing.assert_allclose(m.buffers["running_mean1"], 0.9 * before + 0.1 * s.mean(0))
    np.testing.assert_allclose(m.buffers["running_var1"], 0.9 * 1 + 0.1 * s.var(0, ddof=1))
    # Inference uses the running averages: one row scores the same alone or in a batch.
    S = m.scores(X)
    np.testing.assert_allclose(m.scores(X[:1]), S[:1])


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_save_and_load_round_trip(tmp_path, rng, kind):
    m = (LinearClassifier(6, 3, backend="numpy", x_mean=np.zeros(6), x_std=np.ones(6)) if kind == "linear"
         else MLP(6, 3, (5, 4), batchnorm=True, backend="numpy"))
    m.loss_grad(m.prepare(rng.standard_normal((8, 6))), rng.integers(0, 3, 8), 0.0)
    path = save_model(m, tmp_path / "m.npz")
    back = load_model(path, backend="numpy")
    assert back.config() == m.config()
    for k, v in m.state().items():
        np.testing.assert_array_equal(back.state()[k], v)
    X = rng.standard_normal((4, 6)).astype(np.float32)
    np.testing.assert_array_equal(back.scores(back.prepare(X)), m.scores(m.prepare(X)))
    assert not any(p.name.startswith(".tmp") for p in tmp_path.iterdir())  # no temporary left behind


def test_loading_refuses_corrupt_foreign_and_misshapen_files(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="bad.npz"):
        load_model(bad)
    np.savez(tmp_path / "foreign.npz", W=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="foreign.npz.*not a gpugrad model"):
        load_model(tmp_path / "foreign.npz")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_model(tmp_path / "missing.npz")
    path = save_model(LinearClassifier(6, 3, backend="numpy"), tmp_path / "m.npz")
    other = LinearClassifier(7, 3, backend="numpy")
    with pytest.raises(ValueError, match=r"W has shape \(3, 6\).*needs \(3, 7\)"):
        other.load_state({k: v for k, v in np.load(path).items() if k != "__config__"}, source=str(path))
    with pytest.raises(ValueError, match="missing.*gamma1"):
        MLP(6, 3, (4,), batchnorm=True, backend="numpy").load_state(
            {k: v for k, v in MLP(6, 3, (4,), backend="numpy").state().items()})


def test_bad_model_arguments_are_named():
    with pytest.raises(ValueError, match="n_classes"):
        LinearClassifier(3, 0, backend="numpy")
    with pytest.raises(ValueError, match="loss"):
        LinearClassifier(3, 2, loss="hinge", backend="numpy")
    with pytest.raises(ValueError, match="dtype"):
        LinearClassifier(3, 2, dtype="float16", backend="numpy")
    with pytest.raises(ValueError, match="hidden layer size"):
        MLP(3, 2, (4, 0), backend="numpy")
    with pytest.raises(ValueError, match="x_std is 0 at feature 1"):
        LinearClassifier(2, 2, backend="numpy", x_mean=np.zeros(2), x_std=np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match=r"X must have shape \(n, 3\)"):
        LinearClassifier(3, 2, backend="numpy").prepare(np.zeros((2, 4)))


def test_repr_shows_kind_layers_and_parameter_count():
    lin = LinearClassifier(3072, 10, "svm", backend="numpy", x_mean=np.zeros(3072), x_std=np.ones(3072))
    assert repr(lin) == ("LinearClassifier(3072 -> 10, svm, 30,730 parameters, float32, numpy, "
                         "normalises inputs)")
    mlp = MLP(64, 10, (50, 30), dtype="float64", backend="numpy")
    assert repr(mlp) == "MLP(64 -> 50 -> 30 -> 10, softmax, 5,090 parameters, float64, numpy)"
    assert mlp.n_parameters == 64 * 50 + 50 + 50 * 30 + 30 + 30 * 10 + 10
    bn = MLP(8, 3, (4,), batchnorm=True, backend="numpy")
    assert repr(bn) == "MLP(8 -> 4 -> 3 with batch norm, softmax, 59 parameters, float32, numpy)"
    assert bn.n_parameters == sum(p.size for p in bn.params.values()) == 8 * 4 + 4 + 2 * 4 + 4 * 3 + 3


def test_class_names_are_saved_with_the_model(tmp_path):
    m = LinearClassifier(4, 3, backend="numpy")
    back = load_model(save_model(m, tmp_path / "a.npz", class_names=[3, 7, 11]), backend="numpy")
    assert back.class_names == ["3", "7", "11"] and load_model(save_model(m, tmp_path / "b.npz")).class_names is None
    with pytest.raises(ValueError, match="class_names has 2 names for a model of 3 classes"):
        save_model(m, tmp_path / "c.npz", class_names=["a", "b"])


def test_a_text_file_is_named_and_said_to_be_no_model(tmp_path):
    (tmp_path / "model.npz").write_text("W = [[1, 2], [3, 4]]\n")
    with pytest.raises(ValueError, match=r"model\.npz: not a gpugrad model file: a text file, not an \.npz archive"):
        load_model(tmp_path / "model.npz")
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.npz: not a gpugrad model file: an empty file"):
        load_model(tmp_path / "empty.npz")
    np.save(tmp_path / "array.npy", np.zeros(3))
    with pytest.raises(ValueError, match="array.npy: not a gpugrad model file: a single .npy array"):
        load_model(tmp_path / "array.npy")

"""The CuPy stand-in refuses what CuPy 14 refuses, and gpugrad's paths that relied on its leniency.

On a card, CuPy raises where numpy would convert silently: ``np.asarray`` of a device array, a numpy
array (0-d included) as an operand of a device array, a host array written into a device array by
plain indexing, an array of another device in an operation. The stand-in (tests/emu/arrays.py)
refuses the same, so the tests on the emulated backend fail where a card would. The first tests
pin those rules (each read against CuPy 14.2's source, cited in arrays.py); the rest run the
paths of gpugrad that used to pass here and fail on a card: CuPy inputs to the numpy backend
(estimators, fused functions, models, Dask chunks), numpy scalars and CuPy operands in the graph,
and kernel arguments on another device than the current one.
"""
import platform
import shutil

import numpy as np
import pytest

import gpugrad as gg

pytestmark = [pytest.mark.skipif(platform.system() != "Linux" or shutil.which("g++") is None,
                                 reason="the kernel emulator needs Linux (ucontext fibers) and g++"),
              pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")]  # short fits on purpose
pytest.importorskip("cupy", reason="the CuPy backend's host code imports cupy (no GPU needed)")

from emu import emulator as E  # noqa: E402

cp = E.emucupy


@pytest.fixture
def cuda(emulated_cuda):
    """The emulator, installed as gpugrad's CUDA backend (and as ``import cupy``)."""
    return emulated_cuda


# ---- the stand-in's rules --------------------------------------------------------------------------
def test_no_implicit_conversion_to_numpy():
    d = cp.asarray([1.0, 2.0])
    for convert in (np.asarray, np.array, lambda a: np.asarray(a, dtype=np.float32)):
        with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
            convert(d)
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.zeros(2)[d.astype(np.int64)]  # a numpy array indexed by a device array
    assert d.get().tolist() == [1.0, 2.0] and cp.asnumpy(d).tolist() == [1.0, 2.0]
    assert float(d[1]) == 2.0 and type(d.get()) is np.ndarray


@pytest.mark.parametrize("op", ["d + h", "h + d", "d * h0", "h0 * d", "d @ hm", "cp.exp(h)", "cp.maximum(d, h)",
                                "cp.where(d > 0, d, h)", "np.concatenate([d, h])", "cp.concatenate([d, h])",
                                "cp.stack([d, h])", "d.dot(h)", "cp.ascontiguousarray(h)", "cp.add(d, d, out=h)"])
def test_no_numpy_array_as_an_operand(op):
    """Numpy arrays of any dimension, 0-d included (cupy/_core/_scalar.pyx: only Python and numpy
    scalars are scalars), are refused as operands: TypeError."""
    d, h, h0, hm = cp.asarray([1.0, -2.0]), np.ones(2), np.asarray(3.0), np.ones((2, 2))
    with pytest.raises(TypeError, match="Unsupported type <class 'numpy.ndarray'>|incorrect type"):
        eval(op)


def test_scalars_are_operands_and_keep_numpys_promotion():
    d = cp.asarray(np.array([1.0, -2.0], np.float32))
    assert (d * np.float32(2)).dtype == np.float32 and (np.float32(2) * d).get().tolist() == [2.0, -4.0]
    assert (d * 2.0).dtype == np.float32 and (d * np.float64(2)).dtype == np.float64  # NEP 50, as CuPy
    assert (d > np.asarray(0.0)).get().tolist() == [True, False]  # comparisons take a 0-d's value
    assert type(d.sum()) is E.EmuArray and d.sum().shape == ()  # full reductions stay on the device


def test_no_host_array_written_by_plain_indexing():
    d = cp.zeros(3)
    with pytest.raises(ValueError, match="non-scalar numpy.ndarray cannot be used for fill"):
        d[...] = np.ones(3)
    with pytest.raises(ValueError, match="non-scalar numpy.ndarray cannot be used for fill"):
        d[:2] = [1.0, 2.0]
    d[0] = np.float64(5)          # a scalar: a fill
    d[1:] = np.asarray(7.0)       # a 0-d array: a fill
    d[cp.asarray([1])] = np.ones(1) * 9  # an advanced index: CuPy copies the values to the device
    d[np.array([2])] = 4.0        # a host index array: copied to the device
    assert d.get().tolist() == [5.0, 9.0, 4.0]
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.zeros(3)[...] = d


def test_devices(monkeypatch):
    """Arrays belong to the device current when they were made; an operation on another device's
    array is refused (no peer access), and a kernel given one faults as on a card."""
    be = E.emulated_backend(monkeypatch, cards={0: E.SMALL_H100, 1: E.SMALL_H100})
    a0 = cp.ones(4, np.float32)
    with cp.cuda.Device(1):
        a1 = cp.ones(4, np.float32)
        assert a1.device.id == 1 and a1.data.device_id == 1 and (a1 + 1).device.id == 1
        with pytest.raises(ValueError, match=r"resides \(0\) is different from the current device \(1\)"):
            a0 + a1
    assert a0.device.id == 0 and cp.cuda.Device().id == 0
    with pytest.raises(RuntimeError, match="invalid device ordinal 2"):
        with cp.cuda.Device(2):
            pass
    f = be.kernel("gg_linear_finish")
    args = [cp.zeros(8, np.float32) if k.startswith("p") else np.dtype(f"{ 'f' if k[0] == 'f' else 'i'}{k[1:]}").type(0)
            for k in f.signature]
    args[0] = a1
    with pytest.raises(E.EmulatorError, match="argument 0 is memory of device 1, the kernel runs on device 0 "
                                              r"\(CUDA_ERROR_ILLEGAL_ADDRESS"):
        f((1,), (256,), tuple(args))


# ---- what the stand-in found in gpugrad ------------------------------------------------------------
@pytest.mark.parametrize("call", ["softmax_cross_entropy_grad", "svm_grad", "linear_grad", "first_invalid"])
def test_kernel_arguments_on_another_device_are_refused_by_name(call, monkeypatch, rng):
    """CuPy passes a RawKernel another device's pointer without a word (an illegal address on the
    card): the backend checks every array it hands a kernel against the current device."""
    be = E.emulated_backend(monkeypatch, cards={0: E.SMALL_H100, 1: E.SMALL_H100})
    n, C, d = 6, 3, 5
    X, S = cp.asarray(rng.standard_normal((n, d)).astype(np.float32)), cp.asarray(rng.standard_normal((n, C)))
    y, W, b = cp.asarray(rng.integers(0, C, n)), cp.zeros((C, d), np.float32), cp.zeros(C, np.float32)
    with cp.cuda.Device(1):
        W1, y1 = cp.zeros((C, d), np.float32), cp.asarray(rng.integers(0, C, n))
        X1, S1 = cp.asarray(X.get()), cp.asarray(S.get())
    if call == "linear_grad":
        bad, want = lambda: be.linear_grad(X, y, W1, b, 0.0, "softmax"), "W is on device 1"
        good = lambda: be.linear_grad(X1, y1, W1, cp.zeros(C, np.float32), 0.0, "softmax")  # noqa: E731
    elif call == "first_invalid":
        bad, want = lambda: be.first_invalid(y, C, [S1]), "array 0 checked is on device 1"
        good = lambda: be.first_invalid(y1, C, [S1])  # noqa: E731
    else:
        bad, want = lambda: getattr(be, call)(S1, y), "S is on device 1"
        good = lambda: getattr(be, call)(S1, y1)  # noqa: E731
    with pytest.raises(ValueError, match=want + r", but the current device, where the kernels run, is 0"):
        bad()
    assert be.launches == []
    with cp.cuda.Device(1):  # the same call where the arrays live runs
        good()
    assert be.launches


def test_cupy_uint8_input_to_a_standardizing_estimator_on_the_numpy_backend(cuda, rng):
    """estimators._device_X's uint8 branch (kept uint8, normalised on the fly) took a CuPy X with
    np.asarray; now it copies it to the host once, and fit and predict agree with numpy input."""
    X = rng.integers(0, 256, (80, 6), dtype=np.uint8)
    y = (X[:, 0] > 127).astype(int)
    kw = dict(backend="numpy", standardize=True, max_iter=5, random_state=0)
    ref = gg.SoftmaxClassifier(**kw).fit(X, y)
    got = gg.SoftmaxClassifier(**kw).fit(cp.asarray(X), cp.asarray(y))
    np.testing.assert_array_equal(got.coef_, ref.coef_)
    pred = got.predict(cp.asarray(X))
    assert type(pred) is E.EmuArray and pred.get().tolist() == ref.predict(X).tolist()


def test_fused_functions_on_the_numpy_backend_with_cupy_inputs(cuda, rng):
    """backend="numpy" with CuPy inputs: computed on the host (an explicit copy there), returned as
    CuPy arrays (CuPy in, CuPy out), equal to the numpy call; out= a CuPy buffer is filled."""
    n, d, C = 9, 4, 3
    X, y = rng.standard_normal((n, d)), rng.integers(0, C, n)
    W, b = rng.standard_normal((C, d)), rng.standard_normal(C)
    want = gg.linear_grad(X, y, W, b, 0.1, backend="numpy")
    got = gg.linear_grad(*map(cp.asarray, (X, y, W, b)), 0.1, backend="numpy")
    for g, w in zip(got, want):
        assert type(g) is E.EmuArray and np.array_equal(g.get(), w)
    S = X @ W.T
    out = cp.empty((n, C))
    loss, dS = gg.softmax_cross_entropy_grad(cp.asarray(S), cp.asarray(y), out=out, backend="numpy")
    ref_loss, ref_dS = gg.softmax_cross_entropy_grad(S, y, backend="numpy")
    assert dS is out and np.array_equal(out.get(), ref_dS) and float(loss) == float(ref_loss)


def test_numpy_model_given_cupy_normalisation_and_state(cuda, rng):
    mean, std = rng.standard_normal(4), rng.uniform(1, 2, 4)
    m = gg.models.LinearClassifier(4, 3, backend="numpy", dtype="float64", x_mean=cp.asarray(mean),
                                   x_std=cp.asarray(std))
    assert type(m.buffers["x_mean"]) is np.ndarray and np.array_equal(m.buffers["x_std"], std)
    W = rng.standard_normal((3, 4))
    m.load_state({**m.state(), "W": cp.asarray(W), "b": cp.asarray(np.ones(3))})
    assert np.array_equal(m.params["W"], W) and m.params["b"].tolist() == [1.0] * 3


def test_numpy_scalars_and_arrays_as_operands_of_cupy_tensors(cuda, rng):
    """A numpy scalar (np.float32(2)) or 0-d array next to a CuPy tensor becomes a device constant
    of its dtype (CuPy refuses a numpy 0-d array as an operand); the graph and its gradients agree
    with the same graph on numpy."""
    x = rng.standard_normal(5).astype(np.float32)

    def f(t, c):
        return ((t * np.float32(2) + np.asarray(1.5, np.float32)) * c - np.float32(0.5) / t).sum()

    got_t = gg.tensor(cp.asarray(x), requires_grad=True)
    got = f(got_t, np.arange(5, dtype=np.float32))  # a numpy array operand too: moved to the device
    got.backward()
    ref_t = gg.tensor(x, requires_grad=True)
    ref = f(ref_t, np.arange(5, dtype=np.float32))
    ref.backward()
    assert got.dtype == np.float32 and type(got.value) is E.EmuArray
    assert np.allclose(float(got.value), ref.item(), rtol=1e-6)
    assert np.allclose(got_t.grad.get(), ref_t.grad, rtol=1e-6)


def test_constant_tensors_join_the_other_operands_backend(cuda):
    """tensor(np.float32(2)) is a numpy constant; next to a CuPy tensor it joins the device (CuPy
    refuses a numpy 0-d array as an operand); two tensors that require grad on two backends are
    refused by name."""
    t = gg.tensor(cp.asarray(np.ones(3, np.float32)), requires_grad=True)
    J = (t * gg.tensor(np.float32(2)) + gg.tensor(1.0)).sum()
    J.backward()
    assert type(J.value) is E.EmuArray and J.dtype == np.float64 and t.grad.get().tolist() == [2.0] * 3
    with pytest.raises(TypeError, match=r"operands on two backends \(cupy and numpy\)"):
        t * gg.tensor(np.ones(3, np.float32), requires_grad=True)


def test_cupy_operands_and_indices_of_numpy_tensors(cuda, rng):
    """A CuPy operand or index of a numpy tensor joins the tensor's backend (a copy to the host),
    instead of numpy converting it implicitly (which CuPy refuses)."""
    x = rng.standard_normal((4, 3))
    w = rng.standard_normal(3)
    t = gg.tensor(x, requires_grad=True)
    J = (t[cp.asarray([0, 2, 2])] * cp.asarray(w)).sum()
    J.backward()
    assert type(J.value) is not E.EmuArray and np.isclose(J.item(), (x[[0, 2, 2]] * w).sum())
    want = np.zeros_like(x)
    np.add.at(want, [0, 2, 2], w)
    assert np.array_equal(t.grad, want)
    J2 = gg.tensor(cp.asarray(x), requires_grad=True)
    (J2 * 2).sum().backward(gradient=np.asarray(1.0))  # a numpy seed for a CuPy result
    assert J2.grad.get().tolist() == np.full_like(x, 2).tolist()


@pytest.fixture
def sync_dask():
    dask = pytest.importorskip("dask")
    with dask.config.set(scheduler="synchronous"):
        yield pytest.importorskip("dask.array")


def test_dask_fit_with_cupy_labels_weights_and_classes(cuda, sync_dask, rng):
    """distributed.fit_linear with numpy X chunks and CuPy y chunks, and with a plain CuPy y,
    sample_weight and classes next to CuPy X chunks (L-BFGS; the sequential SGD pass): the same
    model as from numpy inputs."""
    da = sync_dask
    n, d, C = 240, 5, 3
    X, y = rng.standard_normal((n, d)), rng.integers(0, C, n)
    w = rng.uniform(0.5, 2, n)
    from gpugrad.sklearn_dask import distributed as D
    ref = D.fit_linear(da.from_array(X, chunks=(80, d)), y, max_iter=8, sample_weight=w)
    got = D.fit_linear(da.from_array(X, chunks=(80, d)), da.from_array(cp.asarray(y), chunks=80), max_iter=8,
                       sample_weight=cp.asarray(w), dtype=np.float64)
    assert np.allclose(got["model"].params["W"], ref["model"].params["W"], rtol=1e-10, atol=1e-12)
    Xc = da.from_array(cp.asarray(X), chunks=(80, d))
    # CuPy chunks compute in float32 by default, as the in-memory estimators do: ask for float64
    got = D.fit_linear(Xc, cp.asarray(y), max_iter=8, sample_weight=cp.asarray(w), classes=cp.asarray([0, 1, 2]),
                       dtype=np.float64)
    assert np.allclose(got["model"].params["W"], ref["model"].params["W"], rtol=1e-8, atol=1e-10)
    assert got["classes_"].tolist() == [0, 1, 2]
    # the sequential SGD pass carries the state from CuPy chunk to CuPy chunk through the host
    kw = dict(solver="sgd", sgd_pass="sequential", max_iter=2, batch_size=20, learning_rate_init=0.05,
              dtype=np.float64)
    ref = D.fit_linear(da.from_array(X, chunks=(80, d)), y, **kw)
    got = D.fit_linear(Xc, cp.asarray(y), **kw)
    assert np.allclose(got["model"].params["W"], ref["model"].params["W"], rtol=1e-8, atol=1e-10)


def test_dask_class_weight_with_cupy_labels(cuda, sync_dask, rng):
    """_dask_class_weights read CuPy labels with np.asarray and weighted each block's labels on the
    host: now the labels come to the host once (for classes_), and a CuPy block's weights are made
    on its device. Dask arrays of CuPy chunks, and numpy X chunks with a CuPy y, give the model of
    numpy inputs."""
    da = sync_dask
    n, d = 150, 4
    X, y = rng.standard_normal((n, d)), rng.integers(0, 3, n)
    kw = dict(class_weight={0: 3.0, 2: 0.5}, max_iter=6, random_state=0, dtype=np.float64)
    ref = gg.SoftmaxClassifier(**kw).fit(da.from_array(X, chunks=(50, d)), da.from_array(y, chunks=50))
    on_device = gg.SoftmaxClassifier(**kw).fit(da.from_array(cp.asarray(X), chunks=(50, d)),
                                               da.from_array(cp.asarray(y), chunks=50))
    mixed = gg.SoftmaxClassifier(**kw).fit(da.from_array(X, chunks=(50, d)), cp.asarray(y))
    for clf in (on_device, mixed):
        assert clf.classes_.tolist() == [0, 1, 2]
        assert np.allclose(clf.coef_, ref.coef_, rtol=1e-8, atol=1e-10)

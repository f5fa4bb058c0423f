"""Every CUDA kernel against the numpy backend (marker ``gpu``: skipped cleanly without a GPU).

Fresh random inputs at odd sizes and above one grid; outputs poisoned with NaN before each launch;
float32 within 1e-5 relative of float64 numpy, float64 within 1e-12.
"""
import numpy as np
import pytest

import gpugrad as gg
from kernel_checks import check_linear_step, f32, linear_case, rel, sample_weights, TOL

pytestmark = pytest.mark.gpu

NP = gg.get_backend("numpy")


def _poisoned(cupy, shape, dtype):
    return cupy.full(shape, np.nan, dtype=dtype)




@pytest.mark.parametrize("n", [1, 3, 65537])
@pytest.mark.parametrize("C", [1, 2, 7, 10, 33, 129, 257, 1000, 1500, 5000, 20000, 32768, 70000])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss", ["softmax", "svm"])
def test_row_loss_kernels_match_numpy(n, C, dtype, loss, rng):
    """Every row-loss family: lane teams of 1 to 32 lanes, a warp of 32 values a lane, a block per
    row (K = 2 to 32), the persistent kernel, and the two-pass kernel past the registers."""
    import cupy
    if n * C > 2**28:
        pytest.skip("reference too large for a unit test (benchmarks/gpu_check.py covers it)")
    be = gg.get_backend("cupy")
    # The reference sees the scores the kernel sees: a hinge margin within float32 rounding of 0
    # would otherwise flip (about 3e-5 of dS for one flip among 24k classes).
    S64 = (rng.standard_normal((n, C)) * 3).astype(dtype).astype(np.float64)
    y = rng.integers(0, C, n)
    ref = NP.softmax_cross_entropy_grad if loss == "softmax" else NP.svm_grad
    fn = be.softmax_cross_entropy_grad if loss == "softmax" else be.svm_grad
    ref_loss, ref_dS = ref(S64, y)
    _poison_pool(cupy)
    out = _poisoned(cupy, (n, C), dtype)
    got_loss, got_dS = fn(cupy.asarray(S64.astype(dtype)), cupy.asarray(y), out=out)
    assert got_dS is out
    assert rel(got_dS.get(), ref_dS) <= TOL[dtype]
    assert abs(float(got_loss) - ref_loss) <= TOL[dtype] * max(abs(ref_loss), 1e-30)
    assert got_loss.shape == () and isinstance(got_loss, cupy.ndarray)


@pytest.fixture(params=["simt", "mma"])
def linear_variant(request):
    """Each fused linear kernel in turn: (variant, a CUDA backend that uses it); "mma" (tensor
    cores, thread-block clusters) needs sm_90."""
    be = gg.get_backend("cupy")
    if request.param == "mma" and be.card.cc < 90:
        pytest.skip("the tensor-core kernels need sm_90 (clusters)")
    return request.param, be._with_variants(linear_f32=request.param, linear_u8=request.param)


_NAN_SMEM = r"""
extern "C" __global__ void fill_shared_with_nan(int words) {
    extern __shared__ unsigned smem[];
    volatile unsigned* s = smem;
    for (int i = threadIdx.x; i < words; i += blockDim.x) s[i] = 0x7fffffffu;
}
"""


def _poison_pool(cupy, nbytes=1 << 28):
    """Fill the memory pool's free blocks with NaN, so an output or partial the kernels forget to
    write shows up as NaN instead of a stale value; and every SM's shared memory too, since a
    kernel that multiplies unwritten shared memory by zero still gets NaN (0 * NaN)."""
    cupy.get_default_memory_pool().free_all_blocks()
    block = cupy.full(nbytes // 4, np.nan, dtype=np.float32)
    del block
    be = gg.get_backend("cupy")
    fill = cupy.RawKernel(_NAN_SMEM, "fill_shared_with_nan")
    nbytes_smem = be.card.smem_optin
    fill.max_dynamic_shared_size_bytes = nbytes_smem
    fill((4 * be.card.sm_count,), (1024,), (np.int32(nbytes_smem // 4),), shared_mem=nbytes_smem)


def _linear_inputs(rng, kind, n, d, C, wscale=0.05):
    """(float64 reference inputs, the kernels' inputs on the GPU): X, y, W, b, x_mean, x_std."""
    import cupy
    ref, args = linear_case(rng, kind, n, d, C, wscale)
    return ref, [None if a is None else cupy.asarray(a) for a in args]


def _check_linear(ref_args, args, loss, lam, backend=None):
    """One public linear_grad call on poisoned memory, against the numpy backend (check_linear_step)."""
    import cupy
    _poison_pool(cupy)
    got = gg.linear_grad(*args[:4], lam=lam, loss=loss, x_mean=args[4], x_std=args[5], backend=backend)
    check_linear_step(ref_args, [a.get() for a in got], loss, lam)


@pytest.mark.parametrize("n,d,C", [(1, 5, 1), (3, 7, 2), (65537, 131, 10), (1000, 3071, 10), (513, 100, 16),
                                   (300, 3073, 10), (257, 50, 40), (4099, 3072, 10), (70, 784, 9)])


@pytest.mark.parametrize("loss", ["softmax", "svm"])
def test_linear_grad_fused_matches_numpy(n, d, C, loss, linear_variant, rng):
    variant, be = linear_variant
    ref_args, args = _linear_inputs(rng, "f32", n, d, C)
    if variant == "mma":
        assert (be.linmma_plan(args[0], args[2], None) is not None) == (C <= 16 and d <= 3072)
    _check_linear(ref_args, args, loss, 0.01, be)


@pytest.mark.parametrize("n,d,C,loss", [(3, 7, 2, "softmax"), (4099, 3072, 10, "softmax"), (70, 784, 10, "svm"),
                                        (129, 33, 5, "softmax"), (1, 5, 1, "softmax"), (65537, 3071, 16, "svm"),
                                        (200, 3072, 9, "softmax"), (513, 100, 8, "svm")])


def test_linear_grad_uint8_pixels_normalised_on_the_fly(n, d, C, loss, linear_variant, rng):
    variant, be = linear_variant
    ref_args, args = _linear_inputs(rng, "u8", n, d, C, wscale=0.01)
    if variant == "mma":
        assert be.linmma_plan(args[0], args[2], args[4]) is not None
    _check_linear(ref_args, args, loss, 0.1, be)


@pytest.mark.parametrize("n,d,C,loss", [(1, 5, 1, "softmax"), (3, 7, 2, "svm"), (65537, 131, 10, "softmax"),
                                        (4099, 1024, 10, "svm"), (513, 100, 16, "softmax"), (70, 784, 9, "svm"),
                                        (2049, 2047, 4, "softmax"), (300, 1025, 10, "softmax")])


@pytest.mark.parametrize("kind", ["f32n", "f64", "f64n", "u8f64"])
def test_linear_grad_other_kinds_of_x(kind, n, d, C, loss, rng):
    """float32 X normalised on the fly, float64 X plain and normalised, uint8 X under float64
    weights ("simt" kernels; float64 rows past 1024 columns at C > 4 take the inherited path)."""
    be = gg.get_backend("cupy")
    ref_args, args = _linear_inputs(rng, kind, n, d, C)
    plan = be.linear_plan(args[0], args[2], args[4])
    if not (kind == "f32n" or d <= 1024 or C <= 4):
        assert plan is None
    elif be.card.cc >= 90:  # (smaller cards' shared memory may not hold every W here)
        assert plan is not None
    _check_linear(ref_args, args, loss, 0.01)


@pytest.mark.parametrize("n,d,C", [(3, 7, 2), (65537, 131, 10), (4099, 1024, 16)])
@pytest.mark.parametrize("kind", ["f32", "f32n", "u8", "f64", "f64n", "u8f64"])
@pytest.mark.parametrize("loss", ["softmax", "svm"])
def test_linear_grad_with_sample_weights(kind, n, d, C, loss, rng):
    """Per-row weights (a quarter of them 0) read by each kind's simt kernel, on poisoned memory,
    against the weighted numpy backend; weights of 1 give the unweighted bits."""
    import cupy
    be = gg.get_backend("cupy")
    ref_args, args = _linear_inputs(rng, kind, n, d, C, wscale=0.01 if kind.startswith("u8") else 0.05)
    w_ref, w = sample_weights(rng, n, kind)
    _poison_pool(cupy)
    got = be.linear_grad(*args[:4], 0.01, loss, *args[4:], sample_weight=cupy.asarray(w))
    check_linear_step(ref_args, [a.get() for a in got], loss, 0.01, sample_weight=w_ref)
    plain = be.linear_grad(*args[:4], 0.01, loss, *args[4:])
    ones = be.linear_grad(*args[:4], 0.01, loss, *args[4:], sample_weight=cupy.ones(n, w.dtype))
    for a, b in zip(plain, ones):
        assert np.array_equal(a.get(), b.get())


def test_uint8_tensor_core_kernel_with_offset_means_and_tiny_weights(rng):
    """The tensor-core kernel's folds: means far outside the pixel range (offsets clamp to 0..255,
    the rest goes through the bias and the finish) and weights near float32's small end (the
    per-class f16 scaling)."""
    import cupy
    be = gg.get_backend("cupy")._with_variants(linear_u8="mma")
    if be.card.cc < 90:
        pytest.skip("the tensor-core kernel needs sm_90 (clusters)")
    n, d, C = 1000, 3072, 10
    X = rng.integers(0, 256, (n, d), dtype=np.uint8)
    mean = f32(rng.uniform(-400, 700, d))
    std = f32(rng.uniform(0.5, 90, d))
    y = rng.integers(0, C, n)
    for wscale in (1e-2, 1e-30):
        W = f32(rng.standard_normal((C, d)) * wscale)
        b = f32(rng.standard_normal(C) * 0.1)
        J, dW, db = gg.linear_grad(cupy.asarray(X), cupy.asarray(y), cupy.asarray(W.astype(np.float32)),
                                   cupy.asarray(b.astype(np.float32)), lam=0.01,
                                   x_mean=cupy.asarray(mean.astype(np.float32)),
                                   x_std=cupy.asarray(std.astype(np.float32)), backend=be)
        check_linear_step((X, y, W, b, mean, std), [a.get() for a in (J, dW, db)], "softmax", 0.01)


@pytest.mark.parametrize("xtype", ["f32", "u8"])
def test_the_tensor_core_kernels_are_deterministic(xtype, rng):
    """The partial sums meet in a fixed order (ranks, warp groups, clusters): bit-identical reruns."""
    import cupy
    be = gg.get_backend("cupy")._with_variants(**{f"linear_{xtype}": "mma"})
    if be.card.cc < 90:
        pytest.skip("the tensor-core kernels need sm_90 (clusters)")
    n, d, C = 20000, 3072, 10
    if xtype == "u8":
        X = cupy.asarray(rng.integers(0, 256, (n, d), dtype=np.uint8))
        norm = (cupy.full(d, 120, np.float32), cupy.full(d, 60, np.float32))
    else:
        X = cupy.asarray(rng.standard_normal((n, d), dtype=np.float32))
        norm = (None, None)
    y = cupy.asarray(rng.integers(0, C, n))
    W = cupy.asarray((rng.standard_normal((C, d)) * 0.01).astype(np.float32))
    b = cupy.zeros(C, np.float32)
    assert be.linmma_plan(X, W, norm[0]) is not None
    runs = [[a.get() for a in be.linear_grad(X, y, W, b, 0.01, "softmax", *norm)] for _ in range(3)]
    for other in runs[1:]:
        for a, b_ in zip(runs[0], other):
            assert np.array_equal(a, b_)


@pytest.mark.parametrize("n,C", [(1, 1), (3, 10), (65537, 10), (8192, 1000), (300, 20000), (7, 40000)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss", ["softmax", "svm"])
def test_direct_call_path_matches_cupys(n, C, dtype, loss, rng):
    """The "direct" row_call variant (cuLaunchKernel from a ctypes parameter block, the loss a
    view into a slab) gives bit for bit what CuPy's RawKernel call gives; its losses stay valid
    past a slab (256 calls); int32 and int64 labels."""
    import cupy
    be = gg.get_backend("cupy")
    direct = be._with_variants(row_call="direct")
    fn = be.softmax_cross_entropy_grad if loss == "softmax" else be.svm_grad
    fn_direct = direct.softmax_cross_entropy_grad if loss == "softmax" else direct.svm_grad
    S = cupy.asarray((rng.standard_normal((n, C)) * 3).astype(dtype))
    for y in (cupy.asarray(rng.integers(0, C, n)), cupy.asarray(rng.integers(0, C, n).astype(np.int32))):
        want_loss, want_dS = fn(S, y)
        _poison_pool(cupy)
        out = _poisoned(cupy, (n, C), dtype)
        losses = [fn_direct(S, y, out=out)[0] for _ in range(300 if n * C < 10**6 else 3)]
        assert cupy.array_equal(out, want_dS)
        assert all(float(v) == float(want_loss) for v in losses) and len({v.data.ptr for v in losses}) == len(losses)


def test_direct_call_path_on_other_streams(rng):
    """The "direct" path launches on the current stream, with a workspace and a loss slab of that
    stream: two streams interleaved give each its own right results."""
    import cupy
    be = gg.get_backend("cupy")
    S = [cupy.asarray((rng.standard_normal((4099, 10)) * 3).astype(np.float32)) for _ in range(2)]
    y = cupy.asarray(rng.integers(0, 10, 4099))
    want = [be.softmax_cross_entropy_grad(s, y) for s in S]
    be = be._with_variants(row_call="direct")
    streams = [cupy.cuda.Stream(non_blocking=True) for _ in range(2)]
    got = [[], []]
    for _ in range(300):  # more than a slab
        for i in (0, 1):
            with streams[i]:
                got[i].append(be.softmax_cross_entropy_grad(S[i], y))
    cupy.cuda.Device().synchronize()
    for i in (0, 1):
        assert all(float(L) == float(want[i][0]) and cupy.array_equal(dS, want[i][1]) for L, dS in got[i][-3:])
        assert all(float(L) == float(want[i][0]) for L, _ in got[i])


@pytest.mark.parametrize("variant", ["stream", "prefetch", "block"])
@pytest.mark.parametrize("C,dtype", [(8193, np.float32), (9000, np.float32), (32768, np.float32),
                                     (16384, np.float64), (12002, np.float64)])


def test_long_row_kernels_match_numpy(variant, C, dtype, rng):
    """Every kernel for long softmax rows (the ce_long_rows variants), with more rows than SMs."""
    import cupy
    be = gg.get_backend("cupy")._with_variants(ce_long_rows=variant)
    n = 2 * be.card.sm_count + 3
    S64 = rng.standard_normal((n, C)) * 3
    y = rng.integers(0, C, n)
    ref_loss, ref_dS = NP.softmax_cross_entropy_grad(S64, y)
    _poison_pool(cupy)
    out = _poisoned(cupy, (n, C), dtype)
    got_loss, got_dS = be.softmax_cross_entropy_grad(cupy.asarray(S64.astype(dtype)), cupy.asarray(y), out=out)
    assert rel(got_dS.get(), ref_dS) <= TOL[dtype]
    assert abs(float(got_loss) - ref_loss) <= TOL[dtype] * abs(ref_loss)


def test_numpy_inputs_on_the_cupy_backend_come_back_as_numpy(rng):
    S = rng.standard_normal((5, 3))
    y = rng.integers(0, 3, 5)
    loss, dS = gg.softmax_cross_entropy_grad(S, y, backend="cupy")
    assert isinstance(dS, np.ndarray)
    np.testing.assert_allclose(dS, NP.softmax_cross_entropy_grad(S, y)[1], rtol=1e-12)


def test_device_side_check_names_the_bad_label_and_the_nan(rng):
    import cupy
    S = cupy.asarray(rng.standard_normal((6, 4)))
    with pytest.raises(ValueError, match=r"y\[4\] = 9"):
        gg.softmax_cross_entropy_grad(S, cupy.asarray([0, 1, 2, 3, 9, 0]))
    S[2, 3] = np.inf
    with pytest.raises(ValueError, match=r"S contains inf at index \[2, 3\]"):
        gg.svm_grad(S, cupy.asarray([0, 1, 2, 3, 1, 0]))


def test_device_side_check_names_a_negative_label_and_a_nan(rng):
    import cupy
    S = cupy.asarray(rng.standard_normal((6, 4)).astype(np.float32))
    with pytest.raises(ValueError, match=r"y\[1\] = -1"):
        gg.softmax_cross_entropy_grad(S, cupy.asarray([0, -1, 2, 3, 1, 0]))
    S[2, 3] = np.nan
    with pytest.raises(ValueError, match=r"S contains NaN at index \[2, 3\]"):
        gg.softmax_cross_entropy_grad(S, cupy.asarray([0, 1, 2, 3, 1, 0]))


def test_confident_rows_and_large_scores_keep_float32_accuracy():
    """A row whose p_y rounds to 1 in float32 keeps its target gradient -others/total/n (about
    -3e-13 here, not 0), and scores of magnitude 1e4 lose nothing to the max subtraction."""
    import cupy
    S64 = np.array([[30.0, 0.0, -1.0, 2.0], [1e4, -1e4, 9990.0, 0.0]])
    y = np.array([0, 1])
    ref_loss, ref_dS = NP.softmax_cross_entropy_grad(S64, y)
    loss, dS = gg.get_backend("cupy").softmax_cross_entropy_grad(cupy.asarray(S64.astype(np.float32)), cupy.asarray(y))
    g = dS.get()
    assert abs(g[0, 0] - ref_dS[0, 0]) <= 1e-5 * abs(ref_dS[0, 0]) and g[0, 0] < 0
    assert rel(g, ref_dS) <= 1e-5 and abs(float(loss) - ref_loss) <= 1e-5 * abs(ref_loss)


def test_strided_labels_are_read_as_labels(rng):
    """A label view with a stride (y[::2]) reaches the kernels as a contiguous copy."""
    import cupy
    S = rng.standard_normal((50, 7))
    y_all = rng.integers(0, 7, 100)
    ref = NP.softmax_cross_entropy_grad(S, y_all[::2])
    got = gg.softmax_cross_entropy_grad(cupy.asarray(S), cupy.asarray(y_all)[::2])
    np.testing.assert_allclose(got[1].get(), ref[1], rtol=1e-12)
    assert abs(float(got[0]) - ref[0]) <= 1e-12 * abs(ref[0])


def test_the_one_launch_mean_is_deterministic(rng):
    import cupy
    be = gg.get_backend("cupy")
    S = cupy.asarray(rng.standard_normal((65537, 10)).astype(np.float32))
    y = cupy.asarray(rng.integers(0, 10, 65537))
    losses = {float(be.softmax_cross_entropy_grad(S, y)[0]) for _ in range(20)}
    assert len(losses) == 1


def test_work_under_another_device_runs_there(rng):
    """`with cupy.cuda.Device(1)`: the kernels are loaded on device 1 and the results live there."""
    import cupy
    if cupy.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two CUDA devices")
    be = gg.get_backend("cupy")
    S64, y = rng.standard_normal((300, 10)), rng.integers(0, 10, 300)
    ref_loss, ref_dS = NP.softmax_cross_entropy_grad(S64, y)
    for device in (1, 0):
        with cupy.cuda.Device(device):
            loss, dS = be.softmax_cross_entropy_grad(cupy.asarray(S64), cupy.asarray(y))
            assert dS.device.id == device and be.workspace().device.id == device
            assert rel(dS.get(), ref_dS) <= 1e-12 and abs(float(loss) - ref_loss) <= 1e-12 * ref_loss


# ---- the sparse step (CSR X on the device; kernels/sparse_step.cuh) --------------------------------
@pytest.mark.parametrize("n,d,C", [(1, 5, 1), (13, 300, 3), (70001, 2000, 10), (4099, 100000, 20), (513, 700, 32),
                                   (300, 500, 40)])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss", ["softmax", "svm"])
def test_sparse_step_matches_numpy(n, d, C, dtype, loss, rng):
    """cupyx CSR X (empty rows and columns, duplicates, unsorted and int64 indices, a 400-entry row)
    with x_std and sample weights: the row kernel (C <= 32) or cuSPARSE (C = 40) against numpy."""
    import cupy
    import cupyx.scipy.sparse as csp
    from kernel_checks import check_sparse_step, sparse_case
    be = gg.get_backend("cupy")
    X, y, W, b, std = sparse_case(rng, n, d, C, dtype, idx64=dtype == np.float64, long_row=min(400, d - 1))
    w = rng.uniform(0, 2, n)
    w = w.astype(dtype).astype(np.float64)
    Xd = csp.csr_matrix((cupy.asarray(X.data.astype(dtype)), cupy.asarray(X.indices), cupy.asarray(X.indptr)),
                        shape=X.shape)
    _poison_pool(cupy)
    got = be.linear_grad(Xd, cupy.asarray(y), cupy.asarray(W.astype(dtype)), cupy.asarray(b.astype(dtype)), 0.01, loss,
                         None, cupy.asarray(std.astype(dtype)), cupy.asarray(w.astype(dtype)))
    check_sparse_step(X, y, W, b, [a.get() for a in got], loss, 0.01, x_std=std, sample_weight=w)


def test_sparse_step_public_api_names_a_nan(rng):
    import cupy
    import cupyx.scipy.sparse as csp
    from kernel_checks import sparse_case
    X, y, W, b, _ = sparse_case(rng, 50, 60, 5, np.float32)
    X.data[X.indptr[6]] = np.nan
    Xd = csp.csr_matrix((cupy.asarray(X.data), cupy.asarray(X.indices), cupy.asarray(X.indptr)), shape=X.shape)
    with pytest.raises(ValueError, match=rf"X contains NaN at row 6, column {X.indices[X.indptr[6]]}"):
        gg.linear_grad(Xd, cupy.asarray(y), cupy.asarray(W.astype(np.float32)), cupy.asarray(b.astype(np.float32)))


# ---- the compiled step's kernels (kernels/mlp.cuh) --------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_step_kernels_match_numpy(dtype, rng):
    """The gather for each kind of X, a layer forward and backward (with and without batch norm,
    at batch sizes past one block of rows), the loss for each width of lane, the fused update
    for each rule: kernel_checks' checks, on the card."""
    import cupy
    from kernel_checks import GATHER_KINDS, check_gather, check_layer, check_scores_loss, check_update
    be = gg.get_backend("cupy")
    for kind in GATHER_KINDS:
        if GATHER_KINDS[kind][1] == dtype:
            check_gather(be, cupy.asarray, rng, kind, N=5000, n=1000, d=3072)
    for n, m in ((100, 50), (1000, 300), (7, 1)):
        for bn in (True, False):
            check_layer(be, cupy.asarray, rng, dtype, bn, n=n, m=m)
    for C in (1, 10, 33, 100, 256, 1000):
        for loss in ("softmax", "svm"):
            check_scores_loss(be, cupy.asarray, rng, dtype, C, loss, weighted=C % 2 == 0, n=1001)
    for rule in ("sgd", "momentum", "nesterov", "adam"):
        check_update(be, cupy.asarray, rng, dtype, rule, N=160_510, n_decay=157_000)


def test_compiled_mlp_training_matches_numpy_on_the_card(rng):
    """Two epochs of the 3072-50-50-10 network with batch norm on CIFAR-shaped uint8 rows through
    the trainer, on the card and on numpy: the same weights within float32 rounding."""
    import cupy
    X = rng.integers(0, 256, (1050, 3072)).astype(np.uint8)
    y = rng.integers(0, 10, 1050)
    mean, std = X.mean(0), X.std(0) + 1
    runs = []
    for b in ("cupy", "numpy"):
        model = gg.models.MLP(3072, 10, (50, 50), batchnorm=True, backend=b, x_mean=mean, x_std=std)
        gg.Trainer(model, gg.optim.SGD(0.01, momentum=0.9), epochs=2, batch_size=100, lam=1e-3,
                   progress=False, eval_train=False).fit(cupy.asarray(X) if b == "cupy" else X, y)
        runs.append(model)
    for k in runs[1].params:
        np.testing.assert_allclose(runs[0].backend.to_numpy(runs[0].params[k]), runs[1].params[k],
                                   rtol=2e-3, atol=2e-5, err_msg=k)

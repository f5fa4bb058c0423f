"""Every CUDA kernel, run on the CPU by the emulator in tests/emu, against the numpy backend.

No GPU needed: the CuPy backend's own host code launches the kernels' own code (tests/emu/gg_emu.h
runs each CUDA thread as a fiber, with the PTX ISA's warp collectives, tensor-core fragments,
thread-block clusters and cp.async). What this adds to the GPU tests (tests/test_gpu_kernels.py), which
CI cannot run: every launch's arguments checked against the kernel's C++ parameter types (pointee
dtypes included), reads of shared memory never written (it starts as NaN), barriers not every
thread reaches, and results that change with the order threads run in or with when cp.async copies
land (a missing barrier or wait). The last tests plant such bugs in the kernels and see them caught.

What it cannot show: speed, and the hardware's rounding inside the tensor cores (modelled in
tests/test_linmma_model.py). Sizes are small: a thread costs microseconds here.
"""
import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import deps
import gpugrad as gg

deps.need_emulator()  # Linux, g++ and cupy (no GPU); in CI their absence fails

from emu import build, emulator as E  # noqa: E402
from emu.build import cache_dir as build_cache  # noqa: E402
from gpugrad.backends import cuda_driver, plans  # noqa: E402
from kernel_checks import (check_gather, check_layer, check_linear_step, check_scores_loss, check_update,  # noqa: E402
                           host, linear_case, rel, TOL)

NP = gg.get_backend("numpy")
dev = E.emucupy.asarray
MODES = [(order, deferred) for order in ("forward", "reverse", "shuffled") for deferred in (True, False)]


@pytest.fixture
def be(emulated_be):
    return emulated_be


def _row_loss(be, loss, S, y, out):
    fn = be.softmax_cross_entropy_grad if loss == "softmax" else be.svm_grad
    return fn(S, y, out=out)


# Every row-loss kernel: lanes per row 1..32 (C <= 1024), a block per row, the streamed kernel
# (C > 8192) and the online kernel past the registers (float32 C > 32768, float64 C > 16384).
@pytest.mark.parametrize("C", [1, 2, 9, 33, 1000, 1025, 8193, 16385, 32769])
@pytest.mark.parametrize("n", [1, 3, 13])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss", ["softmax", "svm"])
def test_row_loss_kernels(be, C, n, dtype, loss, rng):
    if n * C > 200_000:
        n = 2
    # The reference sees the scores the kernel sees: a hinge margin within float32 rounding of 0
    # would otherwise flip (about 3e-5 of dS for one flip among 24k classes).
    S = (rng.standard_normal((n, C)) * 3).astype(dtype).astype(np.float64)
    y = rng.integers(0, C, n)
    ref_loss, ref_dS = (NP.softmax_cross_entropy_grad if loss == "softmax" else NP.svm_grad)(S, y)
    out = E.emucupy.full((n, C), np.nan, dtype)
    got_loss, got_dS = _row_loss(be, loss, dev(S.astype(dtype)), dev(y), out)
    assert got_dS is out and got_loss.shape == ()
    assert rel(got_dS, ref_dS) <= TOL[dtype]
    assert abs(float(got_loss) - ref_loss) <= TOL[dtype] * max(abs(ref_loss), 1e-30)


# The "direct" call path (cuLaunchKernel from a ctypes parameter block, the loss a view into a slab)
# launches the same kernels with the same arguments as CuPy's RawKernel call: bit-identical results.
@pytest.mark.parametrize("C,long_rows", [(1, None), (10, None), (1000, None), (1025, None), (20000, "stream"),
                                         (20000, "prefetch"), (40000, None)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss", ["softmax", "svm"])
def test_direct_call_path_matches_cupys(be, C, long_rows, dtype, loss, monkeypatch, rng):
    if long_rows:
        be = be._with_variants(ce_long_rows=long_rows)
    n = 13 if C < 10_000 else 3
    S, y = dev((rng.standard_normal((n, C)) * 3).astype(dtype)), dev(rng.integers(0, C, n).astype(np.int32))
    want_loss, want_dS = _row_loss(be, loss, S, y, None)
    got_loss, got_dS = _row_loss(be._with_variants(row_call="direct"), loss, S, y, None)
    assert got_loss.shape == () and got_loss.dtype == dtype and got_dS.dtype == dtype
    assert float(got_loss) == float(want_loss) and np.array_equal(got_dS, want_dS)
    assert be.launches[-1] == be.launches[-2]  # the same kernel


def test_direct_call_path_losses_stay_valid_past_a_slab(be, monkeypatch, rng):
    """Each loss is a slot of its own: 600 calls (three slabs) keep 600 right values."""
    be = be._with_variants(row_call="direct")
    S = rng.standard_normal((600, 3, 4)).astype(np.float32)
    y = dev(np.array([0, 3, 1]))
    losses = [be.softmax_cross_entropy_grad(dev(s), y)[0] for s in S]
    want = [NP.softmax_cross_entropy_grad(s.astype(np.float64), np.array([0, 3, 1]))[0] for s in S]
    assert np.allclose([float(v) for v in losses], want, rtol=1e-6)
    assert len({v.data.ptr for v in losses}) == 600


def test_direct_call_path_checks_what_it_passes(be, monkeypatch, rng):
    """The emulated cuLaunchKernel reads the parameter block as the driver does and checks the
    device arrays it points to: a pointee of the wrong dtype is an error (a write past an array:
    test_a_write_just_past_an_array_is_caught)."""
    S = dev(rng.standard_normal((3, 10)).astype(np.float32))
    out = E.emucupy.empty((3, 10), np.float64)
    ws = be.workspace()
    L = ws.device.row_launch(plans.ce_kernel_config(10, np.float32), 3, 10, 4)
    with pytest.raises(TypeError, match="gg_ce_f32_w2_k8: argument 3 is EmuArray float64, the parameter is pf4"):
        cuda_driver.launch_row_direct(E.emucupy, L, ws, S, dev([1, 2, 3]), 1, out)


def test_direct_call_path_gives_each_thread_its_own_parameter_block(be, monkeypatch):
    """A block is filled and launched within one call; two threads never fill the same one."""
    import threading
    blocks = []
    # Keep the other thread's block itself, not just its address: a thread's locals are freed
    # when it ends, and the allocator may hand the same address to this thread's block.
    thread = threading.Thread(target=lambda: blocks.append(cuda_driver.direct(E.emucupy).argv))
    thread.start(), thread.join()
    assert ctypes.addressof(blocks[0]) != cuda_driver.direct(E.emucupy).argv_ptr


@pytest.mark.parametrize("variant", ["stream", "prefetch", "block"])
@pytest.mark.parametrize("C", [8193, 9002, 16384, 20000, 32768])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_long_rows_every_kernel(be, variant, C, dtype, monkeypatch, rng):
    """n above the small card's 6 SMs (the persistent kernels' next-row path); C odd, even, and a
    multiple of 4 (16-byte pieces); int32 labels; S and dS 8 bytes past a 16-byte boundary."""
    be = be._with_variants(ce_long_rows=variant)
    n = 9 if C * np.dtype(dtype).itemsize <= 131072 else 2
    S = rng.standard_normal((n, C)) * 3
    y = rng.integers(0, C, n).astype(np.int32)
    y[0] = np.argmax(S[0])  # a row whose target is its max
    ref_loss, ref_dS = NP.softmax_cross_entropy_grad(S, y)
    for offset in (0, 8):
        buf = E.emucupy.full(2 * n * C + 4, np.nan, dtype)
        start = (-buf.data.ptr % 16 + offset) // np.dtype(dtype).itemsize
        S_dev = buf[start:start + n * C].reshape(n, C)
        S_dev[...] = dev(S.astype(dtype))
        out = buf[start + n * C:start + 2 * n * C].reshape(n, C)
        assert S_dev.data.ptr % 16 == offset
        be.launches.clear()
        got_loss, got_dS = be.softmax_cross_entropy_grad(S_dev, dev(y), out=out)
        if variant == "prefetch" and C == 16384:  # 16-byte pieces where aligned, else the streamed kernel
            assert be.launches[0].split("_")[3][0] == ("p" if offset == 0 else "s"), be.launches
        assert rel(got_dS, ref_dS) <= TOL[dtype]
        assert abs(float(got_loss) - ref_loss) <= TOL[dtype] * abs(ref_loss)


@pytest.mark.parametrize("variant", ["stream", "prefetch", "block"])
def test_long_rows_keep_nan(be, variant, monkeypatch, rng):
    """A NaN score makes its row's gradient and the loss NaN, as in numpy (with validate=False
    nothing stops it earlier), even where one thread's values are all NaN."""
    be = be._with_variants(ce_long_rows=variant)
    n, C = 3, 9000
    S = rng.standard_normal((n, C)).astype(np.float32)
    first_thread = (4 * (np.arange(0, C, 4 * 640)[:, None] // 4) + np.arange(4)).ravel()  # thread 0's pieces
    S[1, first_thread[first_thread < C]] = np.nan
    y = np.array([0, 5, 7])
    ref_loss, ref_dS = NP.softmax_cross_entropy_grad(S.astype(np.float64), y)
    loss, dS = be.softmax_cross_entropy_grad(dev(S), dev(y))
    assert np.isnan(float(loss)) and np.isnan(ref_loss)
    assert np.isnan(host(dS)[1]).all() and np.isnan(ref_dS[1]).all()
    assert np.isfinite(host(dS)[[0, 2]]).all()


def test_rows_past_the_cards_shared_memory_take_a_block_per_row(monkeypatch, rng):
    """A card with 99 KB of shared memory a block (sm_86): 30000 floats cannot stay in it."""
    E.use(None)
    S, y = rng.standard_normal((8, 30000)), rng.integers(0, 30000, 8)
    ref_loss, ref_dS = NP.softmax_cross_entropy_grad(S, y)
    for variant in ("stream", "prefetch"):
        be = E.emulated_backend(monkeypatch, card=dict(sm_count=6, smem_optin=101376, cc=86),
                                variants={"ce_long_rows": variant})
        loss, dS = be.softmax_cross_entropy_grad(dev(S.astype(np.float32)), dev(y))
        assert be.launches[0] == "gg_ce_f32_b_k32"
        assert rel(dS, ref_dS) <= 1e-5 and abs(float(loss) - ref_loss) <= 1e-5 * ref_loss


@pytest.mark.parametrize("C,long_rows", [(10, None), (3000, None), (20000, "stream"), (20000, "prefetch"),
                                         (8196, "prefetch")])
def test_row_loss_kernels_agree_bit_for_bit_in_every_thread_order(be, C, long_rows, monkeypatch, rng):
    if long_rows:
        be = be._with_variants(ce_long_rows=long_rows)
    S, y = dev(rng.standard_normal((7, C)).astype(np.float32)), dev(rng.integers(0, C, 7))
    runs = []
    for order, deferred in MODES:
        E.configure(order, 11, deferred)
        loss, dS = be.softmax_cross_entropy_grad(S, y)
        runs.append((host(loss), host(dS)))
    for loss, dS in runs[1:]:
        assert np.array_equal(loss, runs[0][0]) and np.array_equal(dS, runs[0][1])


# ---- the compiled step's kernels: the same bits in every thread order ----------------------------------
# Inputs uniform in (0, 1): two reductions in a row through one scratch leave different values in
# it, so a reduction that lost its leading barrier would change the result under some order (the
# runahead order too: tests/test_kernel_edges.py's RUNAHEAD families).
MLP_RUNS = {
    "gather u8": lambda be, rng: check_gather(be, dev, rng, "u8"),
    "layer": lambda be, rng: check_layer(be, dev, rng, np.float32, True, s=rng.uniform(0, 1, (13, 40)),
                                         dh=rng.uniform(0, 1, (13, 40))),
    "layer without batch norm": lambda be, rng: check_layer(be, dev, rng, np.float32, False,
                                                            s=rng.uniform(-1, 1, (13, 40)), dh=rng.uniform(0, 1, (13, 40))),
    "scores_loss softmax": lambda be, rng: check_scores_loss(be, dev, rng, np.float32, 10, "softmax", True,
                                                             S=rng.uniform(0, 1, (30, 10))),
    "scores_loss svm, 2 a lane": lambda be, rng: check_scores_loss(be, dev, rng, np.float32, 40, "svm", True,
                                                                   S=rng.uniform(0, 1, (30, 40))),
    "update adam": lambda be, rng: check_update(be, dev, rng, np.float32, "adam"),
    "update nesterov": lambda be, rng: check_update(be, dev, rng, np.float64, "nesterov"),
}


@pytest.mark.parametrize("run", list(MLP_RUNS))
def test_compiled_step_kernels_agree_bit_for_bit_in_every_thread_order(be, run):
    results = []
    try:
        for order, deferred, seed in [(o, d, 5) for o, d in MODES] + [("runahead", True, 1)]:
            E.configure(order, seed, deferred)
            results.append(MLP_RUNS[run](be, np.random.default_rng(11)))
    finally:
        E.configure("forward", 1, True)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert (a is None and b is None) or np.array_equal(a, b, equal_nan=True)


# ---- the fused linear step: both kernels ("simt", "mma"), both X types ---------------------------------
def _linear_inputs(rng, kind, n, d, C, wscale=0.05, mean=None):
    """(float64 reference inputs, the kernels' inputs on the emulated device): X, y, W, b, x_mean, x_std."""
    ref, args = linear_case(rng, kind, n, d, C, wscale, mean)
    return ref, tuple(None if a is None else dev(a) for a in args)


def _check_linear(be, ref_args, args, loss, lam=0.01):
    got = be.linear_grad(*args[:4], lam, loss, *args[4:])
    check_linear_step(ref_args, got, loss, lam)
    return got


@pytest.fixture(params=["simt", "mma"])
def variant(request):
    return request.param


@pytest.fixture
def vbe(be, variant):
    """The emulated backend with the fused linear step on the `variant` kernel."""
    return be._with_variants(linear_f32=variant, linear_u8=variant)


@pytest.mark.parametrize("n,d,C,loss", [(1, 5, 1, "softmax"), (3, 7, 2, "svm"), (700, 131, 10, "softmax"),
                                        (300, 3072, 10, "svm"), (513, 100, 16, "softmax"), (200, 784, 9, "svm"),
                                        (129, 33, 5, "softmax"), (100, 3072, 8, "softmax")])
@pytest.mark.parametrize("xtype", ["f32", "u8"])
def test_linear_step_kernels(vbe, variant, xtype, n, d, C, loss, rng):
    ref_args, args = _linear_inputs(rng, xtype, n, d, C, wscale=0.05 if xtype == "f32" else 0.01)
    plan = (vbe.linmma_plan if variant == "mma" else vbe.linear_plan)(args[0], args[2], args[4])
    assert plan is not None  # the fused kernel runs, not the inherited matmul path
    _check_linear(vbe, ref_args, args, loss)


@pytest.mark.parametrize("xtype", ["f32", "u8"])
def test_linear_step_kernels_agree_bit_for_bit_in_every_thread_order(vbe, xtype, rng):
    """The same bits whichever thread runs first and whenever the copies land: no missing barrier,
    no read of a tile before its cp.async wait, partial sums in a fixed order."""
    _agree_in_every_thread_order(vbe, *_linear_inputs(rng, xtype, 300, 200, 10)[1])


@pytest.mark.parametrize("n,d,C,loss", [(1, 5, 1, "softmax"), (3, 7, 2, "svm"), (700, 131, 10, "softmax"),
                                        (300, 1023, 10, "svm"), (513, 100, 16, "softmax"), (200, 784, 9, "svm"),
                                        (129, 33, 5, "softmax"), (100, 2047, 4, "svm")])
@pytest.mark.parametrize("kind", ["f32n", "f64", "f64n", "u8f64"])
def test_linear_step_kernel_for_each_other_kind_of_x(be, kind, n, d, C, loss, rng):
    """float32 X normalised on the fly, float64 X plain and normalised, uint8 X under float64
    weights: the "simt" kernel only."""
    ref_args, args = _linear_inputs(rng, kind, n, d, C)
    plan = be.linear_plan(args[0], args[2], args[4])
    assert plan is not None and plan["name"] == f"gg_linear_{kind}_c{C}"
    _check_linear(be, ref_args, args, loss)
    assert be.launches[-2:] == [plan["name"], "gg_linear_finish" + ("" if kind == "f32n" else "_f64")]


@pytest.mark.parametrize("kind", ["f32n", "f64n", "u8f64"])
def test_linear_step_kernel_for_each_other_kind_agrees_in_every_thread_order(be, kind, rng):
    _agree_in_every_thread_order(be, *_linear_inputs(rng, kind, 100, 150, 7)[1])


@pytest.mark.parametrize("kind", ["f32", "f32n", "u8", "f64", "f64n", "u8f64"])
@pytest.mark.parametrize("loss", ["softmax", "svm"])
def test_linear_step_kernel_turns_a_bad_label_into_nan(be, kind, loss, rng):
    """With validation off a label out of range reaches the kernel: the loss is NaN, and the label
    is never used as an index (the emulator would catch the stray read)."""
    _, args = _linear_inputs(rng, kind, 9, 20, 5)
    for bad in (-1, 5):
        y = host(args[1])
        y[4] = bad
        be.launches.clear()
        J = be.linear_grad(args[0], dev(y), *args[2:4], 0.01, loss, *args[4:])[0]
        assert be.launches[0].startswith(f"gg_linear_{kind}_c5") and np.isnan(float(J))


def _agree_in_every_thread_order(be, *args):
    runs = []
    for order, deferred in MODES:
        E.configure(order, 5, deferred)
        runs.append([host(a) for a in be.linear_grad(*args[:4], 0.01, "softmax", *args[4:])])
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert np.array_equal(a, b)


def test_uint8_tensor_core_kernel_with_offset_means_and_tiny_weights(be, monkeypatch, rng):
    """Means far outside the pixel range (offsets clamp to 0..255) and weights near float32's small end."""
    be = be._with_variants(linear_u8="mma")
    n, d, C = 150, 300, 10
    mean = rng.uniform(-400, 700, d)
    for wscale in (1e-2, 1e-30):
        ref_args, args = _linear_inputs(rng, "u8", n, d, C, wscale=wscale, mean=mean)
        _check_linear(be, ref_args, args, "softmax")


@pytest.mark.parametrize("xtype", ["f32", "u8"])
def test_linear_step_stages_x_from_an_unaligned_address(vbe, xtype, rng):
    """X that starts 4 bytes past a 16-byte boundary: the kernels copy 4 bytes at a time (uint8
    rows of d % 4 == 0), or one element (odd d), never a misaligned 16-byte cp.async."""
    for d in (64, 67):
        ref_args, args = _linear_inputs(rng, xtype, 70, d, 10)
        _check_linear(vbe, ref_args, (_moved(args[0], 4), *args[1:]), "softmax")


def _moved(X, offset):
    """A device copy of the device array X starting `offset` bytes past a 16-byte boundary."""
    buf = E.emucupy.empty(X.nbytes + 32, np.uint8)
    start = (-buf.data.ptr) % 16 + offset
    moved = buf[start:start + X.nbytes].view(X.dtype).reshape(X.shape)
    moved[...] = X
    assert moved.data.ptr % 16 == offset
    return moved


def test_float64_x_off_a_16_byte_boundary(be, rng):
    """8 bytes past: the kernel copies one element at a time; 4 bytes past (not even aligned to its
    elements): the inherited path, never the kernel."""
    for d in (64, 67):
        ref_args, args = _linear_inputs(rng, "f64n", 70, d, 10)
        be.launches.clear()
        _check_linear(be, ref_args, (_moved(args[0], 8), *args[1:]), "softmax")
        assert be.launches[0] == "gg_linear_f64n_c10"
        assert be.linear_plan(_moved(args[0], 4), args[2], args[4]) is None


def test_misaligned_copies_are_an_error(be, monkeypatch, rng):
    monkeypatch.setattr(plans, "copy_align", lambda row_bytes, ptr, itemsize: 16)  # 16-byte copies of 20-byte rows
    _, args = _linear_inputs(rng, "u8", 10, 20, 3)
    with pytest.raises(E.EmulatorError, match="cp.async with an address not aligned"):
        be.linear_grad(*args[:4], 0.01, "softmax", *args[4:])


def test_arguments_of_the_wrong_type_are_an_error(be, rng):
    f = be.kernel("gg_linear_finish")
    with pytest.raises(TypeError, match="argument 0 .* the parameter is pf4"):
        f((1,), (256,), tuple(dev(np.zeros(4, np.float64)) for _ in f.signature))


def _dummy_args(f):
    """Arguments of the right types for kernel f (arrays of zeros, zero scalars): for launches that
    must be refused before the kernel runs."""
    dtypes = {"f": "float", "i": "int", "u": "uint"}
    out = []
    for kind in f.signature:
        if kind.startswith("p"):
            dtype = np.uint8 if kind == "pv0" else np.dtype(f"{dtypes[kind[1]]}{8 * int(kind[2:])}")
            out.append(dev(np.zeros(8, dtype)))
        else:
            out.append(np.dtype(f"{dtypes[kind[0]]}{8 * int(kind[1:])}").type(0))
    return tuple(out)


def test_strided_labels_reach_the_kernels_contiguous(be, rng):
    """y[::2] is copied before a launch (a kernel given a strided array reads from its base pointer,
    and the emulator refuses one)."""
    S = rng.standard_normal((50, 7))
    y_all = rng.integers(0, 7, 100)
    ref = NP.softmax_cross_entropy_grad(S, y_all[::2])
    loss, dS = be.softmax_cross_entropy_grad(dev(S), dev(y_all)[::2])
    assert rel(dS, ref[1]) <= 1e-12 and abs(float(loss) - ref[0]) <= 1e-12 * ref[0]
    f = be.kernel("gg_first_invalid")
    args = list(_dummy_args(f))
    args[0] = dev(y_all)[::2]
    with pytest.raises(TypeError, match="argument 0 is a strided array"):
        f((1,), (256,), tuple(args))


def test_launches_past_the_kernels_limits_are_errors(be):
    f = be.kernel("gg_ce_f32_p640_k52")
    with pytest.raises(E.EmulatorError, match=r"__launch_bounds__ \(640\)"):
        f((1,), (1024,), _dummy_args(f), shared_mem=32)
    f.max_dynamic_shared_size_bytes = 300_000
    with pytest.raises(E.EmulatorError, match="more dynamic shared memory than a block can have"):
        f((1,), (640,), _dummy_args(f), shared_mem=240_000)
    g = be.kernel("gg_linmma_u8_nt1")
    with pytest.raises(E.EmulatorError, match="whole number of clusters"):
        g((6,), (512,), _dummy_args(g))


def test_device_side_check_finds_the_first_bad_label_and_value(be, rng):
    y = np.array([0, 1, 2, 3, 9, 0, -1])
    S = rng.standard_normal((7, 4))
    S[2, 3] = np.inf
    S[5, 0] = np.nan
    label_pos, bad = be.first_invalid(dev(y), 4, [dev(S), dev(S.astype(np.float32)), dev(np.ones(3))])
    assert label_pos == 4
    assert bad == [11, 11, -1]


# ---- the emulator itself: bugs planted in the kernels are caught -------------------------------------
def _replace(old, new, *only):
    """A mutation: `old` (in the source exactly once) replaced by `new`; built with only the kernels
    named with one of the prefixes `only` (``emu.build.only``), the ones its test launches."""
    def mutate(text):
        assert text.count(old) == 1, f"the mutation's target is not in the source once: {old!r}"
        return text.replace(old, new)
    return build.only(mutate, *only) if only else mutate


PLANTED = {
    "the uint8 kernel reuses its tile without a barrier": ("u8", _replace(
        "__syncthreads();  // the tile, Spart and Gs are free for the next iteration", "", "gg_linmma_")),
    "a tile is read before its cp.async wait": ("f32", _replace("    gg_cp_async_wait_one();\n", "", "gg_linmma_")),
    "a transposed fragment takes the wrong registers": ("u8", _replace(
        "GG_HD int gg_mma_t_reg(int r) { return ((r & 1) << 1) | (r >> 1); }",
        "GG_HD int gg_mma_t_reg(int r) { return r; }", "gg_linmma_")),
    "a barrier only some threads reach": ("u8", _replace(
        "    __syncthreads();\n    float* sx = Sx + stage * R * 16;",
        "    if (threadIdx.x < 32) __syncthreads();\n    float* sx = Sx + stage * R * 16;", "gg_linmma_")),
    "G is read before every thread has written it": ("f32", _replace(
        "            Gs[(NC + c) * GST + r] = __uint_as_float(lo);\n        }\n        __syncthreads();",
        "            Gs[(NC + c) * GST + r] = __uint_as_float(lo);\n        }", "gg_linmma_")),
}


PLANTED["the next long row streams in while the current one is still read"] = ("prefetch", _replace(
    "        __syncthreads();  // buf is read: the next row may stream in while this one is worked on\n", "",
    "gg_ce_f32_p"))
PLANTED["two halves of a block wait at different barriers"] = ("prefetch", _replace(
    "        __syncthreads();  // every thread's pieces of this row have landed\n",
    "        if (threadIdx.x & 32) {\n            __syncthreads();\n        } else {\n            __syncthreads();\n        }\n",
    "gg_ce_f32_p"))
PLANTED["a row is parked one entry too far"] = ("stream", _replace(
    "            if (idx < C) row_s[idx] = v[j];", "            if (idx < C) row_s[idx + 1] = v[j];", "gg_ce_f32_s"))


def _planted_bug_run(kernel, rng):
    """(the variants that launch `kernel`, a check that fails (AssertionError, EmulatorError) where
    it computes a wrong result)."""
    if kernel in ("prefetch", "stream"):
        S, y = rng.standard_normal((20, 9000)), rng.integers(0, 9000, 20)  # 3 or 4 rows a block
        ref_loss, ref_dS = NP.softmax_cross_entropy_grad(S, y)

        def run(be):
            loss, dS = be.softmax_cross_entropy_grad(dev(S.astype(np.float32)), dev(y))
            assert rel(dS, ref_dS) <= 1e-5 and abs(float(loss) - ref_loss) <= 1e-5 * ref_loss
        return {"ce_long_rows": kernel}, run
    n = 700 if kernel == "u8" else 300  # 3 or 4 tiles per cluster: each stage is refilled while in use
    ref_args, args = _linear_inputs(rng, kernel, n, 200, 10)
    return {"linear_f32": "mma", "linear_u8": "mma"}, lambda be: _check_linear(be, ref_args, args, "softmax")


ONE_PAST = _replace("            if (idx < C) g[idx] = gg_ce_grad(idx == r.yv, v[j], others, scale);",
                    "            if (idx <= C) g[idx] = gg_ce_grad(idx == r.yv, v[j], others, scale);", "gg_ce_f32_w")


@pytest.mark.parametrize("path", ["cupy", "direct"])
def test_a_write_just_past_an_array_is_caught(path, monkeypatch, rng):
    """The small-C softmax kernel writing one entry past each row: the last row's lands in the poison
    after dS (3 x 10 floats end 8 bytes before the guard page), through either call path."""
    E.use(ONE_PAST)
    try:
        be = E.emulated_backend(monkeypatch, variants={"row_call": path})
        with pytest.raises(E.EmulatorError, match="gg_ce_f32_w2_k8: a write past the end of argument 3"):
            be.softmax_cross_entropy_grad(dev(rng.standard_normal((3, 10)).astype(np.float32)), dev([1, 2, 3]))
    finally:
        E.use(None)


def test_a_write_into_the_guard_page_names_the_kernel(tmp_path):
    """2 x 6 floats end at the guard page: the same bug is a SIGSEGV, reported with the kernel's name
    (in a process of its own)."""
    E.use(ONE_PAST)
    try:
        E.library()  # built here, cached for the child
    finally:
        E.use(None)
    script = tmp_path / "crash.py"
    script.write_text(f"""
import sys, numpy as np, pytest
sys.path[:0] = {[str(Path(__file__).parent), str(Path(__file__).parent.parent)]!r}
import test_emulated_kernels as T
from emu import emulator as E
E.use(T.ONE_PAST)
be = E.emulated_backend(pytest.MonkeyPatch())
be.softmax_cross_entropy_grad(E.emucupy.asarray(np.ones((2, 6), np.float32)), E.emucupy.asarray([1, 2]))
""")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "GPUGRAD_EMU_CACHE": str(build_cache())})
    assert r.returncode == -signal.SIGSEGV, r.stderr[-2000:]
    assert "gg_emu: segmentation fault in kernel gg_ce_f32_w1_k8" in r.stderr


@pytest.fixture(scope="module")
def planted_builds():
    E.prebuild([mutate for _, mutate in PLANTED.values()])


@pytest.mark.parametrize("bug", list(PLANTED))
def test_the_emulator_catches_a_planted_bug(bug, planted_builds, monkeypatch, rng):
    kernel, mutate = PLANTED[bug]
    variants, run = _planted_bug_run(kernel, rng)
    E.use(mutate)
    try:
        be = E.emulated_backend(monkeypatch, variants=variants)
        for order, deferred in MODES:
            E.configure(order, 3, deferred)
            try:
                run(be)
            except (AssertionError, E.EmulatorError):
                return  # caught
        pytest.fail(f"planted bug not caught in any thread order or copy timing: {bug}")
    finally:
        E.use(None)

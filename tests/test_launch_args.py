"""Every kernel launch of the CuPy backend matches the kernel's signature, without a GPU.

CuPy passes launch arguments by their Python types (numpy scalars, device arrays), and a wrong
count, order or width is a silent garbage read on the device. Here CuPy's array functions are
replaced by small fakes, every launch the backend makes is recorded, and each is checked against
the kernel's .entry in the PTX that NVRTC compiles (no driver needed): parameter count and types,
block size against .maxntid, grid against the cluster size (.reqnctapercluster), dynamic shared
memory against the card's limit.
"""
import math
import re

import numpy as np
import pytest

import deps

cupy = deps.require("cupy", "CuPy (with NVRTC) is needed")
deps.need(deps.nvrtc_problem() is None, str(deps.nvrtc_problem()))

from fake_cupy import FAKE_CUPY, H100, FakeArray, fake_backend  # noqa: E402
from gpugrad.backends import cupy_backend as cb  # noqa: E402
from gpugrad.backends import kernels, plans  # noqa: E402

@pytest.fixture(scope="module")
def entries():
    """{kernel: (param types, maxntid or None, cluster size or None)} from the sm_90 PTX."""
    ptx, _ = kernels.compile_nvrtc("compute_90")
    text = ptx.decode() if isinstance(ptx, bytes) else ptx
    out = {}
    for m in re.finditer(r"\.entry\s+(\w+)\(([^)]*)\)([^{]*)\{", text):
        params = re.findall(r"\.param\s+\.(\w+)\s", m.group(2))
        maxntid = re.search(r"\.maxntid\s+(\d+)", m.group(3))
        cluster = re.search(r"\.reqnctapercluster\s+(\d+)", m.group(3))
        out[m.group(1)] = (params, maxntid and int(maxntid.group(1)), cluster and int(cluster.group(1)))
    return out


@pytest.fixture
def backend(monkeypatch):
    return fake_backend(monkeypatch)


PTX_TYPE = {np.dtype(np.int32): "u32", np.dtype(np.int64): "u64", np.dtype(np.uint64): "u64",
            np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}


def _ptx_type(arg):
    if isinstance(arg, FakeArray):
        return "u64"  # a device pointer
    if isinstance(arg, np.generic):
        return PTX_TYPE[arg.dtype]
    raise AssertionError(f"argument {arg!r} is a plain Python {type(arg).__name__}: its width is CuPy's guess")


def _check(be, entries):
    assert be.launches, "nothing was launched"
    for ln in be.launches:
        assert ln.name in entries, f"{ln.name} is not an entry point of the module"
        params, maxntid, cluster = entries[ln.name]
        got = [_ptx_type(a) for a in ln.args]
        assert got == params, f"{ln.name}: arguments {got}, kernel takes {params}"
        threads = math.prod(ln.block)
        assert threads % 32 == 0 and threads <= (maxntid or 1024), f"{ln.name}: {ln.block} threads"
        if cluster:
            assert ln.grid[0] % cluster == 0, f"{ln.name}: grid {ln.grid} not a multiple of its cluster {cluster}"
        assert ln.smem <= ln.smem_limit, f"{ln.name}: {ln.smem} B of dynamic shared memory, limit not raised"
        assert ln.smem + 1024 <= H100["smem_optin"], f"{ln.name}: {ln.smem} B of shared memory"
        if ln.name.startswith(("gg_linmma_u8_nt", "gg_linmma_f32_nt")):
            assert threads == cb.LINMMA_THREADS
    be.launches.clear()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("C", [1, 2, 10, 33, 1000, 1025, 9000, 20000, 32768, 40000, 100000])
@pytest.mark.parametrize("n", [1, 8192])
@pytest.mark.parametrize("long_rows", ["stream", "prefetch", "block"])
def test_row_loss_launches(backend, entries, n, C, dtype, long_rows, monkeypatch):
    backend = backend._with_variants(ce_long_rows=long_rows)
    S, y = FakeArray((n, C), dtype), FakeArray(n, np.int64)
    backend.softmax_cross_entropy_grad(S, y)
    backend.softmax_cross_entropy_grad(S, FakeArray(n, np.int32), out=FakeArray((n, C), dtype))
    backend.svm_grad(S, y)
    _check(backend, entries)


@pytest.mark.parametrize("variant", ["simt", "mma"])
@pytest.mark.parametrize("n,d,C", [(1, 5, 1), (3, 7, 2), (65537, 131, 10), (1000, 3071, 10), (513, 100, 16),
                                   (4099, 3072, 10), (70, 784, 9), (129, 33, 5), (10, 3072, 8)])
@pytest.mark.parametrize("loss", ["softmax", "svm"])
def test_linear_step_launches(backend, entries, variant, n, d, C, loss):
    backend = backend._with_variants(linear_f32=variant, linear_u8=variant)
    y, W, b = FakeArray(n, np.int64), FakeArray((C, d), np.float32), FakeArray(C, np.float32)
    X, Xu = FakeArray((n, d), np.float32), FakeArray((n, d), np.uint8)
    mean, std = FakeArray(d, np.float32), FakeArray(d, np.float32)
    if variant == "mma":
        assert backend.linmma_plan(X, W, None) is not None and backend.linmma_plan(Xu, W, mean) is not None
    else:
        assert backend.linear_plan(X, W, None) is not None and backend.linear_plan(Xu, W, mean) is not None
    backend.linear_grad(X, y, W, b, 0.01, loss)
    backend.linear_grad(Xu, y, W, b, 0.01, loss, mean, std)
    names = [ln.name for ln in backend.launches]
    if variant == "mma":
        nt = 1 if C <= 8 else 2
        assert names == ["gg_linmma_prep_f32", f"gg_linmma_f32_nt{nt}", "gg_linmma_finish",
                         "gg_linmma_prep", f"gg_linmma_u8_nt{nt}", "gg_linmma_finish"]
    else:
        assert names == [f"gg_linear_f32_c{C}", "gg_linear_finish", f"gg_linear_u8_c{C}", "gg_linear_finish"]
        assert all(ln.args[7] == cb._NULL for ln in backend.launches[::2])  # no weights: a null pointer
    _check(backend, entries)


@pytest.mark.parametrize("n,d,C", [(1, 5, 1), (3, 7, 2), (65537, 131, 10), (1000, 1023, 10), (513, 100, 16),
                                   (70, 784, 9), (129, 2047, 4)])
@pytest.mark.parametrize("loss", ["softmax", "svm"])
def test_linear_step_launches_for_the_other_kinds_of_x(backend, entries, n, d, C, loss):
    """float32 X normalised on the fly; float64 X, plain and normalised; uint8 X under float64
    weights: the "simt" kernels and the float64 finish."""
    y = FakeArray(n, np.int64)
    for dtype in (np.float32, np.float64):
        X, W, b = FakeArray((n, d), dtype), FakeArray((C, d), dtype), FakeArray(C, dtype)
        if dtype == np.float64:
            backend.linear_grad(X, y, W, b, 0.01, loss)
        backend.linear_grad(X, y, W, b, 0.01, loss, FakeArray(d, dtype), FakeArray(d, dtype))
    W, b, norm = FakeArray((C, d), np.float64), FakeArray(C, np.float64), FakeArray(d, np.float64)
    backend.linear_grad(FakeArray((n, d), np.uint8), y, W, b, 0.01, loss, norm, norm)
    names = [ln.name for ln in backend.launches]
    assert names == [f"gg_linear_f32n_c{C}", "gg_linear_finish", f"gg_linear_f64_c{C}", "gg_linear_finish_f64",
                     f"gg_linear_f64n_c{C}", "gg_linear_finish_f64", f"gg_linear_u8f64_c{C}", "gg_linear_finish_f64"]
    _check(backend, entries)


@pytest.mark.parametrize("variant", ["simt", "mma"])
@pytest.mark.parametrize("n,d,C", [(1, 5, 1), (65537, 131, 10), (513, 100, 16), (70, 784, 9)])
def test_weighted_linear_step_launches(backend, entries, variant, n, d, C):
    """sample_weight reaches every kind's simt kernel as its per-row weight pointer (float64 weights
    converted to a float32 step's dtype); with "mma" chosen, a weighted step still takes simt."""
    backend = backend._with_variants(linear_f32=variant, linear_u8=variant)
    y = FakeArray(n, np.int64)
    for dtype in (np.float32, np.float64):
        X, W, b, norm = FakeArray((n, d), dtype), FakeArray((C, d), dtype), FakeArray(C, dtype), FakeArray(d, dtype)
        w = FakeArray(n, np.float64)
        backend.linear_grad(X, y, W, b, 0.01, "softmax", sample_weight=w)
        backend.linear_grad(X, y, W, b, 0.01, "svm", norm, norm, sample_weight=w)
        backend.linear_grad(FakeArray((n, d), np.uint8), y, W, b, 0.01, "softmax", norm, norm, sample_weight=w)
    names = [ln.name for ln in backend.launches]
    fin, fin64 = "gg_linear_finish", "gg_linear_finish_f64"
    assert names == [f"gg_linear_f32_c{C}", fin, f"gg_linear_f32n_c{C}", fin, f"gg_linear_u8_c{C}", fin,
                     f"gg_linear_f64_c{C}", fin64, f"gg_linear_f64n_c{C}", fin64, f"gg_linear_u8f64_c{C}", fin64]
    for ln in backend.launches[::2]:
        weight = ln.args[7]
        assert isinstance(weight, FakeArray) and weight.shape == (n,) and weight.dtype == ln.args[3].dtype
    _check(backend, entries)


@pytest.mark.parametrize("C,d_max", [(1, 2048), (4, 2048), (5, 1024), (10, 1024), (16, 1024)])
def test_float64_rows_the_fused_step_takes(backend, C, d_max):
    """float64 keeps 2 or 4 columns a thread (its values take two registers), 512 threads: longer
    rows take the inherited path. uint8 X under float64 weights has the same limits."""
    f64 = np.float64
    for d, fused in ((d_max, True), (d_max + 1, False)):
        plan = backend.linear_plan(FakeArray((100, d), f64), FakeArray((C, d), f64), None)
        assert (plan is not None) == fused, d
        plan = backend.linear_plan(FakeArray((100, d), np.uint8), FakeArray((C, d), f64), FakeArray(d, f64))
        assert (plan is not None) == fused, d


@pytest.mark.parametrize("narrays", [0, 1, 4, 5, 9])
def test_device_check_launches(backend, entries, narrays):
    arrays = [FakeArray((10, 3), np.float32 if i % 2 else np.float64) for i in range(narrays)]
    assert backend.first_invalid(FakeArray(10, np.int64), 3, arrays) == (-1, [-1] * narrays)
    _check(backend, entries)


def test_planning_knows_exactly_the_kernels_the_ptx_defines(entries):
    """plans.entry_points() expands the sources' instantiation macros: the same set NVRTC compiles,
    so planning picks only among kernels that exist, from the one source."""
    assert plans.entry_points() == set(entries)
    assert plans.LINMMA_THREADS == entries["gg_linmma_u8_nt1"][1]
    for x in ("u8", "f32"):
        assert plans.LINMMA[x].cluster == entries[f"gg_linmma_{x}_nt1"][2]


def test_variants_are_frozen_options_of_the_backend_with_measured_defaults(monkeypatch):
    """A backend's variants are the measured row for its card's architecture unless given to that
    backend, and a misspelt switch or variant is refused."""
    assert fake_backend(monkeypatch).variants == plans.default_variants(90) == plans.MEASURED[90]
    assert fake_backend(monkeypatch, card=dict(H100, cc=86)).variants == plans.MEASURED[80]
    assert fake_backend(monkeypatch, card=dict(H100, cc=100)).variants == plans.MEASURED[90]
    be = fake_backend(monkeypatch, variants={"ce_long_rows": "block"})
    assert be.variants.ce_long_rows == "block" and fake_backend(monkeypatch).variants.ce_long_rows == "stream"
    with pytest.raises(AttributeError):
        be.variants.ce_long_rows = "stream"
    with pytest.raises(ValueError, match="ce_long_rows='fast' is not a variant"):
        cb.CupyBackend(_variants={"ce_long_rows": "fast"})
    with pytest.raises(ValueError, match="unknown kernel variant switch 'long_rows'"):
        be._with_variants(long_rows="block")


def test_each_device_gets_its_own_kernels_card_and_scratch(monkeypatch, entries):
    """Under `with cupy.cuda.Device(1)` the backend plans for device 1's card and launches kernels
    loaded on device 1; device 0's are untouched, and each device keeps its own workspace."""
    small = dict(sm_count=8, smem_optin=101376, cc=86)
    be = fake_backend(monkeypatch, cards={0: H100, 1: small})
    S, y = FakeArray((8192, 30000), np.float32), FakeArray(8192, np.int64)
    be.softmax_cross_entropy_grad(S, y)
    with FAKE_CUPY.cuda.Device(1):
        S1, y1 = FakeArray((8192, 30000), np.float32), FakeArray(8192, np.int64)
        be.softmax_cross_entropy_grad(S1, y1)
        ws1, f1 = be.workspace(), be.kernel("gg_ce_f32_b_k32")
        assert be.card.sm_count == 8
    ws0 = be.workspace()
    first, second = be.launches
    assert first.name == "gg_ce_f32_s1024_k32" and first.grid == (132,)
    # 30000 floats do not fit in an sm_86 block's shared memory: a block per row there
    assert second.name == "gg_ce_f32_b_k32" and second.grid == (8192,)
    assert ws0 is not ws1 and ws0.device.id == 0 and ws1.device.id == 1
    assert f1 is not be.kernel("gg_ce_f32_b_k32")  # a kernel object per device
    be.linear_grad(FakeArray((100, 784), np.float32), y, FakeArray((10, 784), np.float32),
                   FakeArray(10, np.float32), 0.01, "softmax")
    with FAKE_CUPY.cuda.Device(1):
        be.linear_grad(FakeArray((100, 784), np.float32), FakeArray(100, np.int64), FakeArray((10, 784), np.float32),
                       FakeArray(10, np.float32), 0.01, "softmax")
    assert [ln.grid for ln in be.launches[2::2]] == [(50,), (8,)]  # one block per SM at most
    _check(be, entries)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_step_launches(backend, entries, dtype):
    """The compiled step's kernels (kernels/mlp.cuh): the gather for each kind of X, a layer forward
    and backward with and without batch norm, the scores' loss for each width, the fused update for
    each rule, and the linear step reading its rows through an index array."""
    n, d, m = 100, 3072, 50
    t = "f32" if dtype == np.float32 else "f64"
    F = lambda *shape, dt=dtype: FakeArray(shape, dt)  # noqa: E731
    idx, y = F(n, dt=np.int64), F(50000, dt=np.int64)
    for X in (F(50000, d), F(50000, d, dt=np.uint8)):
        backend.gather_rows(X, idx, F(d), F(d), y, F(50000), (F(n, d), F(n, dt=np.int64), F(n)))
    backend.gather_rows(F(50000, d), None, None, None, y, None, (F(n, d), F(n, dt=np.int64), None))
    for bn in (True, False):
        stats = (F(m), F(m), F(m), F(m)) if bn else (None,) * 4
        backend.layer_forward(F(n, m), F(m), *stats, 0.1, 1e-5, (F(n, m), F(n, m) if bn else None, F(m) if bn else None))
        backend.layer_backward(F(n, m), F(n, m), F(n, m) if bn else None, stats[0], F(m) if bn else None,
                               (F(m) if bn else None, F(m) if bn else None, F(m)))
    for C in (10, 64, 100, 256, 1000):
        backend.scores_loss(F(n, C), F(C), F(n, dt=np.int64), F(n) if C % 2 else None, "softmax" if C < 200 else "svm",
                            (F(n, C), F()))
    N = 160000
    for rule, h, slots in (("sgd", (0.1,), ()), ("momentum", (0.1, 0.9), (F(N),)), ("nesterov", (0.1, 0.9), (F(N),)),
                           ("adam", (0.9, 0.1, 0.999, 0.001, 0.01, 1e-8), (F(N), F(N)))):
        backend.optimizer_update((rule, h), F(N), F(N), slots, 0.01, 150000, F(), F(2, 100, dt=np.float64), 7)
    backend.optimizer_update(("sgd", (0.1,)), F(N), F(N), ())
    backend.linear_step(F(50000, 1000), idx, y, F(10, 1000), F(10), "softmax", out=(F(), F(10, 1000), F(10)))
    names = [ln.name for ln in backend.launches]
    assert names == ([f"gg_gather_{t}", "gg_gather_u8" + ("" if t == "f32" else "f64"), f"gg_gather_{t}"]
                     + [f"gg_layer_fwd_{t}", f"gg_layer_bwd_{t}"] * 2
                     + [f"gg_scores_loss_{t}_k{K}" for K in (1, 2, 4, 8, 32)] + [f"gg_update_{t}"] * 5
                     + [f"gg_linear_{t}_c10", "gg_linear_finish" + ("" if t == "f32" else "_f64")])
    _check(backend, entries)

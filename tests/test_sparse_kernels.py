"""The sparse step's kernels (kernels/sparse_step.cuh) on the CPU emulator, beyond what
tests/test_kernel_coverage.py (every entry point) and tests/test_kernel_edges.py (numerical edges)
check: sample weights, the centring term, every thread order, and the cuSPARSE path past 32 classes.

Thread orders: the emulator switches threads only at barriers and warp collectives, so it cannot
show a lost update between two atomicAdds (on the card two lanes adding to one address at once);
what it can show is the order dependence itself. dW is summed by atomics, whose order the schedule
decides, so dW must agree across the forward, reverse, shuffled and runahead orders within float
rounding (not bit for bit), while J and db, summed through per-block partials in a fixed order,
must agree bit for bit.
"""
import platform
import shutil

import numpy as np
import pytest

import gpugrad as gg

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or shutil.which("g++") is None,
                                reason="the kernel emulator needs Linux (ucontext fibers) and g++")
pytest.importorskip("cupy", reason="the CuPy backend's host code imports cupy (no GPU needed)")

from emu import emu_sparse  # noqa: E402
from emu import emulator as E  # noqa: E402
from kernel_checks import check_sparse_step, host, rel, sparse_case, TOL  # noqa: E402

dev = E.emucupy.asarray


def _device(X, dtype):
    return emu_sparse.csr_matrix((dev(X.data.astype(dtype)), dev(X.indices), dev(X.indptr)), shape=X.shape)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("C", [5, 20])
def test_weights_and_centring_against_numpy(emulated_be, C, dtype, rng):
    """Per-row sample weights (a quarter of them 0) and x_mean with x_std, on a 300-entry row."""
    be = emulated_be
    X, y, W, b, std = sparse_case(rng, 19, 320, C, dtype, long_row=300)
    mean = rng.standard_normal(320) * 0.1
    w = rng.uniform(0, 3, 19) * (rng.uniform(size=19) > 0.25)
    for loss in ("softmax", "svm"):
        got = be.linear_grad(_device(X, dtype), dev(y), dev(W.astype(dtype)), dev(b.astype(dtype)), 0.05, loss,
                             dev(mean.astype(dtype)), dev(std.astype(dtype)), dev(w.astype(dtype)))
        check_sparse_step(X, y, W, b, got, loss, 0.05, x_mean=mean.astype(dtype).astype(np.float64), x_std=std,
                          sample_weight=w.astype(dtype).astype(np.float64))
    assert f"gg_sparse_{'f32' if dtype == np.float32 else 'f64'}_t{8 if C == 5 else 32}" in be.launches


@pytest.mark.parametrize("C", [3, 20])
def test_every_thread_order(emulated_be, C, rng):
    """J and db bit for bit, dW within rounding, under every order (60 rows over 6 blocks: rows of
    one block's warps interleave their atomics differently in each)."""
    be = emulated_be
    X, y, W, b, std = sparse_case(rng, 60, 50, C, np.float32)
    args = (_device(X, np.float32), dev(y), dev(W.astype(np.float32)), dev(b.astype(np.float32)), 0.01, "softmax",
            None, dev(std.astype(np.float32)))
    runs = []
    try:
        for order, seed in (("forward", 1), ("reverse", 1), ("shuffled", 3), ("runahead", 5), ("runahead", 6)):
            E.configure(order, seed, True)
            runs.append([host(a) for a in be.linear_grad(*args)])
    finally:
        E.configure("forward", 1, True)
    check_sparse_step(X, y, W, b, runs[0], "softmax", 0.01, x_std=std)
    for J, dW, db in runs[1:]:
        assert J == runs[0][0] and np.array_equal(db, runs[0][2])
        assert rel(dW, runs[0][1]) <= TOL[np.float32]


def test_more_classes_take_cusparse_around_the_fused_loss(emulated_be, rng):
    """Past 32 classes: the inherited formulas (on a card cuSPARSE's products) around the fused
    softmax kernel; no sparse row kernel."""
    be = emulated_be
    X, y, W, b, std = sparse_case(rng, 12, 30, 40, np.float32)
    got = be.linear_grad(_device(X, np.float32), dev(y), dev(W.astype(np.float32)), dev(b.astype(np.float32)), 0.01,
                         "softmax", None, dev(std.astype(np.float32)))
    check_sparse_step(X, y, W, b, got, "softmax", 0.01, x_std=std)
    assert not any(name.startswith("gg_sparse") for name in be.launches)
    assert be.launches[-1].startswith("gg_ce_f32")


def test_public_api_checks_on_the_device(monkeypatch, rng):
    """gg.linear_grad on a device CSR: the labels and the stored values are checked by the fused
    device-side pass (one read-back), a bad value named by row and column."""
    E.use(None)
    E.configure("forward", 1, True)
    be = emu_sparse.install(E.as_cuda_backend(monkeypatch))
    X, y, W, b, _ = sparse_case(rng, 20, 30, 4, np.float32)
    X.data[X.indptr[3]] = np.nan
    with pytest.raises(ValueError, match=rf"X contains NaN at row 3, column {X.indices[X.indptr[3]]}"):
        gg.linear_grad(_device(X, np.float32), dev(y), dev(W.astype(np.float32)), dev(b.astype(np.float32)))
    assert be.launches == ["gg_first_invalid"]

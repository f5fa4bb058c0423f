"""Per-row sample weights in the fused linear step, run on the CPU kernel emulator (tests/emu).

J = (1/n) sum_i w_i l_i + lam ||W||^2: row i's loss term and its row of dL/dS are multiplied by
w_i. The "simt" kernels gg_linear_<x>_c<C> read w (n,) in the compute dtype, or a null pointer for
no weights; the tensor-core kernels take none, so a weighted step never launches them; inputs no
fused kernel takes go to the inherited numpy-style path with the weights. Every kind of X and both
losses against the float64 numpy backend, an integer weight against repeating the row, weights of
1 against no weights bit for bit, and the weighted kernel in every thread order. No GPU needed.
"""

import numpy as np
import pytest

import deps
import gpugrad as gg

deps.need_emulator()  # Linux, g++ and cupy (no GPU); in CI their absence fails

from emu import emulator as E  # noqa: E402
from kernel_checks import LINEAR_KINDS, check_linear_step, db_scale, host, linear_case, sample_weights  # noqa: E402

NP = gg.get_backend("numpy")
dev = E.emucupy.asarray
KINDS = list(LINEAR_KINDS)
FINISH = {np.float32: "gg_linear_finish", np.float64: "gg_linear_finish_f64"}


@pytest.fixture
def be(emulated_be):
    return emulated_be


def _inputs(rng, kind, n, d, C):
    """(float64 reference inputs, the kernels' inputs on the emulated device): X, y, W, b, x_mean, x_std."""
    ref, args = linear_case(rng, kind, n, d, C, wscale=0.01 if kind.startswith("u8") else 0.05)
    return ref, tuple(None if a is None else dev(a) for a in args)


def _step(be, args, loss, sample_weight, lam=0.01):
    """be.linear_grad on the kernels' inputs, as numpy (J, dW, db)."""
    got = be.linear_grad(*args[:4], lam, loss, *args[4:], sample_weight=sample_weight)
    return [host(a) for a in got]


@pytest.mark.parametrize("n,d,C", [(1, 5, 1), (13, 9, 2), (130, 70, 10), (67, 33, 16)])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("loss", ["softmax", "svm"])
def test_weighted_step_of_every_kind_matches_the_float64_reference(be, kind, loss, n, d, C, rng):
    """Random weights in [0, 3), a quarter of them 0: the simt kernel of this kind, then its finish,
    within 1e-5 (float32) or 1e-12 (float64) of NumpyBackend.linear_grad with the weights."""
    ref_args, args = _inputs(rng, kind, n, d, C)
    w_ref, w = sample_weights(rng, n, kind)
    if n > 1:
        w[0] = w_ref[0] = 0.0  # at least one row that must drop out
    be.launches.clear()
    got = _step(be, args, loss, dev(w))
    check_linear_step(ref_args, got, loss, 0.01, sample_weight=w_ref)
    dtype = LINEAR_KINDS[kind][0]
    assert be.launches == [f"gg_linear_{kind}_c{C}", FINISH[dtype]]
    assert all(a.dtype == dtype for a in got)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("loss", ["softmax", "svm"])
def test_weights_of_one_give_the_unweighted_bits(be, kind, loss, rng):
    """w_r = 1 scales by exactly 1 (the G scale 1 * (1/n) is 1/n, the loss term l * 1 is l): J, dW
    and db equal the unweighted step's bit for bit."""
    _, args = _inputs(rng, kind, 70, 40, 7)
    plain = _step(be, args, loss, None)
    ones = _step(be, args, loss, dev(np.ones(70, LINEAR_KINDS[kind][0])))
    for a, b in zip(plain, ones):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("kind", ["f32", "u8f64"])
@pytest.mark.parametrize("loss", ["softmax", "svm"])
def test_an_integer_weight_counts_a_row_that_many_times(be, kind, loss, rng):
    """Independent of the reference's weighting: with integer weights w, the weighted sum over n
    rows equals the plain mean over the N = sum w rows with row i repeated w_i times, times N / n
    (J less its L2 term, dW less 2 lam W, db)."""
    n, d, C, lam = 40, 30, 6, 0.01
    ref_args, args = _inputs(rng, kind, n, d, C)
    w = rng.integers(0, 4, n)
    J, dW, db = _step(be, args, loss, dev(w.astype(LINEAR_KINDS[kind][0])), lam)
    X, y, W, b, mean, std = ref_args
    rep = np.repeat(np.arange(n), w)
    N = len(rep)
    J_rep, dW_rep, db_rep = NP.linear_grad(X[rep], y[rep], W, b, 0.0, loss, mean, std)
    tol = 1e-5 if dW.dtype == np.float32 else 1e-12
    l2 = lam * (W * W).sum()
    assert abs((float(J) - l2) - J_rep * N / n) <= tol * abs(J_rep * N / n) + tol * l2
    assert np.linalg.norm((dW - 2 * lam * W) - dW_rep * N / n) <= 10 * tol * np.linalg.norm(dW_rep * N / n)
    scale = db_scale(X[rep], y[rep], W, b, loss, mean, std) * N / n  # (db_rep cancels for some labels)
    assert np.linalg.norm(db - db_rep * N / n) <= 10 * tol * max(np.linalg.norm(db_rep * N / n), scale)


@pytest.mark.parametrize("kind", ["f32", "f64n"])
def test_all_zero_weights_leave_only_the_l2_term(be, kind, rng):
    """Every row weighted 0: J = lam ||W||^2, dW = 2 lam W, db = 0 exactly."""
    lam = 0.3
    ref_args, args = _inputs(rng, kind, 50, 20, 4)
    J, dW, db = _step(be, args, "softmax", dev(np.zeros(50, LINEAR_KINDS[kind][0])), lam)
    W = ref_args[2]
    tol = 1e-6 if dW.dtype == np.float32 else 1e-14
    assert np.all(db == 0)
    assert np.allclose(dW, 2 * lam * W, rtol=tol, atol=0)
    assert abs(float(J) - lam * (W * W).sum()) <= tol * lam * (W * W).sum()


def test_weights_given_strided_or_in_another_dtype_reach_the_kernel_as_its_own(be, rng):
    """float64 weights for a float32 step and every other entry of a longer array: the backend
    hands the kernel a contiguous copy in the compute dtype (the emulator refuses anything else)."""
    _, args = _inputs(rng, "f32", 60, 24, 5)
    w_all = sample_weights(rng, 120, "f32")[1]
    want = _step(be, args, "svm", dev(np.ascontiguousarray(w_all[::2])))
    for w in (dev(w_all)[::2], dev(w_all[::2].astype(np.float64))):
        got = _step(be, args, "svm", w)
        for a, b in zip(want, got):
            assert np.array_equal(a, b)


@pytest.mark.parametrize("xtype", ["f32", "u8"])
def test_a_weighted_step_takes_the_simt_kernel_when_mma_is_chosen(be, xtype, monkeypatch, rng):
    """The tensor-core kernels read no weights: with the "mma" variant, a weighted step runs the
    simt kernel (and matches the reference), an unweighted one the tensor-core kernel."""
    be = be._with_variants(linear_f32="mma", linear_u8="mma")
    ref_args, args = _inputs(rng, xtype, 50, 64, 10)
    w_ref, w = sample_weights(rng, 50, xtype)
    assert be.linmma_plan(args[0], args[2], args[4]) is not None
    be.launches.clear()
    check_linear_step(ref_args, _step(be, args, "softmax", dev(w)), "softmax", 0.01, sample_weight=w_ref)
    assert be.launches == [f"gg_linear_{xtype}_c10", "gg_linear_finish"]
    be.launches.clear()
    _step(be, args, "softmax", None)
    assert be.launches[1] == f"gg_linmma_{xtype}_nt2"


@pytest.mark.parametrize("loss", ["softmax", "svm"])
def test_weighted_inputs_no_kernel_fuses_take_the_inherited_path(be, loss, rng):
    """17 classes (past the fused kernels' 16): matrix products around the row-loss kernel, the
    weights applied as NumpyBackend does."""
    ref_args, args = _inputs(rng, "f32", 30, 12, 17)
    w_ref, w = sample_weights(rng, 30, "f32")
    assert be.linear_plan(args[0], args[2], args[4]) is None
    be.launches.clear()
    check_linear_step(ref_args, _step(be, args, loss, dev(w)), loss, 0.01, sample_weight=w_ref)
    assert not any(name.startswith("gg_linear_") for name in be.launches)


@pytest.mark.parametrize("kind", ["f32", "u8", "f64n"])
def test_weighted_step_agrees_bit_for_bit_in_every_thread_order(be, kind, rng):
    """The same bits whichever thread runs first and whenever the copies land."""
    _, args = _inputs(rng, kind, 90, 50, 10)
    w = dev(sample_weights(rng, 90, kind)[1])
    runs = []
    for order in ("forward", "reverse", "shuffled"):
        for deferred in (True, False):
            E.configure(order, 5, deferred)
            runs.append(_step(be, args, "softmax", w))
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert np.array_equal(a, b)

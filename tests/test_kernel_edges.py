"""The numerical edges, for every kernel family, on the CPU emulator (tests/emu) against numpy.

Every row-loss kernel (each lane-team width, block-per-row, streamed, prefetched and online
kernel, float32 and float64) and the fused linear step (each kind of X, on the "simt" and the
tensor-core "mma" kernels) is run on the inputs where a kernel that is right on random scores
can still be wrong:

- the largest score of a row in each column, the last one of a long row included: a row max that
  misses a column leaves exp(s - max) to overflow (a gap of 120 in float32, 1000 in float64);
- confident rows, where p_y rounds to 1: the target's gradient is -others / total (tiny, not 0);
- hinge margins of exactly 0 (integer scores): the subgradient there is 0, as in numpy;
- labels -1 and C: the device-side check names the first, the public functions refuse them, and
  with validation off every kernel turns the row into NaN instead of reading out of bounds.

The last tests are about the emulator's "runahead" schedule, where one warp at a time runs alone
until it waits, which alone exposes a block reduction without its leading barrier (a fast warp
overwrites the scratch a slow one has yet to read): a planted bug of that kind is caught, every
kernel family that reduces over a block agrees with itself in that order on inputs where
consecutive reductions leave different values in the scratch, and that ordinary test catches the
planted bug too.
"""

import numpy as np
import pytest

import deps
import gpugrad as gg

deps.need_emulator()  # Linux, g++ and cupy (no GPU); in CI their absence fails

from emu import build, emulator as E  # noqa: E402
from kernel_checks import (check_layer, check_linear_step, check_scores_loss, check_update, host,  # noqa: E402
                           linear_case, LINEAR_KINDS, rel, row_kernel_shapes, TOL)

NP = gg.get_backend("numpy")
dev = E.emucupy.asarray
# A score this far above the rest of its row overflows exp() when the row max misses it.
GAP = {np.float32: 120.0, np.float64: 1000.0}


def _shapes(loss):
    """[(kernel name, C, long-row variant, dtype)] for every row-loss kernel of `loss`."""
    return [(name, C, variant, dtype) for dtype in (np.float32, np.float64)
            for name, (C, variant) in row_kernel_shapes(loss, dtype).items()]


CE = _shapes("softmax")
SVM = _shapes("svm")
ROWS = CE + SVM
# The fused linear step: every kind of X on the simt kernels (C = 3, 10, 16: a row's team of 4,
# 16 and 16 lanes, partly and fully used), and both tensor-core kernels for each of their X.
LINEAR = ([(kind, C, "simt") for kind in LINEAR_KINDS for C in (3, 10, 16)]
          + [(x, C, "mma") for x in ("f32", "u8") for C in (5, 12)])
LINEAR_IDS = [f"{variant}-{kind}-c{C}" for kind, C, variant in LINEAR]


@pytest.fixture
def be(emulated_be):
    return emulated_be


def _select(be, monkeypatch, name, variant):
    """(the backend with long rows routed to `variant`, a check that its next call launched `name` first)."""
    if variant is not None:
        be = be._with_variants(ce_long_rows=variant)
    be.launches.clear()

    def launched():
        assert be.launches[0] == name, be.launches
    return be, launched


def _call(be, name, S, y):
    fn = be.softmax_cross_entropy_grad if name.startswith("gg_ce") else be.svm_grad
    return fn(dev(S), dev(y))


def _elsewhere(rng, columns, C):
    """A random label for each row other than its entry of `columns` (C >= 2)."""
    return (columns + rng.integers(1, C, len(columns))) % C


def _positions(C):
    """Columns to put a row's largest score in: all of them for rows up to 1024 long; for longer
    rows the ends, the edges of what one thread holds (a 1024-thread stride, 640 threads' 16-byte
    pieces) and the middle."""
    if C <= 1024:
        return np.arange(C)
    edges = [0, 1, 2, 3, 4, 7, 8, 1023, 1024, 1025, 2559, 2560, 5119, 5120, C // 2, C - 5, C - 4, C - 3, C - 2, C - 1]
    return np.unique([p for p in edges if p < C])


# ---- the row max covers every column ---------------------------------------------------------------
@pytest.mark.parametrize("name,C,variant,dtype", CE, ids=[c[0] for c in CE])
def test_softmax_row_max_covers_every_column(be, name, C, variant, dtype, monkeypatch, rng):
    """Row i has its largest score, GAP above the others, in column pos[i] (every column of a
    short row; the ends and thread boundaries of a long one), and a label elsewhere: a max that
    misses the column overflows exp() into the row's total. Three more rows have the max as their
    target (first, middle and last column)."""
    be, launched = _select(be, monkeypatch, name, variant)
    pos = _positions(C)
    pos = np.concatenate([pos, [0, C // 2, C - 1]])
    n = len(pos)
    S = rng.standard_normal((n, C))
    S[np.arange(n), pos] = GAP[dtype]
    y = _elsewhere(rng, pos, C)
    y[-3:] = pos[-3:]
    S = S.astype(dtype).astype(np.float64)
    ref_loss, ref_dS = NP.softmax_cross_entropy_grad(S, y)
    loss, dS = _call(be, name, S.astype(dtype), y)
    launched()
    assert rel(dS, ref_dS) <= TOL[dtype]
    assert abs(float(loss) - ref_loss) <= TOL[dtype] * ref_loss


@pytest.mark.parametrize("name,C,variant,dtype", SVM, ids=[c[0] for c in SVM])
def test_hinge_sees_a_margin_in_every_column(be, name, C, variant, dtype, monkeypatch, rng):
    """Row i has one active margin, in column pos[i] (all columns of a short row, the ends and
    thread boundaries of a long one): a kernel that skips a column misses it."""
    be, launched = _select(be, monkeypatch, name, variant)
    pos = _positions(C)
    n = len(pos)
    S = -2 - np.round(rng.uniform(0, 0.5, (n, C)) * 64) / 64  # margins <= -1: inactive
    y = _elsewhere(rng, pos, C)
    S[np.arange(n), y] = 0
    S[np.arange(n), pos] = 0.5  # margin 1.5
    ref_loss, ref_dS = NP.svm_grad(S, y)
    loss, dS = _call(be, name, S.astype(dtype), y)
    launched()
    assert rel(dS, ref_dS) <= TOL[dtype]
    assert abs(float(loss) - 1.5) <= TOL[dtype] * 1.5 and abs(ref_loss - 1.5) < 1e-12


# ---- confident rows: p_y rounds to 1, its gradient does not vanish ----------------------------------
@pytest.mark.parametrize("name,C,variant,dtype", CE, ids=[c[0] for c in CE])
def test_confident_rows_keep_the_target_gradient(be, name, C, variant, dtype, monkeypatch, rng):
    """s_y so far above the rest that p_y rounds to 1 in the kernel's dtype: dS_y must be
    -others / (total n), which is tiny but not 0 (1 - p_y would give 0), entry by entry."""
    be, launched = _select(be, monkeypatch, name, variant)
    n = 4
    S = np.clip(rng.standard_normal((n, C)), -3, 3)
    y = np.array([0, C - 1, *rng.integers(0, C, n - 2)])
    S[np.arange(n), y] = (30.0 if dtype == np.float32 else 45.0) + np.log(C)
    S = S.astype(dtype).astype(np.float64)
    P = np.exp(S - S.max(1, keepdims=True))
    P /= P.sum(1, keepdims=True)
    assert (P[np.arange(n), y].astype(dtype) == 1).all()  # the edge: p_y is 1 in the kernel's dtype
    ref_loss, ref_dS = NP.softmax_cross_entropy_grad(S, y)
    loss, dS = _call(be, name, S.astype(dtype), y)
    launched()
    dS = host(dS).astype(np.float64)
    target, ref_target = dS[np.arange(n), y], ref_dS[np.arange(n), y]
    assert (ref_target < 0).all()
    assert np.all(np.abs(target - ref_target) <= TOL[dtype] * np.abs(ref_target)), (target, ref_target)
    for i in range(n):  # every entry of the row is tiny: each row against its own size
        assert rel(dS[i], ref_dS[i]) <= TOL[dtype]
    assert 0 < ref_loss and abs(float(loss) - ref_loss) <= TOL[dtype] * ref_loss


# ---- hinge margins of exactly 0 --------------------------------------------------------------------
@pytest.mark.parametrize("name,C,variant,dtype", SVM, ids=[c[0] for c in SVM])
def test_hinge_margin_of_exactly_zero_has_subgradient_zero(be, name, C, variant, dtype, monkeypatch, rng):
    """Scores in {0, 1, 2}: margins s_j - s_y + 1 are exact integers, many exactly 0, where the
    subgradient is 0 (as in numpy): not counted on the target, no 1/n off it."""
    be, launched = _select(be, monkeypatch, name, variant)
    n = 9
    S = rng.integers(0, 3, (n, C)).astype(np.float64)
    y = rng.integers(0, C, n)
    y[0] = C - 1
    S[np.arange(n), y] = rng.integers(1, 3, n)
    S[np.arange(n), (y + 1) % C] = S[np.arange(n), y] - 1  # at least one kink a row
    kink = (S - S[np.arange(n), y][:, None] + 1 == 0)
    kink[np.arange(n), y] = False
    assert kink.sum() >= n  # the edge is there
    ref_loss, ref_dS = NP.svm_grad(S, y)
    loss, dS = _call(be, name, S.astype(dtype), y)
    launched()
    dS = host(dS)
    assert (dS[kink] == 0).all()
    assert rel(dS, ref_dS) <= TOL[dtype]
    assert abs(float(loss) - ref_loss) <= TOL[dtype] * ref_loss


# ---- bad labels ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,C,variant,dtype", ROWS, ids=[c[0] for c in ROWS])
def test_bad_labels_make_the_loss_nan_without_a_stray_read(be, name, C, variant, dtype, monkeypatch, rng):
    """Validation off, labels -1 and C reach the kernel: read as an index, -1 is the previous row's
    last score and C the next row's first (finite: the loss would come out a number). The loss is
    NaN, the bad rows follow the formula with s_y = NaN (softmax: NaN; hinge: no active margin),
    and the other rows are unaffected."""
    be, launched = _select(be, monkeypatch, name, variant)
    n = 5
    S = np.round(rng.standard_normal((n, C)) * 3 * 64) / 64
    y = rng.integers(0, C, n)
    y[1:3], y[n - 1] = [-1, C], C
    good = np.array([0, 3])
    ref_loss, ref_dS = (NP.softmax_cross_entropy_grad if name.startswith("gg_ce") else NP.svm_grad)(S[good], y[good])
    loss, dS = _call(be, name, S.astype(dtype), y)
    launched()
    dS = host(dS)
    assert np.isnan(float(loss))
    assert rel(dS[good], ref_dS * len(good) / n) <= TOL[dtype]  # the reference's mean is over 2 rows
    bad_rows = dS[[1, 2, n - 1]]
    assert np.isnan(bad_rows).all() if name.startswith("gg_ce") else (bad_rows == 0).all()


@pytest.mark.parametrize("ydtype", [np.int32, np.int64])
@pytest.mark.parametrize("bad", [-1, "C"])
@pytest.mark.parametrize("where", [0, 255, 256, 2999])
def test_device_side_check_finds_label_minus_one_and_c(be, ydtype, bad, where, rng):
    """gg_first_invalid over 3000 labels (12 blocks of 256, each thread a label): the first label
    outside [0, C) wherever it is, -1 or C, int32 or int64; 0 and C - 1 are fine."""
    C = 10
    y = rng.integers(0, C, 3000)
    y[:where:7] = 0
    y[1:where:7] = C - 1
    y[where] = C if bad == "C" else -1
    y[where + 1:] = rng.choice([-1, C], 3000 - where - 1)  # later bad labels: the first is reported
    label_pos, bad_pos = be.first_invalid(dev(y.astype(ydtype)), C, [])
    assert label_pos == where and bad_pos == []
    y[where:] = C - 1
    assert be.first_invalid(dev(y.astype(ydtype)), C, [])[0] == -1


@pytest.mark.parametrize("call", ["softmax_cross_entropy_grad", "svm_grad", "linear_grad"])
@pytest.mark.parametrize("bad", [-1, 10])
def test_public_functions_name_the_bad_label(call, bad, monkeypatch, rng):
    """On the (emulated) CUDA backend, a label -1 or C = 10 is refused before any loss kernel runs,
    by the device-side check, with an error naming its position and value."""
    E.use(None)
    E.configure("forward", 1, True)
    be = E.as_cuda_backend(monkeypatch)
    n, C, d = 40, 10, 6
    y = rng.integers(0, C, n)
    y[17] = bad
    X = dev(rng.standard_normal((n, d)).astype(np.float32))
    W, b = dev(np.zeros((C, d), np.float32)), dev(np.zeros(C, np.float32))
    args = (X, dev(y), W, b) if call == "linear_grad" else (dev(rng.standard_normal((n, C)).astype(np.float32)),
                                                            dev(y))
    with pytest.raises(ValueError, match=rf"label y\[17\] = {bad} is outside \[0, 10\)"):
        getattr(gg, call)(*args)
    assert be.launches == ["gg_first_invalid"]


# ---- the fused linear step -------------------------------------------------------------------------
def _on_device(kind, ref):
    """The kernels' arguments for the float64 reference inputs `ref` (X, y, W, b, x_mean, x_std):
    uint8 X as it is, the float arrays in the kind's compute dtype."""
    dtype = LINEAR_KINDS[kind][0]
    return tuple(None if a is None else dev(a if a.dtype == np.uint8 or i == 1 else a.astype(dtype))
                 for i, a in enumerate(ref))


def _planted_scores(rng, kind, C, n, y, column, gap):
    """Inputs of a step of `kind` whose row i scores `gap` more on class column[i]: X's first C
    features are the one-hot rows of `column` times gap (times gap / 10 under float64 weights, and
    W's identity block times 10: uint8 X holds at most 255), left unnormalised (mean 0, std 1);
    the other 8 features and b random. Returns the float64 reference inputs."""
    X, _, W, b, mean, std = linear_case(rng, kind, n, C + 8, C)[0]
    scale = 10.0 if LINEAR_KINDS[kind][0] == np.float64 and gap > 255 else 1.0
    X[:, :C] = 0
    X[np.arange(n), column] = gap / scale
    W[:, :C] = scale * np.eye(C)
    if mean is not None:
        mean[:C], std[:C] = 0, 1
    return X, y, W, b, mean, std


def _linear_step(be, monkeypatch, kind, C, variant, ref, loss, lam):
    """The step on the kernel `variant` ("simt" or "mma") against numpy (check_linear_step)."""
    be = be._with_variants(linear_f32=variant, linear_u8=variant)
    be.launches.clear()
    args = _on_device(kind, ref)
    got = be.linear_grad(*args[:4], lam, loss, *args[4:])
    name = f"gg_linmma_{kind}_nt{1 if C <= 8 else 2}" if variant == "mma" else f"gg_linear_{kind}_c{C}"
    assert name in be.launches, be.launches
    check_linear_step(ref, got, loss, lam)


def _probabilities(ref):
    X, y, W, b, mean, std = ref
    S = (X if mean is None else (X - mean) / std) @ W.T + b
    P = np.exp(S - S.max(1, keepdims=True))
    return P / P.sum(1, keepdims=True)


@pytest.mark.parametrize("loss", ["softmax", "svm"])
@pytest.mark.parametrize("kind,C,variant", LINEAR, ids=LINEAR_IDS)
def test_linear_step_row_max_in_every_class(be, kind, C, variant, loss, monkeypatch, rng):
    """Each class holds two rows' largest score, GAP above the rest, with a label elsewhere (a lane
    missed by the row max overflows exp), and a third row's, its target."""
    dtype = LINEAR_KINDS[kind][0]
    n = 3 * C
    column = np.arange(n) % C
    y = _elsewhere(rng, column, C)
    y[2 * C:] = column[2 * C:]
    ref = _planted_scores(rng, kind, C, n, y, column, GAP[dtype])
    _linear_step(be, monkeypatch, kind, C, variant, ref, loss, 0.01)


@pytest.mark.parametrize("kind,C,variant", LINEAR, ids=LINEAR_IDS)
def test_linear_step_confident_rows(be, kind, C, variant, monkeypatch, rng):
    """Every row's target score far above the rest, so that p_y rounds to 1 in the kernel's dtype:
    db and dW come only from -others/total on the targets and p_j off them, all tiny (lam = 0, so
    that nothing larger hides them); a kernel using 1 - p_y = 0 loses about half of db."""
    dtype = LINEAR_KINDS[kind][0]
    n = 2 * C + 1
    y = rng.integers(0, C, n)
    ref = _planted_scores(rng, kind, C, n, y, y, 30.0 if dtype == np.float32 else 45.0)
    assert (_probabilities(ref)[np.arange(n), y].astype(dtype) == 1).all()  # the edge: p_y is 1
    _linear_step(be, monkeypatch, kind, C, variant, ref, "softmax", 0.0)


@pytest.mark.parametrize("kind,C,variant", LINEAR, ids=LINEAR_IDS)
def test_linear_step_hinge_margin_of_exactly_zero(be, kind, C, variant, monkeypatch, rng):
    """Small integer X, W and b (mean 0, std 1 where X is normalised): every score is an exact
    integer in every kernel (tf32 and f16 halves included). Class 1 scores exactly 1 below class
    0 (its row of W repeated, its bias 1 lower), so every row labelled 0 has a margin of exactly
    0 there, where the subgradient is 0 as in numpy; other margins are 0 by chance."""
    n, d = 3 * C + 2, 6
    X = rng.integers(0, 3, (n, d)).astype(np.uint8 if kind.startswith("u8") else np.float64)
    W, b = rng.integers(-1, 2, (C, d)).astype(np.float64), rng.integers(-1, 2, C).astype(np.float64)
    W[1], b[1] = W[0], b[0] - 1
    y = rng.integers(0, C, n)
    y[:2] = [0, 1]
    norm = LINEAR_KINDS[kind][1]
    ref = (X, y, W, b, np.zeros(d) if norm else None, np.ones(d) if norm else None)
    _linear_step(be, monkeypatch, kind, C, variant, ref, "svm", 0.01)


# ---- the compiled step's kernels (kernels/mlp.cuh) --------------------------------------------------
# gg_scores_loss_<t>_k<K>: a warp per row, K scores a lane, for C <= 32 K.
SCORES = [(dtype, C) for dtype in (np.float32, np.float64) for C in (10, 33, 100, 200, 700)]
SCORES_IDS = [f"{np.dtype(dtype).name}-C{C}" for dtype, C in SCORES]


def _lane_positions(C):
    """Columns that put a row's largest score at every lane and at every one of a lane's K slots:
    all columns up to 64, then a column every 7 and the last ones."""
    if C <= 64:
        return np.arange(C)
    return np.unique(np.concatenate([np.arange(0, C, 7), np.arange(31, C, 32), np.arange(32, C, 32), [C - 1]]))


@pytest.mark.parametrize("dtype,C", SCORES, ids=SCORES_IDS)
@pytest.mark.parametrize("loss", ["softmax", "svm"])
def test_scores_loss_sees_the_row_max_in_every_column(be, dtype, C, loss, rng):
    """Row i's largest score, GAP above the rest, at column pos[i] (with a label elsewhere, and in
    three rows the target itself): a lane or slot the row max misses overflows exp()."""
    pos = np.concatenate([_lane_positions(C), [0, C // 2, C - 1]])
    n = len(pos)
    S = np.round(rng.standard_normal((n, C)) * 64) / 64
    S[np.arange(n), pos] = GAP[dtype]
    y = _elsewhere(rng, pos, C)
    y[-3:] = pos[-3:]
    be.launches.clear()
    check_scores_loss(be, dev, rng, dtype, C, loss, weighted=True, S=S, y=y, b=np.zeros(C))
    assert be.launches == [f"gg_scores_loss_{'f32' if dtype == np.float32 else 'f64'}_k{-(-C // 32) if C <= 128 else (8 if C <= 256 else 32)}"]


@pytest.mark.parametrize("dtype,C", SCORES, ids=SCORES_IDS)
def test_scores_loss_confident_rows_keep_the_target_gradient(be, dtype, C, rng):
    """p_y rounds to 1: the target's gradient is -others / total (tiny, not 0), as in numpy."""
    n = 5
    S = np.clip(rng.standard_normal((n, C)), -3, 3)
    y = np.array([0, C - 1, *rng.integers(0, C, n - 2)])
    S[np.arange(n), y] = (30.0 if dtype == np.float32 else 45.0) + np.log(C)
    dS, _ = check_scores_loss(be, dev, rng, dtype, C, "softmax", weighted=False, S=S, y=y, b=np.zeros(C))
    assert (dS[np.arange(n), y] < 0).all()


@pytest.mark.parametrize("dtype,C", SCORES, ids=SCORES_IDS)
def test_scores_loss_hinge_margin_of_exactly_zero(be, dtype, C, rng):
    """Integer scores and bias: many margins exactly 0, where the subgradient is 0."""
    n = 9
    S, b = rng.integers(0, 3, (n, C)).astype(np.float64), rng.integers(-1, 2, C).astype(np.float64)
    y = rng.integers(0, C, n)
    S[np.arange(n), (y + 1) % C] = S[np.arange(n), y] + b[y] - b[(y + 1) % C] - 1  # a kink in every row
    dS, _ = check_scores_loss(be, dev, rng, dtype, C, "svm", weighted=True, S=S, y=y, b=b)
    assert (dS[np.arange(n), (y + 1) % C] == 0).all()


@pytest.mark.parametrize("loss", ["softmax", "svm"])
@pytest.mark.parametrize("C", [10, 100])
def test_scores_loss_bad_labels_make_the_loss_nan(be, loss, C, rng):
    """Labels -1 and C (validation off): the loss is NaN, no label is used as an index (the emulator
    would catch the stray read), and the other rows' gradients are unaffected."""
    n = 6
    S, y = rng.standard_normal((n, C)).astype(np.float32), rng.integers(0, C, n)
    y[[1, 4]] = [-1, C]
    dS, L = dev(np.full((n, C), np.nan, np.float32)), dev(np.full((), 0.0, np.float32))
    be.scores_loss(dev(S), dev(np.zeros(C, np.float32)), dev(y), None, loss, (dS, L))
    good = [0, 2, 3, 5]
    ref = np.empty((4, C))
    NP.scores_loss(S[good].astype(np.float64), np.zeros(C), y[good], None, loss, (ref, np.empty(())))
    assert np.isnan(L.get())
    assert rel(dS.get()[good], ref * 4 / n) <= 1e-5


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layer_with_a_constant_column(be, dtype, rng):
    """A column the same in every row has variance 0: inv_std = 1 / sqrt(eps) and xhat the
    rounding of the mean only, no NaN or Inf, forward or backward; two rows (n - 1 = 1 in the
    unbiased running variance) and nine."""
    for n in (2, 9):
        s = rng.standard_normal((n, 40))
        s[:, 3] = 1.5
        h, xhat, inv, rm, rv, ds, dgamma, dbeta, db = check_layer(be, dev, rng, dtype, True, n=n, s=s)
        assert all(np.isfinite(a).all() for a in (h, xhat, inv, rm, rv, ds, dgamma, dbeta, db))
        assert abs(inv[3] - 1 / np.sqrt(1e-5)) <= TOL[dtype] * inv[3] and np.abs(xhat[:, 3]).max() < 1e-3


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_mask_at_exactly_zero(be, dtype):
    """h = ReLU(s + b) with s + b exactly 0 in half the entries: h = 0 and the backward mask 0 there
    (numpy's a > 0), so those entries of ds are 0 and db sums only the others."""
    n, m = 6, 35
    s = np.tile(np.array([0.0, 1.0]), (n, m))[:, :m]
    b = np.zeros(m, dtype)
    h, ds, db = dev(np.full((n, m), np.nan, dtype)), dev(np.ones((n, m), dtype)), dev(np.full(m, np.nan, dtype))
    be.layer_forward(dev(s.astype(dtype)), dev(b), None, None, None, None, 0.1, 1e-5, (h, None, None))
    be.layer_backward(ds, h, None, None, None, (None, None, db))
    assert (h.get()[s == 0] == 0).all() and (ds.get()[s == 0] == 0).all()
    np.testing.assert_array_equal(db.get(), (s > 0).sum(0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_update_without_a_penalty_records_the_loss_as_the_cost(be, dtype, rng):
    """lam = 0: cost = loss exactly, whatever the weights (an infinite weight included); with lam,
    the entry just past n_decay gets no penalty."""
    check_update(be, dev, rng, dtype, "momentum", N=300, n_decay=0, lam=0.0)
    p, g = dev(np.array([np.inf, 1.0, 2.0], dtype)), dev(np.zeros(3, dtype))
    rec = dev(np.full((2, 1), np.nan))
    be.optimizer_update(("sgd", (0.1,)), p, g, (), 0.0, 1, dev(np.array(0.5, dtype)), rec, 0)
    assert rec.get().tolist() == [[0.5], [0.5]]
    p, g = dev(np.array([3.0, 1.0, 2.0], dtype)), dev(np.zeros(3, dtype))
    be.optimizer_update(("sgd", (0.5,)), p, g, (), 0.25, 1, dev(np.array(0.5, dtype)), rec, 0)
    assert p.get().tolist() == [3.0 - 0.5 * 0.5 * 3.0, 1.0, 2.0] and rec.get()[0, 0] == 0.5 + 0.25 * 9


# ---- the schedule: a warp that runs ahead ----------------------------------------------------------
LEADING_BARRIER = "    v = gg_subwarp_reduce<32>(v, op);\n    __syncthreads();\n    if (lane == 0) scratch[warp] = v;"
COLUMN_BARRIER = "    __syncthreads();\n    scratch[threadIdx.y * GG_COL_PAD + threadIdx.x] = a;"


def _without_leading_barrier(text):
    """gg_block_reduce and gg_column_sums without the barrier that keeps a warp from overwriting the
    scratch of the previous reduction (the block kernel's row max, a layer's column means) while
    other warps still read it."""
    for barrier in (LEADING_BARRIER, COLUMN_BARRIER):
        assert text.count(barrier) == 1, f"a leading barrier is not in the source once: {barrier!r}"
        text = text.replace(barrier, barrier.replace("    __syncthreads();\n", "", 1))
    return text


# Built with the kernels its tests launch: the block-per-row softmax, the tensor-core preparation
# and the compiled step's layers (a library of every kernel takes several times as long).
build.only(_without_leading_barrier, "gg_ce_f32_b", "gg_linmma_prep", "gg_layer_")


@pytest.fixture(scope="module")
def unbarriered_build():
    E.prebuild([_without_leading_barrier])


def test_runahead_schedule_catches_a_block_reduction_reusing_its_scratch_too_soon(unbarriered_build, monkeypatch,
                                                                                  rng):
    """The block-per-row softmax reduces the row max, then the row sum, through one scratch array.
    Without the leading barrier, a warp that finishes the max early writes its part of the sum
    over a max that slower warps have yet to read. With every thread taking one turn a pass (the
    forward, reverse and shuffled orders) no warp gets that far ahead, and the bug passes; the
    runahead schedule lets a warp run alone until it waits, and the row comes out wrong. The
    kernels as they are pass under runahead."""
    S = rng.uniform(0, 1, (3, 1500))  # a warp's sum of exp (~40) exceeds the row max (~1)
    y = rng.integers(0, 1500, 3)
    ref_loss, ref_dS = NP.softmax_cross_entropy_grad(S.astype(np.float32).astype(np.float64), y)

    def right(order, seed, deferred=True):
        E.configure(order, seed, deferred)
        be = E.emulated_backend(monkeypatch)
        loss, dS = be.softmax_cross_entropy_grad(dev(S.astype(np.float32)), dev(y))
        assert be.launches == ["gg_ce_f32_b_k2"]
        return rel(dS, ref_dS) <= 1e-5 and abs(float(loss) - ref_loss) <= 1e-5 * ref_loss

    E.use(None)
    assert all(right("runahead", seed) for seed in (1, 2, 3))
    E.use(_without_leading_barrier)
    try:
        assert all(right(order, 7, deferred) for order in ("forward", "reverse", "shuffled")
                   for deferred in (True, False))
        assert not any(right("runahead", seed) for seed in (1, 2, 3))
    finally:
        E.use(None)
        E.configure("forward", 1, True)


# ---- the sparse step (CSR X, gg_sparse_*) ------------------------------------------------------------
# Every row kernel's class layout: one class a lane team (C = 3 in teams of 4, 12 of 16), a whole warp
# (C = 20 of 32) and C = 32 (every lane), in float32 and float64.
SPARSE = [(C, dtype) for C in (3, 12, 20, 32) for dtype in (np.float32, np.float64)]
SPARSE_IDS = [f"c{C}-{np.dtype(dtype).name}" for C, dtype in SPARSE]
# The other edges on the two kinds of layout (classes in lane teams with slices; a class a lane).
SPARSE2 = [(C, dtype) for C in (3, 20) for dtype in (np.float32, np.float64)]
SPARSE2_IDS = [f"c{C}-{np.dtype(dtype).name}" for C, dtype in SPARSE2]


def _sparse_planted(rng, C, n, y, column, gap, dtype):
    """CSR X (n, C + 40) whose row i stores `gap` in column column[i] (its class's spike: W's first
    C columns are the identity) and a few random small values past column C, so row i scores `gap`
    more on class column[i]; W's other columns and b random (float32-rounded for float32)."""
    import scipy.sparse as sp
    rnd = (lambda a: a.astype(np.float32).astype(np.float64)) if dtype == np.float32 else np.asarray
    d = C + 40
    rows, cols, vals = [], [], []
    for i in range(n):
        extra = rng.choice(np.arange(C, d), 5, replace=False)
        rows += [i] * 6
        cols += [column[i], *extra]
        vals += [gap, *rnd(rng.standard_normal(5) * 0.5)]
    X = sp.csr_matrix((np.array(vals), (rows, cols)), shape=(n, d))
    W = rnd(rng.standard_normal((C, d)) * 0.1)
    W[:, :C] = np.eye(C)
    return X, y, W, rnd(rng.standard_normal(C) * 0.1)


def _sparse_step(be, X, y, W, b, loss, lam, dtype, validate_labels=True):
    from emu import emu_sparse
    from kernel_checks import check_sparse_step
    Xd = emu_sparse.csr_matrix((dev(X.data.astype(dtype)), dev(X.indices), dev(X.indptr)), shape=X.shape)
    be.launches.clear()
    got = be.linear_grad(Xd, dev(y), dev(W.astype(dtype)), dev(b.astype(dtype)), lam, loss)
    t = "f32" if dtype == np.float32 else "f64"
    assert any(name.startswith(f"gg_sparse_{t}_t") for name in be.launches), be.launches
    if validate_labels:
        check_sparse_step(X, y, W, b, got, loss, lam)
    return got


@pytest.mark.parametrize("loss", ["softmax", "svm"])
@pytest.mark.parametrize("C,dtype", SPARSE, ids=SPARSE_IDS)
def test_sparse_step_row_max_in_every_class(be, C, dtype, loss, rng):
    """Each class holds two rows' largest score, GAP above the rest, with a label elsewhere (a lane
    the row max misses overflows exp), and a third row's, its target."""
    n = 3 * C
    column = np.arange(n) % C
    y = _elsewhere(rng, column, C)
    y[2 * C:] = column[2 * C:]
    _sparse_step(be, *_sparse_planted(rng, C, n, y, column, GAP[dtype], dtype), loss, 0.01, dtype)


@pytest.mark.parametrize("C,dtype", SPARSE2, ids=SPARSE2_IDS)
def test_sparse_step_confident_rows(be, C, dtype, rng):
    """Every row's target far above the rest (p_y rounds to 1): dW and db come only from the tiny
    -others/total and p_j (lam = 0 so that nothing larger hides them)."""
    n = 2 * C + 1
    y = rng.integers(0, C, n)
    X, y, W, b = _sparse_planted(rng, C, n, y, y, 30.0 if dtype == np.float32 else 45.0, dtype)
    _sparse_step(be, X, y, W, b, "softmax", 0.0, dtype)


@pytest.mark.parametrize("C,dtype", SPARSE2, ids=SPARSE2_IDS)
def test_sparse_step_hinge_margin_of_exactly_zero(be, C, dtype, rng):
    """Small integer values, W and b: every score is an exact integer; class 1 scores exactly 1
    below class 0, so rows labelled 0 have a margin of exactly 0 there (subgradient 0)."""
    import scipy.sparse as sp
    n, d = 3 * C + 2, 9
    X = sp.csr_matrix(rng.integers(0, 3, (n, d)) * (rng.random((n, d)) < 0.5)).astype(np.float64)
    W, b = rng.integers(-1, 2, (C, d)).astype(np.float64), rng.integers(-1, 2, C).astype(np.float64)
    W[1], b[1] = W[0], b[0] - 1
    y = rng.integers(0, C, n)
    y[:2] = [0, 1]
    _sparse_step(be, X, y, W, b, "svm", 0.01, dtype)


@pytest.mark.parametrize("loss", ["softmax", "svm"])
@pytest.mark.parametrize("C,dtype", SPARSE2, ids=SPARSE2_IDS)
def test_sparse_step_bad_labels_make_the_loss_nan(be, C, dtype, loss, rng):
    """Validation off, labels -1 and C reach the row kernel: J is NaN and no label is used as an
    index (the emulator's guard pages would catch a read past y's rows' scores); db of the other
    rows' classes stays finite under the hinge (a bad row has no active margin)."""
    n = 6
    y = rng.integers(0, C, n)
    y[1], y[4] = -1, C
    column = rng.integers(0, C, n)
    X, y, W, b = _sparse_planted(rng, C, n, y, column, 2.0, dtype)
    J, dW, db = _sparse_step(be, X, y, W, b, loss, 0.01, dtype, validate_labels=False)
    assert np.isnan(float(J))
    if loss == "svm":
        assert np.isfinite(host(dW)).all() and np.isfinite(host(db)).all()


# Every kernel family that reduces over a whole block, in the runahead order, on inputs where
# consecutive block reductions leave different values in the shared scratch: uniform(0, 1) scores
# (a row max near 1 beside sums of exponentials or hinge counts in the tens), weights whose sum of
# squares and normalisation shift differ. Each run must give the forward order's bits and the
# numpy reference. A reduction that lost its leading barrier fails here, in the ordinary test, and
# not only in the planted-bug test above: see the test after these.
def _rows_run(rng, loss, C, n, variant=None):
    """run(be) -> (results as numpy, whether they match the float64 reference) for a row loss."""
    S = rng.uniform(0, 1, (n, C)).astype(np.float32)
    y = rng.integers(0, C, n)
    ref_loss, ref_dS = (NP.softmax_cross_entropy_grad if loss == "softmax" else NP.svm_grad)(S.astype(np.float64), y)

    def run(be):
        if variant is not None:
            be = be._with_variants(ce_long_rows=variant)
        loss_, dS = (be.softmax_cross_entropy_grad if loss == "softmax" else be.svm_grad)(dev(S), dev(y))
        return [host(loss_), host(dS)], rel(dS, ref_dS) <= 1e-5 and abs(float(loss_) - ref_loss) <= 1e-5 * ref_loss
    return run


def _linear_run(rng):
    """The simt linear step (a block reduction of ||W||^2 beside its per-row reductions)."""
    ref, args = linear_case(rng, "f32", 150, 120, 10)
    args = tuple(None if a is None else dev(a) for a in args)

    def run(be):
        got = be._with_variants(linear_f32="simt").linear_grad(*args[:4], 0.01, "softmax", *args[4:])
        try:
            check_linear_step(ref, got, "softmax", 0.01)
        except AssertionError:
            return [host(a) for a in got], False
        return [host(a) for a in got], True
    return run


def _prep_run(rng, x):
    """The tensor-core step's weight preparation alone (gg_linmma_prep: the largest |W'|, then
    sum W^2, then the normalisation's shift, the last two through one scratch; gg_linmma_prep_f32:
    sum W^2), launched as the backend launches it for C = 10, d = 200."""
    from gpugrad.backends import plans
    C, d = 10, 200
    W = (rng.standard_normal((C, d)) * 0.05).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    mean, std = rng.uniform(60, 200, d).astype(np.float32), rng.uniform(20, 80, d).astype(np.float32)
    plan = plans.mma_plan(x, 256, d, C, plans.Card(**E.SMALL_H100))
    nc, dtot = 8 * plan["nt"], plans.LINMMA[x].cluster * plan["dsl"]
    wsq_ref = (W.astype(np.float64) ** 2).sum(axis=1)

    def run(be):
        wsq = E.emucupy.empty(nc, np.float64)
        if x == "u8":
            out = [E.emucupy.empty((2, nc, dtot), np.uint16), E.emucupy.empty(dtot, np.uint16),
                   E.emucupy.empty(nc, np.float32), E.emucupy.empty(nc, np.float32)]
            be.kernel("gg_linmma_prep")((nc,), (256,), (dev(W), dev(b), dev(mean), dev(std), np.int32(C), np.int32(d),
                                                         np.int32(dtot), *out, wsq))
        else:
            out = [E.emucupy.empty((2, nc, dtot), np.float32)]
            be.kernel("gg_linmma_prep_f32")((nc,), (256,), (dev(W), np.int32(C), np.int32(d), np.int32(dtot), *out, wsq))
        results = [host(a) for a in (*out, wsq)]
        return results, bool(np.allclose(results[-1][:C], wsq_ref, rtol=1e-12, atol=0))
    return run


def _checked_run(rng, check):
    """run(be) for one of kernel_checks' checks (it compares with numpy itself): the same inputs
    every run, drawn from one seed."""
    seed = int(rng.integers(2**32))

    def run(be):
        try:
            return check(be, np.random.default_rng(seed)), True
        except AssertionError:
            return [], False
    return run


RUNAHEAD = {
    "softmax, a block per row": lambda rng: _rows_run(rng, "softmax", 1500, 3),
    "softmax, lane teams and the grid's mean": lambda rng: _rows_run(rng, "softmax", 50, 400),
    "softmax, long rows streamed": lambda rng: _rows_run(rng, "softmax", 9000, 7, "stream"),
    "softmax, long rows prefetched": lambda rng: _rows_run(rng, "softmax", 9000, 7, "prefetch"),
    "softmax, rows past the registers": lambda rng: _rows_run(rng, "softmax", 33000, 2),
    "hinge, a block per row": lambda rng: _rows_run(rng, "svm", 1500, 3),
    "hinge, lane teams and the grid's mean": lambda rng: _rows_run(rng, "svm", 50, 400),
    "linear step": _linear_run,
    "tensor-core preparation, uint8": lambda rng: _prep_run(rng, "u8"),
    "tensor-core preparation, float32": lambda rng: _prep_run(rng, "f32"),
    "compiled step: a layer with batch norm": lambda rng: _checked_run(rng, lambda be, r: check_layer(
        be, dev, r, np.float32, True, s=r.uniform(0, 1, (13, 40)), dh=r.uniform(0, 1, (13, 40)))),
    "compiled step: the scores' loss": lambda rng: _checked_run(rng, lambda be, r: check_scores_loss(
        be, dev, r, np.float32, 40, "softmax", True, S=r.uniform(0, 1, (30, 40)))),
    "compiled step: the fused update": lambda rng: _checked_run(rng, lambda be, r: check_update(
        be, dev, r, np.float32, "adam")),
}


def _agrees_under_runahead(monkeypatch, run, seeds=(1, 2)):
    """The family's results in the runahead order (each seed) are the forward order's, bit for bit,
    and right (AssertionError otherwise)."""
    E.configure("forward", 1, True)
    want, right = run(E.emulated_backend(monkeypatch))
    assert right, "wrong in the forward order"
    try:
        for seed in seeds:
            E.configure("runahead", seed, True)
            got, right = run(E.emulated_backend(monkeypatch))
            assert right and all(np.array_equal(a, b, equal_nan=True) for a, b in zip(got, want)), \
                f"runahead order, seed {seed}: results differ from the forward order's"
    finally:
        E.configure("forward", 1, True)


@pytest.mark.parametrize("family", list(RUNAHEAD))
def test_block_reductions_agree_in_the_runahead_order(family, monkeypatch, rng):
    E.use(None)
    _agrees_under_runahead(monkeypatch, RUNAHEAD[family](rng))


# The families whose consecutive reductions share one scratch with no barrier of their own between
# them: without gg_block_reduce's leading barrier a warp running ahead overwrites what another has
# yet to read. (In the others a barrier of theirs, or a scratch of its own per reduction, stands
# between them: the leading barrier's loss leaves their results right.)
UNBARRIERED_CAUGHT = ["softmax, a block per row", "tensor-core preparation, uint8"]


@pytest.mark.parametrize("family", UNBARRIERED_CAUGHT)
def test_the_ordinary_runahead_test_catches_a_block_reduction_without_its_leading_barrier(
        family, unbarriered_build, monkeypatch, rng):
    E.use(_without_leading_barrier)
    try:
        with pytest.raises(AssertionError, match="runahead order, seed"):
            _agrees_under_runahead(monkeypatch, RUNAHEAD[family](rng))
    finally:
        E.use(None)


def test_runahead_catches_a_layer_reusing_its_column_scratch_too_soon(unbarriered_build, monkeypatch):
    """A batch-norm layer's kernels reduce twice through one scratch with no barrier between
    (forward: the column means, then the variances; backward: sum g and sum g xhat, then db). On
    uniform(0, 1) inputs the two reductions differ, so a gg_column_sums without its leading barrier
    gives wrong results (a thread runs from one barrier to the next in a turn here: no warp
    collective holds it back, so every order shows it), while the kernels as they are are right
    under runahead."""
    def right(seed):
        rng = np.random.default_rng(seed)
        be = E.emulated_backend(monkeypatch)
        try:
            check_layer(be, dev, rng, np.float32, True, s=rng.uniform(0, 1, (13, 40)), dh=rng.uniform(0, 1, (13, 40)))
        except (AssertionError, E.EmulatorError):
            return False
        return True

    try:
        for mutate, want in ((None, True), (_without_leading_barrier, False)):
            E.use(mutate)
            results = []
            for seed in (1, 2, 3):
                E.configure("runahead", seed, True)
                results.append(right(seed))
            assert all(results) if want else not any(results)
    finally:
        E.use(None)
        E.configure("forward", 1, True)

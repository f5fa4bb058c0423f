"""The arithmetic of the tensor-core linear kernels (kernels/linear_mma.cuh), modelled in numpy.

The kernels cannot run without a GPU, but their numerical design can be checked here. uint8:
pixels centred on integer column offsets (exact in f16), the normalisation folded into W' and the
bias, W' scaled per class and split into two f16 halves, G scaled and split likewise, fp32
accumulation, and the finish's unfolding of dW. float32: 3xTF32 (X, W and G as tf32 hi + lo, the
lo lo product dropped). The models follow the kernels step by step (the fragment layouts are
CTest's job: tests/cpu/test_mma_layout.cpp); they must land within the 1e-5 the GPU tests demand
of float64 numpy, in the awkward cases too: means outside the pixel range, tiny and large
weights, both losses.
"""
import numpy as np
import pytest

import deps

import gpugrad as gg

deps.require("cupy", "the tile shapes live in the CuPy backend")
from gpugrad.backends.cupy_backend import LINMMA  # noqa: E402
from kernel_checks import db_scale, rel  # noqa: E402

NP = gg.get_backend("numpy")
f16, f32, f64 = np.float16, np.float32, np.float64


def _pixel_offset(mean32):
    """gg_pixel_offset: the mean rounded and clamped to 0..255, in float32."""
    return np.floor(np.clip(mean32, f32(0), f32(255)) + f32(0.5)).astype(f32)


def _split_f16(v32):
    """gg_split_f16_bits: hi = f16(v), lo = f16(v - hi)."""
    hi = v32.astype(f16)
    lo = (v32 - hi.astype(f32)).astype(f16)
    return hi, lo


def _tc_matmul(a16_pieces, b):
    """Tensor-core products: f16 operands multiplied exactly, sums rounded to float32 at the end
    (the hardware rounds more often; this models the representation error, the part we designed)."""
    return sum(p.astype(f64) for p in a16_pieces) @ b


def linmma_model(X, y, W, b, lam, loss, mean, std):
    n, d = X.shape
    mean32, W32, b32 = mean.astype(f32), W.astype(f32), b.astype(f32)
    inv_std = (f32(1) / std.astype(f32)).astype(f32)
    r = _pixel_offset(mean32)
    # gg_linmma_prep
    Wp = (W32 * inv_std).astype(f32)
    mx = np.abs(Wp).max(axis=1)
    ex = np.frexp(mx)[1]
    e = np.where(mx > 0, np.clip(14 - ex, -100, 100), 0)
    scaled = (Wp * np.ldexp(f32(1), e)[:, None].astype(f32)).astype(f32)
    assert np.abs(scaled).max() < 2.0 ** 14
    w_hi, w_lo = _split_f16(scaled)
    shift = ((mean32.astype(f64) - r.astype(f64)) * Wp.astype(f64)).sum(axis=1)
    bprime = (b32.astype(f64) - shift).astype(f32)
    sinv = np.ldexp(f32(1), -e).astype(f32)
    # forward on the tensor cores: S = (x - r) W'^T 2^-e + b'
    Xc = X.astype(f64) - r.astype(f64)  # integers in [-255, 255]: exact in f16
    assert np.abs(Xc).max() <= 255
    acc = _tc_matmul([w_hi, w_lo], Xc.T).T.astype(f32)
    S = (acc * sinv + bprime).astype(f32)
    # the row loss in float32, g = n dL/dS
    if loss == "softmax":
        losses, dS = NP.softmax_cross_entropy_grad(S, y)
    else:
        losses, dS = NP.svm_grad(S, y)
    g = (dS * n).astype(f32)
    # per tile of rows: G~ = g 2^e (the tile's largest |g| just under 2^14), f16 hi + lo, and the
    # tile's sum scaled back by 2^-e into the running dW_raw
    R = LINMMA["u8"].rows
    raw = np.zeros((W.shape[0], d), f64)
    for t0 in range(0, n, R):
        gt = g[t0:t0 + R]
        gmax = np.abs(gt).max()
        e = int(np.clip(14 - np.frexp(gmax)[1], -100, 100)) if gmax > 0 else 0
        g_hi, g_lo = _split_f16((gt * np.ldexp(f32(1), e)).astype(f32))
        assert np.isfinite(g_hi.astype(f32)).all(), "G~ overflowed f16"
        tile = _tc_matmul([g_hi.T, g_lo.T], Xc[t0:t0 + R]).astype(f32)
        raw += tile.astype(f64) * np.ldexp(1.0, -e)
    raw = raw.astype(f32)
    dbr = g.astype(f64).sum(axis=0)
    # gg_linmma_finish
    centred = raw.astype(f64) - (mean32.astype(f64) - r.astype(f64)) * dbr[:, None]
    dW = (inv_std.astype(f64) / n * centred + 2 * lam * W32.astype(f64)).astype(f32)
    db = (dbr / n).astype(f32)
    J = f32(float(losses) + lam * (W32.astype(f64) ** 2).sum())
    return J, dW, db


@pytest.mark.parametrize("loss", ["softmax", "svm"])
@pytest.mark.parametrize("case", ["pixels", "offset means", "tiny weights", "large weights", "narrow std",
                                  "tiny gradients"])
def test_the_kernels_arithmetic_meets_float32_accuracy(case, loss, rng):
    n, d, C = 700, 784, 10
    X = rng.integers(0, 256, (n, d), dtype=np.uint8)
    mean, std = X.mean(0) + rng.standard_normal(d) * 0.3, X.std(0) + 1
    wscale, lam = 0.01, 0.01
    if case == "offset means":
        mean = rng.uniform(-400, 700, d)
    elif case == "tiny weights":
        wscale = 1e-30
    elif case == "large weights":
        wscale = 1e3
    elif case == "narrow std":
        std = rng.uniform(1e-3, 1e-2, d)
        wscale = 1e-5
    W = rng.standard_normal((C, d)) * wscale
    b = rng.standard_normal(C) * 0.1
    y = rng.integers(0, C, n)
    if case == "tiny gradients":  # an almost perfect fit: every |n dL/dS| below 1e-9 (softmax)
        y[:] = 3
        b[3] += 25.0 if loss == "softmax" else 3.0
        lam = 0.0
    J_ref, dW_ref, db_ref = NP.linear_grad(X, y, W, b, lam, loss, mean.astype(f32), std.astype(f32))
    J, dW, db = linmma_model(X, y, W, b, lam, loss, mean, std)
    assert rel(dW, dW_ref) <= 1e-5
    # db against the per-class sums of |dL/dS|, as on the GPU: with large weights the softmax is
    # nearly one-hot, db = (predicted - true class counts) / n cancels to ~0.03, and the float32
    # rounding of a near-tied row's scores (~1e-6 of a row) is then ~3e-5 of ||db||.
    assert rel(db, db_ref, db_scale(X, y, W, b, loss, mean.astype(f32), std.astype(f32))) <= 1e-5
    assert abs(float(J) - J_ref) <= 1e-5 * abs(J_ref) or J_ref == 0.0


def test_one_f16_half_would_not_be_enough(rng):
    """Why W' and G are split: with the hi halves alone the error is about 1e-4, ten times the budget."""
    n, d, C = 500, 784, 10
    X = rng.integers(0, 256, (n, d), dtype=np.uint8)
    mean, std = X.mean(0), X.std(0) + 1
    W = rng.standard_normal((C, d)) * 0.01
    inv_std = 1 / std.astype(f32)
    Wp = (W.astype(f32) * inv_std).astype(f32)
    scale = np.ldexp(1.0, 14 - np.frexp(np.abs(Wp).max(axis=1))[1])[:, None]
    hi_only = (Wp * scale).astype(f16).astype(f64) / scale
    Xc = X.astype(f64) - _pixel_offset(mean.astype(f32))
    exact = Xc @ Wp.astype(f64).T
    assert rel(Xc @ hi_only.T, exact) > 1e-5


def _tf32(v32):
    """cvt.rna.tf32.f32: round float32 to 10 fraction bits, ties away from zero (on the magnitude
    bits: add half a tf32 unit, clear the 13 low bits)."""
    bits = np.asarray(v32, f32).view(np.uint32)
    return ((bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(f32)


def _split_tf32(v32):
    hi = _tf32(v32)
    return hi, _tf32((v32 - hi).astype(f32))


def _x3(ah, al, bh, bl):
    """3xTF32: a b without the lo lo term, products exact, float64 sums (see _tc_matmul)."""
    a, b = (ah.astype(f64), al.astype(f64)), (bh.astype(f64), bl.astype(f64))
    return a[1] @ b[0] + a[0] @ b[1] + a[0] @ b[0]


def linmma_f32_model(X, y, W, b, lam, loss):
    """gg_linmma_prep_f32 + gg_linmma_f32 + gg_linmma_finish (x_mean null, gscale 1)."""
    n = X.shape[0]
    X32, W32, b32 = X.astype(f32), W.astype(f32), b.astype(f32)
    xh, xl = _split_tf32(X32)
    wh, wl = _split_tf32(W32)
    S = (_x3(xh, xl, wh.T, wl.T).astype(f32) + b32).astype(f32)
    if loss == "softmax":
        losses, dS = NP.softmax_cross_entropy_grad(S, y)
    else:
        losses, dS = NP.svm_grad(S, y)
    g = (dS * n).astype(f32)
    gh, gl = _split_tf32(g)
    raw = _x3(xh.T, xl.T, gh, gl).T.astype(f32)  # dW^T = X^T G
    dbr = g.astype(f64).sum(axis=0)
    dW = (raw.astype(f64) / n + 2 * lam * W32.astype(f64)).astype(f32)
    return f32(float(losses) + lam * (W32.astype(f64) ** 2).sum()), dW, (dbr / n).astype(f32)


@pytest.mark.parametrize("loss", ["softmax", "svm"])
@pytest.mark.parametrize("scale", [1.0, 1e-8, 1e8])  # J = loss + lam |W|^2 stays a float32
def test_the_3xtf32_arithmetic_meets_float32_accuracy(scale, loss, rng):
    """float32 X through the tf32 tensor cores, X and W as hi + lo: accurate to float32's 1e-5
    budget at any magnitude (tf32 has float32's exponent range)."""
    n, d, C = 600, 1000, 10
    X = rng.standard_normal((n, d)) * scale
    W = rng.standard_normal((C, d)) * 0.05 / scale
    b = rng.standard_normal(C) * 0.1
    y = rng.integers(0, C, n)
    J_ref, dW_ref, db_ref = NP.linear_grad(X, y, W, b, 0.01, loss)
    J, dW, db = linmma_f32_model(X, y, W, b, 0.01, loss)
    assert rel(dW, dW_ref) <= 1e-5
    assert rel(db, db_ref, db_scale(X, y, W, b, loss)) <= 1e-5
    assert abs(float(J) - J_ref) <= 1e-5 * abs(J_ref)


def test_tf32_rounding_model():
    """The model's cvt.rna.tf32.f32: 10 fraction bits, ties away from zero."""
    one_ulp = np.float32(2.0 ** -10)
    assert _tf32(np.float32(1 + 2.0 ** -11)) == 1 + one_ulp          # tie, away from zero
    assert _tf32(np.float32(-(1 + 2.0 ** -11))) == -(1 + one_ulp)
    assert _tf32(np.float32(1 + 2.0 ** -12)) == 1
    v = np.random.default_rng(0).standard_normal(10000).astype(f32)
    hi, lo = _split_tf32(v)
    assert np.all(np.abs(v - hi) <= np.abs(v) * 2.0 ** -11)
    assert np.all(np.abs(v.astype(f64) - hi - lo) <= np.abs(v) * 2.0 ** -21)


def _rz32(v64):
    """float64 -> float32 rounded toward zero, as the tensor cores round their fp32 results."""
    f = v64.astype(f32)
    over = np.abs(f.astype(f64)) > np.abs(v64)
    f[over] = np.nextafter(f[over], f32(0))
    return f


def _mma_chain(parts, per_tile=None):
    """Accumulate MMA results (rows of `parts`: each MMA's exact sum) in a truncating fp32
    accumulator; with per_tile, restart it every per_tile MMAs and add each tile's sum to a running
    total with an ordinary round-to-nearest add, as both kernels do."""
    total = np.zeros(parts.shape[1], f32)
    acc = np.zeros(parts.shape[1], f32)
    for i, p in enumerate(parts):
        acc = _rz32(acc.astype(f64) + p)
        if per_tile and (i + 1) % per_tile == 0:
            total, acc = (total + acc).astype(f32), np.zeros_like(acc)
    return (total + acc).astype(f32)


def test_per_tile_accumulators_keep_truncation_in_bounds(rng):
    """dW sums every row a cluster sees. In one tensor-core accumulator that is hundreds of
    truncating MMAs (a bias of up to 1 ulp each); restarting the accumulator every tile keeps the
    chains 4 MMAs long. Rows of a softmax-like G times centred pixels, 16 rows an MMA."""
    n, m = 8192, 2000
    G = rng.uniform(-1, 1, (n, 1)) * rng.uniform(0, 1, (1, m))
    Xc = rng.integers(-128, 128, (n, m)).astype(f64)
    exact = (G * Xc).sum(axis=0)
    parts = (G * Xc).reshape(n // 16, 16, m).sum(axis=1)
    err_tile = rel(_mma_chain(parts, per_tile=4), exact)
    err_chain = rel(_mma_chain(parts), exact)
    assert err_tile <= 1e-6
    assert err_chain > 3 * err_tile  # why the kernels restart their accumulators

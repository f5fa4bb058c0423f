// linear_step.cuh: the whole linear-classifier step fused, X read from device memory once.
//
// Reads:  X (n, d): float32 or float64, or uint8 pixels (or the rows idx[0..n) of a larger X, idx
//         non-null: a training batch read where it lies, never gathered into a copy); with x_mean/x_std (NORM) each value is
//         normalised on the fly as (x - mean_k) * (1 / std_k); y (n,); W (C, d) and b (C,) in the
//         compute type T (float32 for float32 X, float64 for float64 X, either for uint8 X); W once
//         per block, into shared memory; sw (n,) in T, the per-row sample weights, or a null
//         pointer (every weight 1): J = (1/n) sum_r sw_r l_r + lam ||W||^2, row r's G times sw_r.
// Writes: per-block partials dW_part[block][C][d], db_part[block][C] (T), loss_part[block], and
//         wsq = ||W||^2; gg_linear_finish(_f64) then adds the partials in a fixed order and writes
//         J (0-d), dW = G^T X + 2 lam W and db = column sums of G (G = dL/dS, already / n).
// Traffic: one read of X (n d sizeof(X)) + (grid) x (C d) partials, which is about 2% of X at
//         n = 65536, d = 3072, C = 10 on 132 multiprocessors (float32).
//
// Layout: a persistent grid; each block walks groups of RG rows. Thread t owns the columns
// k = t + j * blockDim.x (j < KPT) for the whole run, so
//   phase 1  S[r][c] = b[c] + sum_k X[r][k] W[c][k]: each thread forms its columns' part of all
//            RG * C dot products, then one butterfly per warp (31 shuffles for 32 sums) and a
//            pass over the warps' results in shared memory finish them;
//   loss     one warp per row turns its C scores into the loss and G[r][:] (softmax: the fused
//            p - y of rowmath.cuh; svm: the hinge indicators);
//   phase 2  dW[c][k] += G[r][c] X[r][k] accumulates in registers, from the same X values.
// X tiles stream into shared memory with cp.async, one row group ahead of the compute.
// float64 keeps the same layout with fewer rows per group and columns per thread (GgLinearShape):
// its accumulators take two registers each.
#pragma once
#include "common.cuh"
#include "rowmath.cuh"

template <int V> struct GgPow2 { static constexpr int value = V <= 1 ? 1 : 2 * GgPow2<(V + 1) / 2>::value; };
template <> struct GgPow2<1> { static constexpr int value = 1; };

// Reduce NV values (NV a power of two <= 32) over the 32 lanes of a warp so that, afterwards,
// v[0] of lane l holds the warp's total of value number (l >> (5 - log2 NV)). Each step sends
// half of the remaining values to the partner lane and keeps the other half: 31 shuffles in
// all for 32 values, against 5 per value for separate reductions.
template <int O, int NV>
struct GgButterfly {
    template <typename T>
    static __device__ __forceinline__ void run(T* v, int lane) {
        if constexpr (NV > 1) {
            constexpr int H = NV / 2;
            const bool upper = lane & O;
#pragma unroll
            for (int i = 0; i < H; ++i) {
                const T send = upper ? v[i] : v[i + H];
                const T keep = upper ? v[i + H] : v[i];
                v[i] = keep + __shfl_xor_sync(GG_FULL_MASK, send, O);
            }
            if constexpr (O > 1) GgButterfly<O / 2, H>::run(v, lane);
        } else {
            v[0] += __shfl_xor_sync(GG_FULL_MASK, v[0], O);
            if constexpr (O > 1) GgButterfly<O / 2, 1>::run(v, lane);
        }
    }
};

// Copy rows [row0, row0 + R) of X (the rows idx[row0 + r] of X when idx is not null), columns
// [k0, k0 + ncols), into a tile whose rows are xstride elements apart (xstride * sizeof(TX) a
// multiple of 16), as one cp.async group. Rows past n are skipped: the kernels mask them at use or
// give them a zero gradient. `align` is the widest copy
// every piece allows: 16 or 4 bytes (d * sizeof(TX) and X's address are multiples of it, and k0 of
// 16 elements), or 1 (single elements, synchronous: odd uint8 rows).
template <typename TX, int R>
__device__ __forceinline__ void gg_stage_tile(TX* dst, const TX* __restrict__ X, gg_i64 row0, gg_i64 n, int d,
                                              int k0, int ncols, int xstride, int align,
                                              const gg_i64* __restrict__ idx = nullptr) {
    const int per = align >= 16 ? 16 / (int)sizeof(TX) : (align >= 4 ? 4 / (int)sizeof(TX) : 1);
    const int per_row = ncols / per;  // ncols is a multiple of `per` (d is, and so is k0)
    for (int q = threadIdx.x; q < R * per_row; q += blockDim.x) {
        const int r = q / per_row, c = per * (q - r * per_row);
        if (row0 + r >= n) continue;
        TX* to = dst + r * xstride + c;
        const TX* from = X + (idx != nullptr ? idx[row0 + r] : row0 + r) * d + k0 + c;
        if (align >= 16) gg_cp_async16(to, from);
        else if (align >= 4) gg_cp_async4(to, from);
        else *to = *from;
    }
    gg_cp_async_commit();
}

// One step of a loop over tiles with two shared-memory stages (tiles[0], tiles[1], R rows of
// xstride each; iteration `it` works on stage it & 1): put tile `next` in flight into the other
// stage (past the last tile an empty group, which keeps wait_group's count uniform), wait for the
// current tile's copies and make them visible to the block. Returns the current stage.
template <typename TX, int R>
__device__ __forceinline__ const TX* gg_next_tile(TX* tiles, int it, gg_i64 next, gg_i64 ntiles,
                                                  const TX* __restrict__ X, gg_i64 n, int d, int k0, int ncols,
                                                  int xstride, int align, const gg_i64* __restrict__ idx = nullptr) {
    if (next < ntiles) gg_stage_tile<TX, R>(tiles + ((it & 1) ^ 1) * R * xstride, X, next * R, n, d, k0, ncols,
                                            xstride, align, idx);
    else gg_cp_async_commit();
    gg_cp_async_wait_one();
    __syncthreads();
    return tiles + (it & 1) * R * xstride;
}

// 1 / std_k in T, correctly rounded (no fast math): what the host would get from CuPy's
// 1 / x_std. The kernels take x_std itself, so a step launches no extra kernel for it.
template <typename T>
__device__ __forceinline__ T gg_inv_std(const T* x_std, int k) { return T(1) / x_std[k]; }

// X[k] of a staged row as the compute type T, normalised when NORM.
template <typename T, bool NORM, typename TX>
__device__ __forceinline__ T gg_load_x(const TX* p, int k, T mean, T inv_std) {
    if constexpr (NORM) return ((T)p[k] - mean) * inv_std;
    else return (T)p[k];
}

// The row's loss and G[c] * scale from its C scores, a team of TW lanes (TW a power of two, C <= TW)
// per row: team lane c < C holds s. Returns this lane's G * scale (0 for lanes >= C) and adds the
// row's loss times `weight` to *loss in team lane 0. scale = 1/n gives dL/dS of the batch mean;
// a sample weight w_r enters as scale = w_r / n and weight = w_r (w_r = 1: the unweighted bits).
template <int TW, typename T>
__device__ __forceinline__ T gg_row_loss_grad(T s, int lane, int C, gg_i64 yv, bool row_ok,
                                              int loss_kind, T scale, double* loss, T weight = T(1)) {
    const bool in = lane < C;
    const bool label_ok = yv >= 0 && yv < C;
    T s_y = __shfl_sync(GG_FULL_MASK, s, label_ok ? (int)yv : 0, TW);
    if (!label_ok) s_y = gg_nan<T>();  // bad label (validation off): NaN, no stray read
    T g, l;
    if (loss_kind == 0) {
        const T m = gg_subwarp_reduce<TW>(in ? s : -gg_inf<T>(), GgMax());
        const T e = in ? exp(s - m) : T(0);
        const T others = gg_subwarp_reduce<TW>(lane != yv ? e : T(0), GgSum());
        const T e_y = exp(s_y - m), total = others + e_y;
        g = in ? gg_ce_grad(lane == yv, e, others, scale / total) : T(0);
        l = gg_ce_row_loss(s_y - m, e_y, others, total);
    } else {
        const T margin = gg_hinge_margin(s, s_y);
        const bool on = in && lane != yv && margin > T(0);
        const int active = gg_subwarp_reduce<TW>((int)on, GgSum());
        l = gg_subwarp_reduce<TW>(on ? margin : T(0), GgSum());
        if (!label_ok) l = s_y;
        g = lane == yv ? -(T)active * scale : (on ? scale : T(0));
    }
    if (!row_ok) return T(0);
    if (lane == 0) *loss += (double)(l * weight);
    return g;
}

// Rows per group and columns per thread: the registers a thread holds are dW (C x KPT), its X
// values (RG x KPT) and the RG x C dot-product parts. float64 values take two registers, so it
// gets fewer rows and columns (at 512 threads a block, 128 registers a thread).
template <typename T, int C>
struct GgLinearShape {
    static constexpr bool F64 = sizeof(T) == 8;
    static constexpr int P2 = GgPow2<C>::value;
    static constexpr int RG = F64 ? (C <= 4 ? 2 : 1) : ((32 / P2) < 4 ? (32 / P2) : 4);
    static constexpr int NPART = RG * C;                             // dot products per group
    static constexpr int PP2 = GgPow2<NPART>::value;                 // padded for the butterfly
    static constexpr int KPT = F64 ? (C <= 4 ? 4 : 2) : (C <= 5 ? 8 : (C <= 10 ? 6 : 4));
};

template <typename T, typename TX, bool NORM, int C>
__device__ __forceinline__ void gg_linear_step(
    const TX* __restrict__ X, const void* __restrict__ y, int y64, const T* __restrict__ W,
    const T* __restrict__ b, const T* __restrict__ x_mean, const T* __restrict__ x_std,
    const T* __restrict__ sw, const gg_i64* __restrict__ idx, gg_i64 n, int d, int dpad, int align, int loss_kind,
    T* __restrict__ dW_part,
    T* __restrict__ db_part, double* __restrict__ loss_part, double* __restrict__ wsq) {
    using Sh = GgLinearShape<T, C>;
    constexpr int RG = Sh::RG, KPT = Sh::KPT, NPART = Sh::NPART, PP2 = Sh::PP2;
    const int nthreads = blockDim.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = nthreads >> 5;

    // Shared memory: Ws[C][d] | red[nwarps][32] | Gs[RG][C] | Xs[2][RG][dpad].
    extern __shared__ __align__(16) unsigned char gg_smem[];
    T* Ws = reinterpret_cast<T*>(gg_smem);
    T* red = Ws + C * d;
    T* Gs = red + nwarps * 32;
    TX* Xs = reinterpret_cast<TX*>(gg_smem + ((sizeof(T) * (C * d + nwarps * 32 + RG * C) + 15) / 16) * 16);
    __shared__ double scratch[32];

    const gg_i64 ngroups = (n + RG - 1) / RG;
    gg_i64 g = blockIdx.x;
    if (g < ngroups) gg_stage_tile<TX, RG>(Xs, X, g * RG, n, d, 0, d, dpad, align, idx);

    // W into shared memory once per block; ||W||^2 on the way (block 0 writes it).
    double wsq_local = 0.0;
    for (int i = threadIdx.x; i < C * d; i += nthreads) {
        const T w = W[i];
        Ws[i] = w;
        wsq_local += (double)w * w;
    }
    wsq_local = gg_block_reduce(wsq_local, GgSum(), scratch);
    if (blockIdx.x == 0 && threadIdx.x == 0) *wsq = wsq_local;

    T mean[KPT], istd[KPT];
#pragma unroll
    for (int j = 0; j < KPT; ++j) {
        const int k = threadIdx.x + j * nthreads;
        mean[j] = (NORM && k < d) ? x_mean[k] : T(0);
        istd[j] = (NORM && k < d) ? gg_inv_std(x_std, k) : T(1);
    }
    T dw[C][KPT];
#pragma unroll
    for (int c = 0; c < C; ++c)
#pragma unroll
        for (int j = 0; j < KPT; ++j) dw[c][j] = T(0);
    T db_acc = T(0);   // lane c of warp r < RG: sum of G[.][c] over this block's rows
    double loss_acc = 0.0;
    const T inv_n = T(1) / (T)n;
    const bool weighted = sw != nullptr;  // the same for the whole grid: tested once a row, not per value

    for (int it = 0; g < ngroups; g += gridDim.x, ++it) {
        const TX* xs = gg_next_tile<TX, RG>(Xs, it, g + gridDim.x, ngroups, X, n, d, 0, d, dpad, align, idx);

        // Phase 1: this thread's share of the RG x C dot products.
        T xr[RG][KPT];
#pragma unroll
        for (int r = 0; r < RG; ++r) {
            const bool row_ok = g * RG + r < n;
#pragma unroll
            for (int j = 0; j < KPT; ++j) {
                const int k = threadIdx.x + j * nthreads;
                xr[r][j] = (row_ok && k < d) ? gg_load_x<T, NORM>(xs + r * dpad, k, mean[j], istd[j]) : T(0);
            }
        }
        T part[PP2];
#pragma unroll
        for (int p = 0; p < PP2; ++p) part[p] = T(0);
#pragma unroll
        for (int j = 0; j < KPT; ++j) {
            const int k = threadIdx.x + j * nthreads;
            if (k < d) {
#pragma unroll
                for (int c = 0; c < C; ++c) {
                    const T w = Ws[c * d + k];
#pragma unroll
                    for (int r = 0; r < RG; ++r) part[r * C + c] = gg_fma(xr[r][j], w, part[r * C + c]);
                }
            }
        }
        GgButterfly<16, PP2>::run(part, lane);
        {
            constexpr int SHIFT = (PP2 == 32) ? 0 : (PP2 == 16) ? 1 : (PP2 == 8) ? 2 : (PP2 == 4) ? 3 : (PP2 == 2) ? 4 : 5;
            const int e = lane >> SHIFT;
            if ((lane & ((1 << SHIFT) - 1)) == 0 && e < NPART) red[warp * 32 + e] = part[0];
        }
        __syncthreads();

        // Loss: warp r finishes row r's scores and turns them into G[r][:].
        if (warp < RG) {
            const gg_i64 row = g * RG + warp;
            const bool row_ok = row < n;
            T s = -gg_inf<T>();
            if (lane < C) {
                s = b[lane];
                for (int w = 0; w < nwarps; ++w) s += red[w * 32 + warp * C + lane];
            }
            const gg_i64 src = (row_ok && idx != nullptr) ? idx[row] : row;  // the row of X, y and sw
            const gg_i64 yv = row_ok ? gg_label(y, y64, src) : 0;
            // The sample weight scales the row's G through the one factor w_r / n (phase 2 and db
            // then carry it), and its loss term by w_r. Unweighted, the scale stays 1/n and the
            // loss is multiplied by exactly 1: the same bits as before weights existed.
            T wr = T(1), scale = inv_n;
            if (weighted && row_ok) { wr = sw[src]; scale = wr * inv_n; }
            const T gval = gg_row_loss_grad<32>(s, lane, C, yv, row_ok, loss_kind, scale, &loss_acc, wr);
            if (lane < C) { Gs[warp * C + lane] = gval; db_acc += gval; }
        }
        __syncthreads();

        // Phase 2: dW[c][k] += G[r][c] X[r][k] for this thread's columns, X still in registers.
#pragma unroll
        for (int r = 0; r < RG; ++r)
#pragma unroll
            for (int c = 0; c < C; ++c) {
                const T gv = Gs[r * C + c];
#pragma unroll
                for (int j = 0; j < KPT; ++j) dw[c][j] = gg_fma(gv, xr[r][j], dw[c][j]);
            }
    }

    // This block's partials: dW from registers, db and loss through shared memory (red is free:
    // every thread has passed the last barrier of the loop, and the loop's reads of red are done).
#pragma unroll
    for (int c = 0; c < C; ++c)
#pragma unroll
        for (int j = 0; j < KPT; ++j) {
            const int k = threadIdx.x + j * nthreads;
            if (k < d) dW_part[((gg_i64)blockIdx.x * C + c) * d + k] = dw[c][j];
        }
    __syncthreads();
    if (warp < RG && lane < C) red[warp * 32 + lane] = db_acc;
    if (warp < RG && lane == 0) scratch[warp] = loss_acc;
    __syncthreads();
    if (threadIdx.x < C) {
        T s = T(0);
        for (int r = 0; r < RG; ++r) s += red[r * 32 + threadIdx.x];
        db_part[(gg_i64)blockIdx.x * C + threadIdx.x] = s;
    }
    if (threadIdx.x == 0) {
        double s = 0.0;
        for (int r = 0; r < RG; ++r) s += scratch[r];
        loss_part[blockIdx.x] = s;
    }
}

// Adds the per-block partials in block order (deterministic, in double) and the L2 term:
// dW = sum_p dW_part[p] + 2 lam W; db = sum_p db_part[p]; J = sum_p loss_part[p] / n + lam ||W||^2.
template <typename T>
__device__ __forceinline__ void gg_linear_finish_step(
    const T* __restrict__ dW_part, const T* __restrict__ db_part, const double* __restrict__ loss_part,
    const double* __restrict__ wsq, const T* __restrict__ W, int nparts, int C, int d, double lam,
    double inv_n, T* __restrict__ dW, T* __restrict__ db, T* __restrict__ J) {
    const gg_i64 cd = (gg_i64)C * d;
    for (gg_i64 i = (gg_i64)blockIdx.x * blockDim.x + threadIdx.x; i < cd; i += (gg_i64)gridDim.x * blockDim.x) {
        double s = 0.0;
        for (int p = 0; p < nparts; ++p) s += dW_part[p * cd + i];
        dW[i] = (T)(s + 2.0 * lam * (double)W[i]);
    }
    if (blockIdx.x == 0) {
        if (threadIdx.x < C) {
            double s = 0.0;
            for (int p = 0; p < nparts; ++p) s += db_part[p * C + threadIdx.x];
            db[threadIdx.x] = (T)s;
        }
        if (threadIdx.x == 0) {
            double s = 0.0;
            for (int p = 0; p < nparts; ++p) s += loss_part[p];
            J[0] = (T)(s * inv_n + lam * wsq[0]);
        }
    }
}

#define GG_FIN_ARGS(T) const T* __restrict__ dW_part, const T* __restrict__ db_part,                            \
    const double* __restrict__ loss_part, const double* __restrict__ wsq, const T* __restrict__ W, int nparts,  \
    int C, int d, double lam, double inv_n, T* __restrict__ dW, T* __restrict__ db, T* __restrict__ J
#define GG_FIN_PASS dW_part, db_part, loss_part, wsq, W, nparts, C, d, lam, inv_n, dW, db, J
GG_KERNEL(gg_linear_finish, __launch_bounds__(256))(GG_FIN_ARGS(float)) { gg_linear_finish_step(GG_FIN_PASS); }
GG_KERNEL(gg_linear_finish_f64, __launch_bounds__(256))(GG_FIN_ARGS(double)) { gg_linear_finish_step(GG_FIN_PASS); }

#define GG_LIN_ARGS(T, TX) const TX* __restrict__ X, const void* __restrict__ y, int y64, const T* __restrict__ W, \
    const T* __restrict__ b, const T* __restrict__ x_mean, const T* __restrict__ x_std, const T* __restrict__ sw, \
    const gg_i64* __restrict__ idx, gg_i64 n, int d, int dpad, int align, int loss_kind, T* __restrict__ dW_part, \
    T* __restrict__ db_part, double* __restrict__ loss_part, double* __restrict__ wsq
#define GG_LIN_PASS X, y, y64, W, b, x_mean, x_std, sw, idx, n, d, dpad, align, loss_kind, dW_part, db_part, loss_part, \
    wsq

// Entry points gg_linear_<x>_c<C>, C = 1..16, x naming X and the compute type T:
//   f32: float32 X;   f32n: float32 X normalised by x_mean/x_std;   u8: uint8 X normalised (T float32);
//   f64: float64 X;   f64n: float64 X normalised;   u8f64: uint8 X normalised (T float64).
// (x_mean and x_std are null pointers for f32 and f64; sw, the sample weights, a null pointer when
// there are none; idx, the rows of X, y and sw that make the batch, a null pointer for all of them
// in order.)
#define GG_LIN(TN, T, TX, NORM, C) \
    GG_KERNEL(gg_linear_##TN##_c##C, __launch_bounds__(512, 1))(GG_LIN_ARGS(T, TX)) { \
        gg_linear_step<T, TX, NORM, C>(GG_LIN_PASS); }
#define GG_LIN_ALL(TN, T, TX, NORM) \
    GG_LIN(TN, T, TX, NORM, 1) GG_LIN(TN, T, TX, NORM, 2) GG_LIN(TN, T, TX, NORM, 3) GG_LIN(TN, T, TX, NORM, 4) \
    GG_LIN(TN, T, TX, NORM, 5) GG_LIN(TN, T, TX, NORM, 6) GG_LIN(TN, T, TX, NORM, 7) GG_LIN(TN, T, TX, NORM, 8) \
    GG_LIN(TN, T, TX, NORM, 9) GG_LIN(TN, T, TX, NORM, 10) GG_LIN(TN, T, TX, NORM, 11)                          \
    GG_LIN(TN, T, TX, NORM, 12) GG_LIN(TN, T, TX, NORM, 13) GG_LIN(TN, T, TX, NORM, 14)                         \
    GG_LIN(TN, T, TX, NORM, 15) GG_LIN(TN, T, TX, NORM, 16)

GG_LIN_ALL(f32, float, float, false)
GG_LIN_ALL(f32n, float, float, true)
GG_LIN_ALL(u8, float, unsigned char, true)
GG_LIN_ALL(f64, double, double, false)
GG_LIN_ALL(f64n, double, double, true)
GG_LIN_ALL(u8f64, double, unsigned char, true)

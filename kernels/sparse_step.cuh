// sparse_step.cuh: the linear-classifier step on a sparse X (CSR), each row's non-zeros read once.
//
// Reads:  X as CSR: values val (nnz,) in T, column indices col (nnz,) and row starts indptr (n + 1,),
//         both int32 or int64 (a run-time flag, uniform over the grid); y (n,); W (C, d) and b (C,)
//         in T; sw (n,) per-row sample weights or a null pointer; x_std (d,) or a null pointer.
// Writes: gg_sparse_prep: Wt (d, C) = (W / x_std)^T, the weights a raw row meets, one row of C
//         values per column of X (a non-zero's C weights are one contiguous read); dWt (d, C) zeroed;
//         wsq[0] = ||W||^2 (partials in block order, then the last block: deterministic).
//         gg_sparse_<t>_t<CP>: dWt[k][c] += G[r][c] x_rk for each stored x_rk (atomics), and db and
//         the loss sum (per-block partials added in block order by the last block: deterministic).
//         gg_sparse_finish(_f64): dW (C, d) = (dWt^T - db x_mean^T) / x_std + 2 lam W, J.
// Traffic: one read of X's values and indices (nnz (sizeof(T) + index bytes)) and, per non-zero,
//         one C-wide read of Wt and one C-wide atomic add into dWt, both contiguous (W and dW stay
//         in L2 for the text-sized shapes: 100,000 x 20 floats is 8 MB); plus four passes over
//         C x d in prep and finish (a mini-batch's dW is dense C x d, as the interface returns it).
//
// Layout of the row kernel: a warp per row (rows in a grid-stride loop). Lane l plays class
// c = l % CP (CP = C rounded up to a power of two, at most 32) for the non-zeros of slice
// p = l / CP: the warp loads 32 non-zeros at a time (coalesced, one each), and slice p takes
// entries p, p + P, p + 2P, ... of them (P = 32 / CP slices), each broadcast from its lane by a
// shuffle. So every lane multiplies one weight per non-zero it sees, the C weights of a non-zero
// are read by C neighbouring lanes at once, and no lane waits on a cross-lane reduction inside the
// loop: scores are summed over the P slices once per row (log2 P shuffles), the softmax or hinge
// runs over the CP lanes of a slice (rowmath.cuh, as the dense step), and G's outer product with the
// row goes back out over the same non-zeros: the first GG_SPARSE_KEEP * 32 of them from registers,
// the rest of a longer row read again (from L2).
//
// dW's sums are order-dependent in floating point: atomics make dW differ from run to run within
// rounding (J and db do not: their partials are added in a fixed order).
#pragma once
#include "common.cuh"
#include "linear_step.cuh"

#define GG_SPARSE_WARPS 8  // warps (rows in flight) per block of the row kernel
#define GG_SPARSE_KEEP 4   // 32-entry pieces of a row kept in registers between the two phases
#define GG_SPARSE_MAX_CLASSES 32

__device__ __forceinline__ gg_i64 gg_index(const void* p, int is64, gg_i64 i) {
    return is64 ? static_cast<const gg_i64*>(p)[i] : static_cast<gg_i64>(static_cast<const int*>(p)[i]);
}

// Rows' starts, ends and this lane's entry j of X: (column, value), or (0, 0) past the row's end.
template <typename T>
__device__ __forceinline__ void gg_sparse_entry(const T* __restrict__ val, const void* __restrict__ col, int idx64,
                                                gg_i64 j, gg_i64 end, int& k, T& v) {
    const bool in = j < end;
    k = in ? (int)gg_index(col, idx64, j) : 0;
    v = in ? val[j] : T(0);
}

// The entries of this lane's slice p of one piece of up to 32 entries held one per lane (k_l, v_l;
// `count` of them real): f(k, v) for entries p, p + P, ... (P = 32 / CP), for class c < C.
template <int CP, typename T, typename F>
__device__ __forceinline__ void gg_sparse_slice(int k_l, T v_l, int count, int C, int c, int p, F f) {
    constexpr int P = 32 / CP;
#pragma unroll
    for (int q = 0; q < CP; ++q) {
        const int e = q * P + p;
        const int k = __shfl_sync(GG_FULL_MASK, k_l, e);
        const T v = __shfl_sync(GG_FULL_MASK, v_l, e);
        if (e < count && c < C) f(k, v);
    }
}

// Phase 1 on one piece: slice p adds, for class c, Wt[k][c] * v of its entries.
template <typename T, int CP>
__device__ __forceinline__ T gg_sparse_dot(T s, int k_l, T v_l, int count, const T* __restrict__ Wt, int C,
                                           int c, int p) {
    gg_sparse_slice<CP>(k_l, v_l, count, C, c, p, [&](int k, T v) { s = gg_fma(Wt[(gg_i64)k * C + c], v, s); });
    return s;
}

// Phase 2 on one piece: dWt[k][c] += g_c * v for the entries of this lane's slice. g == 0 (a hinge
// class with no margin, most of them) adds nothing: skipped.
template <typename T, int CP>
__device__ __forceinline__ void gg_sparse_scatter(T g, int k_l, T v_l, int count, T* __restrict__ dWt, int C,
                                                  int c, int p) {
    gg_sparse_slice<CP>(k_l, v_l, count, C, c, p, [&](int k, T v) {
        if (g != T(0)) atomicAdd(&dWt[(gg_i64)k * C + c], g * v);
    });
}

template <typename T, int CP>
__device__ __forceinline__ void gg_sparse_rows(
    const T* __restrict__ val, const void* __restrict__ col, const void* __restrict__ indptr, int idx64,
    const void* __restrict__ y, int y64, const T* __restrict__ Wt, const T* __restrict__ b,
    const T* __restrict__ sw, gg_i64 n, int C, int loss_kind, T* __restrict__ dWt, T* __restrict__ db_part,
    double* __restrict__ loss_part, unsigned* ticket, T* __restrict__ db, double* __restrict__ loss_sum) {
    __shared__ T red[GG_SPARSE_WARPS][32];
    __shared__ double lred[GG_SPARSE_WARPS];
    __shared__ bool is_last;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int c = lane & (CP - 1), p = lane / CP;
    const T inv_n = T(1) / (T)n;
    const bool weighted = sw != nullptr;
    T db_acc = T(0);
    double loss_acc = 0.0;

    for (gg_i64 row = (gg_i64)blockIdx.x * GG_SPARSE_WARPS + warp; row < n; row += (gg_i64)gridDim.x * GG_SPARSE_WARPS) {
        const gg_i64 start = gg_index(indptr, idx64, row), end = gg_index(indptr, idx64, row + 1);
        // Phase 1: the row's scores, its first pieces kept in registers for phase 2.
        int kk[GG_SPARSE_KEEP];
        T vv[GG_SPARSE_KEEP];
        T s = T(0);
#pragma unroll
        for (int i = 0; i < GG_SPARSE_KEEP; ++i) {
            const gg_i64 base = start + 32 * i;
            gg_sparse_entry(val, col, idx64, base + lane, end, kk[i], vv[i]);
            if (base < end) s = gg_sparse_dot<T, CP>(s, kk[i], vv[i], (int)min(end - base, (gg_i64)32), Wt, C, c, p);
        }
        for (gg_i64 base = start + 32 * GG_SPARSE_KEEP; base < end; base += 32) {
            int k;
            T v;
            gg_sparse_entry(val, col, idx64, base + lane, end, k, v);
            s = gg_sparse_dot<T, CP>(s, k, v, (int)min(end - base, (gg_i64)32), Wt, C, c, p);
        }
#pragma unroll
        for (int o = CP; o < 32; o <<= 1) s += __shfl_xor_sync(GG_FULL_MASK, s, o);  // over the slices
        s = c < C ? s + b[c] : -gg_inf<T>();

        // The loss and G on the row: every slice computes the same; slice 0 keeps the sums.
        const gg_i64 yv = gg_label(y, y64, row);
        T wr = T(1), scale = inv_n;
        if (weighted) { wr = sw[row]; scale = wr * inv_n; }
        double row_loss = 0.0;
        const T g = gg_row_loss_grad<CP>(s, c, C, yv, true, loss_kind, scale, &row_loss, wr);
        if (p == 0) {
            loss_acc += row_loss;
            if (c < C) db_acc += g;
        }

        // Phase 2: dW += g x^T over the same non-zeros.
#pragma unroll
        for (int i = 0; i < GG_SPARSE_KEEP; ++i) {
            const gg_i64 base = start + 32 * i;
            if (base < end) gg_sparse_scatter<T, CP>(g, kk[i], vv[i], (int)min(end - base, (gg_i64)32), dWt, C, c, p);
        }
        for (gg_i64 base = start + 32 * GG_SPARSE_KEEP; base < end; base += 32) {
            int k;
            T v;
            gg_sparse_entry(val, col, idx64, base + lane, end, k, v);
            gg_sparse_scatter<T, CP>(g, k, v, (int)min(end - base, (gg_i64)32), dWt, C, c, p);
        }
    }

    // This block's db and loss, then the last block adds every block's in block order.
    red[warp][lane] = db_acc;
    if (lane == 0) lred[warp] = loss_acc;
    __syncthreads();
    if (threadIdx.x < C) {
        T s = T(0);
        for (int w = 0; w < GG_SPARSE_WARPS; ++w) s += red[w][threadIdx.x];
        db_part[(gg_i64)blockIdx.x * C + threadIdx.x] = s;
    }
    if (threadIdx.x == 0) {
        double s = 0.0;
        for (int w = 0; w < GG_SPARSE_WARPS; ++w) s += lred[w];
        loss_part[blockIdx.x] = s;
    }
    __threadfence();  // this block's partials are visible to every block before the ticket is taken
    __syncthreads();
    if (threadIdx.x == 0) is_last = atomicAdd(ticket, 1u) == gridDim.x - 1;
    __syncthreads();
    if (!is_last) return;
    __threadfence();
    if (threadIdx.x < C) {
        T s = T(0);
        for (unsigned i = 0; i < gridDim.x; ++i) s += static_cast<volatile T*>(db_part)[(gg_i64)i * C + threadIdx.x];
        db[threadIdx.x] = s;
    }
    if (threadIdx.x == 32) {
        double s = 0.0;
        for (unsigned i = 0; i < gridDim.x; ++i) s += static_cast<volatile double*>(loss_part)[i];
        loss_sum[0] = s;
    }
    __syncthreads();
    if (threadIdx.x == 0) *ticket = 0u;
}

// Wt[k][c] = W[c][k] / x_std[k] and dWt[k][c] = 0 over the C x d entries (i = k C + c: Wt and dWt
// written in order); ||W||^2 in double, per block, then the last block's sum in block order.
template <typename T>
__device__ __forceinline__ void gg_sparse_prep_step(const T* __restrict__ W, const T* __restrict__ x_std, int C, int d,
                                                    T* __restrict__ Wt, T* __restrict__ dWt, double* partials,
                                                    unsigned* ticket, double* wsq) {
    __shared__ double scratch[32];
    const gg_i64 cd = (gg_i64)C * d;
    double acc = 0.0;
    for (gg_i64 i = (gg_i64)blockIdx.x * blockDim.x + threadIdx.x; i < cd; i += (gg_i64)gridDim.x * blockDim.x) {
        const int k = (int)(i / C), c = (int)(i - (gg_i64)k * C);
        const T w = W[(gg_i64)c * d + k];
        acc += (double)w * w;
        Wt[i] = x_std ? w * gg_inv_std(x_std, k) : w;
        dWt[i] = T(0);
    }
    const double block_sum = gg_block_reduce(acc, GgSum(), scratch);
    gg_grid_mean(block_sum, partials, ticket, wsq, 1.0, scratch);
}

// dW[c][k] = (dWt[k][c] - db[c] x_mean[k]) / x_std[k] + 2 lam W[c][k] (x_mean, x_std: null for none);
// J = loss_sum / n + lam ||W||^2.
template <typename T>
__device__ __forceinline__ void gg_sparse_finish_step(const T* __restrict__ dWt, const T* __restrict__ W,
                                                      const T* __restrict__ db, const T* __restrict__ x_mean,
                                                      const T* __restrict__ x_std, const double* __restrict__ loss_sum,
                                                      const double* __restrict__ wsq, int C, int d, double lam,
                                                      double inv_n, T* __restrict__ dW, T* __restrict__ J) {
    const gg_i64 cd = (gg_i64)C * d;
    for (gg_i64 i = (gg_i64)blockIdx.x * blockDim.x + threadIdx.x; i < cd; i += (gg_i64)gridDim.x * blockDim.x) {
        const int c = (int)(i / d), k = (int)(i - (gg_i64)c * d);
        T g = dWt[(gg_i64)k * C + c];
        if (x_mean) g -= db[c] * x_mean[k];
        if (x_std) g *= gg_inv_std(x_std, k);
        dW[i] = (T)((double)g + 2.0 * lam * (double)W[i]);
    }
    if (blockIdx.x == 0 && threadIdx.x == 0) J[0] = (T)(loss_sum[0] * inv_n + lam * wsq[0]);
}

#define GG_SPARSE_ARGS(T) const T* __restrict__ val, const void* __restrict__ col, const void* __restrict__ indptr, \
    int idx64, const void* __restrict__ y, int y64, const T* __restrict__ Wt, const T* __restrict__ b,                 \
    const T* __restrict__ sw, gg_i64 n, int C, int loss_kind, T* __restrict__ dWt, T* __restrict__ db_part,           \
    double* __restrict__ loss_part, unsigned* ticket, T* __restrict__ db, double* __restrict__ loss_sum
#define GG_SPARSE_PASS val, col, indptr, idx64, y, y64, Wt, b, sw, n, C, loss_kind, dWt, db_part, loss_part, ticket, \
    db, loss_sum

// Entry points gg_sparse_<t>_t<CP>: T float (f32) or double (f64), C <= CP classes (CP = 1 ... 32).
#define GG_SPARSE(TN, T, CP) \
    GG_KERNEL(gg_sparse_##TN##_t##CP, __launch_bounds__(256))(GG_SPARSE_ARGS(T)) { \
        gg_sparse_rows<T, CP>(GG_SPARSE_PASS); }
#define GG_SPARSE_ALL(TN, T) \
    GG_SPARSE(TN, T, 1) GG_SPARSE(TN, T, 2) GG_SPARSE(TN, T, 4) GG_SPARSE(TN, T, 8) GG_SPARSE(TN, T, 16) \
    GG_SPARSE(TN, T, 32)                                                                                 \
    GG_KERNEL(gg_sparse_prep_##TN, __launch_bounds__(256))(const T* __restrict__ W, const T* __restrict__ x_std,  \
        int C, int d, T* __restrict__ Wt, T* __restrict__ dWt, double* partials, unsigned* ticket, double* wsq) { \
        gg_sparse_prep_step(W, x_std, C, d, Wt, dWt, partials, ticket, wsq); }                                    \
    GG_KERNEL(gg_sparse_finish_##TN, __launch_bounds__(256))(const T* __restrict__ dWt, const T* __restrict__ W,  \
        const T* __restrict__ db, const T* __restrict__ x_mean, const T* __restrict__ x_std,                       \
        const double* __restrict__ loss_sum, const double* __restrict__ wsq, int C, int d, double lam,             \
        double inv_n, T* __restrict__ dW, T* __restrict__ J) {                                                     \
        gg_sparse_finish_step(dWt, W, db, x_mean, x_std, loss_sum, wsq, C, d, lam, inv_n, dW, J); }

GG_SPARSE_ALL(f32, float)
GG_SPARSE_ALL(f64, double)

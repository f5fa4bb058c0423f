// softmax_ce.cuh: softmax cross-entropy, forward and gradient, over a score matrix S (n, C).
//
// Reads:  S (n, C) float/double, row-major, once from device memory; the labels y (n,).
// Writes: dS (n, C) = (P - Y) / n, once; loss_out[0] = (1/n) sum_i l_i, in the same launch
//         (per-block partial sums, added in a fixed order by the last block: deterministic).
// Traffic: one read of S + one write of dS (8 n C bytes in float32), the floor for this output.
//
// A "team" of threads owns one row and keeps it in registers (K values per thread), so the
// max, the exponentials and the gradient come from a single read:
//   - small C: G = 1..32 lanes of a warp per row (a thread per row for C <= 8): no generic
//     segmented reduction, which is slow on the 10-class rows of CIFAR-10 or digits;
//   - large C: the whole block (blockDim.x threads) per row, K values each;
//   - long rows (thousands of classes): a persistent block per SM with the next row in flight while
//     the current one is worked on, so the memory system stays busy through the block-wide
//     reductions: gg_ce_stream (next row into registers, current row in shared memory) or
//     gg_ce_prefetch (next row into shared memory by cp.async, current row in registers, one
//     exponential per entry and one block reduction);
//   - rows too long for the registers: ce_online, two passes (online max/sum, then the write).
#pragma once
#include "common.cuh"
#include "rowmath.cuh"

// Merge every thread's online statistics (m, o) over the block (shuffles, then one pass over the
// warps in shared memory); every thread gets the block's (m, o). ms/os hold 32 values each.
template <typename T>
__device__ __forceinline__ void gg_block_merge_online(T& m, T& o, T* ms, T* os) {
#pragma unroll
    for (int off = 16; off >= 1; off >>= 1) {
        const T m2 = __shfl_xor_sync(GG_FULL_MASK, m, off), o2 = __shfl_xor_sync(GG_FULL_MASK, o, off);
        gg_online_merge(m, o, m2, o2);
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) { ms[warp] = m; os[warp] = o; }
    __syncthreads();
    m = ms[0]; o = os[0];
    for (int w = 1; w < (int)(blockDim.x >> 5); ++w) gg_online_merge(m, o, ms[w], os[w]);
}

// The row kept in registers. TEAM = G lanes (G <= 32) or 0 for "the whole block".
template <typename T, int G, int K>
__device__ __forceinline__ void gg_ce_regs(const T* __restrict__ S, const void* __restrict__ y, int y64,
                                           T* __restrict__ dS, gg_i64 n, int C, double* partials,
                                           unsigned* ticket, T* loss_out) {
    __shared__ double scratch[32];
    const auto [lane, step, row, valid] = GgTeam<G>(n);
    const T* s = S + row * C;
    __shared__ T tscratch[32];

    // One read of the row: K independent loads per thread are in flight before the first use.
    T v[K];
    T mx = -gg_inf<T>();
#pragma unroll
    for (int j = 0; j < K; ++j) {
        const int idx = lane + j * step;
        v[j] = (valid && idx < C) ? s[idx] : -gg_inf<T>();
        mx = v[j] > mx ? v[j] : mx;
    }
    mx = gg_team_reduce<G>(mx, GgMax(), tscratch);
    const GgRowLabel<T> r = gg_row_label(s, y, y64, row, C, valid);
    // One exponential per entry, kept in v[] for the write: measured faster than forming max and
    // sum in a single online pass, which needs a second exponential per entry.
    T others = 0;
#pragma unroll
    for (int j = 0; j < K; ++j) {
        const int idx = lane + j * step;
        v[j] = idx < C ? exp(v[j] - mx) : T(0);
        if (idx != r.yv) others += v[j];
    }
    others = gg_team_reduce<G>(others, GgSum(), tscratch);
    const T e_y = exp(r.s_y - mx);
    const T total = others + e_y;
    const T scale = T(1) / (T(n) * total);
    if (valid) {
        T* g = dS + row * C;
#pragma unroll
        for (int j = 0; j < K; ++j) {
            const int idx = lane + j * step;
            if (idx < C) g[idx] = gg_ce_grad(idx == r.yv, v[j], others, scale);
        }
    }
    const double l = (valid && lane == 0) ? (double)gg_ce_row_loss(r.s_y - mx, e_y, others, total) : 0.0;
    // A block team's row loss is already in thread 0, the only thread gg_grid_mean reads it from.
    const double block_sum = GgTeam<G>::BLOCK ? l : gg_block_reduce(l, GgSum(), scratch);
    gg_grid_mean(block_sum, partials, ticket, loss_out, 1.0 / (double)n, scratch);
}

// Rows too long for the registers (C > K * blockDim.x): a block per row, two passes over S.
// Pass 1 keeps online (max, sum of exp over j != y) statistics; pass 2 re-reads S (from L2 when
// the row fits there) and writes dS. Traffic: two reads of S and one write of dS.
template <typename T>
__device__ __forceinline__ void gg_ce_online(const T* __restrict__ S, const void* __restrict__ y, int y64,
                                             T* __restrict__ dS, gg_i64 n, int C, double* partials,
                                             unsigned* ticket, T* loss_out) {
    __shared__ double scratch[32];
    __shared__ T ms[32], os[32];
    const gg_i64 row = blockIdx.x;
    const T* s = S + row * C;
    const GgRowLabel<T> r = gg_row_label(s, y, y64, row, C, true);

    T m = -gg_inf<T>(), o = 0;
    for (int idx = threadIdx.x; idx < C; idx += blockDim.x) {
        const T v = s[idx];
        gg_online_merge(m, o, v, idx == r.yv ? T(0) : T(1));
    }
    gg_block_merge_online(m, o, ms, os);

    const T others = o, e_y = exp(r.s_y - m), total = others + e_y;
    const T scale = T(1) / (T(n) * total);
    T* g = dS + row * C;
    for (int idx = threadIdx.x; idx < C; idx += blockDim.x)
        g[idx] = gg_ce_grad(idx == r.yv, exp(s[idx] - m), others, scale);
    const double l = threadIdx.x == 0 ? (double)gg_ce_row_loss(r.s_y - m, e_y, others, total) : 0.0;
    gg_grid_mean(l, partials, ticket, loss_out, 1.0 / (double)n, scratch);
}

// Long rows, streamed: grid = one block per SM, each walking rows blockIdx.x, + gridDim.x, ...
// The registers are the prefetch buffer: the loads of row r+1 are issued into v[] before row r,
// parked in shared memory, is reduced and written, and they are consumed only when row r+1 is
// stored to shared memory in the next iteration. So the memory system stays busy through the
// block-wide reductions (with a block per row and one block per SM, it idles during them).
// K values a thread, blockDim.x * K >= C; dynamic shared memory: C values.
template <typename T, int K>
__device__ __forceinline__ void gg_ce_stream(const T* __restrict__ S, const void* __restrict__ y, int y64,
                                             T* __restrict__ dS, gg_i64 n, int C, double* partials,
                                             unsigned* ticket, T* loss_out) {
    extern __shared__ __align__(16) unsigned char gg_row_smem[];
    T* row_s = reinterpret_cast<T*>(gg_row_smem);
    __shared__ double scratch[32];
    __shared__ T ms[32], os[32];
    const int t = threadIdx.x, step = blockDim.x;

    T v[K];
    auto load = [&](gg_i64 row) {
        const T* src = S + row * C;
#pragma unroll
        for (int j = 0; j < K; ++j) {
            const int idx = t + j * step;
            if (idx < C) v[j] = src[idx];
        }
    };
    double loss_acc = 0.0;
    gg_i64 row = blockIdx.x;
    if (row < n) load(row);
    for (; row < n; row += gridDim.x) {
        __syncthreads();  // every thread is done reading the previous row from shared memory
#pragma unroll
        for (int j = 0; j < K; ++j) {
            const int idx = t + j * step;
            if (idx < C) row_s[idx] = v[j];
        }
        __syncthreads();
        if (row + gridDim.x < n) load(row + gridDim.x);  // in flight while this row is processed

        const GgRowLabel<T> r = gg_row_label(row_s, y, y64, row, C, true);
        T mx = -gg_inf<T>();
        for (int idx = t; idx < C; idx += step) mx = row_s[idx] > mx ? row_s[idx] : mx;
        mx = gg_block_reduce(mx, GgMax(), ms);
        // One exponential per entry (the special-function unit is this kernel's other limit):
        // e_j replaces s_j in shared memory; each thread rewrites only entries it reads itself.
        T others = 0;
        for (int idx = t; idx < C; idx += step) {
            const T e = exp(row_s[idx] - mx);
            row_s[idx] = e;
            if (idx != r.yv) others += e;
        }
        others = gg_block_reduce(others, GgSum(), os);
        const T e_y = exp(r.s_y - mx), total = others + e_y;
        const T scale = T(1) / (T(n) * total);
        T* g = dS + row * C;
        for (int idx = t; idx < C; idx += step) g[idx] = gg_ce_grad(idx == r.yv, row_s[idx], others, scale);
        if (t == 0) loss_acc += (double)gg_ce_row_loss(r.s_y - mx, e_y, others, total);
    }
    gg_grid_mean(loss_acc, partials, ticket, loss_out, 1.0 / (double)n, scratch);
}

// Long rows, prefetched: the same persistent grid as gg_ce_stream, with the roles of registers and
// shared memory swapped. The next row streams into shared memory with cp.async (no load
// instructions, no registers held) while the current one is worked on in registers, K values a
// thread. Each thread first takes the statistics of its own K values (m_t = their max, o_t = the
// sum of exp(s_j - m_t) without the target), so each entry has one exponential and the block has
// one reduction step (merging the (m_t, o_t) pairs); then dS_j = exp(s_j - m_t) exp(m_t - m) /
// (n total), written from the registers. Shared memory is read once per entry.
// Needs C * sizeof(T) and the addresses of S and dS to be multiples of 16 (the host falls back to
// gg_ce_stream otherwise): every move is a 16-byte piece. THREADS threads a block (the launch's),
// K values a thread (a multiple of 16 / sizeof(T)), THREADS * K >= C; dynamic shared memory: C values.
template <typename T, int K, int THREADS>
__device__ __forceinline__ void gg_ce_prefetch(const T* __restrict__ S, const void* __restrict__ y, int y64,
                                               T* __restrict__ dS, gg_i64 n, int C, double* partials,
                                               unsigned* ticket, T* loss_out) {
    extern __shared__ __align__(16) unsigned char gg_row_smem[];
    __shared__ double scratch[32];
    __shared__ T ms[32], os[32];
    T* buf = reinterpret_cast<T*>(gg_row_smem);
    constexpr int V = 16 / sizeof(T), P = K / V;  // values a 16-byte piece, pieces a thread
    struct alignas(16) Piece { T v[V]; };
    if (C % V != 0) __trap();  // the host's alignment check disagrees: a piece would cross the row
    // Piece q of this thread holds entries V (t + q THREADS) .. + V - 1: a warp's pieces are adjacent
    // (coalesced 16-byte copies and stores, no shared-memory bank conflicts), and with THREADS a
    // constant each piece is a constant offset from one base address (no registers per piece).
    const int first = V * threadIdx.x;
    constexpr int STEP = V * THREADS;
    auto stage = [&](gg_i64 row) {  // this thread's pieces of `row` into buf, one cp.async group
        const T* src = S + row * C;
#pragma unroll
        for (int q = 0; q < P; ++q)
            if (first + q * STEP < C) gg_cp_async16(buf + first + q * STEP, src + first + q * STEP);
        gg_cp_async_commit();
    };

    double loss_acc = 0.0;
    gg_i64 row = blockIdx.x;
    if (row < n) stage(row);
    for (; row < n; row += gridDim.x) {
        gg_cp_async_wait_all();
        __syncthreads();  // every thread's pieces of this row have landed
        T v[K];
#pragma unroll
        for (int q = 0; q < P; ++q) {
            Piece p;
            if (first + q * STEP < C) {
                p = *reinterpret_cast<const Piece*>(buf + first + q * STEP);
            } else {
#pragma unroll
                for (int i = 0; i < V; ++i) p.v[i] = -gg_inf<T>();
            }
#pragma unroll
            for (int i = 0; i < V; ++i) v[q * V + i] = p.v[i];
        }
        const gg_i64 yl = gg_label(y, y64, row);
        const int yv = (yl >= 0 && yl < C) ? (int)yl : -1;  // -1: no entry is the target, s_y is NaN
        const T s_y = yv >= 0 ? buf[yv] : gg_nan<T>();
        __syncthreads();  // buf is read: the next row may stream in while this one is worked on
        if (row + gridDim.x < n) stage(row + gridDim.x);

        T mt = -gg_inf<T>();
#pragma unroll
        for (int j = 0; j < K; ++j) mt = (v[j] > mt || v[j] != v[j]) ? v[j] : mt;  // a NaN sticks
        const bool any = !(mt == -gg_inf<T>());  // false for threads holding only padding
        T ot = 0;
#pragma unroll
        for (int j = 0; j < K; ++j) {
            v[j] = any ? exp(v[j] - mt) : T(0);  // padding: exp(-inf) = 0
            if (first + (j / V) * STEP + j % V != yv) ot += v[j];
        }
        T m = mt, others = ot;
        gg_block_merge_online(m, others, ms, os);
        const T e_y = exp(s_y - m), total = others + e_y;
        const T inv = T(1) / (T(n) * total);
        const T f = any ? exp(mt - m) : T(0);
        T* g = dS + row * C;
#pragma unroll
        for (int q = 0; q < P; ++q) {
            const int e = first + q * STEP;
            Piece p;
#pragma unroll
            for (int i = 0; i < V; ++i) p.v[i] = gg_ce_grad(e + i == yv, v[q * V + i] * f, others, inv);
            if (e < C) *reinterpret_cast<Piece*>(g + e) = p;
        }
        if (threadIdx.x == 0) loss_acc += (double)gg_ce_row_loss(s_y - m, e_y, others, total);
    }
    gg_cp_async_wait_all();
    gg_grid_mean(loss_acc, partials, ticket, loss_out, 1.0 / (double)n, scratch);
}

// Entry points: gg_ce_<t>_w<G>_k<K> (G lanes per row, 256-thread blocks), gg_ce_<t>_b_k<K>
// (a 1024-thread block per row), gg_ce_<t>_online (a block per row, two passes).
#define GG_CE_TEAM(TN, T, G, K) \
    GG_KERNEL(gg_ce_##TN##_w##G##_k##K, __launch_bounds__(256))(GG_ROW_LOSS_ARGS(T)) { \
        gg_ce_regs<T, G, K>(GG_ROW_LOSS_PASS); }
#define GG_CE_BLOCK(TN, T, K) \
    GG_KERNEL(gg_ce_##TN##_b_k##K, __launch_bounds__(1024))(GG_ROW_LOSS_ARGS(T)) { \
        gg_ce_regs<T, 0, K>(GG_ROW_LOSS_PASS); }
#define GG_CE_ONLINE(TN, T) \
    GG_KERNEL(gg_ce_##TN##_online, __launch_bounds__(1024))(GG_ROW_LOSS_ARGS(T)) { \
        gg_ce_online<T>(GG_ROW_LOSS_PASS); }

#define GG_CE_ALL(TN, T) \
    GG_CE_TEAM(TN, T, 1, 8) GG_CE_TEAM(TN, T, 2, 8) GG_CE_TEAM(TN, T, 4, 8) GG_CE_TEAM(TN, T, 8, 8) \
    GG_CE_TEAM(TN, T, 16, 8) GG_CE_TEAM(TN, T, 32, 8) GG_CE_TEAM(TN, T, 32, 32) \
    GG_CE_BLOCK(TN, T, 2) GG_CE_BLOCK(TN, T, 4) GG_CE_BLOCK(TN, T, 8) GG_CE_BLOCK(TN, T, 16) \
    GG_CE_ONLINE(TN, T)

GG_CE_ALL(f32, float)
GG_CE_ALL(f64, double)

// Entry points gg_ce_<t>_s<THREADS>_k<K>: the streamed long-row kernel (persistent grid).
#define GG_CE_STREAM(TN, T, THREADS, K) \
    GG_KERNEL(gg_ce_##TN##_s##THREADS##_k##K, __launch_bounds__(THREADS, 1))(GG_ROW_LOSS_ARGS(T)) { \
        gg_ce_stream<T, K>(GG_ROW_LOSS_PASS); }
GG_CE_STREAM(f32, float, 1024, 32)
GG_CE_STREAM(f64, double, 1024, 16)

// Entry points gg_ce_<t>_p<THREADS>_k<K>: the prefetched long-row kernel (persistent grid).
#define GG_CE_PREFETCH(TN, T, THREADS, K) \
    GG_KERNEL(gg_ce_##TN##_p##THREADS##_k##K, __launch_bounds__(THREADS, 1))(GG_ROW_LOSS_ARGS(T)) { \
        gg_ce_prefetch<T, K, THREADS>(GG_ROW_LOSS_PASS); }
// 640 threads leave 96 registers a thread: K values plus the loop's state without spilling (1024
// threads would leave 64). Rows up to 33280 floats or 16640 doubles.
GG_CE_PREFETCH(f32, float, 640, 52)
GG_CE_PREFETCH(f64, double, 640, 26)
GG_CE_BLOCK(f32, float, 32)  // 32 floats a thread x 1024 threads: rows up to 32768 on chip

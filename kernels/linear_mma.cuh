// linear_mma.cuh: the linear-classifier step on the tensor cores, X read once (sm_90 clusters).
//
// Reads:  X (n, d) once: uint8 pixels (gg_linmma_u8_nt*) or float32 (gg_linmma_f32_nt*); y (n,);
//         W' as prepared by gg_linmma_prep (uint8: W * inv_std scaled per class by 2^e_c, as two
//         f16 halves hi + lo, 22 bits; column offsets r_k; folded bias b') or gg_linmma_prep_f32
//         (W as two tf32 halves hi + lo).
// Writes: per-cluster partials dW_raw[cluster][C][d] = sum_r g[r][c] x~[r][k] (g = n dL/dS; uint8:
//         x~ = x - r_k, float32: x~ = x), db_raw[cluster][C] = sum_r g and loss[cluster];
//         gg_linmma_finish adds them in a fixed order into J, dW and db.
// Traffic: one read of X + W' once per block + partials (clusters x C x d x 4 bytes: about 2% of
//         X at n = 65536, d = 3072, C = 10, uint8).
//
// Why this shape. Both products, S = X W'^T and dW = G^T X, run on the tensor cores with fp32
// accumulators: uint8 through mma.m16n8k16 in f16 (x - r_k is an integer in [-255, 255], exact;
// W' and G, each scaled to just under 2^14, as hi + lo, two MMAs each), float32 through mma.m16n8k8 in 3xTF32 (x and the other
// operand as hi + lo, three MMAs: hi hi, hi lo, lo hi). The whole of dW (C x d floats) and W'
// cannot both stay on one SM for d = 3072, so a cluster of blocks splits the columns: block q owns
// columns [q dsl, (q + 1) dsl), keeps its W' slice in shared memory and its dW slice in registers,
// and the cluster walks tiles of rows together:
//   forward   each block forms partial scores over its columns (its warps split rows and columns);
//             the partials meet through distributed shared memory (one cluster barrier per tile)
//             and every block adds them in rank order, so all get bit-identical S;
//   loss      16 lanes per row (C <= 16) turn S into the loss and G (gg_row_loss_grad);
//   backward  dW_slice += G^T X_slice from the X tile still in shared memory (uint8: the
//             forward's fragments transposed in registers with movmatrix).
// The next tile streams in with cp.async while the current one is worked on.
#pragma once
#include "common.cuh"
#include "mma_layout.cuh"
#include "linear_step.cuh"  // gg_row_loss_grad, gg_stage_tile, gg_next_tile

// v ~= hi + lo in f16 (hi = f16(v), lo = f16(v - hi)): 22 significant bits while |v| < 2^15 and
// the value is not far below the largest one being split (the callers scale to keep it so).
__device__ __forceinline__ void gg_split_f16_bits(float v, unsigned short& hi, unsigned short& lo) {
    hi = gg_f16_bits(v);
    lo = gg_f16_bits(v - gg_f16_float(hi));
}

// v = hi + lo + (about 2^-22 v), both tf32.
__device__ __forceinline__ void gg_split_tf32(float v, unsigned& hi, unsigned& lo) {
    hi = gg_tf32(v);
    lo = gg_tf32(v - __uint_as_float(hi));
}

// Prepare W for the tensor cores; one block of 256 threads per class row c < 8 nt (rows c >= C
// are zero). W'[c][k] = W[c][k] inv_std[k] 2^e_c, e_c putting max_k |W'| just under 2^14, split
// into Wh[0] (hi) and Wh[1] (lo), each [8 nt][dtot] with zeros for k >= d; sinv[c] = 2^-e_c;
// bprime[c] = b[c] - sum_k (m_k - r_k) W[c][k] inv_std[k]; wsq[c] = sum_k W[c][k]^2.
// Block 0 also writes roff[k] = f16(1024 + r_k).
GG_KERNEL(gg_linmma_prep, __launch_bounds__(256))(
    const float* __restrict__ W, const float* __restrict__ b, const float* __restrict__ x_mean,
    const float* __restrict__ x_std, int C, int d, int dtot, unsigned short* __restrict__ Wh,
    unsigned short* __restrict__ roff, float* __restrict__ bprime, float* __restrict__ sinv,
    double* __restrict__ wsq) {
    __shared__ double scratch[32];
    __shared__ float fscratch[32];
    const int c = blockIdx.x, rows = gridDim.x;
    if (c == 0)
        for (int k = threadIdx.x; k < dtot; k += blockDim.x)
            roff[k] = gg_f16_bits(1024.f + (k < d ? gg_pixel_offset(x_mean[k]) : 0.f));
    const bool real = c < C;
    float mx = 0.f;
    double sq = 0.0, shift = 0.0;
    if (real)
        for (int k = threadIdx.x; k < d; k += blockDim.x) {
            const float w = W[(gg_i64)c * d + k], wp = w * gg_inv_std(x_std, k);
            mx = fmaxf(mx, fabsf(wp));
            sq += (double)w * w;
            shift += ((double)x_mean[k] - (double)gg_pixel_offset(x_mean[k])) * wp;  // as gg_linmma_finish
        }
    mx = gg_block_reduce(mx, GgMax(), fscratch);
    sq = gg_block_reduce(sq, GgSum(), scratch);
    shift = gg_block_reduce(shift, GgSum(), scratch);
    int ex = 0;
    frexpf(mx, &ex);                                   // mx < 2^ex
    const int e = mx > 0.f ? max(-100, min(100, 14 - ex)) : 0;  // 2^+-100: normal floats
    const float scale = ldexpf(1.f, e);
    if (threadIdx.x == 0) {
        sinv[c] = real ? ldexpf(1.f, -e) : 0.f;
        bprime[c] = real ? (float)((double)b[c] - shift) : 0.f;
        wsq[c] = sq;
    }
    for (int k = threadIdx.x; k < dtot; k += blockDim.x) {
        const float v = (real && k < d) ? W[(gg_i64)c * d + k] * gg_inv_std(x_std, k) * scale : 0.f;
        unsigned short hi, lo;
        gg_split_f16_bits(v, hi, lo);
        Wh[(gg_i64)c * dtot + k] = hi;
        Wh[((gg_i64)rows + c) * dtot + k] = lo;
    }
}

// W as two tf32 halves for gg_linmma_f32_nt*, one block of 256 threads per class row c < 8 nt:
// Wt[0][c][k] = tf32(W), Wt[1][c][k] = tf32(W - hi), zeros for c >= C or k >= d (each [8 nt][dtot]);
// wsq[c] = sum_k W[c][k]^2.
GG_KERNEL(gg_linmma_prep_f32, __launch_bounds__(256))(
    const float* __restrict__ W, int C, int d, int dtot, float* __restrict__ Wt, double* __restrict__ wsq) {
    __shared__ double scratch[32];
    const int c = blockIdx.x, rows = gridDim.x;
    double sq = 0.0;
    for (int k = threadIdx.x; k < dtot; k += blockDim.x) {
        const float w = (c < C && k < d) ? W[(gg_i64)c * d + k] : 0.f;
        unsigned hi, lo;
        gg_split_tf32(w, hi, lo);
        Wt[(gg_i64)c * dtot + k] = __uint_as_float(hi);
        Wt[((gg_i64)rows + c) * dtot + k] = __uint_as_float(lo);
        sq += (double)w * w;
    }
    sq = gg_block_reduce(sq, GgSum(), scratch);
    if (threadIdx.x == 0) wsq[c] = sq;
}

// dW[c][k] = inv_std_k / n (sum_p dW_raw[p][c][k] - (m_k - r_k) db_raw[c]) + 2 lam W[c][k]
// (x_mean null, float32 X: inv_std_k = 1 and no offset term), db[c] = db_raw[c] / n,
// J = sum_p loss[p] / n + lam sum_c wsq[c]; partials added in index order.
GG_KERNEL(gg_linmma_finish, __launch_bounds__(256))(
    const float* __restrict__ dW_part, const float* __restrict__ db_part, const double* __restrict__ loss_part,
    const double* __restrict__ wsq, const float* __restrict__ W, const float* __restrict__ x_mean,
    const float* __restrict__ x_std, int nparts, int C, int d, double lam, double inv_n,
    float* __restrict__ dW, float* __restrict__ db, float* __restrict__ J) {
    __shared__ double dbr[16];
    if (threadIdx.x < C) {
        double s = 0.0;
        for (int p = 0; p < nparts; ++p) s += db_part[p * C + threadIdx.x];
        dbr[threadIdx.x] = s;
    }
    __syncthreads();
    const gg_i64 cd = (gg_i64)C * d;
    for (gg_i64 i = (gg_i64)blockIdx.x * blockDim.x + threadIdx.x; i < cd; i += (gg_i64)gridDim.x * blockDim.x) {
        const int c = (int)(i / d), k = (int)(i - (gg_i64)c * d);
        double s = 0.0;
        for (int p = 0; p < nparts; ++p) s += dW_part[p * cd + i];
        double centred = s, istd = 1.0;
        if (x_mean != nullptr) {
            centred -= ((double)x_mean[k] - (double)gg_pixel_offset(x_mean[k])) * dbr[c];
            istd = gg_inv_std(x_std, k);
        }
        dW[i] = (float)(istd * inv_n * centred + 2.0 * lam * (double)W[i]);
    }
    if (blockIdx.x == 0) {
        if (threadIdx.x < C) db[threadIdx.x] = (float)(dbr[threadIdx.x] * inv_n);
        if (threadIdx.x == 0) {
            double s = 0.0, w = 0.0;
            for (int p = 0; p < nparts; ++p) s += loss_part[p];
            for (int c = 0; c < C; ++c) w += wsq[c];
            J[0] = (float)(s * inv_n + lam * w);
        }
    }
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define GG_LINMMA_ATTRS(CL) __cluster_dims__(CL, 1, 1) __launch_bounds__(GG_LINMMA_THREADS, 1)

// The dynamic shared memory the launch gave must hold the kernel's layout.
__device__ __forceinline__ void gg_check_dynamic_smem(int bytes) {
    if (gg_dynamic_smem_size() < (unsigned)bytes) __trap();  // the host's mirror of the layout disagrees
}

// 3xTF32: acc += a b with a = ah + al, b = bh + bl, dropping only al bl (about 2^-22 relative).
__device__ __forceinline__ void gg_mma1688x3(float (&acc)[4], const unsigned (&ah)[4], const unsigned (&al)[4],
                                             unsigned bh0, unsigned bh1, unsigned bl0, unsigned bl1) {
    gg_mma1688(acc, al, bh0, bh1);  // small terms first
    gg_mma1688(acc, ah, bl0, bl1);
    gg_mma1688(acc, ah, bh0, bh1);
}
// ---- the per-tile steps both kernels share --------------------------------------------------------
// A block's share of the work, the same in both kernels (written once, so that they cannot disagree
// on which rows and columns a block stages, or in which stage). Block `rank` of cluster `cid` owns
// columns [k0, k0 + ncols) of X: dsl of them, fewer in the last block, none past d. The ncl
// clusters take X's row tiles (R rows each, ntiles in all) in turn, cluster cid the tiles cid,
// cid + ncl, ...; each block holds its columns of a tile in one of two shared-memory stages
// (iteration `it` in stage it & 1), the next tile in flight while it works on the current one.
// Each kernel:
//     GgLinmmaWork<TX, R> work(X, n, d, dsl, align);  // first: the cluster's ids, the columns
//     work.start(Xs, xstride);                         // once the stages are laid out
//     for (; work.more(); work.advance()) { const auto [stage, row0, xs] = work.next(); ... }
template <typename TX, int R>
struct GgLinmmaWork {
    const unsigned rank, cid, ncl;
    const int k0, ncols;
    const TX* X;
    const gg_i64 n;
    const int d, align;
    TX* tiles = nullptr;  // the two stages, R rows of xstride elements each
    int xstride = 0;
    gg_i64 ntiles = 0, tile = 0;
    int it = 0;

    __device__ __forceinline__ GgLinmmaWork(const TX* __restrict__ X, gg_i64 n, int d, int dsl, int align)
        : rank(gg_cluster_rank()), cid(gg_cluster_id()), ncl(gg_cluster_count()), k0((int)rank * dsl),
          ncols(max(0, min(dsl, d - k0))), X(X), n(n), d(d), align(align) {}

    // Zero both stages, then put the cluster's first tile in flight (its own cp.async group). The
    // tile padding (columns past d, rows past n) must hold finite values, which the MMAs multiply by
    // zero weights or zero gradients: 0 * NaN is NaN, and shared memory starts with whatever the
    // last kernel left. Rows past n later hold zeros or an earlier tile's finite values.
    __device__ __forceinline__ void start(TX* stages, int stride) {
        tiles = stages;
        xstride = stride;
        ntiles = (n + R - 1) / R;
        tile = cid;
        const int words = 2 * R * xstride * (int)sizeof(TX) / 16;  // xstride * sizeof(TX) is a multiple of 16
        for (int q = threadIdx.x; q < words; q += blockDim.x)
            reinterpret_cast<uint4*>(tiles)[q] = make_uint4(0, 0, 0, 0);
        __syncthreads();  // the zeros land before any cp.async into the same bytes
        if (tile < ntiles) gg_stage_tile<TX, R>(tiles, X, tile * R, n, d, k0, ncols, xstride, align);
    }
    __device__ __forceinline__ bool more() const { return tile < ntiles; }
    // This iteration's tile: its stage, its first row, and its rows in shared memory, ready to
    // read once the cluster's next tile is in flight and this one has landed.
    struct Tile {
        int stage;
        gg_i64 row0;
        const TX* xs;
    };
    __device__ __forceinline__ Tile next() const {
        const int stage = it & 1;
        const gg_i64 row0 = tile * R;
        return {stage, row0, gg_next_tile<TX, R>(tiles, it, tile + ncl, ntiles, X, n, d, k0, ncols, xstride, align)};
    }
    __device__ __forceinline__ void advance() {
        tile += ncl;
        ++it;
    }
};

// Copy `rows` rows of `count` elements (a multiple of 16 bytes) from global (stride gstride) to
// shared memory (stride sstride), 16 bytes at a time. Does not commit.
template <typename T>
__device__ __forceinline__ void gg_copy_rows_async(T* dst, int sstride, const T* __restrict__ src, gg_i64 gstride,
                                                   int rows, int count) {
    constexpr int PER16 = 16 / sizeof(T);
    const int per_row = count / PER16;
    for (int q = threadIdx.x; q < rows * per_row; q += blockDim.x) {
        const int r = q / per_row, c = q - r * per_row;
        gg_cp_async16(dst + r * sstride + PER16 * c, src + r * gstride + PER16 * c);
    }
}

// The end of a tile's forward step: once every warp group has its tile in Spart[NP][R][24], this
// block's partial scores are their sum, added in group order, into stage `stage` of Sx[2][R][16];
// the cluster barrier after it makes every block's partial scores ready for the loss step.
// Returns this block's partial scores (the loss step reads them in every block of the cluster).
template <int NP, int R>
__device__ __forceinline__ float* gg_linmma_sum_parts(const float* Spart, float* Sx, int stage, int NC) {
    __syncthreads();
    float* sx = Sx + stage * R * 16;
    for (int e = threadIdx.x; e < R * NC; e += blockDim.x) {
        const int r = e / NC, c = e - r * NC;
        float s = Spart[r * 24 + c];
#pragma unroll
        for (int p = 1; p < NP; ++p) s += Spart[(p * R + r) * 24 + c];
        sx[r * 16 + c] = s;
    }
    gg_cluster_sync();
    return sx;
}

// The loss step of a tile, after the cluster barrier: team `team` of 16 lanes takes rows team,
// team + 32, ...; lane c < C forms S[r][c] = (sum of the CL blocks' partials, in rank order) *
// sinv[c] + bias[c] (sinv null: 1), then the loss and g = n dL/dS[r][c], written to Gf[c][r]
// for c < NC (g = 0 past C and past n). The loss goes to loss_acc (team lane 0), g to db_acc.
// Returns the largest |g| this thread saw.
template <int CL, int R>
__device__ __forceinline__ float gg_linmma_loss(const float* sx, gg_i64 row0, gg_i64 n, int C, int NC,
                                                const void* __restrict__ y, int y64, const float* __restrict__ sinv,
                                                const float* __restrict__ bias, int loss_kind, float* Gf,
                                                double& loss_acc, float& db_acc) {
    const int team = threadIdx.x >> 4, tl = threadIdx.x & 15;
    float gmax = 0.f;
    for (int r = team; r < R; r += GG_LINMMA_THREADS / 16) {
        const gg_i64 row = row0 + r;
        const bool row_ok = row < n;
        float s = -gg_inf<float>();
        if (tl < C) {
            float acc = 0.f;
#pragma unroll
            for (unsigned q = 0; q < CL; ++q) acc += gg_cluster_load(sx + r * 16 + tl, q);
            s = (sinv != nullptr ? acc * sinv[tl] : acc) + bias[tl];
        }
        const gg_i64 yv = row_ok ? gg_label(y, y64, row) : 0;
        const float g = gg_row_loss_grad<16>(s, tl, C, yv, row_ok, loss_kind, 1.f, &loss_acc);
        if (tl < NC) Gf[tl * R + r] = g;
        db_acc += g;
        gmax = fmaxf(gmax, fabsf(g));
    }
    return gmax;
}

// Rank 0 only: the teams' db and loss sums, added in team order, into the cluster's partials.
// `red` is free shared memory for 32 x 16 floats and 32 doubles.
__device__ __forceinline__ void gg_linmma_db_loss(float* red, float db_acc, double loss_acc, int C, unsigned cid,
                                                  float* __restrict__ db_part, double* __restrict__ loss_part) {
    constexpr int TEAMS = GG_LINMMA_THREADS / 16;
    double* lred = reinterpret_cast<double*>(red + TEAMS * 16);
    const int team = threadIdx.x >> 4, tl = threadIdx.x & 15;
    red[team * 16 + tl] = db_acc;
    if (tl == 0) lred[team] = loss_acc;
    __syncthreads();
    if (threadIdx.x < C) {
        float s = 0.f;
        for (int t = 0; t < TEAMS; ++t) s += red[t * 16 + threadIdx.x];
        db_part[(gg_i64)cid * C + threadIdx.x] = s;
    }
    if (threadIdx.x == 0) {
        double s = 0.0;
        for (int t = 0; t < TEAMS; ++t) s += lred[t];
        loss_part[cid] = s;
    }
}

// ---- uint8 pixels: f16 MMAs, clusters of 4, 64-row tiles -----------------------------------------
// Four pixels (one 32-bit word, columns 4 tig .. 4 tig + 3) minus their columns' offsets, as the
// f16 pairs for k-slots (2 tig, 2 tig + 1) -> lo and (2 tig + 8, 2 tig + 9) -> hi. Exact.
__device__ __forceinline__ void gg_u8x4_centred(unsigned v, uint2 off, unsigned& lo, unsigned& hi) {
    const unsigned a = __byte_perm(v, 0x64646464u, GG_PRMT_U8_LO), b = __byte_perm(v, 0x64646464u, GG_PRMT_U8_HI);
    lo = gg_hsub2(a, off.x);
    hi = gg_hsub2(b, off.y);
}
// The A fragment of X[16 rows][the k-slots of one 16-column block], from a row-major uint8 tile:
// `p` points at row grp, column 4 tig of the block.
__device__ __forceinline__ void gg_u8_frag(const unsigned char* p, int xstride, uint2 off, unsigned (&a)[4]) {
    gg_u8x4_centred(*reinterpret_cast<const unsigned*>(p), off, a[0], a[2]);
    gg_u8x4_centred(*reinterpret_cast<const unsigned*>(p + 8 * xstride), off, a[1], a[3]);
}

template <int NT>
__device__ __forceinline__ void gg_linmma_u8(
    const unsigned char* __restrict__ X, const void* __restrict__ y, int y64, gg_i64 n, int d, int dsl, int C,
    const unsigned short* __restrict__ Wh, const unsigned short* __restrict__ roff, const float* __restrict__ bprime,
    const float* __restrict__ sinv, int loss_kind, int align, float* __restrict__ dW_part,
    float* __restrict__ db_part, double* __restrict__ loss_part) {
    constexpr int NC = 8 * NT, R = GG_LINMMA_U8_ROWS, CL = GG_LINMMA_U8_CLUSTER;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, grp = lane >> 2, tig = lane & 3;
    GgLinmmaWork<unsigned char, R> work(X, n, d, dsl, align);
    const int nkb = dsl >> 4;

    extern __shared__ __align__(16) unsigned char gg_smem[];
    const GgLinmmaU8Layout L(dsl, NT);
    gg_check_dynamic_smem(L.bytes);
    unsigned short* Ws = reinterpret_cast<unsigned short*>(gg_smem + L.w_off);
    unsigned short* Rs = reinterpret_cast<unsigned short*>(gg_smem + L.r_off);
    unsigned char* Xs = gg_smem + L.x_off;
    float* Spart = reinterpret_cast<float*>(gg_smem + L.spart_off);
    float* Sx = reinterpret_cast<float*>(gg_smem + L.sx_off);
    unsigned short* Gs = reinterpret_cast<unsigned short*>(gg_smem + L.g_off);
    constexpr int GST = R + 8;  // Gs row stride (f16)

    __shared__ float wmax[GG_LINMMA_THREADS / 32];  // per-warp max |g| of the tile

    // The first tile, this block's slice of W' and its offsets, all in flight at once.
    work.start(Xs, L.xstride);
    gg_copy_rows_async(Ws, L.wstride, Wh + work.k0, (gg_i64)CL * dsl, 2 * NC, dsl);
    gg_copy_rows_async(Rs, 0, roff + work.k0, 0, 1, dsl);
    gg_cp_async_commit();

    float dacc[3][NT][4] = {};
    float db_acc = 0.f;
    double loss_acc = 0.0;

    for (; work.more(); work.advance()) {
        const auto [stage, row0, xs] = work.next();

        // Forward: warp (row block mt, column quarter kq) forms S_part = X~ W'^T over its columns.
        {
            const int mt = warp & 3, kq = warp >> 2, q4 = (nkb + 3) >> 2;
            float acc[NT][2][4] = {};  // one per half: twice the independent MMA chains
            const unsigned char* xa = xs + (16 * mt + grp) * L.xstride + 4 * tig;
            const unsigned short* wb = Ws + grp * L.wstride + 4 * tig;
            const int kb_end = min(nkb, (kq + 1) * q4);
            for (int kb = kq * q4; kb < kb_end; ++kb) {
                const uint2 off = *reinterpret_cast<const uint2*>(Rs + 16 * kb + 4 * tig);
                unsigned a[4];
                gg_u8_frag(xa + 16 * kb, L.xstride, off, a);
#pragma unroll
                for (int t = 0; t < NT; ++t)
#pragma unroll
                    for (int h = 0; h < 2; ++h) {
                        const uint2 bw = *reinterpret_cast<const uint2*>(wb + (h * NC + 8 * t) * L.wstride + 16 * kb);
                        gg_mma16816(acc[t][h], a, bw.x, bw.y);
                    }
            }
            float* sp = Spart + (kq * R + 16 * mt + grp) * 24 + 2 * tig;
#pragma unroll
            for (int t = 0; t < NT; ++t) {
                *reinterpret_cast<float2*>(sp + 8 * t) = make_float2(acc[t][0][0] + acc[t][1][0], acc[t][0][1] + acc[t][1][1]);
                *reinterpret_cast<float2*>(sp + 8 * 24 + 8 * t) =
                    make_float2(acc[t][0][2] + acc[t][1][2], acc[t][0][3] + acc[t][1][3]);
            }
        }
        // This block's partial scores for the tile; past the cluster barrier, every block's are ready.
        const float* sx = gg_linmma_sum_parts<4, R>(Spart, Sx, stage, NC);

        // Loss, then G~ = g * 2^e (e: the tile's largest |g| just under 2^14, so the f16 halves keep
        // 22 bits however small the tile's gradients are) as f16 hi + lo. Spart is free for g.
        float gmax = gg_linmma_loss<CL, R>(sx, row0, n, C, NC, y, y64, sinv, bprime, loss_kind, Spart, loss_acc, db_acc);
        gmax = gg_subwarp_reduce<32>(gmax, GgMax());
        if (lane == 0) wmax[warp] = gmax;
        __syncthreads();
        gmax = wmax[0];
        for (int w = 1; w < GG_LINMMA_THREADS / 32; ++w) gmax = fmaxf(gmax, wmax[w]);
        int ex = 0;
        frexpf(gmax, &ex);  // gmax < 2^ex
        const int e = gmax > 0.f ? max(-100, min(100, 14 - ex)) : 0;
        const float gscale = ldexpf(1.f, e), ginv = ldexpf(1.f, -e);
        for (int q = threadIdx.x; q < NC * R; q += blockDim.x) {
            const int c = q / R, r = q - c * R;
            unsigned short hi, lo;
            gg_split_f16_bits(Spart[q] * gscale, hi, lo);
            Gs[c * GST + r] = hi;
            Gs[(NC + c) * GST + r] = lo;
        }
        __syncthreads();

        // Backward: warp w adds G~^T X~ / 2^e to its column blocks w, w + 16, w + 32 (k-slot order).
        // Each block's tile sum is formed in its own accumulator and then added to the running sum
        // with an ordinary round-to-nearest add: the tensor cores truncate their fp32 results, and
        // a chain across every tile of the run would drift by about 1 ulp per MMA.
#pragma unroll
        for (int i = 0; i < 3; ++i) {
            const int ct = warp + 16 * i;
            if (ct >= nkb) continue;
            const uint2 off = *reinterpret_cast<const uint2*>(Rs + 16 * ct + 4 * tig);
            float tsum[NT][4] = {};
#pragma unroll
            for (int kr = 0; kr < R / 16; ++kr) {
                unsigned a[4], at[4];
                gg_u8_frag(xs + (16 * kr + grp) * L.xstride + 16 * ct + 4 * tig, L.xstride, off, a);
#pragma unroll
                for (int r = 0; r < 4; ++r) at[r] = gg_movmatrix_t(a[gg_mma_t_reg(r)]);
#pragma unroll
                for (int t = 0; t < NT; ++t)
#pragma unroll
                    for (int h = 0; h < 2; ++h) {
                        const unsigned short* gp = Gs + (h * NC + 8 * t + grp) * GST + 16 * kr + 2 * tig;
                        gg_mma16816(tsum[t], at, *reinterpret_cast<const unsigned*>(gp),
                                    *reinterpret_cast<const unsigned*>(gp + 8));
                    }
            }
#pragma unroll
            for (int j = 0; j < 4 * NT; ++j) dacc[i][j >> 2][j & 3] += tsum[j >> 2][j & 3] * ginv;
        }
        __syncthreads();  // the tile, Spart and Gs are free for the next iteration
    }

    gg_cp_async_wait_all();  // a cluster without tiles still has W' in flight
#pragma unroll
    for (int i = 0; i < 3; ++i) {
        const int ct = warp + 16 * i;
        if (ct >= nkb) continue;
#pragma unroll
        for (int t = 0; t < NT; ++t)
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int c = 8 * t + gg_mma_c_col(lane, j), col = 16 * ct + gg_kslot_col(gg_mma_c_row(lane, j));
                if (c < C && col < work.ncols) dW_part[((gg_i64)work.cid * C + c) * d + work.k0 + col] = dacc[i][t][j];
            }
    }
    if (work.rank == 0) gg_linmma_db_loss(Spart, db_acc, loss_acc, C, work.cid, db_part, loss_part);
    gg_cluster_sync();  // no block leaves while another may still read its scores
}

// ---- float32: 3xTF32 MMAs, clusters of 8, 32-row tiles --------------------------------------------

template <int NT>
__device__ __forceinline__ void gg_linmma_f32(
    const float* __restrict__ X, const void* __restrict__ y, int y64, gg_i64 n, int d, int dsl, int C,
    const float* __restrict__ Wt, const float* __restrict__ b, int loss_kind, int align, float* __restrict__ dW_part,
    float* __restrict__ db_part, double* __restrict__ loss_part) {
    constexpr int NC = 8 * NT, R = GG_LINMMA_F32_ROWS, CL = GG_LINMMA_F32_CLUSTER;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, grp = lane >> 2, tig = lane & 3;
    GgLinmmaWork<float, R> work(X, n, d, dsl, align);
    const int nkb = dsl >> 3, nct = dsl >> 4;

    extern __shared__ __align__(16) unsigned char gg_smem[];
    const GgLinmmaF32Layout L(dsl, NT);
    gg_check_dynamic_smem(L.bytes);
    float* Ws = reinterpret_cast<float*>(gg_smem + L.w_off);
    float* Xs = reinterpret_cast<float*>(gg_smem + L.x_off);
    float* Spart = reinterpret_cast<float*>(gg_smem + L.spart_off);
    float* Sx = reinterpret_cast<float*>(gg_smem + L.sx_off);
    float* Gs = reinterpret_cast<float*>(gg_smem + L.g_off);
    constexpr int GST = R + 4;  // Gs row stride (floats)

    work.start(Xs, L.xstride);
    gg_copy_rows_async(Ws, L.wstride, Wt + work.k0, (gg_i64)CL * dsl, 2 * NC, dsl);
    gg_cp_async_commit();

    // Backward split: warp pair p = warp / 2 owns column blocks 3p .. 3p + 2 (16 columns each), the
    // pair's two warps take the tile's row halves; the pair's sums meet at the end.
    float dacc[3][NT][4] = {};
    float db_acc = 0.f;
    double loss_acc = 0.0;

    for (; work.more(); work.advance()) {
        const auto [stage, row0, xs] = work.next();

        // Forward: warp (row block mt = warp % 2, column eighth ke = warp / 2), 8-column k-blocks.
        {
            const int mt = warp & 1, ke = warp >> 1, q8 = (nkb + 7) >> 3;
            float acc[NT][4] = {};
            const float* xa = xs + (16 * mt + grp) * L.xstride + 2 * tig;
            const float* wb = Ws + grp * L.wstride + 2 * tig;
            const int kb_end = min(nkb, (ke + 1) * q8);
            for (int kb = ke * q8; kb < kb_end; ++kb) {
                const float2 x0 = *reinterpret_cast<const float2*>(xa + 8 * kb);
                const float2 x1 = *reinterpret_cast<const float2*>(xa + 8 * L.xstride + 8 * kb);
                unsigned ah[4], al[4];  // k-slot tig -> column 2 tig (.x), tig + 4 -> 2 tig + 1 (.y)
                gg_split_tf32(x0.x, ah[0], al[0]);
                gg_split_tf32(x1.x, ah[1], al[1]);
                gg_split_tf32(x0.y, ah[2], al[2]);
                gg_split_tf32(x1.y, ah[3], al[3]);
#pragma unroll
                for (int t = 0; t < NT; ++t) {
                    const uint2 wh = *reinterpret_cast<const uint2*>(wb + 8 * t * L.wstride + 8 * kb);
                    const uint2 wl = *reinterpret_cast<const uint2*>(wb + (NC + 8 * t) * L.wstride + 8 * kb);
                    gg_mma1688x3(acc[t], ah, al, wh.x, wh.y, wl.x, wl.y);
                }
            }
            float* sp = Spart + (ke * R + 16 * mt + grp) * 24 + 2 * tig;
#pragma unroll
            for (int t = 0; t < NT; ++t) {
                *reinterpret_cast<float2*>(sp + 8 * t) = make_float2(acc[t][0], acc[t][1]);
                *reinterpret_cast<float2*>(sp + 8 * 24 + 8 * t) = make_float2(acc[t][2], acc[t][3]);
            }
        }
        const float* sx = gg_linmma_sum_parts<8, R>(Spart, Sx, stage, NC);

        gg_linmma_loss<CL, R>(sx, row0, n, C, NC, y, y64, nullptr, b, loss_kind, Spart, loss_acc, db_acc);
        __syncthreads();
        for (int q = threadIdx.x; q < NC * R; q += blockDim.x) {  // G as tf32 hi + lo, by class and row
            const int c = q / R, r = q - c * R;
            unsigned hi, lo;
            gg_split_tf32(Spart[q], hi, lo);
            Gs[c * GST + r] = __uint_as_float(hi);
            Gs[(NC + c) * GST + r] = __uint_as_float(lo);
        }
        __syncthreads();

        // Backward: dW^T[16 columns][8 classes] += X^T[16 columns][8 rows] G[8 rows][8 classes], the
        // tile's sum in its own accumulator, then added to the running sum (see the uint8 kernel).
#pragma unroll
        for (int i = 0; i < 3; ++i) {
            const int ct = 3 * (warp >> 1) + i;
            if (ct >= nct) continue;
            float tsum[NT][4] = {};
#pragma unroll
            for (int ks = 0; ks < R / 16; ++ks) {
                const int r8 = 8 * ((R / 16) * (warp & 1) + ks);  // first row of this 8-row k-step
                unsigned ah[4], al[4];
#pragma unroll
                for (int q = 0; q < 4; ++q)  // A = X^T: M = column 16 ct + a_row, K = row r8 + a_col
                    gg_split_tf32(xs[(r8 + gg_mma8_a_col(lane, q)) * L.xstride + 16 * ct + gg_mma8_a_row(lane, q)],
                                  ah[q], al[q]);
#pragma unroll
                for (int t = 0; t < NT; ++t) {
                    const float* gp = Gs + (8 * t + grp) * GST + r8 + gg_mma8_b_k(lane, 0);
                    gg_mma1688x3(tsum[t], ah, al, __float_as_uint(gp[0]), __float_as_uint(gp[4]),
                                 __float_as_uint(gp[NC * GST]), __float_as_uint(gp[NC * GST + 4]));
                }
            }
#pragma unroll
            for (int j = 0; j < 4 * NT; ++j) dacc[i][j >> 2][j & 3] += tsum[j >> 2][j & 3];
        }
        __syncthreads();
    }

    gg_cp_async_wait_all();
    // Each warp pair adds its two row halves (odd warps park theirs in Spart), then writes dW_raw.
    float* park = Spart + ((warp >> 1) * 32 + lane) * (12 * NT);
    if (warp & 1) {
#pragma unroll
        for (int j = 0; j < 12 * NT; ++j) park[j] = dacc[j / (4 * NT)][(j >> 2) % NT][j & 3];
    }
    __syncthreads();
    if (!(warp & 1)) {
#pragma unroll
        for (int i = 0; i < 3; ++i) {
            const int ct = 3 * (warp >> 1) + i;
            if (ct >= nct) continue;
#pragma unroll
            for (int t = 0; t < NT; ++t)
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    const int c = 8 * t + gg_mma_c_col(lane, j), col = 16 * ct + gg_mma_c_row(lane, j);
                    if (c < C && col < work.ncols)
                        dW_part[((gg_i64)work.cid * C + c) * d + work.k0 + col] =
                            dacc[i][t][j] + park[(i * NT + t) * 4 + j];
                }
        }
    }
    __syncthreads();  // the parked sums are read before rank 0 reuses Spart
    if (work.rank == 0) gg_linmma_db_loss(Spart, db_acc, loss_acc, C, work.cid, db_part, loss_part);
    gg_cluster_sync();
}
#define GG_LINMMA_U8_BODY(NT) gg_linmma_u8<NT>(X, y, y64, n, d, dsl, C, Wh, roff, bprime, sinv, loss_kind, align, \
                                                dW_part, db_part, loss_part);
#define GG_LINMMA_F32_BODY(NT) gg_linmma_f32<NT>(X, y, y64, n, d, dsl, C, Wt, b, loss_kind, align, dW_part, db_part, \
                                                  loss_part);
#else
// Clusters and movmatrix need sm_90: below it the entry points exist (one module for every card)
// but trap, and the backend never picks them.
#define GG_LINMMA_ATTRS(CL) __launch_bounds__(GG_LINMMA_THREADS, 1)
#define GG_LINMMA_U8_BODY(NT) __trap();
#define GG_LINMMA_F32_BODY(NT) __trap();
#endif

#define GG_LINMMA_U8_ARGS const unsigned char* __restrict__ X, const void* __restrict__ y, int y64, gg_i64 n, int d, \
    int dsl, int C, const unsigned short* __restrict__ Wh, const unsigned short* __restrict__ roff,                    \
    const float* __restrict__ bprime, const float* __restrict__ sinv, int loss_kind, int align,                        \
    float* __restrict__ dW_part, float* __restrict__ db_part, double* __restrict__ loss_part
#define GG_LINMMA_F32_ARGS const float* __restrict__ X, const void* __restrict__ y, int y64, gg_i64 n, int d,         \
    int dsl, int C, const float* __restrict__ Wt, const float* __restrict__ b, int loss_kind, int align,              \
    float* __restrict__ dW_part, float* __restrict__ db_part, double* __restrict__ loss_part

// Entry points gg_linmma_{u8,f32}_nt<NT>: C <= 8 NT classes (one or two 8-class MMA tiles).
GG_KERNEL(gg_linmma_u8_nt1, GG_LINMMA_ATTRS(GG_LINMMA_U8_CLUSTER))(GG_LINMMA_U8_ARGS) { GG_LINMMA_U8_BODY(1) }
GG_KERNEL(gg_linmma_u8_nt2, GG_LINMMA_ATTRS(GG_LINMMA_U8_CLUSTER))(GG_LINMMA_U8_ARGS) { GG_LINMMA_U8_BODY(2) }
GG_KERNEL(gg_linmma_f32_nt1, GG_LINMMA_ATTRS(GG_LINMMA_F32_CLUSTER))(GG_LINMMA_F32_ARGS) { GG_LINMMA_F32_BODY(1) }
GG_KERNEL(gg_linmma_f32_nt2, GG_LINMMA_ATTRS(GG_LINMMA_F32_CLUSTER))(GG_LINMMA_F32_ARGS) { GG_LINMMA_F32_BODY(2) }

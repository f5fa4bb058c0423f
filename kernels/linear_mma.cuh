// linear_mma.cuh: the linear-classifier step for uint8 pixels on the tensor cores (sm_90 clusters).
//
// Reads:  X (n, d) uint8 once; y (n,); the prepared weights of gg_linmma_prep: W' = W * inv_std,
//         scaled per class by 2^e_c and split into two f16 halves (hi + lo, 22 bits), the column
//         offsets r_k (gg_pixel_offset of x_mean) and the folded bias b'.
// Writes: per-cluster partials dW_raw[cluster][C][d] = sum_r G~[r][c] (x[r][k] - r_k), with
//         G~ = gscale * (n dL/dS), db_raw[cluster][C] = sum_r n dL/dS[r][c] and loss[cluster];
//         gg_linmma_finish turns them into J, dW = inv_std (dW_raw / gscale - (m - r) db_raw) / n
//         + 2 lam W and db = db_raw / n, adding the partials in a fixed order.
// Traffic: one read of X (n d bytes) + W' once per block (4 C d bytes) + partials (clusters x C x d
//         x 4 bytes, about 2% of X at n = 65536, d = 3072, C = 10).
//
// Why this shape. Both products, S = X W'^T and dW = G^T X, run on the tensor cores (mma.sync
// m16n8k16, f16 in, f32 accumulate): x - r_k is an integer in [-255, 255], exact in f16, and W'
// and G enter as hi + lo halves, two MMAs each. The whole of dW (C x d floats) and W' cannot both
// stay on one SM for d = 3072, so a cluster of 4 blocks splits the columns: block q of a cluster
// owns columns [q dsl, (q + 1) dsl), keeps its W' slice in shared memory and its dW slice in
// registers, and the cluster walks tiles of 64 rows together:
//   forward   each block forms partial scores over its columns; the 4 partials meet through
//             distributed shared memory (one cluster barrier per tile) and every block adds them
//             in rank order, so all 4 get bit-identical S;
//   loss      16 lanes per row (C <= 16) turn S into the loss and G (gg_row_loss_grad);
//   backward  dW_slice += G^T X_slice, the X tile still in shared memory; the A fragments of X^T
//             are the forward's fragments transposed in registers (movmatrix).
// The next tile streams in with cp.async while the current one is worked on.
#pragma once
#include "common.cuh"
#include "mma_layout.cuh"
#include "linear_step.cuh"  // gg_row_loss_grad

__device__ __forceinline__ unsigned short gg_f16_bits(float v) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    return h;
}
__device__ __forceinline__ float gg_f16_float(unsigned short h) {
    float v;
    asm("cvt.f32.f16 %0, %1;" : "=f"(v) : "h"(h));
    return v;
}
// v ~= hi + lo in f16 (hi = f16(v), lo = f16(v - hi)): 22 significant bits while |v| < 2^15 and
// the value is not far below the largest one being split (the callers scale to keep it so).
__device__ __forceinline__ void gg_split_f16_bits(float v, unsigned short& hi, unsigned short& lo) {
    hi = gg_f16_bits(v);
    lo = gg_f16_bits(v - gg_f16_float(hi));
}

// Prepare W for the tensor cores; one block of 256 threads per class row c < 8 nt (rows c >= C
// are zero). W'[c][k] = W[c][k] inv_std[k] 2^e_c, e_c putting max_k |W'| just under 2^14, split
// into Wh[0] (hi) and Wh[1] (lo), each [8 nt][dtot] with zeros for k >= d; sinv[c] = 2^-e_c;
// bprime[c] = b[c] - sum_k (m_k - r_k) W[c][k] inv_std[k]; wsq[c] = sum_k W[c][k]^2.
// Block 0 also writes roff[k] = f16(1024 + r_k).
extern "C" __global__ void __launch_bounds__(256) gg_linmma_prep(
    const float* __restrict__ W, const float* __restrict__ b, const float* __restrict__ x_mean,
    const float* __restrict__ x_inv_std, int C, int d, int dtot, unsigned short* __restrict__ Wh,
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
            const float w = W[(gg_i64)c * d + k], wp = w * x_inv_std[k];
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
        const float v = (real && k < d) ? W[(gg_i64)c * d + k] * x_inv_std[k] * scale : 0.f;
        unsigned short hi, lo;
        gg_split_f16_bits(v, hi, lo);
        Wh[(gg_i64)c * dtot + k] = hi;
        Wh[((gg_i64)rows + c) * dtot + k] = lo;
    }
}

// dW[c][k] = inv_std_k / n (sum_p dW_raw[p][c][k] / gscale - (m_k - r_k) db_raw[c]) + 2 lam W[c][k],
// db[c] = db_raw[c] / n, J = sum_p loss[p] / n + lam sum_c wsq[c]; partials added in index order.
extern "C" __global__ void __launch_bounds__(256) gg_linmma_finish(
    const float* __restrict__ dW_part, const float* __restrict__ db_part, const double* __restrict__ loss_part,
    const double* __restrict__ wsq, const float* __restrict__ W, const float* __restrict__ x_mean,
    const float* __restrict__ x_inv_std, int nparts, int C, int d, double lam, double inv_n, double inv_gscale,
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
        const double m = x_mean[k], centred = s * inv_gscale - (m - (double)gg_pixel_offset(x_mean[k])) * dbr[c];
        dW[i] = (float)((double)x_inv_std[k] * inv_n * centred + 2.0 * lam * (double)W[i]);
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
#define GG_LINMMA_ATTRS __cluster_dims__(GG_LINMMA_CLUSTER, 1, 1) __launch_bounds__(GG_LINMMA_THREADS, 1)

__device__ __forceinline__ unsigned gg_cluster_rank() {
    unsigned r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
    return r;
}
__device__ __forceinline__ unsigned gg_cluster_id() {
    unsigned r;
    asm volatile("mov.u32 %0, %%clusterid.x;" : "=r"(r));
    return r;
}
__device__ __forceinline__ unsigned gg_cluster_count() {
    unsigned r;
    asm volatile("mov.u32 %0, %%nclusterid.x;" : "=r"(r));
    return r;
}
// Every thread of every block in the cluster; also orders shared-memory writes before it against
// (distributed) shared-memory reads after it, so it subsumes __syncthreads.
__device__ __forceinline__ void gg_cluster_sync() {
    asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::: "memory");
}
// The float at the same shared-memory offset as `local`, in block `rank` of this cluster.
__device__ __forceinline__ float gg_cluster_load(const float* local, unsigned rank) {
    unsigned remote;
    float v;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(gg_smem_addr(local)), "r"(rank));
    asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(remote) : "memory");
    return v;
}

__device__ __forceinline__ void gg_mma16816(float (&acc)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm(  // not volatile: a pure function of its operands, free to be scheduled (warp-uniform callers)
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ unsigned gg_movmatrix_t(unsigned a) {
    unsigned t;
    asm("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(t) : "r"(a));
    return t;
}
// Four pixels (one 32-bit word, columns 4 tig .. 4 tig + 3) minus their columns' offsets, as the
// f16 pairs for k-slots (2 tig, 2 tig + 1) -> lo and (2 tig + 8, 2 tig + 9) -> hi. Exact.
__device__ __forceinline__ void gg_u8x4_centred(unsigned v, uint2 off, unsigned& lo, unsigned& hi) {
    const unsigned a = __byte_perm(v, 0x64646464u, GG_PRMT_U8_LO), b = __byte_perm(v, 0x64646464u, GG_PRMT_U8_HI);
    asm("sub.rn.f16x2 %0, %1, %2;" : "=r"(lo) : "r"(a), "r"(off.x));
    asm("sub.rn.f16x2 %0, %1, %2;" : "=r"(hi) : "r"(b), "r"(off.y));
}
// The A fragment of X[rows 16 block .. + 16][k-slots of one 16-column block], from a row-major
// uint8 tile: `p` points at row grp, column 4 tig of the block.
__device__ __forceinline__ void gg_u8_frag(const unsigned char* p, int xstride, uint2 off, unsigned (&a)[4]) {
    gg_u8x4_centred(*reinterpret_cast<const unsigned*>(p), off, a[0], a[2]);
    gg_u8x4_centred(*reinterpret_cast<const unsigned*>(p + 8 * xstride), off, a[1], a[3]);
}

// Copy rows [row0, row0 + 64) of X, columns [k0, k0 + ncols), into a tile (rows past n skipped).
__device__ __forceinline__ void gg_linmma_stage(unsigned char* dst, const unsigned char* __restrict__ X, gg_i64 row0,
                                                gg_i64 n, int d, int k0, int ncols, int xstride, bool vec) {
    if (vec) {  // d % 16 == 0 and X 16-byte aligned, so every 16-byte piece of a slice is aligned
        const int per_row = ncols >> 4;
        for (int q = threadIdx.x; q < GG_LINMMA_ROWS * per_row; q += blockDim.x) {
            const int r = q / per_row, c = q - r * per_row;
            if (row0 + r < n) gg_cp_async16(dst + r * xstride + 16 * c, X + (row0 + r) * d + k0 + 16 * c);
        }
    } else {
        for (int q = threadIdx.x; q < GG_LINMMA_ROWS * ncols; q += blockDim.x) {
            const int r = q / ncols, c = q - r * ncols;
            if (row0 + r < n) dst[r * xstride + c] = X[(row0 + r) * d + k0 + c];
        }
    }
    gg_cp_async_commit();
}

template <int NT>
__device__ __forceinline__ void gg_linmma_u8(
    const unsigned char* __restrict__ X, const void* __restrict__ y, int y64, gg_i64 n, int d, int dsl, int C,
    const unsigned short* __restrict__ Wh, const unsigned short* __restrict__ roff, const float* __restrict__ bprime,
    const float* __restrict__ sinv, int loss_kind, float gscale, int vec, float* __restrict__ dW_part,
    float* __restrict__ db_part, double* __restrict__ loss_part) {
    constexpr int NC = 8 * NT, R = GG_LINMMA_ROWS;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, grp = lane >> 2, tig = lane & 3;
    const unsigned rank = gg_cluster_rank(), cid = gg_cluster_id(), ncl = gg_cluster_count();
    const int k0 = (int)rank * dsl, ncols = max(0, min(dsl, d - k0)), nkb = dsl >> 4, dtot = GG_LINMMA_CLUSTER * dsl;

    extern __shared__ __align__(16) unsigned char gg_smem[];
    const GgLinmmaLayout L(dsl, NT);
    {
        unsigned have;
        asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(have));
        if (have < (unsigned)L.bytes) __trap();  // the host's mirror of the layout disagrees
    }
    unsigned short* Ws = reinterpret_cast<unsigned short*>(gg_smem + L.w_off);
    unsigned short* Rs = reinterpret_cast<unsigned short*>(gg_smem + L.r_off);
    unsigned char* Xs = gg_smem + L.x_off;
    float* Spart = reinterpret_cast<float*>(gg_smem + L.spart_off);
    float* Sx = reinterpret_cast<float*>(gg_smem + L.sx_off);
    unsigned short* Gs = reinterpret_cast<unsigned short*>(gg_smem + L.g_off);

    const gg_i64 ntiles = (n + R - 1) / R;
    gg_i64 tile = cid;
    // The first tile and this block's slice of W' and the offsets, all in flight at once.
    if (tile < ntiles) gg_linmma_stage(Xs, X, tile * R, n, d, k0, ncols, L.xstride, vec);
    for (int q = threadIdx.x; q < 2 * NC * (dsl >> 3); q += blockDim.x) {  // 16-byte pieces of W'
        const int row = q / (dsl >> 3), piece = q - row * (dsl >> 3);
        gg_cp_async16(Ws + row * L.wstride + 8 * piece, Wh + (gg_i64)row * dtot + k0 + 8 * piece);
    }
    for (int q = threadIdx.x; q < (dsl >> 3); q += blockDim.x) gg_cp_async16(Rs + 8 * q, roff + k0 + 8 * q);
    gg_cp_async_commit();

    float dacc[3][NT][4];
#pragma unroll
    for (int i = 0; i < 3; ++i)
#pragma unroll
        for (int t = 0; t < NT; ++t)
#pragma unroll
            for (int j = 0; j < 4; ++j) dacc[i][t][j] = 0.f;
    float db_acc = 0.f;     // team lane c: sum of n dL/dS[.][c] over this cluster's rows (rank 0 keeps it)
    double loss_acc = 0.0;  // team lane 0: sum of the rows' losses
    const int team = threadIdx.x >> 4, tl = threadIdx.x & 15;

    for (int it = 0; tile < ntiles; tile += ncl, ++it) {
        const int stage = it & 1;
        const gg_i64 next = tile + ncl, row0 = tile * R;
        if (next < ntiles) gg_linmma_stage(Xs + (stage ^ 1) * R * L.xstride, X, next * R, n, d, k0, ncols, L.xstride, vec);
        else gg_cp_async_commit();  // an empty group keeps wait_group's count uniform
        asm volatile("cp.async.wait_group 1;\n" ::);
        __syncthreads();
        const unsigned char* xs = Xs + stage * R * L.xstride;

        // Forward: warp (row block mt, column quarter kq) forms S_part = X W'^T over its columns.
        {
            const int mt = warp & 3, kq = warp >> 2, q4 = (nkb + 3) >> 2;
            float acc[NT][2][4];  // per half: twice the independent MMA chains
#pragma unroll
            for (int t = 0; t < NT; ++t)
#pragma unroll
                for (int j = 0; j < 8; ++j) acc[t][j >> 2][j & 3] = 0.f;
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
        __syncthreads();
        float* sx = Sx + stage * R * 16;
        for (int e = threadIdx.x; e < R * NC; e += blockDim.x) {
            const int r = e / NC, c = e - r * NC;
            const float* p = Spart + r * 24 + c;
            sx[r * 16 + c] = ((p[0] + p[R * 24]) + p[2 * R * 24]) + p[3 * R * 24];
        }
        gg_cluster_sync();  // every block's partial scores for this tile are ready

        // Loss: team `team` of 16 lanes takes rows team and team + 32; lane c < C holds S[r][c].
        for (int r = team; r < R; r += GG_LINMMA_THREADS / 16) {
            const gg_i64 row = row0 + r;
            const bool row_ok = row < n;
            float s = -gg_inf<float>();
            if (tl < C) {
                float acc = 0.f;
#pragma unroll
                for (unsigned q = 0; q < GG_LINMMA_CLUSTER; ++q) acc += gg_cluster_load(sx + r * 16 + tl, q);
                s = acc * sinv[tl] + bprime[tl];
            }
            const gg_i64 yv = row_ok ? gg_label(y, y64, row) : 0;
            const float g = gg_row_loss_grad<16>(s, tl, C, yv, row_ok, loss_kind, 1.f, &loss_acc);
            if (tl < NC) {
                unsigned short hi, lo;
                gg_split_f16_bits(g * gscale, hi, lo);
                Gs[tl * 72 + r] = hi;
                Gs[(NC + tl) * 72 + r] = lo;
            }
            db_acc += g;
        }
        __syncthreads();

        // Backward: warp w adds G~^T X to its column blocks w, w + 16, w + 32 (k-slot order).
#pragma unroll
        for (int kr = 0; kr < R / 16; ++kr) {
            unsigned gb[NT][2][2];
#pragma unroll
            for (int t = 0; t < NT; ++t)
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const unsigned short* gp = Gs + (h * NC + 8 * t + grp) * 72 + 16 * kr + 2 * tig;
                    gb[t][h][0] = *reinterpret_cast<const unsigned*>(gp);
                    gb[t][h][1] = *reinterpret_cast<const unsigned*>(gp + 8);
                }
#pragma unroll
            for (int i = 0; i < 3; ++i) {
                const int ct = warp + 16 * i;
                if (ct < nkb) {
                    const uint2 off = *reinterpret_cast<const uint2*>(Rs + 16 * ct + 4 * tig);
                    unsigned a[4], at[4];
                    gg_u8_frag(xs + (16 * kr + grp) * L.xstride + 16 * ct + 4 * tig, L.xstride, off, a);
#pragma unroll
                    for (int r = 0; r < 4; ++r) at[r] = gg_movmatrix_t(a[gg_mma_t_reg(r)]);
#pragma unroll
                    for (int t = 0; t < NT; ++t)
#pragma unroll
                        for (int h = 0; h < 2; ++h) gg_mma16816(dacc[i][t], at, gb[t][h][0], gb[t][h][1]);
                }
            }
        }
        __syncthreads();  // the tile, Spart and Gs are free for the next iteration
    }

    asm volatile("cp.async.wait_all;\n" ::);  // a cluster without tiles still has W' in flight
    // This block's dW_raw slice, straight from the accumulators.
#pragma unroll
    for (int i = 0; i < 3; ++i) {
        const int ct = warp + 16 * i;
        if (ct >= nkb) continue;
#pragma unroll
        for (int t = 0; t < NT; ++t)
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int c = 8 * t + gg_mma_c_col(lane, j), col = 16 * ct + gg_kslot_col(gg_mma_c_row(lane, j));
                if (c < C && col < ncols) dW_part[((gg_i64)cid * C + c) * d + k0 + col] = dacc[i][t][j];
            }
    }
    // Rank 0 adds the teams' db and loss in team order (Spart is free after the loop's last barrier).
    if (rank == 0) {
        float* red = Spart;
        double* lred = reinterpret_cast<double*>(Spart + 32 * 16);
        red[team * 16 + tl] = db_acc;
        if (tl == 0) lred[team] = loss_acc;
        __syncthreads();
        if (threadIdx.x < C) {
            float s = 0.f;
            for (int t = 0; t < GG_LINMMA_THREADS / 16; ++t) s += red[t * 16 + threadIdx.x];
            db_part[(gg_i64)cid * C + threadIdx.x] = s;
        }
        if (threadIdx.x == 0) {
            double s = 0.0;
            for (int t = 0; t < GG_LINMMA_THREADS / 16; ++t) s += lred[t];
            loss_part[cid] = s;
        }
    }
    gg_cluster_sync();  // no block leaves while another may still read its scores
}
#else
#define GG_LINMMA_ATTRS __launch_bounds__(GG_LINMMA_THREADS, 1)
#endif

#define GG_LINMMA_ARGS const unsigned char* __restrict__ X, const void* __restrict__ y, int y64, gg_i64 n, int d, \
    int dsl, int C, const unsigned short* __restrict__ Wh, const unsigned short* __restrict__ roff,                 \
    const float* __restrict__ bprime, const float* __restrict__ sinv, int loss_kind, float gscale, int vec,         \
    float* __restrict__ dW_part, float* __restrict__ db_part, double* __restrict__ loss_part
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define GG_LINMMA_BODY(NT) gg_linmma_u8<NT>(X, y, y64, n, d, dsl, C, Wh, roff, bprime, sinv, loss_kind, gscale, vec, \
                                             dW_part, db_part, loss_part);
#else
#define GG_LINMMA_BODY(NT) __trap();  // clusters and movmatrix need sm_90; the backend never picks it below
#endif

// Entry points gg_linmma_u8_nt<NT>: C <= 8 NT classes (one or two 8-class MMA tiles).
extern "C" __global__ void GG_LINMMA_ATTRS gg_linmma_u8_nt1(GG_LINMMA_ARGS) { GG_LINMMA_BODY(1) }
extern "C" __global__ void GG_LINMMA_ATTRS gg_linmma_u8_nt2(GG_LINMMA_ARGS) { GG_LINMMA_BODY(2) }

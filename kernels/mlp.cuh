// mlp.cuh: the compiled training step's fused kernels (gpugrad/compiled.py): what numpy does in
// several passes per layer, one launch each on the GPU.
//
// Reads:  gg_gather_<x>: the batch's rows X[idx[r]] (d values, float32/float64/uint8), x_mean and
//           x_std (d, or null), y[idx[r]] and sw[idx[r]] (or null).
//         gg_layer_fwd_<t>: s (n, m) = h_in W^T, the layer's pre-activation, three times (column
//           means, variances, outputs; from cache after the first), b, gamma, beta and the running
//           averages (m).
//         gg_layer_bwd_<t>: dh (n, m) twice (the second from cache), h and xhat (n, m), gamma,
//           inv_std (m).
//         gg_scores_loss_<t>_k<K>: S (n, C) = h W^T once, b (C), y, sw (or null).
//         gg_update_<t>: the flat parameters p, their gradient g and the optimiser's slots (N each)
//           once, the batch's loss (0-d).
// Writes: gg_gather_<x>: Xb (n, d) = (x - mean) / std in the compute type, yb (n,) int64, wb (n,).
//         gg_layer_fwd_<t>: a = s + b, then with batch norm (the batch's statistics; the running
//           averages, when not null, updated in place) h = ReLU(gamma xhat + beta) and xhat (n, m), inv_std (m) for
//           the backward pass; without it h = ReLU(a).
//         gg_layer_bwd_<t>: g = dh [h > 0] (the ReLU's mask; none when h is null), then the
//           batch-norm VJP ds = inv_std / n (n ghat - sum ghat - xhat sum ghat xhat), ghat = g gamma,
//           into ds (n, m), which may be dh itself (in place); dgamma = sum g xhat, dbeta = sum g,
//           db = sum ds (the bias before the norm). Without batch norm ds = g.
//         gg_scores_loss_<t>_k<K>: dS (n, C) = w_r dl_r / ds_r / n and loss[0] = (1/n) sum_r w_r l_r
//           (per-block partials added in a fixed order by the last block: deterministic).
//         gg_update_<t>: p and the slots after one step of SGD, momentum, Nesterov or Adam on
//           g + 2 lam p (the penalty on the first n_decay entries: the weight matrices); with a
//           record, the step's cost and loss in the epoch's per-step array: record[i] = loss +
//           lam sum_{j < n_decay} p_j^2 (p before the update, in double, in a fixed order) and
//           record[stride + i] = loss.
// Traffic: the gather, one read of the batch's rows and one write of Xb (cuBLAS reads a batch's
//         matrix products from one matrix); the layers, a few passes over (n, m) activations that
//         stay in cache; the loss, one read of S and one write of dS; the update, one read and
//         write of p and the slots and one read of g: the floor for each.
//
// Column reductions (the layer kernels): a block of 32 columns x 8 row lanes; each thread sums its
// rows in order in double, then the 8 lanes are added in order: the same bits in every run.
#pragma once
#include "common.cuh"
#include "rowmath.cuh"

__device__ __forceinline__ float gg_sqrt(float v) { return sqrtf(v); }
__device__ __forceinline__ double gg_sqrt(double v) { return sqrt(v); }

// max(v, 0) as numpy.maximum(v, 0) takes it: a NaN stays NaN.
template <typename T>
__device__ __forceinline__ T gg_relu(T v) { return v < T(0) ? T(0) : v; }

// ---- gathering a batch -----------------------------------------------------------------------
template <typename T, typename TX>
__device__ __forceinline__ void gg_gather_rows(const TX* __restrict__ X, const gg_i64* __restrict__ idx,
                                               gg_i64 n, int d, const T* __restrict__ mean,
                                               const T* __restrict__ std, const void* __restrict__ y, int y64,
                                               const T* __restrict__ sw, T* __restrict__ Xb,
                                               gg_i64* __restrict__ yb, T* __restrict__ wb) {
    for (gg_i64 r = blockIdx.x; r < n; r += gridDim.x) {
        const gg_i64 src = idx != nullptr ? idx[r] : r;
        const TX* x = X + src * d;
        T* out = Xb + r * d;
        for (int k = threadIdx.x; k < d; k += blockDim.x) {
            T v = (T)x[k];
            if (mean != nullptr) v = (v - mean[k]) / std[k];  // as numpy: a division, not 1/std
            out[k] = v;
        }
        if (threadIdx.x == 0) {
            yb[r] = gg_label(y, y64, src);
            if (sw != nullptr) wb[r] = sw[src];
        }
    }
}

#define GG_GATHER(XN, T, TX)                                                                                   \
    GG_KERNEL(gg_gather_##XN, __launch_bounds__(256))(                                                         \
        const TX* __restrict__ X, const gg_i64* __restrict__ idx, gg_i64 n, int d, const T* __restrict__ mean, \
        const T* __restrict__ std, const void* __restrict__ y, int y64, const T* __restrict__ sw,             \
        T* __restrict__ Xb, gg_i64* __restrict__ yb, T* __restrict__ wb) {                                     \
        gg_gather_rows<T, TX>(X, idx, n, d, mean, std, y, y64, sw, Xb, yb, wb); }
GG_GATHER(f32, float, float)
GG_GATHER(f64, double, double)
GG_GATHER(u8, float, unsigned char)
GG_GATHER(u8f64, double, unsigned char)

// ---- column sums over the row lanes of a block ---------------------------------------------------
#define GG_ROW_LANES 8
#define GG_COL_PAD 33  // a row of the scratch, padded against bank conflicts

// Sum a and b over the GG_ROW_LANES row lanes (threadIdx.y) of each column (threadIdx.x): every
// thread of the column gets both totals, added in lane order. scratch: 2 * GG_ROW_LANES * GG_COL_PAD
// doubles. The leading barrier lets a caller reuse the scratch at once (a lane that is ahead would
// otherwise overwrite a total that a slower lane has yet to read).
__device__ __forceinline__ void gg_column_sums(double& a, double& b, double* scratch) {
    __syncthreads();
    scratch[threadIdx.y * GG_COL_PAD + threadIdx.x] = a;
    scratch[(GG_ROW_LANES + threadIdx.y) * GG_COL_PAD + threadIdx.x] = b;
    __syncthreads();
    a = 0.0;
    b = 0.0;
    for (int r = 0; r < GG_ROW_LANES; ++r) {
        a += scratch[r * GG_COL_PAD + threadIdx.x];
        b += scratch[(GG_ROW_LANES + r) * GG_COL_PAD + threadIdx.x];
    }
}

// ---- a hidden layer, forward ------------------------------------------------------------------------
template <typename T>
__device__ __forceinline__ void gg_layer_fwd(const T* __restrict__ s, const T* __restrict__ b,
                                             const T* __restrict__ gamma, const T* __restrict__ beta,
                                             T* __restrict__ rmean, T* __restrict__ rvar, double momentum,
                                             double eps, gg_i64 n, int m, T* __restrict__ h,
                                             T* __restrict__ xhat, T* __restrict__ inv_std) {
    __shared__ double scratch[2 * GG_ROW_LANES * GG_COL_PAD];
    const int c = blockIdx.x * 32 + threadIdx.x;
    const bool col = c < m;
    const T bc = col ? b[c] : T(0);
    if (gamma == nullptr) {  // no batch norm: h = ReLU(s + b)
        if (col)
            for (gg_i64 r = threadIdx.y; r < n; r += GG_ROW_LANES) h[r * m + c] = gg_relu(s[r * m + c] + bc);
        return;
    }
    // Two passes, as numpy: the mean, then the mean square of the centred values (no cancellation
    // as in E[a^2] - mu^2).
    double sum = 0.0, unused = 0.0;
    if (col)
        for (gg_i64 r = threadIdx.y; r < n; r += GG_ROW_LANES) sum += (double)(s[r * m + c] + bc);
    gg_column_sums(sum, unused, scratch);
    const T mu = (T)(sum / (double)n);
    double sq = 0.0;
    if (col)
        for (gg_i64 r = threadIdx.y; r < n; r += GG_ROW_LANES) {
            const T centred = (s[r * m + c] + bc) - mu;
            sq += (double)(centred * centred);
        }
    gg_column_sums(sq, unused, scratch);
    const T var = (T)(sq / (double)n);
    const T inv = T(1) / gg_sqrt(var + (T)eps);
    if (!col) return;
    const T gm = gamma[c], bt = beta[c];
    for (gg_i64 r = threadIdx.y; r < n; r += GG_ROW_LANES) {
        const T xh = ((s[r * m + c] + bc) - mu) * inv;
        xhat[r * m + c] = xh;
        h[r * m + c] = gg_relu(gm * xh + bt);
    }
    if (threadIdx.y == 0) {
        inv_std[c] = inv;
        if (rmean != nullptr) {  // PyTorch's rule: the running variance takes the unbiased batch variance
            rmean[c] = (T)(1.0 - momentum) * rmean[c] + (T)momentum * mu;
            rvar[c] = (T)(1.0 - momentum) * rvar[c] + (T)momentum * (var * (T)((double)n / (double)(n - 1)));
        }
    }
}

// ---- a hidden layer, backward -----------------------------------------------------------------------
// dh and ds are not __restrict__: ds may be dh (each entry is read, then written, by one thread).
template <typename T>
__device__ __forceinline__ void gg_layer_bwd(const T* dh, const T* __restrict__ h, const T* __restrict__ xhat,
                                             const T* __restrict__ gamma, const T* __restrict__ inv_std, T* ds,
                                             T* __restrict__ dgamma, T* __restrict__ dbeta, T* __restrict__ db,
                                             gg_i64 n, int m) {
    __shared__ double scratch[2 * GG_ROW_LANES * GG_COL_PAD];
    const int c = blockIdx.x * 32 + threadIdx.x;
    const bool col = c < m;
    // dJ/d(the ReLU's input): numpy's g * (a > 0), where a > 0 exactly when h = ReLU(a) > 0.
    auto grad = [&](gg_i64 i) { return h != nullptr ? dh[i] * (T)(h[i] > T(0)) : dh[i]; };
    double sg = 0.0, sgx = 0.0;
    if (gamma != nullptr && col)
        for (gg_i64 r = threadIdx.y; r < n; r += GG_ROW_LANES) {
            const T g = grad(r * m + c);
            sg += (double)g;
            sgx += (double)(g * xhat[r * m + c]);
        }
    if (gamma != nullptr) gg_column_sums(sg, sgx, scratch);  // uniform: gamma is null for every thread or none
    double sds = 0.0, unused = 0.0;
    if (col) {
        if (gamma == nullptr) {
            for (gg_i64 r = threadIdx.y; r < n; r += GG_ROW_LANES) {
                const T g = grad(r * m + c);
                ds[r * m + c] = g;
                sds += (double)g;
            }
        } else {
            const T gm = gamma[c], inv = inv_std[c], tn = (T)n;
            // sum ghat = gamma sum g and sum ghat xhat = gamma sum g xhat, from the double sums.
            const T s1 = (T)(sg * (double)gm), s2 = (T)(sgx * (double)gm), scale = inv / tn;
            for (gg_i64 r = threadIdx.y; r < n; r += GG_ROW_LANES) {
                const T ghat = grad(r * m + c) * gm;
                const T v = scale * (tn * ghat - s1 - xhat[r * m + c] * s2);
                ds[r * m + c] = v;
                sds += (double)v;
            }
        }
    }
    gg_column_sums(sds, unused, scratch);
    if (col && threadIdx.y == 0) {
        db[c] = (T)sds;
        if (gamma != nullptr) {
            dgamma[c] = (T)sgx;
            dbeta[c] = (T)sg;
        }
    }
}

#define GG_LAYER(TN, T)                                                                                        \
    GG_KERNEL(gg_layer_fwd_##TN, __launch_bounds__(256))(                                                      \
        const T* __restrict__ s, const T* __restrict__ b, const T* __restrict__ gamma, const T* __restrict__ beta, \
        T* __restrict__ rmean, T* __restrict__ rvar, double momentum, double eps, gg_i64 n, int m,               \
        T* __restrict__ h, T* __restrict__ xhat, T* __restrict__ inv_std) {                                    \
        gg_layer_fwd<T>(s, b, gamma, beta, rmean, rvar, momentum, eps, n, m, h, xhat, inv_std); }               \
    GG_KERNEL(gg_layer_bwd_##TN, __launch_bounds__(256))(                                                      \
        const T* dh, const T* __restrict__ h, const T* __restrict__ xhat, const T* __restrict__ gamma,           \
        const T* __restrict__ inv_std, T* ds, T* __restrict__ dgamma, T* __restrict__ dbeta, T* __restrict__ db, \
        gg_i64 n, int m) {                                                                                     \
        gg_layer_bwd<T>(dh, h, xhat, gamma, inv_std, ds, dgamma, dbeta, db, n, m); }
GG_LAYER(f32, float)
GG_LAYER(f64, double)

// ---- the scores' bias, the loss and dL/dS ---------------------------------------------------------
// A warp per row; lane l holds the scores of classes l, l + 32, ..., K of them.
template <typename T, int K>
__device__ __forceinline__ void gg_scores_loss(const T* __restrict__ S, const T* __restrict__ b,
                                               const void* __restrict__ y, int y64, const T* __restrict__ sw,
                                               int loss_kind, T* __restrict__ dS, gg_i64 n, int C,
                                               double* partials, unsigned* ticket, T* loss_out) {
    __shared__ double scratch[32];
    const int lane = threadIdx.x & 31;
    const gg_i64 row = (gg_i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const bool valid = row < n;
    const gg_i64 yv = valid ? gg_label(y, y64, row) : 0;
    const bool ok = yv >= 0 && yv < C;
    T s[K];
    T mine = T(0);  // this lane's score of the target class, if it holds it
#pragma unroll
    for (int j = 0; j < K; ++j) {
        const int c = lane + 32 * j;
        s[j] = (valid && c < C) ? S[row * C + c] + b[c] : -gg_inf<T>();
        if (c == yv) mine = s[j];
    }
    // A bad label (validation off) makes the row NaN and is never used as an index.
    const T s_y = ok ? __shfl_sync(GG_FULL_MASK, mine, (int)(yv & 31)) : gg_nan<T>();
    const T w = (valid && sw != nullptr) ? sw[row] : T(1);
    const T scale = w * (T(1) / (T)n);
    T l;
    if (loss_kind == 0) {
        T mx = -gg_inf<T>();
#pragma unroll
        for (int j = 0; j < K; ++j) mx = s[j] > mx ? s[j] : mx;
        mx = gg_subwarp_reduce<32>(mx, GgMax());
        T others = T(0);
#pragma unroll
        for (int j = 0; j < K; ++j) {
            const int c = lane + 32 * j;
            s[j] = c < C ? exp(s[j] - mx) : T(0);  // e_j, kept for the gradient
            if (c != yv) others += s[j];
        }
        others = gg_subwarp_reduce<32>(others, GgSum());
        const T e_y = exp(s_y - mx), total = others + e_y;
        if (valid) {
#pragma unroll
            for (int j = 0; j < K; ++j) {
                const int c = lane + 32 * j;
                if (c < C) dS[row * C + c] = gg_ce_grad(c == yv, s[j], others, scale / total);
            }
        }
        l = gg_ce_row_loss(s_y - mx, e_y, others, total);
    } else {
        int active = 0;
        T sum = T(0);
        bool on[K];
#pragma unroll
        for (int j = 0; j < K; ++j) {
            const int c = lane + 32 * j;
            const T margin = gg_hinge_margin(s[j], s_y);
            on[j] = c < C && c != yv && margin > T(0);  // the subgradient at a kink (margin 0) is 0
            active += on[j];
            sum += on[j] ? margin : T(0);
        }
        active = gg_subwarp_reduce<32>(active, GgSum());
        l = ok ? gg_subwarp_reduce<32>(sum, GgSum()) : s_y;
        if (valid) {
#pragma unroll
            for (int j = 0; j < K; ++j) {
                const int c = lane + 32 * j;
                if (c < C) dS[row * C + c] = c == yv ? -(T)active * scale : (on[j] ? scale : T(0));
            }
        }
    }
    const double row_loss = (valid && lane == 0) ? (double)(l * w) : 0.0;
    const double block_sum = gg_block_reduce(row_loss, GgSum(), scratch);
    gg_grid_mean(block_sum, partials, ticket, loss_out, 1.0 / (double)n, scratch);
}

#define GG_SCORES_LOSS(TN, T, K)                                                                              \
    GG_KERNEL(gg_scores_loss_##TN##_k##K, __launch_bounds__(256))(                                            \
        const T* __restrict__ S, const T* __restrict__ b, const void* __restrict__ y, int y64,                 \
        const T* __restrict__ sw, int loss_kind, T* __restrict__ dS, gg_i64 n, int C, double* partials,         \
        unsigned* ticket, T* loss_out) {                                                                       \
        gg_scores_loss<T, K>(S, b, y, y64, sw, loss_kind, dS, n, C, partials, ticket, loss_out); }
#define GG_SCORES_LOSS_ALL(TN, T) \
    GG_SCORES_LOSS(TN, T, 1) GG_SCORES_LOSS(TN, T, 2) GG_SCORES_LOSS(TN, T, 4) GG_SCORES_LOSS(TN, T, 8) \
    GG_SCORES_LOSS(TN, T, 32)
GG_SCORES_LOSS_ALL(f32, float)
GG_SCORES_LOSS_ALL(f64, double)

// ---- one optimiser update over every parameter --------------------------------------------------------
#define GG_RULE_SGD 0
#define GG_RULE_MOMENTUM 1
#define GG_RULE_NESTEROV 2
#define GG_RULE_ADAM 3

// rule's hyperparameters, as the host computes them in double (gpugrad.optim):
//   sgd:                h0 = lr
//   momentum, nesterov: h0 = lr, h1 = mu
//   adam:               h0 = beta1, h1 = 1 - beta1, h2 = beta2, h3 = 1 - beta2,
//                       h4 = lr sqrt(1 - beta2^t) / (1 - beta1^t), h5 = eps sqrt(1 - beta2^t)
template <typename T>
__device__ __forceinline__ void gg_update(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ s1,
                                          T* __restrict__ s2, gg_i64 N, gg_i64 n_decay, int rule, double h0,
                                          double h1, double h2, double h3, double h4, double h5, double lam,
                                          const T* __restrict__ loss, double* __restrict__ record, gg_i64 rec,
                                          gg_i64 stride, double* partials, unsigned* ticket) {
    __shared__ double scratch[32];
    const T a0 = (T)h0, a1 = (T)h1, a2 = (T)h2, a3 = (T)h3, a4 = (T)h4, a5 = (T)h5, two_lam = (T)(2.0 * lam);
    double pen = 0.0;
    const gg_i64 step = (gg_i64)gridDim.x * blockDim.x;
    for (gg_i64 j = (gg_i64)blockIdx.x * blockDim.x + threadIdx.x; j < N; j += step) {
        T pj = p[j], gj = g[j];
        if (j < n_decay) {
            pen += (double)pj * (double)pj;
            gj = gj + two_lam * pj;
        }
        if (rule == GG_RULE_SGD) {
            pj = pj - a0 * gj;
        } else if (rule == GG_RULE_ADAM) {
            const T m = a0 * s1[j] + a1 * gj;
            const T v = a2 * s2[j] + a3 * (gj * gj);
            s1[j] = m;
            s2[j] = v;
            pj = pj - a4 * m / (gg_sqrt(v) + a5);
        } else {
            const T v = s1[j] * a1 - a0 * gj;
            s1[j] = v;
            pj = rule == GG_RULE_NESTEROV ? pj + (a1 * v - a0 * gj) : pj + v;
        }
        p[j] = pj;
    }
    if (record == nullptr) return;  // uniform over the grid
    const double block_sum = gg_block_reduce(pen, GgSum(), scratch);
    double total;
    if (gg_grid_total(block_sum, partials, ticket, scratch, total) && threadIdx.x == 0) {
        const double l = (double)loss[0];
        record[rec] = lam != 0.0 ? l + lam * total : l;  // as numpy: no 0 * inf = NaN without a penalty
        record[stride + rec] = l;
    }
}

#define GG_UPDATE(TN, T)                                                                                      \
    GG_KERNEL(gg_update_##TN, __launch_bounds__(256))(                                                        \
        T* __restrict__ p, const T* __restrict__ g, T* __restrict__ s1, T* __restrict__ s2, gg_i64 N,           \
        gg_i64 n_decay, int rule, double h0, double h1, double h2, double h3, double h4, double h5, double lam, \
        const T* __restrict__ loss, double* __restrict__ record, gg_i64 rec, gg_i64 stride, double* partials,  \
        unsigned* ticket) {                                                                                    \
        gg_update<T>(p, g, s1, s2, N, n_decay, rule, h0, h1, h2, h3, h4, h5, lam, loss, record, rec, stride,   \
                     partials, ticket); }
GG_UPDATE(f32, float)
GG_UPDATE(f64, double)

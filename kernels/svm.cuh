// svm.cuh: multi-class SVM (hinge) loss, forward and gradient, over a score matrix S (n, C).
//
// Reads:  S (n, C) once (plus s_y, a cached re-read of one entry per row); the labels y (n,).
// Writes: dS (n, C) once: [margin_j > 0] / n off the target, -#{j: margin_j > 0} / n on it;
//         loss_out[0] = (1/n) sum_i sum_{j != y_i} max(0, S_ij - S_iy_i + 1), same launch.
// Traffic: one read of S + one write of dS, the floor. Every entry depends only on itself and
// s_y, so the row streams through: no registers are held, only the count of active margins is
// reduced over the team (G lanes of a warp, or the whole block for long rows) for the target.
#pragma once
#include "common.cuh"
#include "rowmath.cuh"

template <typename T, int G>
__device__ __forceinline__ void gg_svm_rows(const T* __restrict__ S, const void* __restrict__ y, int y64,
                                            T* __restrict__ dS, gg_i64 n, int C, double* partials,
                                            unsigned* ticket, T* loss_out) {
    __shared__ double scratch[32];
    __shared__ int iscratch[32];
    const auto [lane, step, row, valid] = GgTeam<G>(n);
    const T* s = S + row * C;
    T* g = dS + row * C;
    const GgRowLabel<T> r = gg_row_label(s, y, y64, row, C, valid);
    const T inv_n = T(1) / T(n);

    T loss = 0;
    int active = 0;
    if (valid) {
        for (int idx = lane; idx < C; idx += step) {
            if (idx == r.yv) continue;
            const T margin = gg_hinge_margin(s[idx], r.s_y);
            const bool on = margin > T(0);
            loss += on ? margin : T(0);
            active += on;
            g[idx] = on ? inv_n : T(0);
        }
        if (!r.ok) loss = r.s_y;  // propagate the NaN into the loss
    }
    active = gg_team_reduce<G>(active, GgSum(), iscratch);
    if (valid && r.ok && lane == 0) g[r.yv] = -T(active) * inv_n;
    const double block_sum = gg_block_reduce((double)loss, GgSum(), scratch);
    gg_grid_mean(block_sum, partials, ticket, loss_out, 1.0 / (double)n, scratch);
}

// Entry points: gg_svm_<t>_w<G> (G lanes per row, 256-thread blocks), gg_svm_<t>_b (a block per row).
#define GG_SVM_TEAM(TN, T, G) \
    GG_KERNEL(gg_svm_##TN##_w##G, __launch_bounds__(256))(GG_ROW_LOSS_ARGS(T)) { \
        gg_svm_rows<T, G>(GG_ROW_LOSS_PASS); }
#define GG_SVM_ALL(TN, T) \
    GG_SVM_TEAM(TN, T, 1) GG_SVM_TEAM(TN, T, 2) GG_SVM_TEAM(TN, T, 4) GG_SVM_TEAM(TN, T, 8) \
    GG_SVM_TEAM(TN, T, 16) GG_SVM_TEAM(TN, T, 32) \
    GG_KERNEL(gg_svm_##TN##_b, __launch_bounds__(1024))(GG_ROW_LOSS_ARGS(T)) { \
        gg_svm_rows<T, 0>(GG_ROW_LOSS_PASS); }

GG_SVM_ALL(f32, float)
GG_SVM_ALL(f64, double)

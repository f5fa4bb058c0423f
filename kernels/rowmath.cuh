// rowmath.cuh: the per-row mathematics of the fused losses, as __host__ __device__ functions.
//
// Reads and writes nothing: pure functions of a row's statistics. Kept apart from the kernels
// so that a small CPU program (tests/cpu/test_rowmath.cpp, run by CTest) checks the same code
// against long-double references without a GPU.
//
// Notation for one row s (C scores) with label y: m = max_j s_j, e_j = exp(s_j - m),
// others = sum_{j != y} e_j, e_y = exp(s_y - m), total = others + e_y.
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define GG_HD __host__ __device__ __forceinline__
#else
#include <cmath>
#define GG_HD inline
using std::exp;
using std::log;
using std::log1p;
#endif

// Cross-entropy of one row: l = log(total) - (s_y - m). When y is at (or near) the max the loss
// is small and log(total) would round it away: then l = log1p(others / e_y), which is exact in
// relative terms. e_y >= exp(-1) on that branch, so the division is safe.
template <typename T>
GG_HD T gg_ce_row_loss(T s_y_minus_m, T e_y, T others, T total) {
    return s_y_minus_m > T(-1) ? log1p(others / e_y) : log(total) - s_y_minus_m;
}

// dL/ds_j for one row, already divided by the batch size n (inv_n = 1/n):
//   j != y: e_j / total / n;   j == y: p_y - 1 = -others / total / n.
// The target entry comes from `others`, never from 1 - p_y with a rounded p_y: when p_y rounds to
// 1 the true gradient -others/total is tiny but not zero (the precision bug in peer kernels).
template <typename T>
GG_HD T gg_ce_grad(bool is_target, T e_j, T others, T scale /* = inv_n / total */) {
    return is_target ? -others * scale : e_j * scale;
}

// Online softmax statistics: merge (m_a, o_a) and (m_b, o_b), where o is a sum of exp(s - m)
// over the non-target entries seen so far. An empty side has m = -inf and o = 0.
template <typename T>
GG_HD void gg_online_merge(T& m_a, T& o_a, T m_b, T o_b) {
    if (m_b > m_a) {
        o_a = (o_a == T(0) ? T(0) : o_a * exp(m_a - m_b)) + o_b;
        m_a = m_b;
    } else {
        o_a += (o_b == T(0) ? T(0) : o_b * exp(m_b - m_a));
    }
}

// Multi-class hinge for one entry j != y: margin = s_j - s_y + 1; contributes max(0, margin) to
// the loss and [margin > 0] / n to the gradient (subgradient 0 at the kink margin == 0).
template <typename T>
GG_HD T gg_hinge_margin(T s_j, T s_y) { return s_j - s_y + T(1); }

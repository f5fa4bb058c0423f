// checks.cuh: the fused device-side input check, read back once per call while validation is on.
//
// Reads:  the labels y (n,) and up to four float arrays (X, W, b, ...), once each.
// Writes: out[0] = first index i with y[i] outside [0, C); out[1 + a] = first flat index of a
//         NaN/Inf in array a. Entries stay at ~0 (all bits set) where nothing is wrong; the
//         caller fills out with ~0 before the launch. atomicMin keeps the *first* bad index
//         whatever the order in which blocks run, so the error message is deterministic.
// Traffic: one read of every checked array; a few bytes written.
#pragma once
#include "common.cuh"

__device__ __forceinline__ bool gg_nonfinite(const void* a, int kind, gg_i64 i) {
    if (kind == 1) { const float v = static_cast<const float*>(a)[i]; return !isfinite(v); }
    const double v = static_cast<const double*>(a)[i];
    return !isfinite(v);
}

__device__ __forceinline__ void gg_check_array(const void* a, int kind, gg_i64 len, gg_i64 i,
                                               gg_u64* slot) {
    if (kind != 0 && i < len && gg_nonfinite(a, kind, i)) atomicMin(slot, (gg_u64)i);
}

// kind_k: 0 = slot unused, 1 = float32, 2 = float64.
GG_KERNEL(gg_first_invalid, __launch_bounds__(256))(
    const void* y, int y64, gg_i64 ny, gg_i64 C, const void* a0, int kind0, gg_i64 len0,
    const void* a1, int kind1, gg_i64 len1, const void* a2, int kind2, gg_i64 len2,
    const void* a3, int kind3, gg_i64 len3, gg_i64 total, gg_u64* out) {
    const gg_i64 stride = (gg_i64)gridDim.x * blockDim.x;
    for (gg_i64 i = (gg_i64)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        if (i < ny) {
            const gg_i64 v = gg_label(y, y64, i);
            if (v < 0 || v >= C) atomicMin(out, (gg_u64)i);
        }
        gg_check_array(a0, kind0, len0, i, out + 1);
        gg_check_array(a1, kind1, len1, i, out + 2);
        gg_check_array(a2, kind2, len2, i, out + 3);
        gg_check_array(a3, kind3, len3, i, out + 4);
    }
}

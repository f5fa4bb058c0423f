// common.cuh: helpers shared by every gpugrad kernel.
//
// Reads and writes nothing by itself. Holds the team reductions (a "team" is the group of
// threads that owns one row: G lanes of a warp, or a whole block), the deterministic
// grid-wide mean (the last block to finish sums the per-block partials in a fixed order, so
// the result is reproducible bit for bit), and label loads that accept int32 or int64 labels
// without a conversion launch.
//
// Compiled by NVRTC at run time (no standard headers there) and by nvcc ahead of time.
#pragma once
#include "ptx.cuh"

#define GG_FULL_MASK 0xffffffffu

// GG_KERNEL(name, attributes...) opens the definition of the kernel `name`, as
//   extern "C" __global__ void attributes name
// extern "C": plain names in the fatbin and for cupy.RawModule, and CuPy's disk cache applies.
// One kernel at a time: compiled with -DGG_ONLY -DGG_WANT_<name>=1 (the loader's NVRTC path), every
// other kernel becomes `template <int> __global__ void ...`, parsed but never instantiated, so it
// costs no code generation: a first call on a new machine compiles the kernel it launches (0.1 to
// 0.5 s) instead of all of them (20 s). GG_WANTED(name) is 1 or 0 by the usual probe: only a
// defined GG_WANT_<name> turns GG_PROBE_<...> into the two tokens "~, 1".
#define GG_CAT_(a, b) a##b
#define GG_CAT(a, b) GG_CAT_(a, b)
#ifdef GG_ONLY
#define GG_SECOND_(a, b, ...) b
#define GG_SECOND(...) GG_SECOND_(__VA_ARGS__)
#define GG_PROBE_1 ~, 1
#define GG_WANTED(name) GG_SECOND(GG_CAT(GG_PROBE_, GG_CAT(GG_WANT_, name)), 0, ~)
#define GG_LINKAGE_1 extern "C"
#define GG_LINKAGE_0 template <int>
#define GG_KERNEL(name, ...) GG_CAT(GG_LINKAGE_, GG_WANTED(name)) __global__ void __VA_ARGS__ name
#else
#define GG_KERNEL(name, ...) extern "C" __global__ void __VA_ARGS__ name
#endif

typedef long long gg_i64;
typedef unsigned long long gg_u64;

template <typename T> __device__ __forceinline__ T gg_inf();
template <> __device__ __forceinline__ float gg_inf<float>() { return __int_as_float(0x7f800000); }
template <> __device__ __forceinline__ double gg_inf<double>() {
    return __longlong_as_double(0x7ff0000000000000LL);
}
// a * b + c with one rounding, in the arguments' type. Spelled out per type: the float overload
// of fma is not in the global namespace of every host C++ library (the CPU emulator's compiler).
__device__ __forceinline__ float gg_fma(float a, float b, float c) { return fmaf(a, b, c); }
__device__ __forceinline__ double gg_fma(double a, double b, double c) { return fma(a, b, c); }

// A quiet NaN: the target score of a row with a bad label (validation off), so its loss and
// gradient are NaN and the label is never used as an index.
template <typename T> __device__ __forceinline__ T gg_nan();
template <> __device__ __forceinline__ float gg_nan<float>() { return __int_as_float(0x7fc00000); }
template <> __device__ __forceinline__ double gg_nan<double>() {
    return __longlong_as_double(0x7ff8000000000000LL);
}

// Labels arrive as int32 or int64 (numpy's default); the width is a run-time flag, uniform
// across the grid, so the branch costs nothing and halves the number of kernel instantiations.
__device__ __forceinline__ gg_i64 gg_label(const void* y, int y_is64, gg_i64 i) {
    return y_is64 ? static_cast<const gg_i64*>(y)[i] : static_cast<gg_i64>(static_cast<const int*>(y)[i]);
}

// The row a thread works on and its place in the row's team: G consecutive lanes of a warp per
// row (G a power of two <= 32), or the whole block (G == 0) with one row per block.
template <int G>
struct GgTeam {
    static constexpr bool BLOCK = (G == 0);
    int lane, step;  // this thread's index within the team, and the team's size
    gg_i64 row;
    bool valid;      // row < n: teams past the end still take part in block-wide steps
    __device__ __forceinline__ explicit GgTeam(gg_i64 n)
        : lane(BLOCK ? threadIdx.x : (threadIdx.x & (G - 1))),
          step(BLOCK ? blockDim.x : G),
          row(BLOCK ? (gg_i64)blockIdx.x : (gg_i64)blockIdx.x * (blockDim.x / G) + threadIdx.x / G),
          valid(row < n) {}
};

// The parameters of every row-loss kernel (softmax_ce.cuh, svm.cuh), in the order the host passes
// them (cuda_driver.RowParams): the scores S (n, C), the labels y (int64 when y64, else int32), the
// gradient dS (n, C), the grid mean's per-block partials and ticket, and loss_out[0].
#define GG_ROW_LOSS_ARGS(T) const T* __restrict__ S, const void* __restrict__ y, int y64, T* __restrict__ dS, \
                            gg_i64 n, int C, double* partials, unsigned* ticket, T* loss_out
#define GG_ROW_LOSS_PASS S, y, y64, dS, n, C, partials, ticket, loss_out

struct GgSum { template <typename T> __device__ __forceinline__ T operator()(T a, T b) const { return a + b; } };
struct GgMax { template <typename T> __device__ __forceinline__ T operator()(T a, T b) const { return a > b ? a : b; } };

// Reduce v over a team of G consecutive lanes (G a power of two <= 32); every lane gets the result.
template <int G, typename T, typename Op>
__device__ __forceinline__ T gg_subwarp_reduce(T v, Op op) {
#pragma unroll
    for (int o = G / 2; o >= 1; o >>= 1) v = op(v, __shfl_xor_sync(GG_FULL_MASK, v, o));
    return v;
}

// Reduce v over the whole block (blockDim.x a multiple of 32, at most 1024); every thread gets
// the result. `scratch` holds 32 values of T; the leading barrier lets callers reuse it.
template <typename T, typename Op>
__device__ __forceinline__ T gg_block_reduce(T v, Op op, T* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = gg_subwarp_reduce<32>(v, op);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    T r = scratch[0];
    for (int w = 1; w < nwarps; ++w) r = op(r, scratch[w]);  // same order in every thread
    return r;
}

// Reduce v over the team of GgTeam<G> that owns this thread's row: G lanes of a warp, or the whole
// block (G == 0, which uses `scratch`: 32 values of T); every thread of the team gets the result.
template <int G, typename T, typename Op>
__device__ __forceinline__ T gg_team_reduce(T v, Op op, T* scratch) {
    if constexpr (GgTeam<G>::BLOCK) return gg_block_reduce(v, op, scratch);
    else return gg_subwarp_reduce<G>(v, op);
}

// A row-loss kernel's label of row `row` and the row's target score s_y = s[yv] (s: the row's C
// scores). A label outside [0, C) (validation off) gives ok = false and s_y = NaN, so the row's
// loss and gradient are NaN and the label is never used as an index; a row past the end (valid
// false) reads nothing. Separate from GgTeam so that a kernel can put its loads of the row in
// flight before this one.
template <typename T>
struct GgRowLabel {
    gg_i64 yv;
    bool ok;
    T s_y;
};

template <typename T>
__device__ __forceinline__ GgRowLabel<T> gg_row_label(const T* s, const void* y, int y64, gg_i64 row, int C,
                                                      bool valid) {
    GgRowLabel<T> r;
    r.yv = valid ? gg_label(y, y64, row) : 0;
    r.ok = r.yv >= 0 && r.yv < C;
    r.s_y = (valid && r.ok) ? s[r.yv] : gg_nan<T>();
    return r;
}

// The grid's total of per-block sums, in one launch: each block stores its partial, and the last
// block to arrive (atomic ticket) adds them in index order (deterministic). Returns true in that
// block only, with the total in every one of its threads. `ticket` must be zero before the launch;
// the last block resets it for the next launch on the same stream. Call with every thread of the
// block; `block_sum` must be valid in thread 0; `scratch` holds 32 doubles.
__device__ __forceinline__ bool gg_grid_total(double block_sum, double* partials, unsigned* ticket,
                                              double* scratch, double& total) {
    __shared__ bool is_last;
    if (threadIdx.x == 0 && threadIdx.y == 0) {
        partials[blockIdx.x] = block_sum;
        __threadfence();  // the partial is visible to every block before the ticket is taken
        is_last = atomicAdd(ticket, 1u) == gridDim.x - 1;
    }
    __syncthreads();
    if (!is_last) return false;
    __threadfence();
    double s = 0.0;
    for (unsigned i = threadIdx.x; i < gridDim.x; i += blockDim.x)
        s += static_cast<volatile double*>(partials)[i];
    total = gg_block_reduce(s, GgSum(), scratch);
    if (threadIdx.x == 0) *ticket = 0u;
    return true;
}

// Grid-wide mean of per-block sums, in one launch (gg_grid_total): out[0] = total * scale.
template <typename T>
__device__ void gg_grid_mean(double block_sum, double* partials, unsigned* ticket, T* out,
                             double scale, double* scratch) {
    double total;
    if (gg_grid_total(block_sum, partials, ticket, scratch, total) && threadIdx.x == 0)
        out[0] = static_cast<T>(total * scale);
}

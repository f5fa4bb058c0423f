// ptx.cuh: every inline-PTX instruction the kernels use, each behind a small named function.
//
// Reads and writes only what each function's arguments name. Keeping the PTX in one file gives the
// kernels one vocabulary for the hardware (cp.async, f16/tf32 conversions, tensor-core MMAs,
// thread-block clusters), and lets tests/emu/ptx.cuh stand in for this file: the CPU emulator
// (tests/emu) runs the very same kernel code with these functions written in C++.
#pragma once

// ---- cp.async (sm_80+): global -> shared copies that bypass the registers and complete in groups,
// so a block can have the next tile in flight while it computes on the current one.
__device__ __forceinline__ unsigned gg_smem_addr(const void* p) {
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void gg_cp_async16(void* dst, const void* src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(gg_smem_addr(dst)), "l"(src));
}
__device__ __forceinline__ void gg_cp_async4(void* dst, const void* src) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(gg_smem_addr(dst)), "l"(src));
}
__device__ __forceinline__ void gg_cp_async8(void* dst, const void* src) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8;\n" ::"r"(gg_smem_addr(dst)), "l"(src));
}
__device__ __forceinline__ void gg_cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// Wait until at most one committed group (the most recent) is still in flight.
__device__ __forceinline__ void gg_cp_async_wait_one() { asm volatile("cp.async.wait_group 1;\n" ::); }
// Wait for every copy this thread issued, committed or not.
__device__ __forceinline__ void gg_cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::); }

// ---- conversions -----------------------------------------------------------------------------------
__device__ __forceinline__ unsigned short gg_f16_bits(float v) {  // round to nearest even
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    return h;
}
__device__ __forceinline__ float gg_f16_float(unsigned short h) {
    float v;
    asm("cvt.f32.f16 %0, %1;" : "=f"(v) : "h"(h));
    return v;
}
// Two f16 lanes at once: a - b, each rounded to nearest.
__device__ __forceinline__ unsigned gg_hsub2(unsigned a, unsigned b) {
    unsigned r;
    asm("sub.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
    return r;
}
// v rounded to tf32 (10 mantissa bits, ties away from zero), as the bits of a float.
__device__ __forceinline__ unsigned gg_tf32(float v) {
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(v));
    return r;
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
// ---- thread-block clusters (sm_90; NVRTC has no cooperative_groups headers) ------------------------
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
__device__ __forceinline__ unsigned gg_dynamic_smem_size() {
    unsigned have;
    asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(have));
    return have;
}

// ---- tensor cores (not volatile: pure functions, called from warp-uniform code) --------------------
// acc (16 x 8, f32) += A (16 x 16, f16) B (16 x 8, f16); fragments as in mma_layout.cuh.
__device__ __forceinline__ void gg_mma16816(float (&acc)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// acc (16 x 8, f32) += A (16 x 8, tf32) B (8 x 8, tf32).
__device__ __forceinline__ void gg_mma1688(float (&acc)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// The warp's 8 x 8 matrix of 16-bit values (lane 4 r + c / 2 holds row r, columns c, c + 1), transposed.
__device__ __forceinline__ unsigned gg_movmatrix_t(unsigned a) {
    unsigned t;
    asm("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(t) : "r"(a));
    return t;
}
#endif

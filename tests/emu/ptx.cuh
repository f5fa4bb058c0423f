// tests/emu/ptx.cuh: kernels/ptx.cuh for the CPU emulator (gg_emu.h) - the same functions, in C++.
//
// tests/emu/build.py puts this file where the kernels include kernels/ptx.cuh. The tensor-core
// operations follow the PTX ISA's fragment tables for mma.m16n8k16 (f16), mma.m16n8k8 (tf32) and
// movmatrix.m8n8.trans, written out here without kernels/mma_layout.cuh, so a kernel whose fragments
// disagree with the hardware's computes wrong results in the emulator too. lane = 4 g + t. The
// .aligned operations take their caller's source line (site), which every lane must share.
#pragma once

inline unsigned gg_smem_addr(const void* p) { return gg_emu::smem_offset(p, 1); }
inline void gg_cp_async16(void* dst, const void* src) { gg_emu::cp_async(dst, src, 16); }
inline void gg_cp_async4(void* dst, const void* src) { gg_emu::cp_async(dst, src, 4); }
inline void gg_cp_async8(void* dst, const void* src) { gg_emu::cp_async(dst, src, 8); }
inline void gg_cp_async_commit() { gg_emu::cp_async_commit(); }
inline void gg_cp_async_wait_one() { gg_emu::cp_async_wait(1); }
inline void gg_cp_async_wait_all() {
    gg_emu::cp_async_commit();
    gg_emu::cp_async_wait(0);
}

inline unsigned short gg_f16_bits(float v) { return gg_emu::f16_bits(v); }
inline float gg_f16_float(unsigned short h) { return gg_emu::f16_float(h); }
inline unsigned gg_hsub2(unsigned a, unsigned b) {  // each half exact in float, then rounded once
    const unsigned lo = gg_emu::f16_bits(gg_emu::f16_float(a & 0xffff) - gg_emu::f16_float(b & 0xffff));
    const unsigned hi = gg_emu::f16_bits(gg_emu::f16_float(a >> 16) - gg_emu::f16_float(b >> 16));
    return lo | hi << 16;
}
inline unsigned gg_tf32(float v) { return gg_emu::tf32_rna(v); }

inline unsigned gg_cluster_rank() { return gg_emu::g_cur->block->rank; }
inline unsigned gg_cluster_id() { return gg_emu::g_cluster_id; }
inline unsigned gg_cluster_count() { return gg_emu::g_cluster_count; }
inline void gg_cluster_sync(int site = __builtin_LINE()) { gg_emu::cluster_sync(site); }
inline float gg_cluster_load(const float* local, unsigned rank) {
    const unsigned off = gg_emu::smem_offset(local, sizeof(float));
    if (rank >= gg_emu::g_cluster.size()) gg_emu::fail("distributed shared-memory load from a rank outside the cluster");
    float v;
    std::memcpy(&v, gg_emu::g_cluster[rank]->arena.data() + off, sizeof v);
    return v;
}
inline unsigned gg_dynamic_smem_size() { return (unsigned)gg_emu::g_cur->block->dynamic_bytes; }

namespace gg_emu {
struct MmaIn {
    unsigned a[4], b[2];
    float c[4];
};
struct MmaOut {
    float d[4];
};
inline float half_of(unsigned reg, int h) { return f16_float((unsigned short)(reg >> (16 * h))); }
}  // namespace gg_emu

// m16n8k16, f16: A (16 x 16) register r holds a(g + 8 (r & 1), 2 t + 8 (r >> 1) + {0, 1});
// B (16 x 8) register r holds b(2 t + 8 r + {0, 1}, g); C/D value i is (g + 8 (i >> 1), 2 t + (i & 1)).
inline void gg_mma16816(float (&acc)[4], const unsigned (&a)[4], unsigned b0, unsigned b1,
                        int site = __builtin_LINE()) {
    using gg_emu::MmaIn;
    const MmaIn in{{a[0], a[1], a[2], a[3]}, {b0, b1}, {acc[0], acc[1], acc[2], acc[3]}};
    const auto r = gg_emu::collective<MmaIn, gg_emu::MmaOut>(3 + 8 * site, in, [](const MmaIn* L, gg_emu::MmaOut* out) {
        auto A = [&](int row, int k) {
            return gg_emu::half_of(L[4 * (row % 8) + (k % 8) / 2].a[row / 8 + 2 * (k / 8)], k % 2);
        };
        auto B = [&](int k, int col) { return gg_emu::half_of(L[4 * col + (k % 8) / 2].b[k / 8], k % 2); };
        for (int l = 0; l < 32; ++l)
            for (int i = 0; i < 4; ++i) {
                const int row = l / 4 + 8 * (i / 2), col = 2 * (l % 4) + i % 2;
                double s = L[l].c[i];
                for (int k = 0; k < 16; ++k) s += (double)A(row, k) * B(k, col);
                out[l].d[i] = (float)s;
            }
    });
    for (int i = 0; i < 4; ++i) acc[i] = r.d[i];
}

// m16n8k8, tf32: A (16 x 8) register r holds a(g + 8 (r & 1), t + 4 (r >> 1)); B (8 x 8) register r
// holds b(t + 4 r, g); C/D as above. The MMA reads the top 19 bits of each operand.
inline void gg_mma1688(float (&acc)[4], const unsigned (&a)[4], unsigned b0, unsigned b1,
                       int site = __builtin_LINE()) {
    using gg_emu::MmaIn;
    const MmaIn in{{a[0], a[1], a[2], a[3]}, {b0, b1}, {acc[0], acc[1], acc[2], acc[3]}};
    const auto r = gg_emu::collective<MmaIn, gg_emu::MmaOut>(4 + 8 * site, in, [](const MmaIn* L, gg_emu::MmaOut* out) {
        auto A = [&](int row, int k) { return gg_emu::tf32_value(L[4 * (row % 8) + k % 4].a[row / 8 + 2 * (k / 4)]); };
        auto B = [&](int k, int col) { return gg_emu::tf32_value(L[4 * col + k % 4].b[k / 4]); };
        for (int l = 0; l < 32; ++l)
            for (int i = 0; i < 4; ++i) {
                const int row = l / 4 + 8 * (i / 2), col = 2 * (l % 4) + i % 2;
                double s = L[l].c[i];
                for (int k = 0; k < 8; ++k) s += A(row, k) * B(k, col);
                out[l].d[i] = (float)s;
            }
    });
    for (int i = 0; i < 4; ++i) acc[i] = r.d[i];
}

// movmatrix.m8n8.trans.b16: lane 4 r + c / 2 holds element (r, c) in half c % 2; the result holds
// the transpose in the same places.
inline unsigned gg_movmatrix_t(unsigned a, int site = __builtin_LINE()) {
    return gg_emu::collective<unsigned, unsigned>(5 + 8 * site, a, [](const unsigned* in, unsigned* out) {
        for (int l = 0; l < 32; ++l) {
            unsigned v = 0;
            for (int h = 0; h < 2; ++h) {
                const int row = l / 4, col = 2 * (l % 4) + h;  // of the transpose: element (col, row) of the source
                v |= ((in[4 * col + row / 2] >> (16 * (row % 2))) & 0xffffu) << (16 * h);
            }
            out[l] = v;
        }
    });
}

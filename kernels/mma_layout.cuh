// mma_layout.cuh: where each element of a tensor-core fragment lives, as __host__ __device__ maps.
//
// Reads and writes nothing: index arithmetic only. linear_mma.cuh builds its fragments with these
// maps, and tests/cpu/test_mma_layout.cpp (CTest) checks them on the CPU against an emulation of
// mma.m16n8k16 and movmatrix written from the PTX ISA's fragment tables, so a layout slip shows up
// without a GPU.
//
// mma.sync.m16n8k16.row.col (f16 inputs, f32 accumulators); lane = 4 * grp + tig (grp = lane / 4):
//   A (16 x 16): register r (0..3) holds (row, col) and (row, col + 1),
//                row = grp + 8 * (r & 1), col = 2 * tig + 8 * (r >> 1);
//   B (16 x 8):  register r (0..1) holds (k, n) and (k + 1, n), k = 2 * tig + 8 * r, n = grp;
//   C (16 x 8):  value i (0..3) is (grp + 8 * (i >> 1), 2 * tig + (i & 1)).
// In each register the lower 16 bits hold the element with the smaller index.
#pragma once
#include "rowmath.cuh"  // GG_HD

GG_HD int gg_mma_a_row(int lane, int reg) { return (lane >> 2) + 8 * (reg & 1); }
GG_HD int gg_mma_a_col(int lane, int reg, int half) { return 2 * (lane & 3) + 8 * (reg >> 1) + half; }
GG_HD int gg_mma_b_k(int lane, int reg, int half) { return 2 * (lane & 3) + 8 * reg + half; }
GG_HD int gg_mma_b_n(int lane) { return lane >> 2; }
GG_HD int gg_mma_c_row(int lane, int i) { return (lane >> 2) + 8 * (i >> 1); }
GG_HD int gg_mma_c_col(int lane, int i) { return 2 * (lane & 3) + (i & 1); }

// mma.sync.m16n8k8.row.col with tf32 inputs (f32 accumulators, C as above):
//   A (16 x 8): register r (0..3) holds (grp + 8 * (r & 1), tig + 4 * (r >> 1));
//   B (8 x 8):  register r (0..1) holds (tig + 4 * r, grp).
GG_HD int gg_mma8_a_row(int lane, int reg) { return (lane >> 2) + 8 * (reg & 1); }
GG_HD int gg_mma8_a_col(int lane, int reg) { return (lane & 3) + 4 * (reg >> 1); }
GG_HD int gg_mma8_b_k(int lane, int reg) { return (lane & 3) + 4 * reg; }

// The contraction index of a 16-wide block may be permuted freely, provided both operands use the
// same permutation. k-slot s stands for column gg_kslot_col(s) of the block, chosen so that the
// four k-slots a lane holds (2 tig, 2 tig + 1, 2 tig + 8, 2 tig + 9) are the four adjacent
// columns 4 tig .. 4 tig + 3: one 32-bit load of four uint8 pixels, one 64-bit load of four f16
// weights. Registers 0 and 2 (or 1 and 3) of an A fragment then come from one such load.
GG_HD int gg_kslot_col(int s) { return 4 * ((s & 7) >> 1) + 2 * (s >> 3) + (s & 1); }
// The same for the 8-wide tf32 blocks: a lane's k-slots tig and tig + 4 are the adjacent columns
// 2 tig and 2 tig + 1 (one float2 load of X or of W'); registers 0 and 2 (1 and 3) of A.
GG_HD int gg_kslot8_col(int s) { return 2 * (s & 3) + (s >> 2); }

// The A fragment of a block's transpose from the A fragment of the block itself: movmatrix.trans
// transposes each 8 x 8 quarter in place, and quarter (row half i, col half j) of X is quarter
// (j, i) of X^T, so register r of X^T's fragment is the transposed register gg_mma_t_reg(r) of X's.
GG_HD int gg_mma_t_reg(int r) { return ((r & 1) << 1) | (r >> 1); }

// Byte selectors for prmt (__byte_perm(v, 0x64646464, sel)): two pixels b0, b1 of v become the
// f16 pair (1024 + b0, 1024 + b1), i.e. 0x64bb per half, since 1024..2047 are f16's integers with
// unit spacing. Subtracting 1024 + offset in f16 is then exact. LO takes bytes 0, 1; HI bytes 2, 3.
#define GG_PRMT_U8_LO 0x4140u
#define GG_PRMT_U8_HI 0x4342u
#define GG_F16_1024 0x6400u

// The integer each column's pixels are centred on before they enter the tensor cores: the mean
// rounded and clamped to the pixel range, so that x - r is an integer in [-255, 255] (exact in
// f16); the remaining m - r is folded into the bias (forward) and into dW (finish).
GG_HD float gg_pixel_offset(float mean) {
    const float r = mean < 0.f ? 0.f : (mean > 255.f ? 255.f : mean);
    return (float)(int)(r + 0.5f);
}

// ---- the tensor-core linear steps (linear_mma.cuh): tile shapes and shared-memory layouts -------
// uint8 X: clusters of 4 blocks split the columns, 64-row tiles; float32 X: clusters of 8 (X takes
// four times the room), 32-row tiles. cupy_backend mirrors these numbers and the layouts' `bytes`,
// and tests/test_kernels_build.py compares the two. Strides are padded so that the fragment loads
// of a warp hit 32 different banks.
#define GG_LINMMA_THREADS 512  // 16 warps
#define GG_LINMMA_U8_ROWS 64
#define GG_LINMMA_U8_CLUSTER 4
#define GG_LINMMA_U8_MAX_DSL 768  // columns per block: d <= 3072
#define GG_LINMMA_F32_ROWS 32
#define GG_LINMMA_F32_CLUSTER 8
#define GG_LINMMA_F32_MAX_DSL 384  // d <= 3072

struct GgLinmmaU8Layout {
    int wstride;  // f16 elements between rows of W' (2 * wstride bytes = 32 mod 128)
    int xstride;  // bytes between rows of an X tile (= 16 mod 128)
    int w_off, r_off, x_off, spart_off, sx_off, g_off, bytes;
    GG_HD GgLinmmaU8Layout(int dsl, int nt) {
        constexpr int R = GG_LINMMA_U8_ROWS;
        wstride = (dsl + 63) / 64 * 64 + 16;
        xstride = (dsl + 127) / 128 * 128 + 16;
        w_off = 0;                                  // f16 [2 halves][8 nt][wstride]
        r_off = w_off + 2 * 8 * nt * wstride * 2;   // f16 [dsl]: 1024 + r_k
        x_off = (r_off + dsl * 2 + 15) / 16 * 16;   // u8 [2 stages][R][xstride]
        spart_off = x_off + 2 * R * xstride;        // f32 [4 column quarters][R][24]
        sx_off = spart_off + 4 * R * 24 * 4;        // f32 [2 tiles][R][16]: read by the whole cluster
        g_off = sx_off + 2 * R * 16 * 4;            // f16 [2 halves][8 nt][R + 8]: G~ by class, row
        bytes = g_off + 2 * 8 * nt * (R + 8) * 2;
    }
};

struct GgLinmmaF32Layout {
    int wstride, xstride;  // floats between rows of W' and of an X tile (= 8 mod 32)
    int w_off, x_off, spart_off, sx_off, g_off, bytes;
    GG_HD GgLinmmaF32Layout(int dsl, int nt) {
        constexpr int R = GG_LINMMA_F32_ROWS;
        wstride = xstride = (dsl + 31) / 32 * 32 + 8;
        w_off = 0;                                  // tf32 [2 halves][8 nt][wstride]
        x_off = w_off + 2 * 8 * nt * wstride * 4;   // f32 [2 stages][R][xstride]
        spart_off = x_off + 2 * R * xstride * 4;    // f32 [8 column eighths][R][24]
        sx_off = spart_off + 8 * R * 24 * 4;        // f32 [2 tiles][R][16]: read by the whole cluster
        g_off = sx_off + 2 * R * 16 * 4;            // tf32 [2 halves][8 nt][R + 4]: G~ by class, row
        bytes = g_off + 2 * 8 * nt * (R + 4) * 4;
    }
};

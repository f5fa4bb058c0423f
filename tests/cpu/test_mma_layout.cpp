// CPU check of kernels/mma_layout.cuh, the fragment maps of the tensor-core linear kernel (CTest).
//
// An emulated warp builds its fragments exactly the way linear_mma.cuh loads them (through the
// maps under test), and an emulation of mma.m16n8k16, mma.m16n8k8 (tf32) and movmatrix, written
// here from the PTX ISA's fragment tables in their own words, multiplies them. Both products of
// each linear step (S = X W^T with the k-slot permutation, dW^T = X^T G) must come out equal to
// the plain matrix products, element for element (small integers: exact arithmetic).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>

#include "mma_layout.cuh"

static int failures = 0;
#define CHECK(cond, ...)                    \
    do {                                    \
        if (!(cond)) {                      \
            ++failures;                     \
            std::printf("FAIL: " __VA_ARGS__); \
            std::printf("\n");              \
        }                                   \
    } while (0)

// ---- the PTX ISA tables (mma.m16n8k16 .f16 and movmatrix.m8n8), one lane's view ----------------
// A: a_i, i = 0..7 (two per 32-bit register): row = groupID for a0, a1, a4, a5 and groupID + 8 for
// a2, a3, a6, a7; col = threadID_in_group * 2 + (i & 1), plus 8 for a4..a7.
static int ptx_a_row(int lane, int i) { return (lane >> 2) + ((i == 2 || i == 3 || i == 6 || i == 7) ? 8 : 0); }
static int ptx_a_col(int lane, int i) { return (lane % 4) * 2 + (i & 1) + (i >= 4 ? 8 : 0); }
// B: b_i, i = 0..3: row = threadID_in_group * 2 + (i & 1), plus 8 for b2, b3; col = groupID.
static int ptx_b_row(int lane, int i) { return (lane % 4) * 2 + (i & 1) + (i >= 2 ? 8 : 0); }
static int ptx_b_col(int lane) { return lane >> 2; }
// C/D: c_i, i = 0..3: row = groupID, plus 8 for c2, c3; col = threadID_in_group * 2 + (i & 1).
static int ptx_c_row(int lane, int i) { return (lane >> 2) + (i >= 2 ? 8 : 0); }
static int ptx_c_col(int lane, int i) { return (lane % 4) * 2 + (i & 1); }

// m16n8k8 .tf32: A a_i, i = 0..3: row = groupID for a0, a2 and groupID + 8 for a1, a3;
// col = threadID_in_group for a0, a1 and threadID_in_group + 4 for a2, a3.
// B b_i, i = 0..1: row = threadID_in_group for b0, + 4 for b1; col = groupID. C as for m16n8k16.
static int ptx8_a_row(int lane, int i) { return (lane >> 2) + ((i == 1 || i == 3) ? 8 : 0); }
static int ptx8_a_col(int lane, int i) { return (lane % 4) + (i >= 2 ? 4 : 0); }
static int ptx8_b_row(int lane, int i) { return (lane % 4) + (i == 1 ? 4 : 0); }

// D = A B + C for m16n8k8: a[l][0..3] and b[l][0..1] of each lane, c[l][0..3] accumulated.
static void emulate_mma8(const long long (&a)[32][4], const long long (&b)[32][2], long long (&c)[32][4]) {
    long long A[16][8], B[8][8];
    for (int l = 0; l < 32; ++l) {
        for (int i = 0; i < 4; ++i) A[ptx8_a_row(l, i)][ptx8_a_col(l, i)] = a[l][i];
        for (int i = 0; i < 2; ++i) B[ptx8_b_row(l, i)][ptx_b_col(l)] = b[l][i];
    }
    for (int l = 0; l < 32; ++l)
        for (int i = 0; i < 4; ++i) {
            long long s = 0;
            for (int k = 0; k < 8; ++k) s += A[ptx_c_row(l, i)][k] * B[k][ptx_c_col(l, i)];
            c[l][i] += s;
        }
}

struct Warp {  // 32 lanes, each with 4 A registers (2 values each), 2 B registers, 4 accumulators
    long long a[32][8], b[32][4], c[32][4];
};

// D = A B + C over the warp, reading each operand element where the PTX table puts it.
static void emulate_mma(Warp& w) {
    long long A[16][16], B[16][8];
    for (int l = 0; l < 32; ++l) {
        for (int i = 0; i < 8; ++i) A[ptx_a_row(l, i)][ptx_a_col(l, i)] = w.a[l][i];
        for (int i = 0; i < 4; ++i) B[ptx_b_row(l, i)][ptx_b_col(l)] = w.b[l][i];
    }
    for (int l = 0; l < 32; ++l)
        for (int i = 0; i < 4; ++i) {
            long long s = 0;
            for (int k = 0; k < 16; ++k) s += A[ptx_c_row(l, i)][k] * B[k][ptx_c_col(l, i)];
            w.c[l][i] += s;
        }
}

// movmatrix.m8n8.trans.b16 on register r of every lane: lane l holds row l / 4, columns
// 2 (l % 4) and 2 (l % 4) + 1 of an 8 x 8 matrix; afterwards the same positions of its transpose.
static void emulate_movmatrix_t(const long long (&src)[32][2], long long (&dst)[32][2]) {
    long long M[8][8];
    for (int l = 0; l < 32; ++l)
        for (int h = 0; h < 2; ++h) M[l / 4][2 * (l % 4) + h] = src[l][h];
    for (int l = 0; l < 32; ++l)
        for (int h = 0; h < 2; ++h) dst[l][h] = M[2 * (l % 4) + h][l / 4];
}

// __byte_perm(x, y, s) per the CUDA documentation: result byte i is byte (s >> 4i) & 7 of the
// eight bytes y:x (x = bytes 0..3).
static uint32_t byte_perm(uint32_t x, uint32_t y, uint32_t s) {
    const uint64_t bytes = ((uint64_t)y << 32) | x;
    uint32_t r = 0;
    for (int i = 0; i < 4; ++i) r |= (uint32_t)((bytes >> (8 * ((s >> (4 * i)) & 7))) & 0xff) << (8 * i);
    return r;
}
// Value of an f16 bit pattern (normal numbers only: all this test needs).
static double f16_value(uint16_t h) {
    const int e = (h >> 10) & 31, m = h & 1023;
    const double v = (1.0 + m / 1024.0) * std::ldexp(1.0, e - 15);
    return (h & 0x8000) ? -v : v;
}

int main() {
    std::mt19937 rng(12345);
    std::uniform_int_distribution<int> pix(0, 255), small(-50, 50);

    // 1. The maps agree with the PTX tables.
    for (int l = 0; l < 32; ++l) {
        for (int i = 0; i < 8; ++i) {
            CHECK(gg_mma_a_row(l, i >> 1) == ptx_a_row(l, i), "A row, lane %d value %d", l, i);
            CHECK(gg_mma_a_col(l, i >> 1, i & 1) == ptx_a_col(l, i), "A col, lane %d value %d", l, i);
        }
        for (int i = 0; i < 4; ++i) {
            CHECK(gg_mma_b_k(l, i >> 1, i & 1) == ptx_b_row(l, i), "B k, lane %d value %d", l, i);
            CHECK(gg_mma_c_row(l, i) == ptx_c_row(l, i) && gg_mma_c_col(l, i) == ptx_c_col(l, i), "C, lane %d", l);
        }
        CHECK(gg_mma_b_n(l) == ptx_b_col(l), "B n, lane %d", l);
        // The loads the kernel does: one 32-bit word of pixels at column 4 tig of a row gives
        // registers 0 (bytes 0, 1) and 2 (bytes 2, 3); one 64-bit load of W' gives B's 2 registers.
        const int t = l & 3;
        CHECK(gg_kslot_col(gg_mma_a_col(l, 0, 0)) == 4 * t && gg_kslot_col(gg_mma_a_col(l, 0, 1)) == 4 * t + 1 &&
              gg_kslot_col(gg_mma_a_col(l, 2, 0)) == 4 * t + 2 && gg_kslot_col(gg_mma_a_col(l, 2, 1)) == 4 * t + 3,
              "A k-slots of lane %d are not columns 4t..4t+3", l);
        CHECK(gg_kslot_col(gg_mma_b_k(l, 0, 0)) == 4 * t && gg_kslot_col(gg_mma_b_k(l, 0, 1)) == 4 * t + 1 &&
              gg_kslot_col(gg_mma_b_k(l, 1, 0)) == 4 * t + 2 && gg_kslot_col(gg_mma_b_k(l, 1, 1)) == 4 * t + 3,
              "B k-slots of lane %d are not columns 4t..4t+3", l);
    }
    bool seen[16] = {};
    for (int s = 0; s < 16; ++s) seen[gg_kslot_col(s)] = true;
    for (int c = 0; c < 16; ++c) CHECK(seen[c], "gg_kslot_col is not a permutation (column %d)", c);

    for (int trial = 0; trial < 200; ++trial) {
        long long X[16][16], Wm[8][16], G[16][8];
        for (auto& r : X) for (auto& v : r) v = pix(rng) - pix(rng);  // centred pixels
        for (auto& r : Wm) for (auto& v : r) v = small(rng);
        for (auto& r : G) for (auto& v : r) v = small(rng);

        // 2. Forward, S = X W^T: A from the pixel tile, B from W', both in k-slot order.
        Warp w{};
        for (int l = 0; l < 32; ++l) {
            for (int r = 0; r < 4; ++r)
                for (int h = 0; h < 2; ++h)
                    w.a[l][2 * r + h] = X[gg_mma_a_row(l, r)][gg_kslot_col(gg_mma_a_col(l, r, h))];
            for (int r = 0; r < 2; ++r)
                for (int h = 0; h < 2; ++h) w.b[l][2 * r + h] = Wm[gg_mma_b_n(l)][gg_kslot_col(gg_mma_b_k(l, r, h))];
        }
        emulate_mma(w);
        for (int l = 0; l < 32; ++l)
            for (int i = 0; i < 4; ++i) {
                const int row = gg_mma_c_row(l, i), cls = gg_mma_c_col(l, i);
                long long s = 0;
                for (int k = 0; k < 16; ++k) s += X[row][k] * Wm[cls][k];
                CHECK(w.c[l][i] == s, "forward S[%d][%d]: %lld, want %lld", row, cls, w.c[l][i], s);
            }

        // 3. Backward, dW^T = X^T G: X's A fragment (as loaded for the forward) transposed quarter
        //    by quarter with movmatrix; G's B fragment by rows; output column = gg_kslot_col(row).
        Warp v{};
        long long fwd[4][32][2];
        for (int l = 0; l < 32; ++l)
            for (int r = 0; r < 4; ++r)
                for (int h = 0; h < 2; ++h) fwd[r][l][h] = X[gg_mma_a_row(l, r)][gg_kslot_col(gg_mma_a_col(l, r, h))];
        for (int r = 0; r < 4; ++r) {
            long long t[32][2];
            emulate_movmatrix_t(fwd[gg_mma_t_reg(r)], t);
            for (int l = 0; l < 32; ++l) v.a[l][2 * r] = t[l][0], v.a[l][2 * r + 1] = t[l][1];
        }
        for (int l = 0; l < 32; ++l)
            for (int r = 0; r < 2; ++r)
                for (int h = 0; h < 2; ++h) v.b[l][2 * r + h] = G[gg_mma_b_k(l, r, h)][gg_mma_b_n(l)];
        emulate_mma(v);
        for (int l = 0; l < 32; ++l)
            for (int i = 0; i < 4; ++i) {
                const int col = gg_kslot_col(gg_mma_c_row(l, i)), cls = gg_mma_c_col(l, i);
                long long s = 0;
                for (int r = 0; r < 16; ++r) s += G[r][cls] * X[r][col];
                CHECK(v.c[l][i] == s, "backward dW[%d][%d]: %lld, want %lld", cls, col, v.c[l][i], s);
            }
    }

    // 4. The tf32 kernel (gg_linmma_f32): forward with 8-wide k-slots (one float2 of X and of W'
    //    per lane), backward with X^T loaded directly (M = column, K = row) and G by rows.
    for (int l = 0; l < 32; ++l) {
        for (int r = 0; r < 4; ++r)
            CHECK(gg_mma8_a_row(l, r) == ptx8_a_row(l, r) && gg_mma8_a_col(l, r) == ptx8_a_col(l, r), "tf32 A, lane %d", l);
        for (int r = 0; r < 2; ++r) CHECK(gg_mma8_b_k(l, r) == ptx8_b_row(l, r), "tf32 B, lane %d", l);
        const int t = l & 3;
        CHECK(gg_kslot8_col(gg_mma8_a_col(l, 0)) == 2 * t && gg_kslot8_col(gg_mma8_a_col(l, 2)) == 2 * t + 1 &&
              gg_mma8_a_row(l, 0) == gg_mma8_a_row(l, 2) && gg_mma8_a_row(l, 1) == gg_mma8_a_row(l, 0) + 8,
              "tf32 A registers 0, 2 of lane %d are not one float2 at column 2t", l);
        CHECK(gg_kslot8_col(gg_mma8_b_k(l, 0)) == 2 * t && gg_kslot8_col(gg_mma8_b_k(l, 1)) == 2 * t + 1,
              "tf32 B registers of lane %d are not one float2 at column 2t", l);
    }
    for (int trial = 0; trial < 200; ++trial) {
        long long X[16][8], Wm[8][8], G[8][8], Xb[8][16];
        for (auto& r : X) for (auto& v : r) v = small(rng);
        for (auto& r : Wm) for (auto& v : r) v = small(rng);
        for (auto& r : G) for (auto& v : r) v = small(rng);
        for (auto& r : Xb) for (auto& v : r) v = small(rng);
        long long a[32][4], b[32][2], c[32][4] = {};
        for (int l = 0; l < 32; ++l) {
            for (int r = 0; r < 4; ++r) a[l][r] = X[gg_mma8_a_row(l, r)][gg_kslot8_col(gg_mma8_a_col(l, r))];
            for (int r = 0; r < 2; ++r) b[l][r] = Wm[gg_mma_b_n(l)][gg_kslot8_col(gg_mma8_b_k(l, r))];
        }
        emulate_mma8(a, b, c);
        for (int l = 0; l < 32; ++l)
            for (int i = 0; i < 4; ++i) {
                const int row = gg_mma_c_row(l, i), cls = gg_mma_c_col(l, i);
                long long s = 0;
                for (int k = 0; k < 8; ++k) s += X[row][k] * Wm[cls][k];
                CHECK(c[l][i] == s, "tf32 forward S[%d][%d]: %lld, want %lld", row, cls, c[l][i], s);
            }
        // Backward: Xb is an 8-row x 16-column tile; A[m][k] = Xb[k][m].
        long long c2[32][4] = {};
        for (int l = 0; l < 32; ++l) {
            for (int r = 0; r < 4; ++r) a[l][r] = Xb[gg_mma8_a_col(l, r)][gg_mma8_a_row(l, r)];
            for (int r = 0; r < 2; ++r) b[l][r] = G[gg_mma8_b_k(l, r)][gg_mma_b_n(l)];
        }
        emulate_mma8(a, b, c2);
        for (int l = 0; l < 32; ++l)
            for (int i = 0; i < 4; ++i) {
                const int col = gg_mma_c_row(l, i), cls = gg_mma_c_col(l, i);
                long long s = 0;
                for (int r = 0; r < 8; ++r) s += G[r][cls] * Xb[r][col];
                CHECK(c2[l][i] == s, "tf32 backward dW[%d][%d]: %lld, want %lld", cls, col, c2[l][i], s);
            }
    }

    // 5. Pixels to f16: prmt with the selectors gives 1024 + pixel in each half, exactly.
    for (int trial = 0; trial < 100000; ++trial) {
        const uint32_t b0 = pix(rng), b1 = pix(rng), b2 = pix(rng), b3 = pix(rng);
        const uint32_t word = b0 | b1 << 8 | b2 << 16 | b3 << 24;
        const uint32_t lo = byte_perm(word, 0x64646464u, GG_PRMT_U8_LO), hi = byte_perm(word, 0x64646464u, GG_PRMT_U8_HI);
        const uint32_t want[4] = {b0, b1, b2, b3};
        const double got[4] = {f16_value(lo & 0xffff), f16_value(lo >> 16), f16_value(hi & 0xffff), f16_value(hi >> 16)};
        for (int i = 0; i < 4; ++i) CHECK(got[i] == 1024.0 + want[i], "prmt byte %d: %g, want %u", i, got[i], 1024 + want[i]);
        if (failures) break;
    }
    CHECK(f16_value(GG_F16_1024) == 1024.0, "GG_F16_1024");

    // 6. Column offsets: integers in [0, 255], within 0.5 of the mean inside the pixel range.
    for (float m : {-3.f, 0.f, 0.49f, 0.5f, 17.3f, 127.5f, 254.6f, 255.f, 300.f}) {
        const float r = gg_pixel_offset(m);
        CHECK(r == (float)(int)r && r >= 0.f && r <= 255.f, "offset of %g is %g", m, r);
        if (m >= 0.f && m <= 255.f) CHECK(std::fabs(m - r) <= 0.5f, "offset of %g is %g", m, r);
    }

    if (failures) {
        std::printf("%d failures\n", failures);
        return 1;
    }
    std::printf("mma layout: all checks passed\n");
    return 0;
}

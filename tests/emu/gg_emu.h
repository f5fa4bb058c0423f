// gg_emu.h: a CPU emulator for gpugrad's CUDA kernels, so that CI (no GPU) runs the kernels' own code.
//
// The kernel sources compile as ordinary C++ against this header (tests/emu/build.py assembles the
// translation unit): every CUDA thread becomes a fiber (ucontext), the threads of a cluster run
// together on one OS thread, and each fiber runs until it has to wait. What is emulated, from the
// CUDA programming guide and the PTX ISA:
//   - threadIdx / blockIdx / blockDim / gridDim, static and dynamic shared memory per block (filled
//     with 0xFF bytes, a NaN, before the block starts), __syncthreads, thread-block clusters
//     (barrier, rank, distributed shared-memory loads);
//   - warp collectives (__shfl_sync, __shfl_xor_sync, mma.sync m16n8k16 f16 and m16n8k8 tf32,
//     movmatrix): every lane deposits its operands, the last to arrive computes all 32 results from
//     the PTX ISA's fragment tables (written here independently of kernels/mma_layout.cuh);
//   - cp.async: the copies land when the issuing thread waits for their group (so a read before the
//     wait sees the poison), or at once (so a copy into a buffer still being read shows); sources
//     and destinations must be aligned to the copy size, as on the hardware.
// Checked as errors, each naming the kernel, block and thread: a barrier that not every thread
// reaches (deadlock), threads of a block (or cluster) at different barrier instructions (source
// lines), warp lanes at different collectives or at different mma/movmatrix instructions, a thread
// that exits while others wait for it, writes past the dynamic or static shared memory (guard
// bytes checked when the block ends), cp.async and distributed loads outside the block's shared
// memory, misaligned cp.async, more threads than __launch_bounds__, __trap.
// Scheduling order is a setting: a missing barrier makes results depend on it. In the first three
// orders every runnable thread gets one turn per pass (first to last, last to first, or shuffled),
// so no warp gets more than one collective ahead of another between two barriers; "runahead" lets
// one warp (or, one round in four, one whole block of a cluster) chosen at random run alone until
// all its threads wait for the others, before every thread gets a turn: a fast warp that
// overwrites shared memory a slow warp has yet to read (a missing leading barrier before a
// scratch buffer is reused) shows only there. Arithmetic is IEEE float on the CPU: MMAs sum in
// double and round once, so the hardware's truncating accumulation is not modelled
// (tests/test_linmma_model.py does that); only the logic, indexing and synchronisation of the
// kernels are under test here.
// Global memory (tests/emu/emulator.py): each array ends at most 15 bytes before an inaccessible
// page; those bytes are poison, checked after each launch, and an access further out is a SIGSEGV
// whose handler names the kernel. Not caught: accesses before an array's start or inside another
// array, plain shared-memory loads and stores within the arena but outside any variable, data
// passed between lanes of a warp through shared memory without __syncwarp (fibers switch only at
// barriers and collectives, so every collective acts as a warp-wide fence here), prmt's
// sign-replicating selectors. "Bit for bit in every order" holds within the emulator (no FMA
// contraction, MMAs in double): on a GPU determinism is checked by tests/test_gpu_kernels.py.
#pragma once
#include <ucontext.h>
#include <sys/mman.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <random>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

// ---- the CUDA dialect, as plain C++ ------------------------------------------------------------------
#define __CUDA_ARCH__ 900  // the sm_90 paths: clusters, movmatrix
#ifdef GG_EMU_SCAN  // tests/emu/build.py's pass that lists the entry points, their cluster sizes and thread limits
#define __global__ gg_emu_global
#define __cluster_dims__(x, y, z) gg_emu_cluster(x)
#define __launch_bounds__(...) gg_emu_bounds(__VA_ARGS__)
#else
#define __global__
#define __cluster_dims__(...)
#define __launch_bounds__(...)
#endif
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __align__(n) alignas(n)

struct gg_emu_dim3 { unsigned x, y, z; };
struct alignas(8) float2 { float x, y; };
struct alignas(8) uint2 { unsigned x, y; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

template <class To, class From> inline To gg_emu_bits(From v) {
    static_assert(sizeof(To) == sizeof(From), "bit cast between types of one size");
    To t;
    std::memcpy(&t, &v, sizeof t);
    return t;
}
inline float __int_as_float(int v) { return gg_emu_bits<float>(v); }
inline float __uint_as_float(unsigned v) { return gg_emu_bits<float>(v); }
inline unsigned __float_as_uint(float v) { return gg_emu_bits<unsigned>(v); }
inline double __longlong_as_double(long long v) { return gg_emu_bits<double>(v); }
// prmt in its default mode: byte i of the result is byte (selector nibble i & 7) of {y, x}.
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
    const unsigned long long xy = (unsigned long long)y << 32 | x;
    unsigned r = 0;
    for (int i = 0; i < 4; ++i) r |= (unsigned)((xy >> (8 * ((s >> (4 * i)) & 7))) & 0xff) << (8 * i);
    return r;
}
template <class A, class B> inline std::common_type_t<A, B> max(A a, B b) { return a > b ? a : b; }
template <class A, class B> inline std::common_type_t<A, B> min(A a, B b) { return a < b ? a : b; }
using std::isfinite;

namespace gg_emu {

struct Barrier {
    unsigned arrived = 0, gen = 0;
    int site = 0;  // the source line the first arriver waits at: every thread must use the same one
};
struct Copy {
    void* dst;
    const void* src;
    int bytes;
};
struct Block;
struct Fiber {
    ucontext_t ctx;
    char* stack = nullptr;
    gg_emu_dim3 tid;
    unsigned linear = 0;  // threadIdx as one number
    Block* block = nullptr;
    bool done = false;
    const char* waiting_at = nullptr;
    std::vector<Copy> open;                // cp.async issued since the last commit
    std::deque<std::vector<Copy>> groups;  // committed, oldest first
};
// A warp's meeting point for collectives: 32 operand slots, 32 result slots.
struct Warp {
    unsigned char in[32][80], out[32][64];
    int op[32];
    Barrier bar;
    unsigned live = 0;
};
struct Block {
    gg_emu_dim3 idx;
    unsigned rank = 0;  // within the cluster
    // Dynamic shared memory | guard | the static __shared__ variables | guard. The guards keep the
    // poison and are checked when the block ends: a write past either region is an error.
    std::vector<unsigned char> arena;
    size_t dynamic_bytes = 0, static_used = 0;
    std::unordered_map<const void*, size_t> statics;
    Barrier bar;
    unsigned live = 0;
    std::vector<Warp> warps;
};
struct KernelInfo {
    const char* name;
    void (*run)(void**);  // calls the kernel with its arguments unpacked from a void* array
    const char* signature;
    const char* access;   // per parameter: r (pointer to const), w (other pointer), - (value)
    unsigned cluster;
    unsigned max_threads;  // __launch_bounds__, or 1024
};

constexpr size_t STATIC_SMEM = 16 * 1024;    // room for the kernels' static __shared__ variables
constexpr size_t GUARD = 256;                // bytes of poison after each region
constexpr size_t SMEM_LIMIT = 232448;        // an H100's shared memory per block (opt-in)
constexpr size_t STACK_BYTES = 256 * 1024;

// The state of the one launch in progress (launches run one at a time, on the caller's thread).
inline const KernelInfo* g_kernel = nullptr;
inline void** g_args = nullptr;
inline gg_emu_dim3 g_grid, g_block;
inline unsigned g_cluster_size = 1, g_cluster_id = 0, g_cluster_count = 1;
inline std::vector<Block*> g_cluster;  // the blocks of the running cluster, by rank
inline Barrier g_cluster_bar;
inline unsigned g_cluster_live = 0;
inline Fiber* g_cur = nullptr;
inline ucontext_t g_sched;
inline std::string g_error;
inline unsigned long long g_progress = 0;
inline int g_order = 0;         // 0: first to last thread, 1: last to first, 2: shuffled every pass,
                                // 3: runahead (a random warp or block runs alone until it waits, then all)
inline unsigned g_seed = 1;
inline bool g_deferred = true;  // cp.async lands at the wait (true) or at once (false)
inline std::vector<char*> g_stacks;

inline void yield() { swapcontext(&g_cur->ctx, &g_sched); }

[[noreturn]] inline void fail(const std::string& what) {
    if (g_error.empty()) {
        char where[160] = "";
        if (g_cur != nullptr)
            std::snprintf(where, sizeof where, " (block %u, thread %u)", g_cur->block->idx.x, g_cur->linear);
        g_error = std::string(g_kernel ? g_kernel->name : "?") + where + ": " + what;
    }
    yield();  // the scheduler never resumes a failed launch
    std::abort();
}

inline void wait_for(Barrier& b, unsigned gen, const char* what) {
    g_cur->waiting_at = what;
    while (b.gen == gen) yield();
    g_cur->waiting_at = nullptr;
}

// Arrive at b, which completes when `expected` threads have arrived; returns when it has.
inline void arrive(Barrier& b, unsigned expected, const char* what, int site) {
    const unsigned gen = b.gen;
    ++g_progress;
    if (b.arrived == 0) {
        b.site = site;
    } else if (b.site != site) {  // bar.sync and barrier.cluster are .aligned: one instruction for all
        fail(std::string("threads wait at different ") + what + " (lines " + std::to_string(b.site) + " and " +
             std::to_string(site) + " of the emulated source)");
    }
    if (++b.arrived == expected) {
        b.arrived = 0;
        ++b.gen;
    } else {
        wait_for(b, gen, what);
    }
}

inline void syncthreads(int site) { arrive(g_cur->block->bar, g_cur->block->live, "__syncthreads", site); }
inline void cluster_sync(int site) { arrive(g_cluster_bar, g_cluster_live, "cluster barrier", site); }

// A warp collective: deposit this lane's operands, and when all 32 lanes are in, the last one runs
// compute(in, out) for the whole warp; each lane then takes its result. `op` names the operation
// and, for the .aligned ones (mma, movmatrix), its source line: every lane must be at the same one.
template <class In, class Out, class F>
inline Out collective(int op, const In& in, F compute) {
    static_assert(sizeof(In) <= sizeof(Warp::in[0]) && sizeof(Out) <= sizeof(Warp::out[0]), "slot size");
    Block& B = *g_cur->block;
    Warp& w = B.warps[g_cur->linear / 32];
    const unsigned lane = g_cur->linear % 32;
    std::memcpy(w.in[lane], &in, sizeof in);
    w.op[lane] = op;
    const unsigned gen = w.bar.gen;
    ++g_progress;
    if (++w.bar.arrived == w.live) {
        if (w.live != 32) fail("a warp collective with lanes that have exited (full mask)");
        for (int l = 1; l < 32; ++l)
            if (w.op[l] != w.op[0]) fail("the lanes of a warp met at different warp collectives");
        In all[32];
        Out res[32];
        for (int l = 0; l < 32; ++l) std::memcpy(&all[l], w.in[l], sizeof(In));
        compute(all, res);
        for (int l = 0; l < 32; ++l) std::memcpy(w.out[l], &res[l], sizeof(Out));
        w.bar.arrived = 0;
        ++w.bar.gen;
    } else {
        wait_for(w.bar, gen, "a warp collective");
    }
    Out r;
    std::memcpy(&r, w.out[lane], sizeof r);
    return r;
}

// ---- shared memory ----------------------------------------------------------------------------------
inline unsigned char* dynamic_smem() { return g_cur->block->arena.data(); }

inline void* static_shared(const void* tag, size_t bytes) {
    Block& B = *g_cur->block;
    auto it = B.statics.find(tag);
    if (it == B.statics.end()) {
        const size_t base = B.dynamic_bytes + GUARD, off = base + (B.static_used + 15) / 16 * 16;
        if (off + bytes + GUARD > B.arena.size()) fail("static __shared__ variables exceed the emulator's reserve");
        B.static_used = off + bytes - base;
        if (B.dynamic_bytes + B.static_used > SMEM_LIMIT) fail("shared memory (static + dynamic) over 227 KB");
        it = B.statics.emplace(tag, off).first;
    }
    return B.arena.data() + it->second;
}

// The offset of p in this block's shared memory (a .shared address), checked.
inline unsigned smem_offset(const void* p, size_t bytes) {
    Block& B = *g_cur->block;
    const unsigned char* c = static_cast<const unsigned char*>(p);
    if (c < B.arena.data() || c + bytes > B.arena.data() + B.arena.size())
        fail("a shared-memory address outside this block's shared memory");
    return (unsigned)(c - B.arena.data());
}

// ---- cp.async ---------------------------------------------------------------------------------------
inline void cp_async(void* dst, const void* src, int bytes) {
    smem_offset(dst, bytes);
    if (((uintptr_t)dst | (uintptr_t)src) % bytes != 0) fail("cp.async with an address not aligned to its size");
    if (g_deferred) g_cur->open.push_back({dst, src, bytes});
    else std::memcpy(dst, src, bytes);
}
inline void cp_async_commit() {
    g_cur->groups.push_back(std::move(g_cur->open));
    g_cur->open.clear();
}
inline void cp_async_wait(size_t keep) {
    while (g_cur->groups.size() > keep) {
        for (const Copy& c : g_cur->groups.front()) std::memcpy(c.dst, c.src, c.bytes);
        g_cur->groups.pop_front();
    }
}

// ---- f16 and tf32 -----------------------------------------------------------------------------------
inline unsigned short f16_bits(float v) { return gg_emu_bits<unsigned short>((_Float16)v); }  // round to nearest even
inline float f16_float(unsigned short h) { return (float)gg_emu_bits<_Float16>(h); }
inline unsigned tf32_rna(float v) {  // 10 mantissa bits, ties away from zero
    const unsigned u = gg_emu_bits<unsigned>(v);
    if ((u & 0x7f800000u) == 0x7f800000u) return u;  // inf, nan
    return (u + 0x1000u) & 0xffffe000u;
}
inline double tf32_value(unsigned u) { return gg_emu_bits<float>(u & 0xffffe000u); }  // the MMA reads 19 bits

// ---- scheduling ---------------------------------------------------------------------------------------
inline void fiber_main() {
    Fiber* f = g_cur;
    g_kernel->run(g_args);
    cp_async_wait(0);
    Block& B = *f->block;
    Warp& w = B.warps[f->linear / 32];
    f->done = true;
    ++g_progress;
    if (B.bar.arrived != 0) fail("a thread exited while others of its block wait at __syncthreads");
    if (w.bar.arrived != 0) fail("a thread exited while its warp waits at a collective");
    if (g_cluster_bar.arrived != 0) fail("a thread exited while its cluster waits at the cluster barrier");
    --B.live;
    --w.live;
    --g_cluster_live;
    swapcontext(&f->ctx, &g_sched);
    std::abort();
}

inline char* stack_for(size_t i) {
    while (g_stacks.size() <= i) {
        void* p = mmap(nullptr, STACK_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) return nullptr;
        g_stacks.push_back(static_cast<char*>(p));
    }
    return g_stacks[i];
}

// Whether every block's guard bytes still hold the poison (else the error names the region).
inline bool guards_intact(const std::vector<Block>& blocks) {
    for (const Block& B : blocks) {
        const size_t ends[2] = {B.dynamic_bytes, B.dynamic_bytes + GUARD + B.static_used};
        for (int r = 0; r < 2; ++r)
            for (size_t i = ends[r]; i < ends[r] + GUARD; ++i)
                if (B.arena[i] != 0xff) {
                    g_error = std::string(g_kernel->name) + " (block " + std::to_string(B.idx.x) + "): a write past the " +
                              (r == 0 ? "dynamic shared memory" : "static __shared__ variables");
                    return false;
                }
    }
    return true;
}

// Run the blocks of one cluster together until every thread has finished. Returns false on error.
inline bool run_cluster(unsigned first_block, size_t smem, std::mt19937& rng) {
    const unsigned nthreads = g_block.x * g_block.y * g_block.z;
    std::vector<Block> blocks(g_cluster_size);
    std::vector<Fiber> fibers(g_cluster_size * nthreads);
    g_cluster.clear();
    for (unsigned r = 0; r < g_cluster_size; ++r) {
        Block& B = blocks[r];
        const unsigned b = first_block + r;
        B.idx = {b % g_grid.x, (b / g_grid.x) % g_grid.y, b / (g_grid.x * g_grid.y)};
        B.rank = r;
        B.dynamic_bytes = smem;
        B.arena.assign(smem + GUARD + STATIC_SMEM + GUARD, 0xff);  // NaN poison: reads of unwritten bytes show
        B.live = nthreads;
        B.warps.resize((nthreads + 31) / 32);
        for (unsigned w = 0; w < B.warps.size(); ++w) B.warps[w].live = std::min(32u, nthreads - 32 * w);
        g_cluster.push_back(&B);
    }
    g_cluster_bar = Barrier();
    g_cluster_live = g_cluster_size * nthreads;
    for (size_t i = 0; i < fibers.size(); ++i) {
        Fiber& f = fibers[i];
        f.block = &blocks[i / nthreads];
        f.linear = (unsigned)(i % nthreads);
        f.tid = {f.linear % g_block.x, (f.linear / g_block.x) % g_block.y, f.linear / (g_block.x * g_block.y)};
        f.stack = stack_for(i);
        if (f.stack == nullptr) {
            g_error = "out of memory for fiber stacks";
            return false;
        }
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = f.stack;
        f.ctx.uc_stack.ss_size = STACK_BYTES;
        f.ctx.uc_link = nullptr;
        makecontext(&f.ctx, fiber_main, 0);
    }
    // One turn of fiber i (until it waits or exits); false when the launch failed.
    auto turn = [&](size_t i) {
        g_cur = &fibers[i];
        swapcontext(&g_sched, &fibers[i].ctx);
        g_cur = nullptr;
        return g_error.empty();
    };
    std::vector<size_t> order(fibers.size()), ahead;
    for (size_t i = 0; i < order.size(); ++i) order[i] = g_order == 1 ? order.size() - 1 - i : i;
    const size_t warp_size = std::min<size_t>(32, nthreads);
    for (;;) {
        if (g_order >= 2) std::shuffle(order.begin(), order.end(), rng);
        const unsigned long long before = g_progress;
        if (g_order == 3) {
            // The warp (or block) of a random live thread runs alone, pass after pass, until a pass
            // moves none of its threads: they all wait at a barrier that needs threads outside it
            // (__syncthreads for a warp, the cluster barrier for a block), or have exited. Their
            // collectives (and a block's own barriers) complete among themselves, so this is as far
            // ahead as they can get. (Warp w of block b is fibers b * nthreads + 32 w ... + 31.)
            size_t pick = order.size();
            for (size_t i : order)
                if (!fibers[i].done) {
                    pick = i;
                    break;
                }
            if (pick == order.size()) return guards_intact(blocks);
            const size_t block_start = pick / nthreads * nthreads;
            const bool whole_block = g_cluster_size > 1 && rng() % 4 == 0;
            const size_t warp_start = block_start + (pick - block_start) / warp_size * warp_size;
            const size_t first = whole_block ? block_start : warp_start;
            const size_t last = std::min(whole_block ? block_start + nthreads : first + warp_size,
                                         block_start + nthreads);
            ahead.clear();
            for (size_t i = first; i < last; ++i) ahead.push_back(i);
            for (;;) {
                std::shuffle(ahead.begin(), ahead.end(), rng);
                const unsigned long long mark = g_progress;
                for (size_t i : ahead)
                    if (!fibers[i].done && !turn(i)) return false;
                if (g_progress == mark) break;
            }
        }
        bool alive = false;
        for (size_t i : order) {
            if (fibers[i].done) continue;
            alive = true;
            if (!turn(i)) return false;
        }
        if (!alive) return guards_intact(blocks);
        if (g_progress == before) {  // everyone waits for someone: a barrier not every thread reaches
            std::string at;
            for (Fiber& f : fibers)
                if (!f.done && at.find(f.waiting_at ? f.waiting_at : "?") == std::string::npos)
                    at += std::string(at.empty() ? "" : ", ") + (f.waiting_at ? f.waiting_at : "?");
            g_error = std::string(g_kernel->name) + ": deadlock, threads wait at: " + at;
            return false;
        }
    }
}

// SIGSEGV in a kernel: say which kernel, block and thread, then hand over to the handler that was
// there before (pytest's faulthandler prints the Python stack).
inline struct sigaction g_old_segv;
inline void on_segv(int sig) {
    if (g_kernel != nullptr) {
        char msg[256];
        const int n = std::snprintf(msg, sizeof msg, "gg_emu: segmentation fault in kernel %s, block %u, thread %u\n",
                                    g_kernel->name, g_cur ? g_cur->block->idx.x : 0u, g_cur ? g_cur->linear : 0u);
        if (write(2, msg, n) < 0) {}
    }
    sigaction(sig, &g_old_segv, nullptr);
    raise(sig);
}
inline void install_segv_handler() {
    struct sigaction sa = {};
    sa.sa_handler = on_segv;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &g_old_segv);
}

// ---- the kernel table: a trampoline and a signature per entry point ---------------------------------------
// A parameter as "<kind><bytes>": f (floating point), i (signed), u (unsigned integer), and for
// pointers "p" + the pointee's ("pf4" for float*, "pv0" for void*).
template <class T> std::string kind_of() {
    if constexpr (std::is_pointer_v<T>) {
        using U = std::remove_cv_t<std::remove_pointer_t<T>>;
        if constexpr (std::is_void_v<U>) return "pv0";
        else return "p" + kind_of<U>();
    } else {
        const char k = std::is_floating_point_v<T> ? 'f' : (std::is_signed_v<T> ? 'i' : 'u');
        return std::string(1, k) + std::to_string(sizeof(T));
    }
}
template <class... A> const char* signature_of(void (*)(A...)) {
    static const std::string s = [] {
        std::string r;
        ((r += kind_of<A>() + " "), ...);
        return r;
    }();
    return s.c_str();
}
// Which parameters a kernel reads through (pointers to const) and writes through (other pointers):
// the byte counts of tests/emu/cost.py.
template <class T> char access_of() {
    if constexpr (std::is_pointer_v<T>) return std::is_const_v<std::remove_pointer_t<T>> ? 'r' : 'w';
    else return '-';
}
template <class... A> const char* access_of(void (*)(A...)) {
    static const std::string s = std::string{access_of<A>()...};
    return s.c_str();
}
template <class... A, size_t... I>
void call_with(void (*f)(A...), void** args, std::index_sequence<I...>) {
    f(*static_cast<std::remove_reference_t<A>*>(args[I])...);
}
template <class... A> void run_as(void (*f)(A...), void** args) { call_with(f, args, std::index_sequence_for<A...>{}); }
template <auto F> void trampoline(void** args) { run_as(F, args); }

}  // namespace gg_emu

#define threadIdx (gg_emu::g_cur->tid)
#define blockIdx (gg_emu::g_cur->block->idx)
#define blockDim (gg_emu::g_block)
#define gridDim (gg_emu::g_grid)
#define __syncthreads() gg_emu::syncthreads(__LINE__)
#define __threadfence() ((void)0)  // one OS thread runs everything: memory is always coherent
#define __trap() gg_emu::fail("__trap()")

// `static char tag` is one per declaration (per template instantiation), `storage` one per block.
#define GG_EMU_SHARED(T, name, dims)                                                     \
    static char name##_gg_tag;                                                           \
    typedef T name##_gg_type dims;                                                       \
    name##_gg_type& name = *static_cast<name##_gg_type*>(gg_emu::static_shared(&name##_gg_tag, sizeof(name##_gg_type)))

template <class T> inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    if (mask != 0xffffffffu) gg_emu::fail("__shfl_sync with a partial mask is not emulated");
    struct In { T v; int src, width; };
    return gg_emu::collective<In, T>(1, In{v, src, width}, [](const In* in, T* out) {
        for (int l = 0; l < 32; ++l) {
            const int w = in[l].width, base = l & ~(w - 1);
            out[l] = in[base + (in[l].src & (w - 1))].v;
        }
    });
}
template <class T> inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    if (mask != 0xffffffffu) gg_emu::fail("__shfl_xor_sync with a partial mask is not emulated");
    struct In { T v; int m, width; };
    return gg_emu::collective<In, T>(2, In{v, lane_mask, width}, [](const In* in, T* out) {
        for (int l = 0; l < 32; ++l) {
            const int s = l ^ in[l].m, w = in[l].width;
            out[l] = (s >= (l / w + 1) * w) ? in[l].v : in[s].v;
        }
    });
}
// One OS thread runs every fiber, and a fiber only yields at a barrier: atomics are plain updates.
inline unsigned atomicAdd(unsigned* p, unsigned v) {
    const unsigned old = *p;
    *p = old + v;
    return old;
}
// Float additions (the sparse step's dW): the order in which threads add decides the rounding, so the
// thread orders give results equal within rounding, not bit for bit.
inline float atomicAdd(float* p, float v) {
    const float old = *p;
    *p = old + v;
    return old;
}
inline double atomicAdd(double* p, double v) {
    const double old = *p;
    *p = old + v;
    return old;
}
inline unsigned long long atomicMin(unsigned long long* p, unsigned long long v) {
    const unsigned long long old = *p;
    if (v < old) *p = v;
    return old;
}

// gg_emu_api.h: the emulator's C interface, for ctypes (tests/emu/emulator.py). Included by the
// generated translation unit after the kernels and their table `gg_emu_kernels`.
#pragma once

extern "C" {

int gg_emu_kernel_count() { return (int)(sizeof(gg_emu_kernels) / sizeof(gg_emu_kernels[0])); }
const char* gg_emu_kernel_name(int k) { return gg_emu_kernels[k].name; }
// One "<kind><bytes>" per parameter: p (pointer), i (integer), f (floating point).
const char* gg_emu_kernel_signature(int k) { return gg_emu_kernels[k].signature; }
// One character per parameter: r (pointer to const: read), w (other pointer: written), - (value).
const char* gg_emu_kernel_access(int k) { return gg_emu_kernels[k].access; }
unsigned gg_emu_kernel_cluster(int k) { return gg_emu_kernels[k].cluster; }
const char* gg_emu_error() { return gg_emu::g_error.c_str(); }

// order: 0 first to last thread, 1 last to first, 2 shuffled (threads every pass, and clusters),
// 3 runahead (shuffled, and before each pass a random warp or block runs alone until it waits);
// deferred: cp.async lands at the wait (1) or at once (0).
void gg_emu_configure(int order, unsigned seed, int deferred) {
    gg_emu::g_order = order;
    gg_emu::g_seed = seed;
    gg_emu::g_deferred = deferred != 0;
}

// Run kernel k on a grid of clusters, one cluster after another. 0 on success; else the error is in
// gg_emu_error().
int gg_emu_launch(int k, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                  unsigned long long smem, void** args) {
    using namespace gg_emu;
    static bool handler = false;
    if (!handler) {
        install_segv_handler();
        handler = true;
    }
    g_error.clear();
    g_kernel = &gg_emu_kernels[k];
    g_args = args;
    g_grid = {gx, gy, gz};
    g_block = {bx, by, bz};
    g_cluster_size = g_kernel->cluster;
    const unsigned long long threads = (unsigned long long)bx * by * bz, blocks = (unsigned long long)gx * gy * gz;
    if (threads == 0 || threads > g_kernel->max_threads || blocks == 0)
        g_error = "a launch of 0 blocks, or of 0 threads a block or more than the kernel's __launch_bounds__ (" +
                  std::to_string(g_kernel->max_threads) + ")";
    else if (gx % g_cluster_size != 0) g_error = "a grid that is not a whole number of clusters";
    else if (smem > SMEM_LIMIT) g_error = "more dynamic shared memory than a block can have";
    if (!g_error.empty()) {
        g_error = std::string(g_kernel->name) + ": " + g_error;
        return 1;
    }
    g_cluster_count = (unsigned)(blocks / g_cluster_size);
    std::vector<unsigned> order(g_cluster_count);
    for (unsigned c = 0; c < g_cluster_count; ++c) order[c] = g_order == 1 ? g_cluster_count - 1 - c : c;
    std::mt19937 rng(g_seed);
    if (g_order >= 2) std::shuffle(order.begin(), order.end(), rng);
    for (unsigned c : order) {
        g_cluster_id = c;
        if (!run_cluster(c * g_cluster_size, smem, rng)) return 1;
    }
    g_kernel = nullptr;
    return 0;
}

}  // extern "C"

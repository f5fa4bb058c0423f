"""Launch planning for the CuPy backend: which kernel, its threads, grid and shared memory.

Pure functions of shapes, dtypes and the card (``Card``: SM count, shared memory a block may opt
into, compute capability); nothing here imports CuPy or touches a device, so the tests call them
on any machine. The CUDA sources are the one source of the kernels' names and tile constants:
``entry_points()`` expands the instantiation macros of ``kernels/*.cuh`` into the list of
``extern "C"`` kernels, and the tile shapes are the sources' ``#define GG_...`` numbers, both read
once per process. Planning picks among the kernels that exist, so a kernel added to or removed from
the sources changes the plans without a copy here to keep in step.

    >>> ce_kernel_config(10, "float32").name
    'gg_ce_f32_w2_k8'
    >>> svm_kernel_config(5000, "float64").name
    'gg_svm_f64_b'
    >>> simt_plan("f32", 100, 784, 10, "float32", 4, H100.smem_optin)["name"]
    'gg_linear_f32_c10'
"""
from __future__ import annotations

import functools
import re
from typing import NamedTuple

import numpy as np

from . import kernels as _k

# ---- the CUDA sources, read once ---------------------------------------------------------------
_DEFINE_NUM = re.compile(r"^\s*#\s*define\s+(GG_\w+)\s+(\d+)\b", re.M)
_DEFINE_FN = re.compile(r"^\s*#\s*define\s+(\w+)\(([^)]*)\)[ \t]*(.*)$", re.M)
_CALL = re.compile(r"\b(\w+)\s*\(")


@functools.lru_cache(maxsize=1)
def _source() -> str:
    """The translation unit with includes inlined, comments removed and continuations joined."""
    text = _k.kernel_source()
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    return text.replace("\\\n", " ")


@functools.lru_cache(maxsize=1)
def defines() -> dict[str, int]:
    """The numeric ``#define GG_NAME <integer>`` constants of the kernels' sources.

    >>> defines()["GG_LINMMA_THREADS"]
    512
    """
    return {name: int(value) for name, value in _DEFINE_NUM.findall(_source())}


def _call_args(text: str, open_paren: int) -> tuple[list[str], int]:
    """The comma-separated arguments of the call whose '(' is at open_paren, and the index after ')'."""
    depth, args, start = 0, [], open_paren + 1
    for i in range(open_paren, len(text)):
        ch = text[i]
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                args.append(text[start:i].strip())
                return args, i + 1
        elif ch == "," and depth == 1:
            args.append(text[start:i].strip())
            start = i + 1
    raise ValueError(f"unbalanced parentheses in the kernel sources near {text[open_paren:open_paren + 60]!r}")


@functools.lru_cache(maxsize=1)
def entry_points() -> frozenset[str]:
    """Every kernel the sources define: the names ``GG_KERNEL(name, ...)`` opens once the macros
    that instantiate kernels (those whose expansion reaches GG_KERNEL) are expanded, ``##`` pasted.

    >>> "gg_linear_u8_c16" in entry_points() and "gg_linear_u8_c17" not in entry_points()
    True
    """
    text = _source()
    macros = {}
    for name, params, body in _DEFINE_FN.findall(text):
        macros.setdefault(name, ([p.strip() for p in params.split(",") if p.strip()], body))
    makes_kernels = {"GG_KERNEL"}
    while True:  # the macros whose bodies open a kernel, directly or through another such macro
        more = {n for n, (_, body) in macros.items() if set(re.findall(r"\b\w+\b", body)) & makes_kernels}
        if more <= makes_kernels:
            break
        makes_kernels |= more
    makes_kernels.discard("GG_KERNEL")
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    for _ in range(16):  # nesting depth of the instantiation macros; 3 today
        out, pos, changed = [], 0, False
        for m in _CALL.finditer(code):
            if m.start() < pos or m.group(1) not in makes_kernels:
                continue
            params, body = macros[m.group(1)]
            args, end = _call_args(code, m.end() - 1)
            for p, a in zip(params, args):
                body = re.sub(rf"\b{p}\b", a, body)
            out += [code[pos:m.start()], re.sub(r"\s*##\s*", "", body)]
            pos, changed = end, True
        code = "".join(out) + code[pos:]
        if not changed:
            break
    return frozenset(re.findall(r"\bGG_KERNEL\(\s*(\w+)", code))


def _numbers(pattern: str) -> list[tuple[int, ...]]:
    """The integer groups of every entry point matching pattern, sorted."""
    rx = re.compile(pattern)
    return sorted(tuple(int(g) for g in m.groups()) for m in map(rx.fullmatch, entry_points()) if m)


# ---- the card and the variants -----------------------------------------------------------------
class Card(NamedTuple):
    """What planning needs to know of a device."""
    sm_count: int     # streaming multiprocessors
    smem_optin: int   # bytes of shared memory a block may opt into
    cc: int           # compute capability, e.g. 90 for sm_90


H100 = Card(132, 232448, 90)


class Variants(NamedTuple):
    """The kernel variants a CupyBackend uses where the kernels offer more than one way.

    ``linear_f32``/``linear_u8``: the fused linear step on float32 / uint8 X, "simt" (FMA, any
    sm_80+ card) or "mma" (tensor cores in thread-block clusters, sm_90+, unweighted, d <= 3072);
    ``ce_long_rows``: softmax rows past 8192 classes, "stream" (a persistent block per SM, the next
    row read into registers while the current one is reduced), "prefetch" (the next row into shared
    memory by cp.async) or "block" (a block per row); ``row_call``: how a row-loss call is launched,
    "cupy" (CuPy's RawKernel call) or "direct" (cuLaunchKernel from a ctypes parameter block).
    benchmarks/gpu_check.py checks and times each on a card; see benchmarks/RESULTS.md.
    """
    linear_f32: str = "simt"
    linear_u8: str = "simt"
    ce_long_rows: str = "stream"
    row_call: str = "cupy"


CHOICES = {"linear_f32": ("simt", "mma"), "linear_u8": ("simt", "mma"),
           "ce_long_rows": ("stream", "prefetch", "block"), "row_call": ("cupy", "direct")}
# The fastest correct variant per architecture, as benchmarks/gpu_check.py measured it (sm_90: an
# H100; sm_80: the same, the tensor-core step needing sm_90). A card takes the row of the newest
# architecture not newer than its own.
MEASURED = {80: Variants(), 90: Variants()}


def default_variants(cc: int) -> Variants:
    """The measured variants for a card of compute capability cc.

    >>> default_variants(86) == MEASURED[80]
    True
    """
    return MEASURED[max((k for k in MEASURED if k <= cc), default=min(MEASURED))]


def make_variants(cc: int, overrides: dict | None = None) -> Variants:
    """default_variants(cc) with `overrides` ({field: variant}) applied, each checked by name."""
    overrides = dict(overrides or {})
    for field, value in overrides.items():
        if field not in CHOICES:
            raise ValueError(f"unknown kernel variant switch {field!r}; expected one of {sorted(CHOICES)}")
        if value not in CHOICES[field]:
            raise ValueError(f"{field}={value!r} is not a variant; expected one of {CHOICES[field]}")
    return default_variants(cc)._replace(**overrides)


# ---- the row losses ----------------------------------------------------------------------------
_TYPE = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}
STREAM_FROM = 8193    # rows at least this long go to the persistent kernels (measured on an H100)
BLOCK_THREADS = 1024  # the block-per-row kernels' __launch_bounds__
TEAM_THREADS = 256    # the lane-team kernels' __launch_bounds__


class KernelConfig(NamedTuple):
    """How to launch a row-loss kernel: its name, threads per block, rows per block, whether it is a
    persistent kernel (grid = SMs, a row of dynamic shared memory), and whether it needs S, dS and
    each row at 16-byte boundaries."""
    name: str
    threads: int
    rows_per_block: int
    stream: bool = False
    aligned16: bool = False


@functools.lru_cache(maxsize=None)
def ce_kernel_config(C: int, dtype, long_rows: str | None = None) -> KernelConfig:
    """The softmax cross-entropy kernel for rows of C classes: G lanes of a warp per row with 8
    values a lane (gg_ce_<t>_w<G>_k8), a warp per row up to 1024 classes; from STREAM_FROM classes
    a persistent kernel (``long_rows`` "stream" or "prefetch") or a block per row ("block", the
    smallest K of gg_ce_<t>_b_k<K> that holds the row); past the registers the two-pass kernel.
    ``long_rows=None``: the newest architecture's measured variant (``MEASURED``).

    >>> [ce_kernel_config(C, np.float32).name for C in (8, 9, 1000, 20000, 40000)]
    ['gg_ce_f32_w1_k8', 'gg_ce_f32_w2_k8', 'gg_ce_f32_w32_k32', 'gg_ce_f32_s1024_k32', 'gg_ce_f32_online']
    """
    t = _TYPE[np.dtype(dtype)]
    long_rows = long_rows or MEASURED[max(MEASURED)].ce_long_rows
    for (G,) in _numbers(rf"gg_ce_{t}_w(\d+)_k8"):
        if C <= 8 * G:
            return KernelConfig(f"gg_ce_{t}_w{G}_k8", TEAM_THREADS, TEAM_THREADS // G)
    if C <= 32 * 32:
        return KernelConfig(f"gg_ce_{t}_w32_k32", TEAM_THREADS, TEAM_THREADS // 32)
    (st, sk), = _numbers(rf"gg_ce_{t}_s(\d+)_k(\d+)")
    if STREAM_FROM <= C <= st * sk:
        if long_rows == "stream":
            return KernelConfig(f"gg_ce_{t}_s{st}_k{sk}", st, 1, stream=True)
        (pt, pk), = _numbers(rf"gg_ce_{t}_p(\d+)_k(\d+)")
        if long_rows == "prefetch" and C <= pt * pk:
            return KernelConfig(f"gg_ce_{t}_p{pt}_k{pk}", pt, 1, stream=True, aligned16=True)
    for (K,) in _numbers(rf"gg_ce_{t}_b_k(\d+)"):
        if C <= BLOCK_THREADS * K:
            return KernelConfig(f"gg_ce_{t}_b_k{K}", BLOCK_THREADS, 1)
    return KernelConfig(f"gg_ce_{t}_online", BLOCK_THREADS, 1)


@functools.lru_cache(maxsize=None)
def svm_kernel_config(C: int, dtype) -> KernelConfig:
    """The hinge kernel: G lanes per row with about 8 entries a lane (a warp up to 1024 classes),
    a whole block per row past that.

    >>> svm_kernel_config(10, np.float32).name
    'gg_svm_f32_w2'
    """
    t = _TYPE[np.dtype(dtype)]
    for (G,) in _numbers(rf"gg_svm_{t}_w(\d+)"):
        if C <= 8 * G or G == 32 and C <= 1024:
            return KernelConfig(f"gg_svm_{t}_w{G}", TEAM_THREADS, TEAM_THREADS // G)
    return KernelConfig(f"gg_svm_{t}_b", BLOCK_THREADS, 1)


def long_row_fallback(config: KernelConfig, C: int, itemsize: int, aligned16: bool, smem_optin: int) -> KernelConfig:
    """The persistent kernel `config` where it can run, else the next best: the prefetched kernel
    moves 16-byte pieces (`aligned16`: S, dS and C * itemsize all multiples of 16; else the streamed
    one), and both keep a row in shared memory (else a block per row: cards with less of it, e.g.
    sm_86's 99 KB, and rows past it)."""
    dtype = {4: np.float32, 8: np.float64}[itemsize]
    if config.aligned16 and not aligned16:
        config = ce_kernel_config(C, dtype, "stream")
    if C * itemsize + 2048 > smem_optin:  # 2 KB for the kernels' static shared memory
        config = ce_kernel_config(C, dtype, "block")
    return config


def row_launch(config: KernelConfig, n: int, C: int, itemsize: int, sm_count: int) -> tuple[int, int, int]:
    """(grid, threads, dynamic shared memory) of a row-loss kernel on (n, C) scores.

    >>> row_launch(ce_kernel_config(1000, np.float32), 100000, 1000, 4, 132)  # a warp per row, 8 a block
    (12500, 256, 0)
    >>> row_launch(ce_kernel_config(10, np.float32), 8192, 10, 4, 132)  # 64-thread blocks: 2 per SM
    (256, 64, 0)
    >>> row_launch(ce_kernel_config(20000, np.float32), 8192, 20000, 4, 132)  # persistent: a row in smem
    (132, 1024, 80000)
    """
    threads = config.threads
    if config.stream:
        return min(n, sm_count), threads, C * itemsize
    if config.rows_per_block > 1:
        # Short rows (G lanes a row): shrink the blocks until there are two per SM, so that a
        # batch of a few thousand rows spreads over the whole chip.
        rows = config.rows_per_block
        while threads > 64 and -(-n // rows) < 2 * sm_count:
            threads, rows = threads // 2, rows // 2
        return -(-n // rows), threads, 0
    return n, threads, 0  # a block per row: the kernel's K values a thread assume config.threads


def spread_grid(total: int, sm_count: int, per_block: int = 256) -> int:
    """Blocks of per_block threads for an elementwise pass over `total` items: at most 4 per SM."""
    return max(1, min(4 * sm_count, -(-total // per_block)))


# ---- the fused linear step ---------------------------------------------------------------------
LINEAR_MAX_THREADS = 512  # gg_linear_*'s __launch_bounds__


@functools.lru_cache(maxsize=256)  # a small step's cost is its host time: decided once per kind of input
def fused_kind(x_dtype, w_dtype, C: int, normalised: bool, x_aligned: bool) -> str | None:
    """The kind of X a fused linear kernel takes, or None: "f32"/"f64" (float X in W's dtype),
    "f32n"/"f64n" (the same normalised by x_mean/x_std), "u8"/"u8f64" (uint8 X normalised, under
    float32/float64 W). `x_aligned`: X's address is a multiple of its element size.

    >>> fused_kind(np.uint8, np.float32, 10, True, True), fused_kind(np.float32, np.float32, 17, False, True)
    ('u8', None)
    """
    x_dtype, w_dtype = np.dtype(x_dtype), np.dtype(w_dtype)
    if w_dtype not in _TYPE or not x_aligned:
        return None  # (an X not aligned to its elements is left to CuPy's own operations)
    if x_dtype == w_dtype:
        kind = _TYPE[w_dtype] + ("n" if normalised else "")
    elif x_dtype == np.uint8 and normalised:
        kind = "u8" if w_dtype == np.float32 else "u8f64"
    else:
        return None
    return kind if f"gg_linear_{kind}_c{C}" in entry_points() else None


def linear_shape(C: int, dtype=np.float32) -> tuple[int, int]:
    """(rows per group RG, columns per thread KPT) of gg_linear_*_c<C> computing in dtype: the
    constexpr formulas of GgLinearShape (kernels/linear_step.cuh).

    >>> linear_shape(10), linear_shape(10, np.float64)
    ((2, 6), (1, 2))
    """
    if np.dtype(dtype) == np.float64:
        return (2, 4) if C <= 4 else (1, 2)
    p2 = 1
    while p2 < C:
        p2 *= 2
    return min(4, 32 // p2), 8 if C <= 5 else (6 if C <= 10 else 4)


@functools.lru_cache(maxsize=1024)  # (the caller only reads the plan)
def simt_plan(kind: str | None, n: int, d: int, C: int, w_dtype, x_itemsize: int, smem_optin: int) -> dict | None:
    """The FMA kernel gg_linear_<kind>_c<C> for X (n, d): threads, dynamic shared memory (W, the
    reduction scratch and G in W's dtype, then two double-buffered X row groups), the padded row
    length dpad and rows per group rg; None where a row does not fit (then CuPy's matmuls run)."""
    if kind is None:
        return None
    w_item = np.dtype(w_dtype).itemsize
    rg, kpt = linear_shape(C, w_dtype)
    cols = -(-d // kpt)
    if cols > LINEAR_MAX_THREADS:
        return None
    threads = max(32 * rg, -(-cols // 32) * 32)
    dpad = -(-d * x_itemsize // 16) * 16 // x_itemsize
    smem = -(-w_item * (C * d + threads + rg * C) // 16) * 16 + 2 * rg * dpad * x_itemsize
    if smem + 1024 > smem_optin:  # 1 KB for the kernel's static shared memory
        return None
    return dict(name=f"gg_linear_{kind}_c{C}", threads=threads, smem=smem, dpad=dpad, rg=rg)


def linear_grid(n: int, rg: int, sm_count: int, blocks_per_sm: int) -> int:
    """Blocks of the FMA step: one per row group, at most as many as are resident at once (each
    block loops over row groups)."""
    return max(1, min(-(-n // rg), sm_count * blocks_per_sm))


class LinmmaShape(NamedTuple):
    """Tile shape of gg_linmma_<x>_nt*: GG_LINMMA_<X>_* of kernels/mma_layout.cuh."""
    rows: int      # rows per tile
    cluster: int   # blocks per cluster, which split the columns
    max_dsl: int   # columns per block at most
    block: int     # dsl is a multiple of this many columns (one MMA's k extent)


def _linmma_shape(x: str) -> LinmmaShape:
    D = defines()
    return LinmmaShape(D[f"GG_LINMMA_{x}_ROWS"], D[f"GG_LINMMA_{x}_CLUSTER"], D[f"GG_LINMMA_{x}_MAX_DSL"], 16)


LINMMA_THREADS = defines()["GG_LINMMA_THREADS"]
LINMMA = {"u8": _linmma_shape("U8"), "f32": _linmma_shape("F32")}


def linmma_slice(x: str, d: int) -> int:
    """Columns per block: d split over a cluster, rounded up to whole MMA column blocks.

    >>> linmma_slice("u8", 3072), linmma_slice("f32", 3072)
    (768, 384)
    """
    shape = LINMMA[x]
    per_block = -(-d // shape.cluster)
    return -(-per_block // shape.block) * shape.block


def linmma_smem_bytes(x: str, dsl: int, nt: int) -> int:
    """Dynamic shared memory of gg_linmma_<x>_nt<nt> for column slices of dsl: the `bytes` of
    GgLinmmaU8Layout / GgLinmmaF32Layout (kernels/mma_layout.cuh; tests/test_kernels_build.py
    compiles those and compares)."""
    R = LINMMA[x].rows
    if x == "u8":
        wstride = -(-dsl // 64) * 64 + 16
        xstride = -(-dsl // 128) * 128 + 16
        x_off = -(-(2 * 8 * nt * wstride * 2 + dsl * 2) // 16) * 16
        g_off = x_off + 2 * R * xstride + 4 * R * 24 * 4 + 2 * R * 16 * 4
        return g_off + 2 * 8 * nt * (R + 8) * 2
    stride = -(-dsl // 32) * 32 + 8
    g_off = 2 * 8 * nt * stride * 4 + 2 * R * stride * 4 + 8 * R * 24 * 4 + 2 * R * 16 * 4
    return g_off + 2 * 8 * nt * (R + 4) * 4


@functools.lru_cache(maxsize=1024)
def mma_plan(kind: str | None, n: int, d: int, C: int, card: Card) -> dict | None:
    """The tensor-core kernel gg_linmma_<kind>_nt<nt> for X (n, d), or None where it does not apply
    (before sm_90, X other than float32 or uint8, no rows, d past a cluster's columns, shared memory).

    >>> mma_plan("u8", 65536, 3072, 10, H100)["name"], mma_plan("u8", 65536, 3072, 10, Card(108, 166912, 80))
    ('gg_linmma_u8_nt2', None)
    """
    if card.cc < 90 or kind not in LINMMA or n == 0:
        return None
    dsl = linmma_slice(kind, d)
    if dsl > LINMMA[kind].max_dsl:
        return None
    nt = 1 if C <= 8 else 2
    smem = linmma_smem_bytes(kind, dsl, nt)
    if smem + 1024 > card.smem_optin:  # 1 KB for the kernel's static shared memory
        return None
    return dict(name=f"gg_linmma_{kind}_nt{nt}", x=kind, nt=nt, dsl=dsl, smem=smem)


def copy_align(row_bytes: int, ptr: int, itemsize: int) -> int:
    """The widest copy (16, 4 or 1 bytes) the kernels' X staging (gg_stage_tile) may use on a
    C-contiguous X: its row length in bytes and its address are both multiples of it, and so is the
    element size (1: one element at a time, e.g. float64 X 8 bytes past a 16-byte boundary).

    >>> copy_align(3072, 256, 1), copy_align(67 * 4, 4, 4), copy_align(64 * 8, 8, 8)
    (16, 4, 1)
    """
    return next(a for a in (16, 4, 1) if row_bytes % a == 0 and ptr % a == 0 and (a == 1 or a % itemsize == 0))


# ---- the sparse linear step (CSR X) ------------------------------------------------------------
SPARSE_WARPS = defines()["GG_SPARSE_WARPS"]            # rows in flight per block of gg_sparse_*_t*
SPARSE_MAX_CLASSES = defines()["GG_SPARSE_MAX_CLASSES"]


@functools.lru_cache(maxsize=256)
def sparse_plan(C: int, dtype) -> dict | None:
    """The kernels of the fused sparse step for C classes computing in dtype: the row kernel
    gg_sparse_<t>_t<CP> (CP = C rounded up to a power of two: the lanes a class set takes) and its
    prep and finish; None past SPARSE_MAX_CLASSES classes (then cuSPARSE's products run around the
    fused loss kernel).

    >>> sparse_plan(20, np.float32)["name"], sparse_plan(3, np.float64)["name"], sparse_plan(33, np.float32)
    ('gg_sparse_f32_t32', 'gg_sparse_f64_t4', None)
    """
    dtype = np.dtype(dtype)
    if dtype not in _TYPE or not 1 <= C <= SPARSE_MAX_CLASSES:
        return None
    t = _TYPE[dtype]
    cp = 1
    while cp < C:
        cp *= 2
    return dict(name=f"gg_sparse_{t}_t{cp}", prep=f"gg_sparse_prep_{t}", finish=f"gg_sparse_finish_{t}",
                threads=32 * SPARSE_WARPS)


def sparse_grid(n: int, sm_count: int, blocks_per_sm: int) -> int:
    """Blocks of the sparse row kernel: a warp per row, at most as many blocks as are resident at
    once (each loops over rows).

    >>> sparse_grid(200, 132, 8), sparse_grid(10 ** 6, 132, 8)
    (25, 1056)
    """
    return max(1, min(-(-n // SPARSE_WARPS), sm_count * blocks_per_sm))

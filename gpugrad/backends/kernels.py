"""Finding, building and loading gpugrad's CUDA kernels (``kernels/`` in the repository).

One translation unit, ``gpugrad_kernels.cu``, holds every kernel. Two ways to get it loaded:

1. Ahead of time: ``cmake -S . -B build && cmake --build build`` compiles it with nvcc into
   ``kernels/gpugrad_kernels.fatbin`` (sm_80 + sm_90 machine code, compute_90 PTX for newer
   cards) and stamps it with ``source_digest()`` in ``gpugrad_kernels.fatbin.sha256``. The
   loader uses that fatbin when the stamp matches the sources: no compilation at run time.
2. Otherwise NVRTC compiles each kernel at its first use, alone (``nvrtc_options(name)``: every
   other kernel stays an uninstantiated template, see ``GG_KERNEL`` in common.cuh), so the first
   call on a new machine compiles the one or two kernels it launches (0.1 to 0.5 s each), not the
   whole module (about a minute on 2 cores; benchmarks/RESULTS.md has the figures). The binary is
   cached on disk (``kernel_cache_dir()``), so later processes load it without compiling.

Both ways compile with nvcc's floating-point defaults (``NVRTC_OPTIONS``), so a kernel gives the
same bits from the fatbin and from a run-time compile. That is why the loader calls NVRTC itself
and hands CuPy the binary: CuPy's ``RawModule(code=...)`` appends ``-ftz=true`` to every compile
(cupy/cuda/compiler.py, ``_compile_with_cache_cuda``), after the caller's options, and NVRTC takes
the last of two -ftz options, so float32 denormals would be flushed to zero in run-time compiled
kernels only.

Kernels are cached per device (a CUfunction belongs to one device's context). This module imports
without CuPy; only ``get_function`` needs a GPU.
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
import tempfile
from pathlib import Path

MAIN = "gpugrad_kernels.cu"
FATBIN = "gpugrad_kernels.fatbin"
# nvcc's defaults, as the fatbin is built (CMakeLists.txt: nvcc -fatbin -std=c++17 -O3, no
# --use_fast_math): float32 denormals kept (-ftz=false), IEEE division and square root, fused
# multiply-adds. NVRTC's defaults are the same; they are spelt out so that nothing appended or
# changed around a compile can differ from the fatbin unnoticed (tests/test_kernels_build.py).
NVRTC_OPTIONS = ("--std=c++17", "-ftz=false", "-prec-div=true", "-prec-sqrt=true", "-fmad=true")
_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"[ \t]*(?://[^\n]*)?$', re.M)


def kernel_dir() -> Path:
    """The folder with the CUDA sources: inside the installed package, or the repository's kernels/."""
    here = Path(__file__).resolve().parent.parent          # .../gpugrad
    for d in (here / "kernels", here.parent / "kernels"):
        if (d / MAIN).is_file():
            return d
    raise FileNotFoundError(f"gpugrad's CUDA sources ({MAIN}) are in neither {here / 'kernels'} "
                            f"nor {here.parent / 'kernels'}")


def source_files(d: Path | None = None) -> list[Path]:
    """Every kernel source (*.cu, *.cuh), sorted by name: what the fatbin stamp covers."""
    d = d or kernel_dir()
    return sorted(p for p in d.iterdir() if p.suffix in (".cu", ".cuh"))


def source_digest(d: Path | None = None) -> str:
    """SHA-256 of the kernel sources concatenated in name order (CMake's stamp computes the same)."""
    h = hashlib.sha256()
    for p in source_files(d):
        h.update(p.read_bytes())
    return h.hexdigest()


def kernel_source(d: Path | None = None) -> str:
    """The translation unit with its quoted #includes inlined (each header once), so that the
    text NVRTC compiles, and CuPy's cache keys on, is the complete source."""
    d = d or kernel_dir()
    seen: set[str] = set()

    def expand(name: str) -> str:
        if name in seen:
            return ""
        seen.add(name)
        text = (d / name).read_text()
        return _INCLUDE.sub(lambda m: expand(m.group(1)), text)

    return expand(MAIN)


def fatbin_path(d: Path | None = None) -> Path | None:
    """The CMake-built fatbin when it exists and its stamp matches the current sources."""
    if os.environ.get("GPUGRAD_NO_FATBIN"):
        return None
    d = d or kernel_dir()
    fb, stamp = d / FATBIN, d / (FATBIN + ".sha256")
    if fb.is_file() and stamp.is_file() and stamp.read_text().split()[0] == source_digest(d):
        return fb
    return None


def nvrtc_options(name: str | None = None) -> tuple[str, ...]:
    """NVRTC's options (``compile_nvrtc`` adds ``-arch``) for every kernel at once, or for the one kernel `name`."""
    return NVRTC_OPTIONS if name is None else NVRTC_OPTIONS + ("-DGG_ONLY", f"-DGG_WANT_{name}=1")


_FUNCS: dict = {}       # (device id, kernel name) -> cupy.RawKernel (it holds its module)
_FATBIN_MODULE = None   # the fatbin's cupy.RawModule: CuPy loads it into each device's context
_HOW = None


def get_function(name: str, device: int | None = None):
    """The kernel `name` loaded on `device` as a cupy.RawKernel, cached per device and name: from
    the fatbin when present, else compiled alone through NVRTC at its first use (for the device's
    architecture, with ``nvrtc_options(name)``; ``compiled_binary``). The backend passes the
    device id; None takes whichever device is current, for callers that only ever use one."""
    global _FATBIN_MODULE, _HOW
    f = _FUNCS.get((device, name))
    if f is None:
        import cupy
        if _HOW is None:  # decided once per process: the sources do not change under it
            fb = fatbin_path()
            if fb is not None:
                _FATBIN_MODULE = cupy.RawModule(path=str(fb))
            _HOW = f"fatbin {fb}" if fb else f"nvrtc, one kernel at a time (cached in {kernel_cache_dir()})"
        with cupy.cuda.Device(device):  # the function of the module as loaded on this device
            if _FATBIN_MODULE is not None:
                module = _FATBIN_MODULE
            else:
                arch = nvrtc_arch(int(cupy.cuda.Device().compute_capability))
                module = cupy.RawModule(path=str(compiled_binary(name, arch)))
            f = module.get_function(name)
        _FUNCS[(device, name)] = f
    return f


def nvrtc_arch(cc: int) -> str:
    """What NVRTC compiles for a card of compute capability `cc` (86 for sm_86): its machine code
    when this NVRTC knows the architecture, else PTX of the newest one it knows below it (the
    driver compiles that for the card)."""
    from cupy.cuda import nvrtc
    try:
        known = [int(a) for a in nvrtc.getSupportedArchs()]
    except Exception:  # an NVRTC too old to say: take the card's own
        return f"sm_{cc}"
    if cc in known:
        return f"sm_{cc}"
    older = [a for a in known if a <= cc]
    if not older:
        raise RuntimeError(f"this NVRTC compiles for sm_{min(known)} and newer; the card is sm_{cc}")
    return f"compute_{max(older)}"


def kernel_cache_dir() -> Path:
    """Where NVRTC-compiled kernels are kept: $GPUGRAD_KERNEL_CACHE, else ~/.cache/gpugrad/kernels."""
    return Path(os.environ.get("GPUGRAD_KERNEL_CACHE", Path.home() / ".cache" / "gpugrad" / "kernels"))


def compiled_binary(name: str, arch: str) -> Path:
    """The file holding kernel `name` compiled alone for `arch` (cubin for sm_*, PTX for
    compute_*), compiled now unless cached: keyed by the source, the options, the arch and
    NVRTC's version, written atomically (a reader sees the whole file or none). Falls back to the
    temporary directory when the cache directory is not writable."""
    from cupy.cuda import nvrtc
    key = hashlib.sha256("\0".join([kernel_source(), *nvrtc_options(name), arch,
                                     str(nvrtc.getVersion())]).encode()).hexdigest()[:24]
    filename = f"{name}-{arch}-{key}.{'cubin' if arch.startswith('sm_') else 'ptx'}"
    for d in (kernel_cache_dir(), Path(tempfile.gettempdir()) / "gpugrad-kernels"):
        try:
            d.mkdir(parents=True, exist_ok=True)
            path = d / filename
            if path.is_file():
                return path
            binary, _ = compile_nvrtc(arch, only=name)
            part = d / f"{filename}.{os.getpid()}.part"
            part.write_bytes(binary)
            os.replace(part, path)
            return path
        except OSError:
            continue
    raise OSError(f"no writable directory for compiled kernels: set GPUGRAD_KERNEL_CACHE (tried "
                  f"{kernel_cache_dir()} and {Path(tempfile.gettempdir()) / 'gpugrad-kernels'})")


def how_loaded() -> str | None:
    """'fatbin <path>' or 'nvrtc ...' once ``get_function`` has run, else None."""
    return _HOW


@functools.lru_cache(maxsize=32)
def compile_nvrtc(arch: str = "sm_90", extra: tuple = (), only: str | None = None) -> tuple[bytes, str]:
    """Compile the kernels with NVRTC exactly as the loader does (every kernel, or only the kernel
    `only`), ``nvrtc_options`` plus ``-arch=<arch>``; needs no GPU or driver (CI uses it). Returns (cubin or PTX
    bytes, compiler log); raises on error. Cached per process (the sources do not change under a
    running process)."""
    from cupy.cuda import nvrtc
    prog = nvrtc.createProgram(kernel_source(), MAIN, [], [])
    try:
        opts = list(nvrtc_options(only)) + [f"-arch={arch}"] + list(extra)
        try:
            nvrtc.compileProgram(prog, opts)
        except nvrtc.NVRTCError as e:
            raise RuntimeError(f"NVRTC failed ({e}):\n{nvrtc.getProgramLog(prog)}") from None
        log = nvrtc.getProgramLog(prog)
        binary = nvrtc.getCUBIN(prog) if arch.startswith("sm_") else nvrtc.getPTX(prog)
        return binary, log
    finally:
        nvrtc.destroyProgram(prog)


def kernel_names() -> list[str]:
    """Every extern "C" entry point, after macro expansion (read from the compiled PTX)."""
    ptx, _ = compile_nvrtc("compute_80")
    text = ptx.decode() if isinstance(ptx, bytes) else ptx
    return sorted(set(re.findall(r"\.entry\s+(\w+)\(", text)))

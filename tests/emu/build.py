"""Build the CPU emulator of gpugrad's kernels: one shared library holding every kernel, run by gg_emu.h.

The translation unit is the loader's own kernel source (``kernel_source()``: every include inlined)
with three changes, all mechanical:

- ``kernels/ptx.cuh``, the one file with inline PTX, is replaced by ``tests/emu/ptx.cuh``;
- ``extern __shared__ T name[];`` becomes a pointer to the block's dynamic shared memory, and
  ``__shared__ T name[N];`` a reference to storage kept per block (``GG_EMU_SHARED``);
- a table of the ``extern "C"`` entry points (found by preprocessing the source once with
  ``GG_EMU_SCAN``) with a trampoline, parameter signature, cluster size and thread limit for each.

The library is cached by the digest of its source and compiler command, under
``$GPUGRAD_EMU_CACHE`` (default ``~/.cache/gpugrad/emu``).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import subprocess
import tempfile
import threading
from pathlib import Path

from gpugrad.backends import kernels as _k

HERE = Path(__file__).resolve().parent
CXX = os.environ.get("CXX", "g++")
FLAGS = ["-std=c++17", "-O1", "-fPIC", "-shared", "-w", f"-I{HERE}"]

_DYNAMIC = re.compile(r"extern\s+__shared__\s+(?:__align__\(\d+\)\s+)?([\w ]+?)\s+(\w+)\[\];")
_STATIC = re.compile(r"__shared__\s+([\w:]+)\s+([^;]+);")
_DECL = re.compile(r"\s*(\w+)\s*((?:\[[^\]]+\])*)\s*$")
_ENTRY = re.compile(r"gg_emu_global\s+void\s+((?:gg_emu_\w+\([^)]*\)\s*)*)(\w+)\s*\(")
_CLUSTER = re.compile(r"gg_emu_cluster\((\d+)\)")
_BOUNDS = re.compile(r"gg_emu_bounds\(\s*(\d+)\s*[,)]")


def _static_shared(m: re.Match) -> str:
    decls = [_DECL.match(part) for part in m.group(2).split(",")]
    if not all(decls):
        raise ValueError(f"cannot rewrite shared declaration {m.group(0)!r}")
    return " ".join(f"GG_EMU_SHARED({m.group(1)}, {d.group(1)}, {d.group(2)});" for d in decls)


def kernels_for_emulation() -> str:
    """The kernel source with the emulator's PTX and shared-memory declarations in place."""
    text = _k.kernel_source()
    ptx, emu_ptx = (_k.kernel_dir() / "ptx.cuh").read_text(), (HERE / "ptx.cuh").read_text()
    if text.count(ptx) != 1:
        raise ValueError("kernels/ptx.cuh is not inlined exactly once in the kernel source")
    text = text.replace(ptx, emu_ptx)
    text = _DYNAMIC.sub(lambda m: f"{m.group(1)}* {m.group(2)} = reinterpret_cast<{m.group(1)}*>(gg_emu::dynamic_smem());",
                        text)
    text = _STATIC.sub(_static_shared, text)
    if "__shared__" in re.sub(r"//[^\n]*", "", text):
        raise ValueError("a __shared__ declaration the emulator build cannot rewrite")
    return '#include "gg_emu.h"\n' + text


def entry_points(text: str, workdir: Path) -> list[tuple[str, int, int]]:
    """(name, cluster size, most threads a block) of every kernel entry point, from the
    preprocessed source (__cluster_dims__ and __launch_bounds__ become markers there)."""
    src = workdir / "scan.cpp"
    src.write_text(text)
    out = subprocess.run([CXX, "-E", "-P", "-std=c++17", "-DGG_EMU_SCAN", f"-I{HERE}", str(src)],
                         check=True, capture_output=True, text=True).stdout
    found = []
    for attrs, name in _ENTRY.findall(out):
        cluster, bounds = _CLUSTER.search(attrs), _BOUNDS.search(attrs)
        if ("gg_emu_cluster" in attrs and not cluster) or ("gg_emu_bounds" in attrs and not bounds):
            raise ValueError(f"{name}: cluster size or thread limit is not a number after preprocessing: {attrs}")
        found.append((name, int(cluster.group(1)) if cluster else 1, int(bounds.group(1)) if bounds else 1024))
    if not found:
        raise ValueError("no kernel entry points found")
    return found


def translation_unit(workdir: Path, mutate=None) -> str:
    """The emulator library's source: the kernels (edited by `mutate`, when given) and the table of
    their entry points. A mutation with an ``only`` attribute (kernel-name prefixes, set by
    ``only``) builds just the kernels whose names start with one of them, the others compiled away
    as the loader's one-kernel NVRTC path does (GG_ONLY): a planted bug needs the few kernels its
    test launches, in a fraction of the time all of them take."""
    text = kernels_for_emulation()
    if mutate is not None:
        text = mutate(text)
    entries = entry_points(text, workdir)
    prefixes = getattr(mutate, "only", None)
    if prefixes:
        entries = [e for e in entries if e[0].startswith(tuple(prefixes))]
        if not entries:
            raise ValueError(f"no kernel's name starts with one of {prefixes}")
        text = "#define GG_ONLY\n" + "".join(f"#define GG_WANT_{name} 1\n" for name, _, _ in entries) + text
    rows = ",\n".join(f'    {{"{name}", &gg_emu::trampoline<&{name}>, gg_emu::signature_of(&{name}), '
                      f'gg_emu::access_of(&{name}), {cl}, {mt}}}'
                      for name, cl, mt in entries)
    return (f"{text}\n\nstatic const gg_emu::KernelInfo gg_emu_kernels[] = {{\n{rows}\n}};\n"
            '#include "gg_emu_api.h"\n')


def only(mutate, *prefixes):
    """`mutate` marked to be built with only the kernels whose names start with one of `prefixes`
    (``translation_unit``); returns it."""
    mutate.only = prefixes
    return mutate


def cache_dir() -> Path:
    return Path(os.environ.get("GPUGRAD_EMU_CACHE", Path.home() / ".cache" / "gpugrad" / "emu"))


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock on `path` (created if missing), released on exit or when the process dies.

    flock locks an open file description, so it also excludes the other threads of this process
    (``emulator.prebuild`` builds several libraries at once) and the other processes of a parallel
    run (pytest -n): the second builder of a library waits for the first instead of compiling it
    again."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _writable_cache(name: str) -> Path:
    """Where the library `name` lives: the cache directory, or this machine's temporary directory
    when that cannot be created or written (no writable home)."""
    for d in (cache_dir(), Path(tempfile.gettempdir()) / "gpugrad-emu"):
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(d, os.W_OK):
            return d / name
    raise OSError(f"no writable directory for the kernel emulator's cache: set GPUGRAD_EMU_CACHE "
                  f"(tried {cache_dir()} and {Path(tempfile.gettempdir()) / 'gpugrad-emu'})")


def build(mutate=None) -> Path:
    """The emulator library for the current kernel sources, compiled unless cached. `mutate`
    (text -> text) edits the kernel source first: the tests plant bugs to see the emulator catch them.

    Safe to call from several threads and processes at once: one of them compiles a given library
    while the others wait on its lock, and the library appears under its final name only once
    complete (compiled to a temporary name in the same directory, then renamed)."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tu = translation_unit(tmp, mutate)
        headers = "".join((HERE / h).read_text() for h in ("gg_emu.h", "gg_emu_api.h"))
        digest = hashlib.sha256("\0".join([tu, headers, CXX, *FLAGS]).encode()).hexdigest()[:24]
        lib = _writable_cache(f"gg_emu_{digest}.so")
        if lib.is_file():
            return lib
        with _locked(lib.with_suffix(".lock")):
            if lib.is_file():  # built by another thread or process while this one waited
                return lib
            src = tmp / "gg_emu.cpp"
            src.write_text(tu)
            part = lib.with_suffix(f".{os.getpid()}.{threading.get_ident()}.part")
            try:
                r = subprocess.run([CXX, *FLAGS, "-o", str(part), str(src)], capture_output=True, text=True)
                if r.returncode != 0:
                    raise RuntimeError(f"building the kernel emulator failed ({CXX}, {src.name}):\n"
                                       f"{r.stderr[-6000:]}")
                os.replace(part, lib)  # atomic: a reader sees no library or all of it
            finally:
                part.unlink(missing_ok=True)
        return lib

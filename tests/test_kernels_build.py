"""The CUDA kernels build without a GPU: NVRTC with the loader's exact options, and CMake/nvcc.

NVRTC comes from the nvidia-cuda-nvrtc wheel (through CuPy's bindings), which needs no driver.
Every kernel is compiled by NVRTC three ways here, each once: the whole module to sm_80 machine
code, the whole module to compute_90 PTX (shared with tests/test_launch_args.py through the
run's compile cache, see tests/conftest.py), and each kernel alone, as the loader compiles it, to
sm_90 machine code and PTX (in shards, so that a parallel run spreads them over its workers).
"""
import functools
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import deps

from gpugrad.backends import kernels

ROOT = Path(__file__).resolve().parent.parent

cupy = deps.require("cupy", "CuPy (with NVRTC) is needed")
from cupy.cuda import nvrtc  # noqa: E402


def _need_nvrtc():
    """A loadable libnvrtc: skipped without one, a failure in CI (tests/deps.py)."""
    problem = deps.nvrtc_problem()
    deps.need(problem is None, f"{problem} (pip install nvidia-cuda-nvrtc)")


def needs_nvrtc(test):
    """Decorates a test that compiles with NVRTC (``_need_nvrtc`` first)."""
    @functools.wraps(test)
    def run(*args, **kwargs):
        _need_nvrtc()
        return test(*args, **kwargs)
    return run


def _entries(ptx: bytes) -> list[str]:
    return re.findall(r"\.entry\s+(\w+)\(", ptx.decode())


@pytest.fixture(scope="module")
def ptx_entries():
    """Every entry point of the whole module, from its compute_90 PTX (the compile the
    alone-versus-whole comparison needs anyway; kernel_names() would compile compute_80 PTX)."""
    _need_nvrtc()
    return sorted(set(_entries(kernels.compile_nvrtc("compute_90")[0])))


@needs_nvrtc
@pytest.mark.slow
def test_every_kernel_compiles_to_sm_80_with_nvrtc_using_the_loader_options():
    """The whole module to sm_80 machine code, without a warning (sm_90 machine code: each kernel
    alone, below)."""
    binary, log = kernels.compile_nvrtc("sm_80")
    assert binary[:4] == b"\x7fELF" and len(binary) > 10_000
    assert "warning" not in log.lower(), log


@needs_nvrtc
def test_kernel_names_are_the_entry_points_of_the_module(monkeypatch, ptx_entries):
    """kernel_names() lists each entry point of the compiled module once, sorted (given the whole
    module's PTX here instead of compiling it once more for compute_80)."""
    whole, asked = kernels.compile_nvrtc("compute_90"), []
    monkeypatch.setattr(kernels, "compile_nvrtc", lambda arch: asked.append(arch) or whole)
    assert kernels.kernel_names() == ptx_entries and asked == ["compute_80"]
    assert len(ptx_entries) > 80


def _entry_code(ptx: bytes, name: str) -> list[str]:
    """The instructions of entry `name` in PTX text, with what depends on the rest of the module
    left out: branch-label numbers, and where a shared variable is declared (a kernel alone has
    its template helpers' shared variables "demoted" into its own scope)."""
    text = ptx.decode()
    body = text[text.index(f".entry {name}("):]
    body = body[:body.index("\n}\n")]
    return [re.sub(r"\$L__BB\d+_", "$L__BB_", ln) for ln in body.splitlines()
            if ln.strip() and not ln.strip().startswith(("//", ".shared"))]


def _compile_alone(name: str, arch: str) -> tuple[bytes, bytes, str]:
    """(PTX, machine code, log) of the kernel `name` compiled alone, as the loader compiles it
    (``get_function``: ``kernel_source()`` with ``nvrtc_options(name)``), for `arch`: one NVRTC
    run gives both, which compile_nvrtc (one or the other) would take two for."""
    prog = nvrtc.createProgram(kernels.kernel_source(), kernels.MAIN, [], [])
    try:
        try:
            nvrtc.compileProgram(prog, [*kernels.nvrtc_options(name), f"-arch={arch}"])
        except nvrtc.NVRTCError as e:
            raise AssertionError(f"{name} alone does not compile for {arch} ({e}):\n"
                                 f"{nvrtc.getProgramLog(prog)}") from None
        return nvrtc.getPTX(prog), nvrtc.getCUBIN(prog), nvrtc.getProgramLog(prog)
    finally:
        nvrtc.destroyProgram(prog)


ALONE_SHARDS = 6  # ~25 kernels each: a few tens of seconds of NVRTC per shard on this CI's cores


@needs_nvrtc
@pytest.mark.slow
@pytest.mark.parametrize("shard", range(ALONE_SHARDS))
def test_each_kernel_compiled_alone_is_the_same_code(ptx_entries, shard):
    """The loader's NVRTC path compiles one kernel at a time (-DGG_ONLY -DGG_WANT_<name>=1): that
    must give exactly that entry point, with the same instructions as in the whole module (the
    CMake fatbin's way), and sm_90 machine code without a warning. Every kernel is in one shard."""
    whole, _ = kernels.compile_nvrtc("compute_90")
    assert len(ptx_entries) > 80
    for name in ptx_entries[shard::ALONE_SHARDS]:
        ptx, cubin, log = _compile_alone(name, "sm_90")
        assert _entries(ptx) == [name]
        assert _entry_code(ptx, name) == _entry_code(whole, name), name
        assert cubin[:4] == b"\x7fELF", name
        assert "warning" not in log.lower(), f"{name}: {log}"


@needs_nvrtc
def test_a_tensor_core_kernel_alone_compiles_to_sm_80_machine_code():
    """What the loader compiles on an A100 for a kernel written for sm_90 (every kernel alone to
    sm_90 machine code: above)."""
    binary, log = kernels.compile_nvrtc("sm_80", only="gg_linmma_u8_nt2")
    assert binary[:4] == b"\x7fELF" and "warning" not in log.lower(), log


class _FakeDevice:
    """cupy.cuda.Device for a card of compute capability 8.6, as the loader asks it."""
    compute_capability = "86"

    def __init__(self, device=None):
        self.id = 0 if device is None else device

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def test_loader_compiles_each_kernel_alone_without_a_fatbin(monkeypatch, tmp_path):
    """No fatbin: each kernel compiled alone by NVRTC at its first use, for the device's
    architecture, cached on disk and handed to CuPy as a binary (``RawModule(path=...)``: CuPy's
    own compile would append -ftz=true); a later process loads the cached binary without
    compiling. With a fatbin: one module for all, no compile."""
    modules, compiles = [], []

    class RawModule:
        def __init__(self, **kw):
            modules.append(kw)

        def get_function(self, name):
            return ("function", name, len(modules))

    def compile_nvrtc(arch, extra=(), only=None):
        compiles.append((arch, only))
        return b"binary of " + only.encode(), ""

    def fresh_process():
        for var, val in (("_FUNCS", {}), ("_FATBIN_MODULE", None), ("_HOW", None)):
            monkeypatch.setattr(kernels, var, val)

    monkeypatch.setattr(cupy, "RawModule", RawModule)
    monkeypatch.setattr(cupy.cuda, "Device", _FakeDevice)
    monkeypatch.setattr(kernels, "compile_nvrtc", compile_nvrtc)
    monkeypatch.setenv("GPUGRAD_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("GPUGRAD_NO_FATBIN", "1")
    fresh_process()
    assert kernels.get_function("gg_ce_f32_w2_k8") == ("function", "gg_ce_f32_w2_k8", 1)
    assert kernels.get_function("gg_ce_f32_w2_k8") == ("function", "gg_ce_f32_w2_k8", 1)  # cached
    kernels.get_function("gg_first_invalid")
    assert compiles == [("sm_86", "gg_ce_f32_w2_k8"), ("sm_86", "gg_first_invalid")]
    paths = [Path(m["path"]) for m in modules]
    assert all(set(m) == {"path"} and p.parent == tmp_path and p.suffix == ".cubin" for m, p in zip(modules, paths))
    assert [p.read_bytes() for p in paths] == [b"binary of gg_ce_f32_w2_k8", b"binary of gg_first_invalid"]
    assert kernels.how_loaded().startswith("nvrtc")
    fresh_process()
    kernels.get_function("gg_first_invalid")
    assert len(compiles) == 2 and modules[-1]["path"] == str(paths[1])  # from the disk cache

    modules.clear()
    fresh_process()
    monkeypatch.setattr(kernels, "fatbin_path", lambda: Path("/x/gpugrad_kernels.fatbin"))
    kernels.get_function("gg_ce_f32_w2_k8"), kernels.get_function("gg_first_invalid")
    assert modules == [{"path": "/x/gpugrad_kernels.fatbin"}]
    assert kernels.how_loaded() == "fatbin /x/gpugrad_kernels.fatbin"


def test_nvrtc_arch_is_the_cards_or_ptx_below_it(monkeypatch):
    """Machine code for an architecture this NVRTC knows; PTX of the newest one below a newer card."""
    monkeypatch.setattr(nvrtc, "getSupportedArchs", lambda: (75, 80, 86, 90, 100))
    assert [kernels.nvrtc_arch(cc) for cc in (80, 86, 90, 89, 120)] == [
        "sm_80", "sm_86", "sm_90", "compute_86", "compute_100"]
    with pytest.raises(RuntimeError, match="sm_75 and newer; the card is sm_70"):
        kernels.nvrtc_arch(70)


def _ftz_instructions(ptx: bytes) -> set[str]:
    return set(re.findall(r"\b[a-z0-9]+(?:\.[a-z0-9]+)*\.ftz(?:\.[a-z0-9]+)*", ptx.decode()))


@needs_nvrtc
def test_run_time_compiles_keep_the_fatbins_floating_point_options(monkeypatch):
    """The fatbin is built with nvcc's floating-point defaults (CMakeLists.txt names no fast-math,
    -ftz, -prec-div, -prec-sqrt or -fmad option); the loader passes the same defaults to NVRTC,
    and they reach it: a float32 kernel compiled the loader's way flushes no denormal (its only
    .ftz instruction is expf's own ex2.approx.ftz, as from nvcc), where CuPy's appended -ftz=true
    would make its divisions, adds and fmas flush."""
    cmake = (ROOT / "CMakeLists.txt").read_text()
    nvcc = [ln for ln in cmake.splitlines() if "COMMAND ${NVCC_EXECUTABLE}" in ln]
    assert len(nvcc) == 1 and not re.search(r"fast_math|ftz|prec-div|prec-sqrt|fmad", nvcc[0]), nvcc
    fp = ("-ftz=false", "-prec-div=true", "-prec-sqrt=true", "-fmad=true")
    assert set(fp) <= set(kernels.nvrtc_options()) and set(fp) <= set(kernels.nvrtc_options("gg_ce_f32_w2_k8"))
    seen, real = [], nvrtc.compileProgram
    monkeypatch.setattr(nvrtc, "compileProgram", lambda prog, opts: seen.append(list(opts)) or real(prog, opts))
    unique = ("-DGG_TEST_COMPILE_OPTIONS=1",)  # a compile of its own (compile_nvrtc caches per process)
    ptx, _ = kernels.compile_nvrtc("compute_90", unique, "gg_ce_f32_w2_k8")
    assert seen == [[*kernels.nvrtc_options("gg_ce_f32_w2_k8"), "-arch=compute_90", *unique]]
    assert _ftz_instructions(ptx) == {"ex2.approx.ftz.f32"}
    flushed, _ = kernels.compile_nvrtc("compute_90", unique + ("-ftz=true",), "gg_ce_f32_w2_k8")
    assert {"div.rn.ftz.f32", "fma.rn.ftz.f32"} <= _ftz_instructions(flushed)


def test_cuda_extras_bring_the_cuda_headers_cupy_compiles_with():
    """CuPy 14 compiles its own kernels (and any RawModule) against the CUDA headers, which a
    driver-only machine has only from the toolkit wheels of the [ctk] extra."""
    text = (ROOT / "pyproject.toml").read_text()
    for major in ("12", "13"):
        line = re.search(rf"^cuda{major} = \[(.*)\]$", text, re.M).group(1)
        assert f'"cupy-cuda{major}x[ctk]>=14"' in line, line


@needs_nvrtc
def test_backend_only_launches_kernels_that_exist(ptx_entries):
    """Every name the CuPy backend can pick is an entry point of the module."""
    from gpugrad.backends import cupy_backend as cb  # imports without a GPU
    import numpy as np
    wanted = {"gg_first_invalid", "gg_linear_finish", "gg_linear_finish_f64", "gg_linmma_prep", "gg_linmma_prep_f32", "gg_linmma_finish",
              "gg_linmma_u8_nt1", "gg_linmma_u8_nt2", "gg_linmma_f32_nt1", "gg_linmma_f32_nt2"}
    for dtype in (np.float32, np.float64):
        for C in (1, 2, 7, 8, 9, 16, 17, 33, 64, 65, 128, 129, 256, 257, 1000, 1024, 1025, 2048, 4096,
                  8192, 16384, 16385, 32768, 32769, 100000):
            wanted.add(cb.ce_kernel_config(C, dtype, "stream").name)
            wanted.add(cb.ce_kernel_config(C, dtype, "block").name)
            wanted.add(cb.ce_kernel_config(C, dtype, "prefetch").name)
            wanted.add(cb.svm_kernel_config(C, dtype).name)
    for C in range(1, 17):
        wanted |= {f"gg_linear_{kind}_c{C}" for kind in ("f32", "f32n", "u8", "f64", "f64n", "u8f64")}
    missing = wanted - set(ptx_entries)
    assert not missing, f"kernels the backend may launch but the module lacks: {sorted(missing)}"


def test_kernel_sources_ship_and_inline():
    src = kernels.kernel_source()
    assert '#include "' not in src  # every quoted include inlined, so CuPy's cache keys on all of it
    for name in ("gg_ce_", "gg_svm_", "gg_linear_", "gg_first_invalid"):
        assert name in src


def test_each_kernel_file_states_what_it_reads_and_writes():
    for p in kernels.source_files():
        if p.name in ("gpugrad_kernels.cu", "common.cuh", "rowmath.cuh", "mma_layout.cuh", "ptx.cuh"):  # no kernels
            continue
        head = p.read_text().split("#pragma once")[0]
        assert "Reads:" in head and "Writes:" in head and "Traffic:" in head, p.name


def test_python_mirror_of_the_tensor_core_kernel_layout(tmp_path):
    """cupy_backend sizes the tensor-core kernels' shared memory with a Python copy of their layouts;
    compile the C++ ones on the host and compare (a kernel traps on a mismatch)."""
    deps.need(shutil.which("g++") is not None, "g++ is needed to compile the layout check")
    from gpugrad.backends import cupy_backend as cb
    cases = [(x, cb.linmma_slice(x, d), nt) for x in ("u8", "f32") for d in (1, 7, 33, 100, 784, 1000, 3071, 3072)
             for nt in (1, 2)]
    layout = {"u8": "GgLinmmaU8Layout", "f32": "GgLinmmaF32Layout"}
    shape = "".join(f'  std::printf("%d %d %d\\n", {m}_ROWS, {m}_CLUSTER, {m}_MAX_DSL);\n'
                    for m in ("GG_LINMMA_U8", "GG_LINMMA_F32"))
    prog = tmp_path / "layout.cpp"
    prog.write_text('#include <cstdio>\n#include "mma_layout.cuh"\nint main() {\n' + "".join(
        f'  std::printf("%d\\n", {layout[x]}({dsl}, {nt}).bytes);\n' for x, dsl, nt in cases) + shape +
        '  std::printf("%d\\n", GG_LINMMA_THREADS);\n}\n')
    exe = tmp_path / "layout"
    subprocess.run(["g++", "-std=c++17", f"-I{ROOT / 'kernels'}", str(prog), "-o", str(exe)], check=True)
    got = [int(v) for v in subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.split()]
    want = [cb.linmma_smem_bytes(x, dsl, nt) for x, dsl, nt in cases]
    for x in ("u8", "f32"):
        want += [cb.LINMMA[x].rows, cb.LINMMA[x].cluster, cb.LINMMA[x].max_dsl]
    assert got == want + [cb.LINMMA_THREADS]


@pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("nvcc") is None and
                    not Path("/usr/local/cuda/bin/nvcc").exists(), reason="cmake or nvcc missing")
@pytest.mark.slow
def test_cmake_builds_a_stamped_fatbin_and_the_cpu_rowmath_test(tmp_path):
    """CMake + nvcc produce the fatbin the loader accepts (here with compute_90 PTX alone), and CTest
    checks rowmath.cuh on the CPU.

    Builds from a copy of the sources so the repository's own kernels/ is left alone."""
    src = tmp_path / "src"
    (src / "tests").mkdir(parents=True)
    shutil.copytree(ROOT / "kernels", src / "kernels", ignore=shutil.ignore_patterns("*.fatbin*", "__pycache__"))
    shutil.copytree(ROOT / "cmake", src / "cmake")
    shutil.copytree(ROOT / "tests" / "cpu", src / "tests" / "cpu")
    shutil.copy(ROOT / "CMakeLists.txt", src / "CMakeLists.txt")
    build = tmp_path / "build"
    run = lambda *cmd: subprocess.run(cmd, check=True, capture_output=True, text=True)
    # PTX only (no machine code: no ptxas run, a fraction of the time): the sm_90 and sm_80
    # machine code of every kernel is checked by the NVRTC tests above, with the same compiler.
    run("cmake", "-S", str(src), "-B", str(build), "-DGPUGRAD_CUDA_ARCHS=")
    run("cmake", "--build", str(build), "-j", "2")
    fatbin = src / "kernels" / kernels.FATBIN
    assert fatbin.stat().st_size > 100_000
    assert kernels.fatbin_path(src / "kernels") == fatbin  # the stamp matches the sources
    ctest = run("ctest", "--test-dir", str(build), "--output-on-failure")
    assert "100% tests passed" in ctest.stdout
    # A changed source invalidates the stamp: the loader falls back to NVRTC.
    with open(src / "kernels" / "svm.cuh", "a") as f:
        f.write("\n// edited\n")
    assert kernels.fatbin_path(src / "kernels") is None

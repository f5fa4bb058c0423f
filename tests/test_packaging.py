"""A normal (non-editable) install ships the kernel sources, the fatbin when it was built, and the CPU
loops (kernels/host.c) where a C compiler is at hand."""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import deps

ROOT = Path(__file__).resolve().parent.parent


def _wheel(tmp_path, env=None) -> list:
    """The names in a wheel built (pip wheel, no build isolation) from a copy of the tracked files,
    plus a stand-in fatbin and its stamp; ``env``: the build's environment."""
    deps.need(shutil.which("git") is not None, "git is needed to copy the tracked tree")
    deps.require("setuptools")
    src = tmp_path / "src"
    # The tracked files only (as a fresh clone would have), plus a stand-in fatbin and its stamp.
    listing = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if listing.returncode != 0 or not listing.stdout:
        deps.missing("not a git checkout: the tracked files are unknown")
    files = listing.stdout.split()
    for f in files:
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, src / f)
    (src / "kernels" / "gpugrad_kernels.fatbin").write_bytes(b"\x00fatbin")
    (src / "kernels" / "gpugrad_kernels.fatbin.sha256").write_text("0" * 64 + "\n")
    out = tmp_path / "dist"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(out), str(src)], capture_output=True, text=True, env=env)
    assert built.returncode == 0, built.stderr[-2000:]
    return zipfile.ZipFile(next(out.glob("gpugrad-*.whl"))).namelist()


def test_wheel_ships_kernel_sources_and_fatbin(tmp_path):
    names = _wheel(tmp_path)
    for f in ("gpugrad_kernels.cu", "common.cuh", "softmax_ce.cuh", "svm.cuh", "linear_step.cuh",
              "checks.cuh", "rowmath.cuh", "gpugrad_kernels.fatbin", "gpugrad_kernels.fatbin.sha256"):
        assert f"gpugrad/kernels/{f}" in names, f
    assert "gpugrad/backends/cupy_backend.py" in names and "gpugrad/tools/cli.py" in names
    assert any(n.startswith("_gpugrad_host.") for n in names), "the CPU loops (kernels/host.c) were not built"


def test_without_a_c_compiler_the_install_goes_on_without_the_cpu_loops(tmp_path):
    """The CPU loops are an optional extension: where the compiler fails, the wheel is built
    without them (gpugrad then runs the same arithmetic through numpy, tests/test_host.py)."""
    fake = tmp_path / "bin"
    fake.mkdir()
    for name in ("gcc", "cc"):
        (fake / name).write_text("#!/bin/sh\nexit 1\n")
        (fake / name).chmod(0o755)
    env = {**os.environ, "CC": str(fake / "gcc"), "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"}
    names = _wheel(tmp_path, env)
    assert "gpugrad/backends/host.py" in names
    assert not any(n.startswith("_gpugrad_host.") for n in names)

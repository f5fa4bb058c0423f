"""The test suite runs in parallel (pytest -n, pytest-xdist) without the workers getting in each
other's way: one kernel emulator library is compiled once however many processes ask for it at the
same time, and every worker draws its random inputs from the seed the run's header reports."""
import os
import platform
import re
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import deps

HERE = Path(__file__).resolve().parent


@pytest.fixture
def emulator_build():
    """The kernel emulator's build can run here (Linux, g++, bash): skipped otherwise, except in
    CI, where their absence fails (tests/deps.py)."""
    deps.need(platform.system() == "Linux" and None not in (shutil.which("g++"), shutil.which("bash")),
              "the kernel emulator's build needs Linux, g++ and bash")


def _stub_compiler(tmp_path, compile_body):
    """A CXX that preprocesses with the real g++ (the build's entry-point scan) and runs
    `compile_body` (bash; $out is the -o argument) for the compile itself, logging each compile."""
    stub = tmp_path / "stub-g++"
    stub.write_text(textwrap.dedent(f"""\
        #!/usr/bin/env bash
        for a in "$@"; do [ "$a" = -E ] && exec g++ "$@"; done
        while [ $# -gt 0 ]; do [ "$1" = -o ] && out=$2; shift; done
        echo compile >> {tmp_path / "compiles.log"}
        """) + textwrap.dedent(compile_body))
    stub.chmod(0o755)
    return stub


def test_a_library_asked_for_by_several_builders_at_once_is_compiled_once(tmp_path, monkeypatch,
                                                                          emulator_build):
    """Four threads build the same library together (the lock is per open file, so threads contend
    as a parallel run's processes do): one compiles, the others wait and take its finished file."""
    from emu import build
    stub = _stub_compiler(tmp_path, """\
        sleep 1  # long enough for every other builder to reach the lock
        printf 'complete library' > "$out"
        """)
    monkeypatch.setattr(build, "CXX", str(stub))
    monkeypatch.setenv("GPUGRAD_EMU_CACHE", str(tmp_path / "cache"))
    got, errors = [], []

    def builder():
        try:
            got.append(build.build())
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=builder) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(set(got)) == 1 and got[0].parent == tmp_path / "cache"
    assert (tmp_path / "compiles.log").read_text().splitlines() == ["compile"]
    assert got[0].read_text() == "complete library"
    assert not list((tmp_path / "cache").glob("*.part"))


def test_a_failed_build_leaves_no_library_behind(tmp_path, monkeypatch, emulator_build):
    """A compiler error is reported with the compiler's message, and neither the library nor the
    partial file is left in the cache (the next build tries again)."""
    from emu import build
    stub = _stub_compiler(tmp_path, """\
        printf 'half a libr' > "$out"
        echo 'gg_emu.cpp:1: error: planted' >&2
        exit 1
        """)
    monkeypatch.setattr(build, "CXX", str(stub))
    monkeypatch.setenv("GPUGRAD_EMU_CACHE", str(tmp_path / "cache"))
    with pytest.raises(RuntimeError, match=r"(?s)building the kernel emulator failed.*error: planted"):
        build.build()
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".lock"]


def test_parallel_workers_draw_from_the_seed_the_header_reports(tmp_path):
    """A run with two workers and a serial rerun with GPUGRAD_TEST_SEED set to the seed in the first
    run's header give every test the same random inputs."""
    deps.require("xdist")
    for name in ("conftest.py", "deps.py"):  # the suite's conftest and the module it imports
        shutil.copy(HERE / name, tmp_path / name)
    (tmp_path / "test_draws.py").write_text(textwrap.dedent(f"""\
        import pytest

        @pytest.mark.parametrize("i", range(6))
        def test_draw(i, rng):
            with open({str(tmp_path / "draws")!r} + __import__("os").environ.get("WHICH", ""), "a") as f:
                f.write(f"{{i}} {{rng.integers(2**62)}}\\n")
        """))
    base = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-c", os.devnull,
            "--rootdir", str(tmp_path), str(tmp_path)]
    env = {k: v for k, v in os.environ.items() if k != "GPUGRAD_TEST_SEED"}
    parallel = subprocess.run(base + ["-n", "2"], cwd=tmp_path, capture_output=True, text=True,
                              env={**env, "WHICH": ".parallel"}, timeout=300)
    assert parallel.returncode == 0, parallel.stdout[-3000:] + parallel.stderr[-3000:]
    assert "2 workers" in parallel.stdout
    seed = re.search(r"gpugrad: test seed (\d+)", parallel.stdout).group(1)
    serial = subprocess.run(base + ["-q"], cwd=tmp_path, capture_output=True, text=True,
                            env={**env, "WHICH": ".serial", "GPUGRAD_TEST_SEED": seed}, timeout=300)
    assert serial.returncode == 0, serial.stdout[-3000:] + serial.stderr[-3000:]
    draws = {which: sorted((tmp_path / f"draws.{which}").read_text().splitlines())
             for which in ("parallel", "serial")}
    assert len(draws["parallel"]) == 6 and draws["parallel"] == draws["serial"]

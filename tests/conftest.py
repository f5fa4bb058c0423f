"""Shared fixtures: every test that takes ``backend`` runs on each available backend.

numpy always; CuPy when a CUDA device is usable (``gpugrad.cupy_available()``); "emu", the CuPy
backend with its kernels run by the CPU emulator (tests/emu), on Linux wherever g++ and CuPy
(which imports without a GPU) are. Tests that need a GPU by nature carry the ``gpu`` marker and
are skipped cleanly without one.
"""
import importlib.util
import os
import platform
import shutil
import zlib

import numpy as np
import pytest

import gpugrad as gg

# Fresh random inputs every run, reproducible on demand: GPUGRAD_TEST_SEED=<n> repeats a run.
SESSION_SEED = int(os.environ.get("GPUGRAD_TEST_SEED", np.random.SeedSequence().entropy % 2**32))


def pytest_report_header(config):
    return f"gpugrad: test seed {SESSION_SEED} (rerun with GPUGRAD_TEST_SEED={SESSION_SEED}); {gg.why_backend()}"

# "emu": the CuPy backend with its kernels run by the CPU emulator (tests/emu), standing in as
# gpugrad's CUDA backend, so every backend test also covers the CUDA path on machines without a GPU.
HAVE_CUPY = importlib.util.find_spec("cupy") is not None  # imports without a GPU
EMULATOR = platform.system() == "Linux" and shutil.which("g++") is not None and HAVE_CUPY
# Helpers that import the CuPy backend; without CuPy, --doctest-modules must not import them.
collect_ignore = [] if HAVE_CUPY else ["fake_cupy.py", "emu"]
BACKENDS = ["numpy"] + (["cupy"] if gg.cupy_available() else []) + (["emu"] if EMULATOR else [])


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """A backend object; ``backend.xp`` is its array module."""
    if request.param == "emu":
        from emu import emulator
        return emulator.as_cuda_backend(monkeypatch)
    return gg.get_backend(request.param)


@pytest.fixture
def rng(request):
    """A generator per test, seeded from the session seed and the test's id (reported in the
    header), so inputs are fresh each run and a failure reproduces with GPUGRAD_TEST_SEED."""
    return np.random.default_rng([SESSION_SEED, zlib.crc32(request.node.nodeid.encode())])


def pytest_collection_modifyitems(config, items):
    if gg.cupy_available():
        return
    skip = pytest.mark.skip(reason=f"no usable CUDA device: {gg.why_backend()}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)

"""Shared fixtures: every test that takes ``backend`` runs on each available backend.

numpy always; CuPy when a CUDA device is usable (``gpugrad.cupy_available()``); "emu", the CuPy
backend with its kernels run by the CPU emulator (tests/emu), on Linux wherever g++ and CuPy
(which imports without a GPU) are. Tests that need a GPU by nature carry the ``gpu`` marker and
are skipped cleanly without one.

The suite runs in parallel (``pytest -n 2``, pytest-xdist): the workers share the run's seed, the
kernel emulator's library (built once, under a lock, tests/emu/build.py) and the whole-module NVRTC
compiles (once a run, below); tests marked ``slow`` run first, so that the long ones start while
the other worker has short ones left to fill in beside them.
"""
import contextlib
import hashlib
import importlib.util
import os
import platform
import zlib
from pathlib import Path

import numpy as np
import pytest

import deps
import gpugrad as gg

# Fresh random inputs every run, reproducible on demand: GPUGRAD_TEST_SEED=<n> repeats a run.
SESSION_SEED = int(os.environ.get("GPUGRAD_TEST_SEED", np.random.SeedSequence().entropy % 2**32))


def pytest_report_header(config):
    return f"gpugrad: test seed {SESSION_SEED} (rerun with GPUGRAD_TEST_SEED={SESSION_SEED}); {gg.why_backend()}"


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: absent without it
def pytest_configure_node(node):
    """Parallel runs (pytest -n): each worker takes the seed the header reports, so that
    GPUGRAD_TEST_SEED reproduces a failure whichever worker ran the test."""
    node.workerinput["gpugrad_test_seed"] = SESSION_SEED


def pytest_configure(config):
    global SESSION_SEED
    if hasattr(config, "workerinput"):  # an xdist worker: the controller's seed
        SESSION_SEED = config.workerinput["gpugrad_test_seed"]
    elif deps.IN_CI:  # in CI a missing test dependency fails the run, before any test
        missing = deps.problems()
        if missing:
            raise pytest.UsageError("CI (the CI environment variable is set) needs every test "
                                    "dependency, and these are missing:\n  " + "\n  ".join(missing))

# "emu": the CuPy backend with its kernels run by the CPU emulator (tests/emu), standing in as
# gpugrad's CUDA backend, so every backend test also covers the CUDA path on machines without a GPU.
HAVE_CUPY = importlib.util.find_spec("cupy") is not None  # imports without a GPU
EMULATOR = deps.emulator_problem() is None
# Helpers that import the CuPy backend; without CuPy, --doctest-modules must not import them.
collect_ignore = [] if HAVE_CUPY else ["fake_cupy.py", "emu"]
BACKENDS = ["numpy"] + (["cupy"] if gg.cupy_available() else []) + (["emu"] if EMULATOR else [])


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """A backend object; ``backend.xp`` is its array module."""
    return _backend(request.param, monkeypatch)


@pytest.fixture(params=[b for b in BACKENDS if b != "numpy"])
def cuda_backend(request, monkeypatch):
    """Each CUDA backend (a GPU's, the emulated one), for tests that compare one with the numpy
    backend: on numpy itself such a test would compare numpy with numpy and prove nothing."""
    return _backend(request.param, monkeypatch)


def _backend(name, monkeypatch):
    if name == "emu":
        from emu import emulator
        return emulator.as_cuda_backend(monkeypatch)
    return gg.get_backend(name)


def _plain_emulator():
    """The emulator module with its kernels as they are, threads first to last, copies at the wait;
    skips the test where there is no emulator."""
    deps.need_emulator()
    from emu import emulator
    emulator.use(None)
    emulator.configure("forward", 1, True)
    return emulator


@pytest.fixture
def emulated_be(monkeypatch):
    """A CupyBackend on the emulator (see ``_plain_emulator``); ``emulated_be.launches`` lists
    the kernels it launched."""
    return _plain_emulator().emulated_backend(monkeypatch)


@pytest.fixture
def emulated_cuda(monkeypatch):
    """The emulator module, installed as gpugrad's CUDA backend (for the scripts that drive a GPU:
    they run end to end here)."""
    emulator = _plain_emulator()
    emulator.as_cuda_backend(monkeypatch)
    return emulator


@pytest.fixture
def rng(request):
    """A generator per test, seeded from the session seed and the test's id (reported in the
    header), so inputs are fresh each run and a failure reproduces with GPUGRAD_TEST_SEED."""
    return np.random.default_rng([SESSION_SEED, zlib.crc32(request.node.nodeid.encode())])


def pytest_collection_modifyitems(config, items):
    # Slow tests first (a stable sort: collection order otherwise; every xdist worker sorts alike),
    # so that a parallel run's longest tests do not start last, with the other worker idle.
    items.sort(key=lambda item: "slow" not in item.keywords)
    if gg.cupy_available():
        return
    skip = pytest.mark.skip(reason=f"no usable CUDA device: {gg.why_backend()}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive flock on `path`: the other workers of a parallel run wait at it."""
    import fcntl
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


@pytest.fixture(scope="session", autouse=True)
def _whole_module_compiled_once_a_run(tmp_path_factory):
    """Each whole-module NVRTC compile (``kernels.compile_nvrtc(arch)``: every kernel at once, about
    a minute on 2 cores) happens once a run, not once in each worker process that asks for it:
    the first asker compiles under a lock and stores the result in the run's temporary directory;
    the others (and later callers) read it back. Keyed by the source text, the arch and NVRTC's
    version. Compiles of one kernel alone go straight to NVRTC."""
    if not HAVE_CUPY or platform.system() == "Windows":  # no fcntl there; compile as asked
        yield
        return
    from gpugrad.backends import kernels
    real = kernels.compile_nvrtc
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's directory, above each worker's own
    store = root / "nvrtc-whole-module"
    store.mkdir(exist_ok=True)

    def compile_nvrtc(arch="sm_90", extra=(), only=None):
        if only is not None or extra:
            return real(arch, extra, only)
        from cupy.cuda import nvrtc
        try:
            version = nvrtc.getVersion()
        except Exception:  # no loadable libnvrtc: compile_nvrtc's own error says so
            return real(arch)
        key = hashlib.sha256("\0".join([kernels.kernel_source(), arch, *kernels.nvrtc_options(),
                                        str(version)]).encode()).hexdigest()[:24]
        binary, log = store / f"{arch}-{key}.bin", store / f"{arch}-{key}.log"
        with _locked(store / f"{arch}-{key}.lock"):
            if not binary.is_file():
                out, text = real(arch)
                for path, data in ((log, text.encode()), (binary, out)):  # binary last: it marks done
                    part = path.with_suffix(f".{os.getpid()}.part")
                    part.write_bytes(data)
                    os.replace(part, path)
        return binary.read_bytes(), log.read_text()

    compile_nvrtc.__doc__ = real.__doc__
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kernels, "compile_nvrtc", compile_nvrtc)
        yield

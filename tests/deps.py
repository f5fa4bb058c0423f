"""The suite's dependencies: where one is missing its tests are skipped, except in CI.

On a developer's machine a missing CuPy, NVRTC, g++ or PyTorch skips the tests that need it, with
the reason. In CI (the ``CI`` environment variable is set, as CI services set it) the same
absence fails the run instead: the test command installs every test dependency
(``pip install ".[test]"``), so a missing one is a broken install, and a thousand skips would
pass it green. ``tests/conftest.py`` checks them all once at the start of a CI run
(``problems``); ``need``, ``require`` and ``missing`` keep each test module honest on its own.

    >>> import os
    >>> require("math").sqrt(4.0)
    2.0
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import platform
import shutil

import pytest

IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing(reason: str):
    """Skip the calling test (or module, at import) with ``reason``; in CI fail instead."""
    if IN_CI:
        pytest.fail(f"CI: a test dependency is missing: {reason} (pip install \".[test]\" installs "
                    f"the Python ones; CI needs Linux and g++ too)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def require(module: str, reason: str | None = None):
    """``importlib.import_module(module)``, or ``missing`` with the import error."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        missing(f"{reason or module + ' is needed'} ({type(e).__name__}: {e})")


def need(ok: bool, reason: str) -> None:
    """``missing(reason)`` unless ok."""
    if not ok:
        missing(reason)


def nvrtc_problem() -> str | None:
    """Why NVRTC cannot compile here (no CuPy, no loadable libnvrtc), or None."""
    try:
        from cupy.cuda import nvrtc
        nvrtc.getVersion()
    except Exception as e:  # ImportError, or CuPy's own error when libnvrtc does not load
        return f"NVRTC is not usable through CuPy ({type(e).__name__}: {e})"
    return None


def emulator_problem() -> str | None:
    """Why the kernel emulator (tests/emu) cannot run here, or None."""
    if platform.system() != "Linux":
        return f"the kernel emulator needs Linux (ucontext fibers), not {platform.system()}"
    if shutil.which("g++") is None:
        return "the kernel emulator needs g++ on PATH"
    if importlib.util.find_spec("cupy") is None:
        return "the kernel emulator drives the CuPy backend's host code: cupy must be installed (no GPU needed)"
    return None


def need_emulator() -> None:
    """``missing`` unless the kernel emulator can run."""
    problem = emulator_problem()
    if problem:
        missing(problem)


# Python modules the suite imports somewhere (the test extra of pyproject.toml installs them).
MODULES = ("cupy", "torch", "dask.array", "distributed", "pandas", "xdist", "setuptools", "threadpoolctl")


def problems() -> list[str]:
    """Every missing test dependency, one line each (empty when all are there)."""
    out = []
    for module in MODULES:
        if importlib.util.find_spec(module.split(".")[0]) is None:
            out.append(f"the module {module} is not installed")
    for check in (emulator_problem, nvrtc_problem):
        problem = check()
        if problem:
            out.append(problem)
    for tool in ("git", "timeout", "bash"):
        if shutil.which(tool) is None:
            out.append(f"the command {tool} is not on PATH")
    return out

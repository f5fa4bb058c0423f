"""Shared fixtures: every test that takes ``backend`` runs on each available backend.

numpy always; CuPy when a CUDA device is usable (``gpugrad.cupy_available()``). Tests that
need a GPU by nature carry the ``gpu`` marker and are skipped cleanly without one.
"""
import numpy as np
import pytest

import gpugrad as gg

BACKENDS = ["numpy"] + (["cupy"] if gg.cupy_available() else [])


@pytest.fixture(params=BACKENDS)
def backend(request):
    """A backend object; ``backend.xp`` is its array module."""
    return gg.get_backend(request.param)


@pytest.fixture
def rng(request):
    """A fresh generator per test, seeded from the test's name so failures reproduce."""
    seed = abs(hash(request.node.nodeid)) % (2**32)
    return np.random.default_rng(seed)


def pytest_collection_modifyitems(config, items):
    if gg.cupy_available():
        return
    skip = pytest.mark.skip(reason=f"no usable CUDA device: {gg.why_backend()}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)

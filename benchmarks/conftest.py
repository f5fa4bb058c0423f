import gpugrad as gg
import pytest


def pytest_collection_modifyitems(config, items):
    if gg.cupy_available():
        return
    skip = pytest.mark.skip(reason="no usable CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)

import gpugrad as gg
import pytest


def pytest_collection_modifyitems(config, items):
    if gg.cupy_available():
        return
    skip = pytest.mark.skip(reason=f"no usable CUDA device: {gg.why_backend()}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_benchmark_update_machine_info(config, machine_info):
    """Saved results (--benchmark-save, --benchmark-json) say which backend and BLAS ran them."""
    machine_info["gpugrad"] = gg.why_backend()
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return
    machine_info["blas"] = [f"{i.get('internal_api')} {i.get('version')} ({i.get('num_threads')} threads)"
                            for i in threadpool_info() if i.get("user_api") == "blas"]

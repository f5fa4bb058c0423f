"""Root pytest configuration: the docstring examples of gpugrad/ run as doctests; the CuPy
backend's module is only collected where CuPy imports."""
import importlib.util

collect_ignore = ["benchmarks/gpu_check.py", "benchmarks/profile_kernels.py"]
if importlib.util.find_spec("cupy") is None:
    collect_ignore.append("gpugrad/backends/cupy_backend.py")

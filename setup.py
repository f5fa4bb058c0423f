"""The optional C extension: the numpy backend's compiled loops (kernels/host.c, gpugrad/backends/host.py).

Everything else is in pyproject.toml. ``optional=True``: without a C compiler the install goes on
and gpugrad runs the same arithmetic through numpy.
"""
import sys

from setuptools import Extension, setup

# numpy's results bit for bit: each operation rounded on its own (no fused multiply-add, no fast math);
# without errno, sqrt is one instruction the loops vectorise.
FLAGS = [] if sys.platform == "win32" else ["-O3", "-ffp-contract=off", "-fno-math-errno"]

setup(ext_modules=[Extension("_gpugrad_host", sources=["kernels/host.c"], extra_compile_args=FLAGS, optional=True)])

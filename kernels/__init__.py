"""CUDA sources of gpugrad's kernels (and the fatbin CMake builds from them), shipped as package data."""

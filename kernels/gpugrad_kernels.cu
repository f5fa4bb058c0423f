// gpugrad_kernels.cu: the one translation unit holding every gpugrad kernel.
//
// The CuPy backend loads it through cupy.RawModule: from the fatbin that CMakeLists.txt builds
// with nvcc (sm_80 and sm_90 machine code + PTX), or, when no fatbin matches these sources,
// compiled at run time by NVRTC (the loader inlines the includes below so that CuPy's on-disk
// cache keys on the full text). Every entry point is extern "C" with an explicit name, so no
// templated name_expressions are needed and CuPy's disk cache applies.
//
// What each kernel reads and writes, and the traffic it is designed for, heads its own file.
#include "common.cuh"
#include "rowmath.cuh"
#include "softmax_ce.cuh"
#include "svm.cuh"
#include "linear_step.cuh"
#include "mma_layout.cuh"
#include "linear_mma.cuh"
#include "sparse_step.cuh"
#include "checks.cuh"
#include "mlp.cuh"

"""Launch each headline kernel once, for a profiler (Nsight Compute) to look at:

    ncu --clock-control none --section SpeedOfLight --section WarpStateStats --section Occupancy \
        -k regex:"gg_(linear_(f32|u8)_c10|linmma_(f32|u8)_nt2|ce_f32_(s1024|w32|w2))" python benchmarks/profile_kernels.py

Shapes: the GPU check's (linear step n=65536 d=3072 C=10, float32 and uint8, each by both kernels
of the linear_f32 / linear_u8 variants; CE 8192 x 32768, 8192 x 1024, 8192 x 10). Random data, never zeros.
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import cupy  # noqa: E402

import gpugrad as gg  # noqa: E402

be = gg.get_backend("cupy")
rng = np.random.default_rng(0)
n, d, C = 65536, 3072, 10
X = cupy.asarray(rng.standard_normal((n, d), dtype=np.float32))
y = cupy.asarray(rng.integers(0, C, n))
W = cupy.asarray((rng.standard_normal((C, d)) * 0.01).astype(np.float32))
b = cupy.zeros(C, np.float32)
Xu = cupy.asarray(rng.integers(0, 256, (n, d), dtype=np.uint8))
for variant in ("simt", "mma"):
    bv = be._with_variants(linear_f32=variant, linear_u8=variant)
    bv.linear_grad(X, y, W, b, 1e-3, "softmax")
    bv.linear_grad(Xu, y, W, b, 1e-3, "softmax", cupy.full(d, 120, np.float32), cupy.full(d, 64, np.float32))
del X, Xu
for rows, classes in ((8192, 32768), (8192, 1024), (8192, 10)):
    S = cupy.asarray((rng.standard_normal((rows, classes)) * 3).astype(np.float32))
    be.softmax_cross_entropy_grad(S, cupy.asarray(rng.integers(0, classes, rows)))
cupy.cuda.Device().synchronize()
print("launched")

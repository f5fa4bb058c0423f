"""The Python cost of a CuPy-backend call, CuPy faked (tests/fake_cupy.py): what gpugrad's own
host code adds to CuPy's allocation and launch costs. Runs on any machine:

    python -m pytest benchmarks/test_launch_overhead.py --benchmark-only

A small-C softmax call is bound by host time on a GPU (benchmarks/RESULTS.md has the device and
per-call figures), so this is worth keeping short.
"""
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("cupy", reason="the CuPy backend needs CuPy importable (no GPU needed)")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from fake_cupy import FakeArray, fake_backend  # noqa: E402


@pytest.mark.parametrize("C", [10, 1024])
def test_row_loss_call(benchmark, monkeypatch, C):
    be = fake_backend(monkeypatch)
    S, y, out = FakeArray((8192, C), np.float32), FakeArray(8192, np.int64), FakeArray((8192, C), np.float32)
    benchmark(be.softmax_cross_entropy_grad, S, y, out=out)


class _FakeCupyArray(FakeArray):
    """A FakeArray that gpugrad takes for a cupy.ndarray (it looks at the class's module)."""


_FakeCupyArray.__module__ = "cupy._fake"


def test_public_softmax_call(benchmark, monkeypatch):
    """gg.softmax_cross_entropy_grad(S, y, validate=False) on CuPy arrays: the checks, the choice
    of backend and the backend call (compare with test_row_loss_call[10])."""
    import gpugrad as gg
    import gpugrad.backends as B
    be = fake_backend(monkeypatch)
    monkeypatch.setattr(B, "_CUPY", be)
    S, y = _FakeCupyArray((8192, 10), np.float32), _FakeCupyArray(8192, np.int64)
    loss, dS = gg.softmax_cross_entropy_grad(S, y, validate=False)
    assert dS.shape == (8192, 10) and [k.name for k in be.launches] == ["gg_ce_f32_w2_k8"]
    benchmark(gg.softmax_cross_entropy_grad, S, y, validate=False)


@pytest.mark.parametrize("variant", ["simt", "mma"])
def test_linear_step_call(benchmark, monkeypatch, variant):
    be = fake_backend(monkeypatch, variants={"linear_f32": variant, "linear_u8": variant})
    n, d, C = 65536, 3072, 10
    X, y = FakeArray((n, d), np.uint8), FakeArray(n, np.int64)
    W, b, m = FakeArray((C, d), np.float32), FakeArray(C, np.float32), FakeArray(d, np.float32)
    benchmark(be.linear_grad, X, y, W, b, 1e-3, "softmax", m, m)

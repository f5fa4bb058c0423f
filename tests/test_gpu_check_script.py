"""benchmarks/gpu_check.py and device_check.sh run where CI cannot (a GPU is lent for minutes), so
their mistakes would cost that time: here they parse, and the newer parts of gpu_check run end to
end on the emulated CUDA backend (tests/emu) with the timers stubbed."""
import platform
import shutil
import subprocess
import types
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_device_check_script_parses():
    subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "device_check.sh")], check=True)


@pytest.fixture
def gpu_check(monkeypatch):
    """gpu_check imported with the emulated backend as gpugrad's CUDA backend and as its `cupy`,
    and its timers returning 1 us after one call of the timed function."""
    if platform.system() != "Linux" or shutil.which("g++") is None:
        pytest.skip("the kernel emulator needs Linux (ucontext fibers) and g++")
    pytest.importorskip("cupy", reason="gpu_check and the CuPy backend import cupy (no GPU needed)")
    from emu import emulator as E
    E.use(None)
    E.configure("forward", 1, True)
    E.as_cuda_backend(monkeypatch)
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import gpu_check as G
    class Cupy:  # the emulator's cupy, with a device to synchronise
        cuda = types.SimpleNamespace(**vars(E.emucupy.cuda),
                                     Device=lambda *a: types.SimpleNamespace(synchronize=lambda: None))

        def __getattr__(self, name):
            return getattr(E.emucupy, name)

    monkeypatch.setattr(G, "cupy", Cupy())
    monkeypatch.setattr(G, "HAVE_TORCH", False)
    monkeypatch.setattr(G, "time_batches", lambda fn, sets, **k: (fn(*sets[0]), (1.0, 1.0, 1.0))[1])
    monkeypatch.setattr(G, "host_us", lambda fn, **k: (fn(), 1.0)[1])
    # CuPy's pointer holder, which host_breakdown imports: a plain integer here
    import cupy.cuda.function
    monkeypatch.setattr(cupy.cuda.function, "CIntptr", np.uint64)
    monkeypatch.setattr(G, "RESULTS", {"correctness": [], "timing": [], "env": {}})
    return G


def test_host_breakdown_runs_and_checks_its_launches(gpu_check, capsys):
    gpu_check.host_breakdown(n=300, C=10)
    out = capsys.readouterr().out
    assert "the same, ROW_CALL direct: results identical to the backend's" in out
    assert "driver.launchKernel, ctypes block: results identical to the backend's" in out
    assert "DIFFER" not in out
    # the emulator refuses raw integers for pointers, which CuPy passes through: that one fails here
    assert set(gpu_check.RESULTS["env"]["host_breakdown_us"]) >= {
        "the whole backend call (out given)", "the same, ROW_CALL direct", "cupy.empty((), float32), freed",
        "0-d view into a slab, freed", "RawKernel launch, the backend's args", "driver.launchKernel, ctypes block"}


def test_small_step_timings_run(gpu_check):
    gpu_check.bench_small_step(np.random.default_rng(0))
    variants = [r["variant"] for r in gpu_check.RESULTS["timing"]]
    assert variants == ["gpugrad fused simt", "gpugrad fused mma", "gpugrad API, validate=False",
                        "plain CuPy (normalise+cuBLAS)"]

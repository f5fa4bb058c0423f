"""benchmarks/trainer_check.py runs where CI cannot (on a GPU, often for a few minutes at a
time), so its mistakes would cost that time: here it runs end to end, at small sizes, on the emulated CUDA backend (tests/emu),
with CUDA events replaced by a wall clock."""
import time
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


class _WallEvent:
    def record(self, *a):
        self.t = time.perf_counter()

    def synchronize(self):
        pass


@pytest.fixture
def trainer_check(monkeypatch, emulated_cuda):
    E = emulated_cuda
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import trainer_check as T
    cuda = types.SimpleNamespace(Event=_WallEvent, get_elapsed_time=lambda a, b: (b.t - a.t) * 1e3)
    monkeypatch.setattr(T, "cupy", types.SimpleNamespace(
        cuda=cuda, asarray=E.emucupy.asarray, asnumpy=E.emucupy.asnumpy, ndarray=E.emucupy.ndarray,
        empty=E.emucupy.empty, empty_like=E.emucupy.empty_like, copyto=lambda b, a: b.__setitem__(..., a)))
    monkeypatch.setattr(T, "HAVE_TORCH", False)
    monkeypatch.setattr(T, "RESULTS", {"env": {}, "correctness": [], "timing": []})
    monkeypatch.setattr(T, "D", 48)
    return T


def test_trainer_check_runs_and_passes_on_the_emulated_backend(trainer_check, monkeypatch, tmp_path):
    T = trainer_check
    real = T.synthetic
    monkeypatch.setattr(T, "synthetic", lambda n, d=48, **k: real(n, d, **k))
    monkeypatch.setattr(T, "copy_bandwidth", lambda: 1e12)
    code = T.main(["--n", "300", "--check-n", "400", "--epochs", "1", "--hidden", "8", "--out", str(tmp_path)])
    failed = [r for r in T.RESULTS["correctness"] if not r["ok"]]
    assert code == 0 and not failed, failed
    assert len(T.RESULTS["correctness"]) >= 10
    assert [r["workload"].split(" n=")[0] for r in T.RESULTS["timing"]] == ["epoch linear"] * 2 + ["epoch mlp"]
    assert (tmp_path / "trainer_check.json").exists()

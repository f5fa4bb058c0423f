"""benchmarks/gpu_check.py and device_check.sh run where CI cannot (on a GPU, often for a few
minutes at a time), so their mistakes would cost that time: here they parse, and the newer parts of gpu_check run end to
end on the emulated CUDA backend (tests/emu) with the timers stubbed."""
import importlib
import shutil
import subprocess
import types
from pathlib import Path

import numpy as np
import pytest

import deps

ROOT = Path(__file__).resolve().parent.parent


def test_device_check_script_parses():
    subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "device_check.sh")], check=True)


@pytest.fixture
def gpu_check(monkeypatch, emulated_cuda):
    """gpu_check imported with the emulated backend as gpugrad's CUDA backend and as its `cupy`,
    and its timers returning 1 us after one call of the timed function."""
    E = emulated_cuda
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import gpu_check as G
    monkeypatch.setattr(G, "cupy", E.emucupy)
    monkeypatch.setattr(G, "HAVE_TORCH", False)
    monkeypatch.setattr(G, "time_batches", lambda fn, sets, **k: (fn(*sets[0]), (1.0, 1.0, 1.0))[1])
    monkeypatch.setattr(G, "host_us", lambda fn, **k: (fn(), 1.0)[1])
    # CuPy's pointer holder, which host_breakdown imports: a plain integer here (the real module:
    # `import cupy` gives the stand-in while the emulated backend is installed)
    monkeypatch.setattr(importlib.import_module("cupy.cuda.function"), "CIntptr", np.uint64)
    monkeypatch.setattr(G, "RESULTS", {"correctness": [], "timing": [], "env": {}})
    return G


def test_host_breakdown_runs_and_checks_its_launches(gpu_check, capsys):
    gpu_check.host_breakdown(n=300, C=10)
    out = capsys.readouterr().out
    assert "the same, row_call direct: results identical to the backend's" in out
    assert "driver.launchKernel, ctypes block: results identical to the backend's" in out
    assert "DIFFER" not in out
    assert [(c["kind"], c["ok"]) for c in gpu_check.RESULTS["correctness"]] == [("call path", True)]
    # the emulator refuses raw integers for pointers, which CuPy passes through: that one fails here
    assert set(gpu_check.RESULTS["env"]["host_breakdown_us"]) >= {
        "the whole backend call (out given)", "the same, row_call direct", "cupy.empty((), float32), freed",
        "0-d view into a slab, freed", "RawKernel launch, the backend's args", "driver.launchKernel, ctypes block"}


def test_small_step_timings_run(gpu_check):
    gpu_check.bench_small_step(np.random.default_rng(0))
    variants = [r["variant"] for r in gpu_check.RESULTS["timing"]]
    assert variants == ["gpugrad fused simt", "gpugrad fused mma", "gpugrad API, validate=False",
                        "plain CuPy (normalise+cuBLAS)"]


def test_other_linear_kinds_timings_run(gpu_check):
    rng = np.random.default_rng(0)
    gpu_check.bench_other_linear_kinds(3e12, rng, shapes=(("f32n", (50, 300, 10)), ("f64", (50, 100, 3)),
                                                          ("u8f64", (40, 64, 4))))
    rows = [(r["workload"], r["variant"]) for r in gpu_check.RESULTS["timing"]]
    assert rows == [("linear step n=50 d=300 C=10 f32n", "gpugrad fused simt"),
                    ("linear step n=50 d=300 C=10 f32n", "plain CuPy (cuBLAS)"),
                    ("linear step n=50 d=100 C=3 f64", "gpugrad fused simt"),
                    ("linear step n=50 d=100 C=3 f64", "plain CuPy (cuBLAS)"),
                    ("linear step n=40 d=64 C=4 u8f64", "gpugrad fused simt"),
                    ("linear step n=40 d=64 C=4 u8f64", "plain CuPy (cuBLAS)")]


# device_check.sh's stages, driven by stand-ins for python3 and nvidia-smi: `python3` prints its
# arguments and acts as told (gpu_check hangs, fails, or writes its JSON), so the script's control
# flow runs here in seconds.
STUB_PYTHON = r"""#!/usr/bin/env bash
echo "stub python3 $*"
case "$*" in
  -c*) [ "$GG_STUB" = ok ] && exit 1; exit 0 ;;  # is the fatbin current? (not in the "ok" runs)
  *gpu_check.py*)
    [ "$GG_STUB" = hang ] && exec sleep 600
    out=$(echo "$*" | sed -n 's/.*--out \([^ ]*\).*/\1/p')
    echo '{}' > "$out/results.json"; echo "table line"; [ "$GG_STUB" = fail ] && exit 1; exit 0 ;;
  *trainer_check.py*) exit 0 ;;
esac
exit 3
"""


def _device_check(tmp_path, stub, budget):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    for name, text in (("python3", STUB_PYTHON), ("nvidia-smi", "#!/bin/sh\necho 'name, driver'\n"),
                       ("cmake", "#!/bin/sh\necho cmake \"$@\"\n"), ("nvcc", "#!/bin/sh\n")):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "OUT": str(tmp_path / "out"), "GG_STUB": stub,
           "GG_BUDGET_S": str(budget), "GG_MIN_STAGE_S": "1"}
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "device_check.sh"), "--quick"], env=env,
                       capture_output=True, text=True, timeout=60)
    out = tmp_path / "out"
    return r, sorted(p.name for p in out.iterdir()), (out / "device_check.log").read_text()


def test_device_check_runs_every_stage_and_returns_its_log_and_results(tmp_path):
    deps.need(shutil.which("timeout") is not None, "needs coreutils' timeout")
    r, files, log = _device_check(tmp_path, "ok", 100)
    assert r.returncode == 0, r.stdout + r.stderr
    assert files == ["device_check.log", "results.json"]
    assert "cmake --build build-device" in log  # no current fatbin: built first
    assert log.count("exit 0 after") == 3 and "--quick" in log  # fatbin, gpu_check, trainer_check
    r, files, log = _device_check(tmp_path / "fail", "fail", 100)  # a failed check: still every stage
    assert r.returncode != 0 and "== stage trainer_check: exit 0" in log
    assert "gpu_check exit 1, trainer_check exit 0" in log


def test_device_check_stops_a_hung_stage_at_its_deadline(tmp_path):
    deps.need(shutil.which("timeout") is not None, "needs coreutils' timeout")
    r, files, log = _device_check(tmp_path, "hang", 4)
    assert r.returncode != 0
    assert "== stage gpu_check: exit 124" in log  # killed by timeout, the log kept
    assert "not started" in log and "gpu_check exit 124" in log
    assert "current.log" not in files


@pytest.fixture
def bare_gpu_check(monkeypatch):
    """gpu_check imported as it is (importing needs CuPy installed, not a GPU), with empty results."""
    deps.require("cupy", "gpu_check imports cupy (no GPU needed)")
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import gpu_check as G
    monkeypatch.setattr(G, "RESULTS", {"correctness": [], "timing": [], "env": {}})
    return G


def test_recommended_defaults_take_the_fastest_variant_whose_tests_passed(bare_gpu_check, capsys):
    G = bare_gpu_check

    def timed(workload, variant, us):
        G.RESULTS["timing"].append(dict(workload=workload, variant=variant, median_us=us))

    def checked(kind, name, ok):
        G.RESULTS["correctness"].append(dict(kind=kind, name=name, ok=ok))
    f32, u8 = "linear step n=65536 d=3072 C=10 f32", "linear step n=65536 d=3072 C=10 uint8"
    timed(f32, "gpugrad fused simt", 812.7), timed(f32, "gpugrad fused mma", 300.0)
    timed(u8, "gpugrad fused simt", 939.7), timed(u8, "gpugrad fused mma", 80.0)
    long_rows = "CE fwd+grad S 8192x32768 f32"
    for v, us in (("stream", 1017.6), ("prefetch", 900.0), ("block", 1089.9)):
        timed(long_rows, f"gpugrad kernel {v}", us)
    timed("CE fwd+grad S 8192x10 f32", "gpugrad kernel", 15.3)
    timed("CE fwd+grad S 8192x10 f32", "gpugrad direct call", 7.0)  # fast, but its tests did not run
    checked("tests", "established: pytest -k 'not (...)'", True)
    checked("tests", "mma: pytest -k 'mma or tensor_core'", True)
    checked("tests", "prefetch: pytest -k 'prefetch'", False)  # fastest, but wrong: never recommended
    rec = G.recommend_defaults()
    assert {k: v["best"] for k, v in rec.items()} == {
        "linear_f32": "mma", "linear_u8": "mma", "ce_long_rows": "stream", "row_call": None}
    out = capsys.readouterr().out
    assert "linear_f32     SET 'mma' (now 'simt')" in out and "ce_long_rows   keep 'stream'" in out
    assert G.RESULTS["env"]["recommended_defaults"] == rec
    # once the direct path's tests pass and its launch matches bit for bit, it is recommended
    checked("tests", "direct: pytest -k 'direct'", True)
    checked("call path", "row_call direct vs cupy, bit for bit", True)
    assert G.recommend_defaults()["row_call"]["best"] == "direct"


def test_gpu_tests_run_a_process_per_group_and_gate_the_timings(bare_gpu_check, monkeypatch):
    """Each group of variants is tested by its own pytest process (a trapping kernel ends only that
    one); a failed or timed-out group is recorded as such and its variants are not timed."""
    G = bare_gpu_check
    monkeypatch.setattr(G, "FAILURES", [])
    calls = []

    def run(cmd, **kw):
        expr = cmd[cmd.index("-k") + 1]
        calls.append((expr, kw["timeout"]))
        if expr.startswith("(prefetch)"):
            raise subprocess.TimeoutExpired(cmd, kw["timeout"])
        return types.SimpleNamespace(returncode=1 if expr.startswith("(mma") else 0, stdout="3 passed", stderr="")
    monkeypatch.setattr(G.subprocess, "run", run)
    monkeypatch.setattr(G, "ROW_CALLS", ("cupy",))  # the direct path not asked for: not tested
    groups = G.groups_wanted()
    assert groups == ["established", "mma", "prefetch", "other_kinds", "sparse"]
    passed = G.run_gpu_tests(groups, quick=True)
    assert passed == {"established", "other_kinds", "sparse"}
    assert [e for e, _ in calls] == [f"({G.TEST_GROUPS[g][0]}) and not 65537" for g in groups]
    assert [t for _, t in calls] == [G.TEST_GROUPS[g][1] for g in groups]
    assert [(c["name"].split(":")[0], c["ok"]) for c in G.RESULTS["correctness"]] == [
        ("established", True), ("mma", False), ("prefetch", False), ("other_kinds", True), ("sparse", True)]
    assert "stopped after" in G.RESULTS["correctness"][2]["summary"] and len(G.FAILURES) == 2


def test_small_c_softmax_timings_run(gpu_check, monkeypatch):
    monkeypatch.setattr(gpu_check, "time_graph", lambda fn, args, **k: None)  # no CUDA graphs here
    gpu_check.bench_ce(3e12, np.random.default_rng(0), shapes=((300, 10),))
    variants = [r["variant"] for r in gpu_check.RESULTS["timing"]]
    assert "gpugrad API, validate=False, out=" in variants
    assert "gpugrad API direct, validate=False, out=" in variants


def test_sparse_step_timings_run(gpu_check):
    """The sparse step's comparison (gpugrad, cupyx written the obvious way; PyTorch's sparse CSR where
    torch sees a GPU), each checked against numpy before it is timed, on the emulated device CSR."""
    import gpugrad as gg
    from emu import emu_sparse
    emu_sparse.install(gg.get_backend("cupy"))
    gpu_check.bench_sparse(np.random.default_rng(0), shapes=((40, 300, 10, 5), (30, 200, 8, 40)))
    rows = [(r["workload"], r["variant"]) for r in gpu_check.RESULTS["timing"]]
    names = ["gpugrad", "gpugrad API, validate=False", "plain cupyx (cuSPARSE)"]
    assert rows == [(gpu_check.sparse_workload(40, 300, 10, 5), v) for v in names] + \
        [(gpu_check.sparse_workload(30, 200, 8, 40), v) for v in names]
    assert [c["ok"] for c in gpu_check.RESULTS["correctness"]] == [True] * 6

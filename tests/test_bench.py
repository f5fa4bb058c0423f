"""`gpugrad bench`: the table has its columns, --json parses and its ratios are what they claim,
the floor is bytes over the bandwidth measured, bad options are refused in one line naming the
option, and every implementation it times computes the same thing (against float64 numpy
written from the formulas, and gpugrad's epochs against the loops written by hand)."""
import json
import subprocess
import sys

import numpy as np
import pytest

import deps
import gpugrad as gg
from gpugrad.tools import bench, cli

COLUMNS = ["workload", "implementation", "median", "x best peer", "x floor", "floor"]


@pytest.fixture
def given_bandwidth(monkeypatch):
    """A fixed bandwidth instead of a copy of twice the CPU's cache (seconds on a busy machine)."""
    monkeypatch.setattr(bench, "memory_bandwidth", lambda backend="numpy": (1e10, "given"))


def bench_cli(*argv):
    return cli.main(["bench", "--backend", "numpy", "--size", "tiny", "--repeat", "2", *argv])


def available(w, impls):
    """(impl, case) for each implementation that runs here on workload w."""
    inputs = bench.make_inputs(w)
    out = []
    for impl in impls:
        try:
            out.append((impl, impl.prepare(w, inputs)))
        except bench.Unavailable:
            pass
    return inputs, out


def as_numpy(a):
    if hasattr(a, "detach"):  # torch
        a = a.detach().cpu().numpy()
    if hasattr(a, "get"):  # cupy
        a = a.get()
    return np.asarray(a, dtype=np.float64)


ALL_IMPLS = bench.implementations_for("numpy") + (bench.implementations_for("cupy") if gg.cupy_available() else [])
# torch.compile takes 10 to 30 s a compile on 2 cores: it has tests of its own (below), on the
# smallest workloads; the other tests run every other implementation.
COMPILED = [i for i in ALL_IMPLS if i.name.startswith("torch.compile")]
IMPLS = [i for i in ALL_IMPLS if i not in COMPILED]
HAVE_TORCH = deps.IN_CI or __import__("importlib").util.find_spec("torch") is not None


@pytest.fixture
def no_compile(monkeypatch):
    """gpugrad bench without the torch.compile peers (their compiles are tested on their own)."""
    for impl in COMPILED:
        monkeypatch.delitem(bench.IMPLEMENTATIONS, impl.name)


# ---- the table and --json ------------------------------------------------------------------------

def test_table_has_the_columns_and_a_line_per_implementation_run(capsys, given_bandwidth, no_compile):
    assert bench_cli("--workload", "ce,linear") == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith("gpugrad bench: numpy backend on ") and "size tiny, median of 2 calls" in lines[0]
    assert "bandwidth 10.0 GB/s (given)" in lines[1]
    assert lines[2].startswith(f"numpy {np.__version__}, ") and lines[2].endswith(f"gpugrad {gg.__version__}")
    assert lines[3].split() == ["workload", "implementation", "median", "x", "best", "peer", "x", "floor", "floor"]
    starts = [lines[3].index(c) for c in COLUMNS]
    assert starts == sorted(starts)
    names = [w.name for w in bench.workloads(["ce", "linear"], "tiny")]
    body = [line for line in lines[4:] if not line.startswith("not run: ")]
    for name in names:  # each workload named once, on its first line, which carries the floor
        first = [line for line in body if line.startswith(name)]
        assert len(first) == 1 and first[0].split()[-1] in ("us", "ms", "s")
    assert any(line.split()[0] == "gpugrad" and "numpy" in line for line in body)
    assert "PyTorch eager CPU" in out  # run, or listed as not run with the reason
    if HAVE_TORCH:  # timed on every workload: a line with its median, none "not run" or "failed"
        timed = [line for line in body if "PyTorch eager CPU" in line]
        assert len(timed) == len(names) and all(line.split()[-1] in ("us", "ms", "s") or
                                                line.split()[-3] in ("us", "ms", "s") for line in timed)
        assert "failed:" not in out and "not run: PyTorch" not in out, out
    assert err.count("gpugrad bench: [") == len(names)  # progress on stderr, one line per workload


def test_json_parses_and_its_ratios_are_median_over_best_peer_and_over_floor(capsys, given_bandwidth,
                                                                            no_compile):
    assert bench_cli("--workload", "linear", "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["environment"]["bandwidth_bytes_per_s"] == 1e10 and result["repeat"] == 2
    rows = result["rows"]
    assert {r["workload"] for r in rows} == {w.name for w in bench.workloads(["linear"], "tiny")}
    for name in {r["workload"] for r in rows}:
        group = [r for r in rows if r["workload"] == name]
        best = min(r["median_s"] for r in group if not r["ours"])
        assert any(r["ours"] for r in group) and any(not r["ours"] for r in group)
        for r in group:
            assert r["vs_best_peer"] == pytest.approx(r["median_s"] / best)
            assert r["vs_floor"] == pytest.approx(r["median_s"] / r["floor_s"])
            assert r["floor_s"] == pytest.approx(r["bytes"] / 1e10) and r["floor_s"] > 0
    for s in result["skipped"]:
        assert s["reason"] and s["implementation"] in bench.IMPLEMENTATIONS


def test_floor_is_positive_from_a_copy_bandwidth_measured_here():
    bandwidth, how = bench.memory_bandwidth("numpy", nbytes=8 << 20, repeat=3)
    assert 1e8 < bandwidth < 1e13 and how == "numpy.copyto of 8 MiB"
    for w in bench.workloads(bench.FAMILIES, "gpu"):
        assert w.nbytes > 0 and w.nbytes / bandwidth > 0
    X_bytes = 65536 * 3072  # the uint8 step at the target size reads X once: at least its bytes
    assert bench.workloads(["linear"], "gpu")[-1].nbytes >= X_bytes


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_with_a_steady_heap_the_loop_by_hand_allocates_without_page_faults():
    # In a child process (the setting is process-wide): the MLP epoch by hand, before and after.
    code = """if 1:
        import resource
        from gpugrad.tools import bench
        w = bench._epoch("mlp", 1000, 3072, 10)
        epoch = bench.IMPLEMENTATIONS["numpy by hand"].prepare(w, bench.make_inputs(w)).fn
        def faults():
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            epoch()
            return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        epoch()
        plain = faults()
        assert bench.steady_heap()
        epoch()
        print(plain, faults())
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    plain, steady = map(int, out.stdout.split())
    assert steady <= 20 and (steady < plain or plain <= 20), (plain, steady)


def test_the_clock_is_the_cases_own_when_it_has_one():
    calls = []
    case = bench.Case(lambda: calls.append(1), seconds=lambda: 0.25, warmup=2)
    assert bench.time_case(case, 3) == [0.25] * 3 and len(calls) == 5
    import time
    assert min(bench.time_case(bench.Case(lambda: time.sleep(0.002)), 2)) >= 0.002


def test_help_names_every_option_and_the_columns(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "--help"])
    text = capsys.readouterr().out
    assert e.value.code == 0
    for word in ("--workload", "--backend", "--size", "--repeat", "--json", "x best peer", "x floor"):
        assert word in text, word


# ---- bad options ---------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--workload", "ce,softmax"], "--workload must be a comma list of ce, linear, epoch, got 'ce,softmax'"),
    (["--workload", ""], "--workload must be a comma list of ce, linear, epoch, got ''"),
    (["--repeat", "0"], "--repeat must be a positive integer, got 0"),
    (["--repeat", "many"], "--repeat must be a positive integer, got many"),
    (["--backend", "gpu"], "argument --backend: invalid choice: 'gpu'"),
    (["--size", "huge"], "argument --size: invalid choice: 'huge'"),
])
def test_bad_option_is_refused_with_one_line_naming_it(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"gpugrad bench: error: {message}")


@pytest.mark.skipif(gg.cupy_available(), reason="a CUDA device is usable here")
def test_backend_cupy_without_a_device_is_refused_naming_the_option(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "--backend", "cupy"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("gpugrad bench: error: --backend cupy: ")
    assert len(err.strip().splitlines()) == 1


# ---- every implementation computes the same thing ------------------------------------------------

@pytest.mark.parametrize("w", bench.workloads(["ce", "linear"], "tiny"), ids=lambda w: w.name)
def test_every_implementation_of_a_workload_agrees_with_float64_numpy(w):
    inputs, cases = available(w, IMPLS)
    assert {i.name for i, _ in cases} >= {"gpugrad numpy", "numpy by hand", "scikit-learn"} | (
        {"PyTorch eager CPU"} if HAVE_TORCH else set())
    f64 = {k: (v.astype(np.float64) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v)
           for k, v in inputs.items()}
    if w.family == "ce":
        want = bench.ce_by_hand(np, f64["S"], f64["y"])
    else:
        X = f64["X"].astype(np.float64)
        want = bench.linear_by_hand(np, X, f64["y"], f64["W"], f64["b"], bench.LAM, f64["x_mean"], f64["x_std"])
    for impl, case in cases:
        got = case.fn()
        assert len(got) == len(want), impl.name
        for g, r in zip(got, want):
            np.testing.assert_allclose(as_numpy(g), r, rtol=2e-4, atol=1e-6, err_msg=impl.name)


def test_mlp_step_by_hand_equals_gpugrads_mlp_in_float64():
    """The hand-written batch-norm backward pass against gpugrad's graph (float64, tight)."""
    rng = np.random.default_rng(3)
    X, y = rng.standard_normal((40, 12)), rng.integers(0, 4, 40)
    model = gg.models.MLP(12, 4, (7, 5), batchnorm=True, backend="numpy", dtype="float64", seed=1)
    for p in model.params.values():  # gamma and beta away from 1 and 0, biases away from 0
        p += rng.standard_normal(p.shape) * 0.3
    params = {k: v.copy() for k, v in model.params.items()}
    buffers = {k: v.copy() for k, v in model.buffers.items()}
    cost, _, grads = model.loss_grad(X, y, 0.01)
    J, mine = bench.mlp_step_by_hand(np, X, y, params, buffers, 0.01)
    assert float(J) == pytest.approx(float(cost), rel=1e-12)
    assert mine.keys() == grads.keys()
    for k in grads:
        np.testing.assert_allclose(mine[k], grads[k], rtol=1e-9, atol=1e-12, err_msg=k)
    for k in model.buffers:  # the running averages moved alike
        np.testing.assert_allclose(buffers[k], model.buffers[k], rtol=1e-12, err_msg=k)


@pytest.mark.parametrize("w", bench.workloads(["epoch"], "tiny"), ids=lambda w: w.name)
def test_every_epoch_implementation_reaches_the_trainers_weights(w):
    """Two epochs from the same start with the same shuffles: the trainer's weights and those of
    each other implementation agree within float32 rounding."""
    _, cases = available(w, IMPLS)
    assert {i.name for i, _ in cases} >= {"gpugrad numpy", "numpy by hand"} | (
        {"PyTorch eager CPU"} if HAVE_TORCH else set())
    ends = {}
    for impl, case in cases:
        case.fn()
        ends[impl.name] = {k: as_numpy(v) for k, v in case.fn().items()}
    want = ends["gpugrad numpy"]
    start = bench.make_inputs(w)["params0"]
    assert any(not np.allclose(want[k], start[k]) for k in want)  # training moved the weights
    for name, got in ends.items():
        assert got.keys() == want.keys(), name
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-3, atol=2e-5, err_msg=f"{name} {k}")


def test_trainer_epoch_case_reports_the_trainers_own_epoch_seconds():
    w = bench.workloads(["epoch"], "tiny")[0]
    case = bench.IMPLEMENTATIONS["gpugrad numpy"].prepare(w, bench.make_inputs(w))
    times = bench.time_case(case, 2)
    assert len(times) == 2 and all(t > 0 for t in times)


# ---- torch.compile, on the smallest workloads --------------------------------------------------

def test_torch_compile_peers_compute_the_same_thing_on_the_smallest_workloads():
    """The torch.compile peer's two code paths, once each, compiled for real: a compiled function
    (CE forward+gradient, S 64 x 10) against float64 numpy, and a compiled step inside the epoch
    loop (the linear model's epoch) against gpugrad's trainer, both timed as gpugrad bench times
    them. (The MLP's compiled epoch takes the same path with the batch-norm cost: it runs in
    ``gpugrad bench``, not here, where its compile would cost half a minute.)"""
    deps.require("torch", "PyTorch is needed for its peers")
    impl = bench.IMPLEMENTATIONS["torch.compile CPU"]
    ce = bench.workloads(["ce"], "tiny")[0]
    inputs = bench.make_inputs(ce)
    case = impl.prepare(ce, inputs)
    loss, dS = case.fn()
    want_loss, want_dS = bench.ce_by_hand(np, inputs["S"].astype(np.float64), inputs["y"])
    np.testing.assert_allclose(as_numpy(loss), want_loss, rtol=1e-5)
    np.testing.assert_allclose(as_numpy(dS), want_dS, rtol=1e-4, atol=1e-7)
    assert len(bench.time_case(case, 2)) == 2

    epoch = bench.workloads(["epoch"], "tiny")[0]  # the linear model's
    assert epoch.params["model"] == "linear"
    inputs = bench.make_inputs(epoch)
    ours = bench.IMPLEMENTATIONS["gpugrad numpy"].prepare(epoch, inputs)
    theirs = impl.prepare(epoch, inputs)
    for _ in range(2):
        want, got = ours.fn(), theirs.fn()
    for k in want:
        np.testing.assert_allclose(as_numpy(got[k]), want[k], rtol=1e-3, atol=2e-5, err_msg=k)


# ---- a peer that fails -------------------------------------------------------------------------

def test_a_failing_implementation_gets_a_failed_row_and_the_others_are_still_timed(capsys, monkeypatch,
                                                                                  given_bandwidth):
    """One implementation raising in its set-up, another in its timed call: each has its row
    "failed: <reason>" (JSON: ``failed``, no times), and every other one is timed as usual."""
    def broken_prepare(w, inputs):
        raise KeyError("W1")

    def broken_call(w, inputs):
        return bench.Case(lambda: 1 / 0)

    monkeypatch.setitem(bench.IMPLEMENTATIONS, "broken set-up",
                        bench.Impl("broken set-up", "cpu", False, broken_prepare))
    monkeypatch.setitem(bench.IMPLEMENTATIONS, "broken call",
                        bench.Impl("broken call", "cpu", False, broken_call))
    for impl in COMPILED + [i for i in IMPLS if i.name.startswith("PyTorch")]:
        monkeypatch.delitem(bench.IMPLEMENTATIONS, impl.name)
    assert bench_cli("--workload", "ce") == 0
    out = capsys.readouterr().out
    names = [w.name for w in bench.workloads(["ce"], "tiny")]
    lines = out.splitlines()
    for impl, reason in (("broken set-up", "KeyError: 'W1'"), ("broken call", "ZeroDivisionError: division by zero")):
        rows = [line for line in lines if impl in line]
        assert len(rows) == len(names), out
        assert all(line.split(impl)[1].strip() == f"failed: {reason}" for line in rows), out
    timed = [line for line in out.splitlines() if "gpugrad numpy" in line or "numpy by hand" in line]
    assert len(timed) == 2 * len(names) and all(" us " in line or " ms " in line for line in timed)
    assert bench_cli("--workload", "ce", "--json") == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    failed = [r for r in rows if r.get("failed")]
    assert {r["implementation"] for r in failed} == {"broken set-up", "broken call"}
    assert all(r["median_s"] is None and r["vs_best_peer"] is None for r in failed)
    for name in names:  # the best peer is the fastest of those that ran
        group = [r for r in rows if r["workload"] == name and not r.get("failed")]
        best = min(r["median_s"] for r in group if not r["ours"])
        assert all(r["vs_best_peer"] == pytest.approx(r["median_s"] / best) for r in group)


def test_mlp_epoch_script_reports_medians_ranges_and_ratios(tmp_path, capsys):
    """benchmarks/mlp_epoch.py at its smoke size (PyTorch's epoch runs above, in
    test_every_epoch_implementation_reaches_the_trainers_weights): every ratio with its target."""
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location(
        "mlp_epoch", Path(__file__).resolve().parent.parent / "benchmarks" / "mlp_epoch.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "r.json"
    assert script.main(["--quick", "--blas-threads", "1", "--skip", "PyTorch eager CPU", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "gpugrad / numpy by hand" in text and "target <= 0.8" in text and "target <= 0.7" in text
    import json
    results = json.loads(out.read_text())["results"]
    assert [r["what"] for r in results] == ["MLP epoch", "MLPClassifier digits"]
    assert set(results[0]["ratios"]) == {"gpugrad graph numpy", "numpy by hand"}
    assert all(len(t["all_s"]) == 2 for r in results for t in r["times"].values())
    with pytest.raises(SystemExit):
        script.main(["--quick", "--skip", "gpugrad numpy"])

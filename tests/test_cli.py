"""The command line: `gpugrad train` writes a complete, reloadable run folder, resumes exactly
(also after SIGKILL), refuses bad options before any work, and `gpugrad gradcheck` agrees with
central differences. Small runs on the numpy backend, output folders under tmp_path."""
import json
import math
import os
import pickle
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from gpugrad.tools import cli
from gpugrad.tools import options as cli_options
from gpugrad.training import data, models, plots, trainer

PNG = b"\x89PNG\r\n\x1a\n"
REAL_PLOT_HISTORY = plots.plot_history  # before the quick_plots fixture stands in for it
SUMMARY = re.compile(r"^test accuracy (\d\.\d{4}) \| (\d+) epochs? in [\d.]+ s \| backend numpy \| out (.+)$")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def quick_plots(monkeypatch):
    """Rendering PNGs is matplotlib's time, not the command line's, and tests/test_plots.py checks
    the pictures: tests that take this fixture get stand-ins that record what was asked and write
    a PNG signature only (the first test here and the CIFAR-10 one render the real PNGs)."""
    calls = []

    def stand_in(name):
        def plot(*args, **kw):
            calls.append((name, args))
            Path(args[-1] if name == "history" else args[2]).write_bytes(PNG)
            return args[-1] if name == "history" else args[2]
        return plot
    monkeypatch.setattr(plots, "plot_history", stand_in("history"))
    monkeypatch.setattr(plots, "plot_templates", stand_in("templates"))
    return calls


def train(*argv):
    return cli.main(["train", "--backend", "numpy", "--quiet", *map(str, argv)])


def summary(out: str):
    """The summary line (the last line of stdout) parsed: (accuracy, epochs, folder)."""
    m = SUMMARY.match(out.strip().splitlines()[-1])
    assert m, out
    return float(m.group(1)), int(m.group(2)), m.group(3)


def same_state(a, b):
    sa, sb = a.state(), b.state()
    return sa.keys() == sb.keys() and all(np.array_equal(sa[k], sb[k]) for k in sa)


# ---- the output folder ----------------------------------------------------------------------------

def test_train_writes_every_output_file_and_each_loads(tmp_path, capsys):
    out = tmp_path / "run"
    assert train("--epochs", 3, "--out", out) == 0
    stdout = capsys.readouterr().out
    assert len(stdout.strip().splitlines()) == 1  # --quiet: the summary line only
    accuracy, epochs, folder = summary(stdout)
    assert epochs == 3 and folder == str(out)

    model = models.load_model(out / "model.npz", backend="numpy")
    assert model.kind == "linear" and model.params["W"].shape == (10, 64)
    # The printed test accuracy is the saved model's, on the digits test split (argmax by hand).
    ds = data.load_digits()
    X = (ds.X_test - model.buffers["x_mean"]) / model.buffers["x_std"]
    expected = np.mean(np.argmax(X @ model.params["W"].T + model.params["b"], axis=1) == ds.y_test)
    assert accuracy == pytest.approx(expected, abs=5e-5)

    ck = trainer.load_checkpoint(out / "checkpoint.npz")
    assert ck["meta"]["epoch"] == 3 and same_state(ck["model"], model)
    rows = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert all(r["cost"] > r["loss"] for r in rows)
    keep, held = data.stratified_split(ds.y_train, 0.1, 0)  # the trainer's validation rows
    X_val = (ds.X_train[held] - model.buffers["x_mean"]) / model.buffers["x_std"]
    val = np.mean(np.argmax(X_val @ model.params["W"].T + model.params["b"], axis=1) == ds.y_train[held])
    assert rows[-1]["val_accuracy"] == pytest.approx(val, abs=1e-12)  # the last epoch's, by hand
    csv_lines = (out / "history.csv").read_text().splitlines()
    assert csv_lines[0].startswith("epoch,loss,cost,accuracy,val_loss") and len(csv_lines) == 4
    for png in ("curves.png", "templates.png"):
        assert (out / png).read_bytes()[:8] == PNG, png
    run = json.loads((out / "run.json").read_text())
    assert run["settings"]["epochs"] == 3 and run["model"] == model.config()
    assert (run["dataset"]["n_train"], run["dataset"]["n_val"]) == (len(keep), len(held))
    assert run["result"]["test"]["accuracy"] == pytest.approx(accuracy, abs=5e-5)


def test_default_run_trains_digits_to_at_least_095(tmp_path, capsys, monkeypatch, quick_plots):
    monkeypatch.chdir(tmp_path)
    assert train() == 0  # the README's command: softmax, digits, 40 epochs
    accuracy, epochs, folder = summary(capsys.readouterr().out)
    assert accuracy >= 0.95 and epochs == 40 and folder == os.path.join("runs", "digits-softmax")


def test_default_output_folder_is_made_unique_and_explicit_out_is_not_overwritten(tmp_path, capsys,
                                                                                 monkeypatch, quick_plots):
    monkeypatch.chdir(tmp_path)
    assert train("--epochs", 1) == 0 and train("--epochs", 1) == 0
    assert (tmp_path / "runs" / "digits-softmax" / "model.npz").exists()
    assert (tmp_path / "runs" / "digits-softmax-2" / "model.npz").exists()
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        train("--epochs", 1, "--out", "runs/digits-softmax")
    assert e.value.code == 2
    assert "--resume runs/digits-softmax" in capsys.readouterr().err


def test_mlp_run_has_curves_but_no_templates(tmp_path, capsys, quick_plots):
    out = tmp_path / "mlp"
    assert train("--model", "mlp", "--hidden", "16,8", "--batchnorm", "--optimizer", "adam",
                 "--epochs", 2, "--validation-fraction", 0, "--out", out) == 0
    model = models.load_model(out / "model.npz", backend="numpy")
    assert model.kind == "mlp" and model.hidden == (16, 8) and model.batchnorm
    assert (out / "curves.png").exists() and not (out / "templates.png").exists()
    [(name, (rows, path))] = quick_plots
    assert name == "history" and [r["epoch"] for r in rows] == [1, 2]
    assert all(math.isnan(r["val_loss"]) for r in rows)  # --validation-fraction 0: none
    assert json.loads((out / "run.json").read_text())["dataset"]["n_train"] == 1347


def test_preset_assignment1_sets_the_course_settings_and_options_override_it(tmp_path, quick_plots):
    out = tmp_path / "a1"
    assert train("--preset", "assignment1", "--epochs", 1, "--out", out) == 0
    s = json.loads((out / "run.json").read_text())["settings"]
    assert (s["model"], s["optimizer"], s["lr"], s["lam"], s["batch_size"]) == \
        ("softmax", "sgd", 0.001, 0.0, 100)
    assert s["epochs"] == 1 and cli.PRESETS["assignment1"]["epochs"] == 40


# ---- resuming -------------------------------------------------------------------------------------

@pytest.mark.parametrize("options", [
    ("--optimizer", "momentum"),
    ("--model", "mlp", "--hidden", "12", "--batchnorm", "--optimizer", "adam", "--schedule", "step",
     "--step-size", 7),
], ids=["linear-momentum", "mlp-batchnorm-adam-step"])
def test_resume_after_2_epochs_to_4_equals_a_straight_4_epoch_run_bit_for_bit(tmp_path, capsys, options,
                                                                             quick_plots):
    a, b = tmp_path / "a", tmp_path / "b"
    assert train(*options, "--epochs", 2, "--out", a) == 0
    assert train("--resume", a, "--epochs", 4) == 0
    assert train(*options, "--epochs", 4, "--out", b) == 0
    resumed = models.load_model(a / "model.npz", backend="numpy")
    straight = models.load_model(b / "model.npz", backend="numpy")
    assert same_state(resumed, straight)
    drop = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    ha, hb = (json.loads((f / "history.json").read_text()) for f in (a, b))
    assert len(ha) == 4 and drop(ha) == drop(hb)
    run = json.loads((a / "run.json").read_text())
    assert run["settings"]["epochs"] == 4
    assert run["resumed"] == [f"gpugrad train --backend numpy --quiet --resume {a} --epochs 4"]
    lines = capsys.readouterr().out.splitlines()
    assert summary(lines[1])[:2] == summary(lines[2])[:2]  # same accuracy, 4 epochs each


def wait_for_checkpoint(proc, out, seconds=60):
    """Wait until the `gpugrad train` process `proc` has written out/checkpoint.npz (its first epoch
    done), failing if it exits first or none appears within `seconds`."""
    deadline = time.monotonic() + seconds
    while not (out / "checkpoint.npz").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"no checkpoint after {seconds} s"
        time.sleep(0.01)


def test_resume_refuses_changed_settings_and_fewer_epochs(tmp_path, capsys, quick_plots):
    out = tmp_path / "run"
    assert train("--epochs", 2, "--out", out) == 0
    capsys.readouterr()
    for argv, option in ((("--lr", 0.05), "--lr"), (("--model", "svm"), "--model"),
                         (("--out", tmp_path / "x"), "--out"), (("--epochs", 1), "--epochs")):
        with pytest.raises(SystemExit) as e:
            train("--resume", out, *argv)
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and len(err.splitlines()) == 1, err
        assert err.startswith("gpugrad train: error: ") and option in err, err
    # Unchanged settings repeated on the command line are fine.
    assert train("--resume", out, "--lr", 0.2, "--epochs", 3) == 0


def test_a_run_killed_mid_training_leaves_a_checkpoint_that_resumes_exactly(tmp_path):
    """SIGKILL mid-training; --resume then ends where a run never killed ends, bit for bit. All three
    runs are processes of their own, started alike: the test process's own state (its BLAS threads,
    read when it loaded numpy, may differ from what the environment now says, which Dask's import
    changes) must not be part of the comparison."""
    out = tmp_path / "killed"
    options = ["--data", "digits", "--backend", "numpy", "--quiet"]
    gpugrad = [sys.executable, "-m", "gpugrad", "train", *options]
    proc = subprocess.Popen([*gpugrad, "--epochs", "1000", "--out", str(out)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for_checkpoint(proc, out)
        time.sleep(0.05)  # kill somewhere in a later epoch, maybe while a checkpoint is written
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    epoch = trainer.load_checkpoint(out / "checkpoint.npz")["meta"]["epoch"]
    assert 1 <= epoch < 1000
    resumed = subprocess.run([*gpugrad, "--resume", str(out), "--epochs", str(epoch + 2)], cwd=tmp_path,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert summary(resumed.stdout)[1] == epoch + 2
    straight = subprocess.run([*gpugrad, "--epochs", str(epoch + 2), "--out", str(tmp_path / "straight")],
                              cwd=tmp_path, capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr
    assert same_state(models.load_model(out / "model.npz", backend="numpy"),
                      models.load_model(tmp_path / "straight" / "model.npz", backend="numpy"))


# ---- bad options ----------------------------------------------------------------------------------

BAD = [
    (("--batch-size", "0"), "--batch-size must be a positive integer, got 0"),
    (("--epochs", "0"), "--epochs must be a positive integer, got 0"),
    (("--epochs", "ten"), "--epochs must be a positive integer, got ten"),
    (("--lr", "-0.1"), "--lr must be a positive number, got -0.1"),
    (("--lr", "nan"), "--lr must be a positive number"),
    (("--lam", "-1"), "--lam must be a non-negative number"),
    (("--model", "cnn"), "--model"),
    (("--optimizer", "rmsprop"), "--optimizer"),
    (("--data", "MISSING/none.npz"), "--data"),
    (("--data", "cifar"), "--data cifar: no such file or folder"),
    (("--model", "mlp", "--hidden", "50,,x"), "--hidden must be a comma list of positive integers"),
    (("--model", "mlp", "--hidden", "50,0"), "--hidden must be a comma list of positive integers"),
    (("--hidden", "50"), "--hidden applies to --model mlp only"),
    (("--batchnorm",), "--batchnorm applies to --model mlp only"),
    (("--momentum", "0.5"), "--momentum applies to --optimizer momentum or nesterov only"),
    (("--step-size", "5"), "--step-size applies to --schedule step only"),
    (("--schedule", "cyclical", "--eta-min", "0.2", "--eta-max", "0.1"), "--eta-min must be below --eta-max"),
    (("--schedule", "cyclical", "--lr", "0.1"), "--lr does not apply to --schedule cyclical"),
    (("--validation-fraction", "1"), "--validation-fraction must be a number in [0, 1)"),
    (("--resume", "EMPTY"), "--resume"),
    (("--resume", "MISSING/folder"), "--resume"),
    (("--out", "FILE"), "--out"),
    (("--data", "FILE"), "--data"),
    (("--preset", "assignment9"), "--preset"),
]


@pytest.mark.parametrize("argv, message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_option_is_refused_before_any_work_with_one_line_naming_it(tmp_path, capsys, monkeypatch,
                                                                      argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "EMPTY").mkdir()
    (tmp_path / "FILE").write_text("not a data set")
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--backend", "numpy", *argv])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2
    assert err.startswith("gpugrad train: error: ") and len(err.splitlines()) == 1, err
    assert message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["EMPTY", "FILE"]  # nothing written


def test_a_malformed_data_file_is_refused_naming_it(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    np.savez(bad, X=np.ones((5, 3)))  # no y
    with pytest.raises(SystemExit) as e:
        train("--data", bad, "--out", tmp_path / "out")
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("gpugrad train: error: --data ")
    assert "lacks the array y" in err
    assert not (tmp_path / "out").exists()


def test_a_diverging_run_stops_with_one_line_naming_the_epoch(tmp_path, capsys, quick_plots):
    assert train("--lr", "1e30", "--epochs", 3, "--out", tmp_path / "nan") == 1
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "at epoch 1, step" in err and "RuntimeWarning" not in err, err
    assert captured.out == ""


# ---- other data -----------------------------------------------------------------------------------

def write_cifar_folder(folder: Path, rows_per_batch=20, seed=0):
    """CIFAR-10 python batches in the real format (pickled dicts, uint8 (n, 3072) and a list)."""
    rng = np.random.default_rng(seed)
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, rows_per_batch)
        # Class c is brighter in channel c % 3: learnable, and the templates show colour.
        X = rng.integers(0, 128, (rows_per_batch, 3072)).astype(np.uint8)
        for i, c in enumerate(labels):
            X[i, (c % 3) * 1024:(c % 3 + 1) * 1024] += np.uint8(100)
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": X, b"labels": labels.tolist(), b"batch_label": name.encode()}, f,
                        protocol=2)
    return folder


def test_cifar10_folder_trains_with_its_last_training_rows_as_validation(tmp_path, capsys):
    folder = write_cifar_folder(tmp_path / "cifar-10-batches-py")
    out = tmp_path / "run"
    assert train("--data", folder, "--epochs", 2, "--batch-size", 10, "--out", out) == 0
    accuracy, epochs, _ = summary(capsys.readouterr().out)
    model = models.load_model(out / "model.npz", backend="numpy")
    test = data.load_cifar10(folder, n_val=0)
    X = (test.X_test - model.buffers["x_mean"]) / model.buffers["x_std"]
    by_hand = np.mean(np.argmax(X @ model.params["W"].T + model.params["b"], axis=1) == test.y_test)
    assert epochs == 2 and accuracy == pytest.approx(by_hand, abs=5e-5)
    ds = json.loads((out / "run.json").read_text())["dataset"]
    assert (ds["name"], ds["n_train"], ds["n_val"], ds["n_test"], ds["image_shape"]) == \
        ("cifar10", 90, 10, 20, [32, 32, 3])
    assert (out / "templates.png").read_bytes()[:8] == PNG
    assert models.load_model(out / "model.npz", backend="numpy").params["W"].shape == (10, 3072)


def test_npz_data_with_any_labels_trains_and_resumes(tmp_path, capsys, quick_plots):
    rng = np.random.default_rng(1)
    y = rng.choice([3, 7, 11], 120)
    X = rng.standard_normal((120, 5)) + y[:, None] / 4.0
    np.savez(tmp_path / "toy.npz", X=X, y=y)
    out = tmp_path / "run"
    assert train("--data", tmp_path / "toy.npz", "--model", "svm", "--epochs", 2, "--batch-size", 16,
                 "--out", out) == 0
    assert train("--resume", out, "--epochs", 3) == 0
    accuracy, epochs, _ = summary(capsys.readouterr().out)
    assert epochs == 3 and accuracy > 0.5
    assert models.load_model(out / "model.npz", backend="numpy").params["W"].shape == (3, 5)
    assert (out / "curves.png").exists() and not (out / "templates.png").exists()  # no image shape


# ---- gradcheck ------------------------------------------------------------------------------------

@pytest.mark.parametrize("options", [
    ("--model", "softmax"), ("--model", "svm"), ("--model", "mlp", "--hidden", "6,5"),
    ("--model", "mlp", "--hidden", "6,5", "--batchnorm"),
], ids=["softmax", "svm", "mlp", "mlp-batchnorm"])
def test_gradcheck_prints_each_parameter_with_a_relative_error_below_1e_6(capsys, options):
    assert cli.main(["gradcheck", "--backend", "numpy", "--n", "5", *options]) == 0
    out = capsys.readouterr().out
    model = options[1]
    names = {"softmax": ["W", "b"], "svm": ["W", "b"], "mlp": ["W1", "b1", "W2", "b2", "W3", "b3"]}[model]
    if "--batchnorm" in options:
        names = ["W1", "b1", "gamma1", "beta1", "W2", "b2", "gamma2", "beta2", "W3", "b3"]
    rows = {line.split()[0]: line.split() for line in out.splitlines()[3:] if line.split()[0] in names}
    assert list(rows) == names, out
    for name, cols in rows.items():
        if cols[2:4] == ["0", "(no"]:  # a bias before batch norm: both gradients are 0
            assert "--batchnorm" in options and name in ("b1", "b2")
        else:
            assert float(cols[2]) < 1e-6, out
    assert out.splitlines()[-1] == "ok: every relative error is below 1e-06"


def test_gradcheck_fails_with_status_1_on_a_wrong_gradient(capsys, monkeypatch):
    right = models.LinearClassifier.loss_grad

    def off_by_one_percent(self, X, y, lam, sample_weight=None):
        cost, loss, grads = right(self, X, y, lam, sample_weight)
        return cost, loss, {**grads, "W": grads["W"] * 1.01}

    monkeypatch.setattr(models.LinearClassifier, "loss_grad", off_by_one_percent)
    assert cli.main(["gradcheck", "--backend", "numpy", "--n", "4"]) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == "FAILED: W above 1e-06"


def test_gradient_errors_check_loss_grad_against_the_graphs_backward_pass():
    """The gradients gradcheck calls analytic are the graph's (ops + generic backward) too, and its
    central differences agree with them; the perturbed parameters are restored."""
    import gpugrad as gg
    ds = data.load_digits()
    X, y = ds.X_train[:6].astype(np.float64) / 16, ds.y_train[:6]
    m = models.LinearClassifier(64, 10, backend="numpy", dtype="float64", seed=3)
    W0, b0 = m.params["W"].copy(), m.params["b"].copy()
    errors = cli.gradient_errors(m, X, y, lam=0.1)
    assert errors["W"]["relative"] < 1e-8 and errors["b"]["relative"] < 1e-8
    assert np.array_equal(m.params["W"], W0) and np.array_equal(m.params["b"], b0)
    W, b = gg.tensor(W0, requires_grad=True), gg.tensor(b0, requires_grad=True)
    (gg.cross_entropy(gg.tensor(X) @ W.T + b, y) + 0.1 * (W ** 2).sum()).backward()
    _, _, grads = m.loss_grad(X, y, 0.1)
    np.testing.assert_allclose(grads["W"], W.grad, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(grads["b"], b.grad, rtol=1e-12, atol=1e-15)


def test_gradcheck_bad_option_is_one_line_naming_it(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["gradcheck", "--n", "0"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err == "gpugrad gradcheck: error: --n must be a positive integer, got 0"


def test_version_and_no_command(capsys):
    import gpugrad
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"gpugrad {gpugrad.__version__}"
    assert cli.main([]) == 2 and "train" in capsys.readouterr().out


def test_help_names_the_preset_and_every_option(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = capsys.readouterr().out
    for option in ("--data", "--model", "--hidden", "--batchnorm", "--optimizer", "--schedule", "--lam",
                   "--lr", "--epochs", "--batch-size", "--seed", "--backend", "--out", "--resume",
                   "--quiet", "--validation-fraction", "--eta-min", "--eta-max", "--n-s", "--step-size",
                   "--gamma", "assignment1"):
        assert option in text, option


# ---- the CUDA path ---------------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["softmax", "mlp"])
def test_train_on_each_cuda_backend_matches_numpy(tmp_path, monkeypatch, capsys, quick_plots, cuda_backend,
                                                  model):
    """`gpugrad train` on a CUDA backend (the emulated one, a GPU) ends with the weights a numpy run
    reaches, within float32 rounding."""
    backend = cuda_backend
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 48)
    np.savez(tmp_path / "small.npz", X=rng.integers(0, 256, (48, 12)).astype(np.uint8) + y[:, None] * 20,
             y=y)
    options = ["--data", tmp_path / "small.npz", "--model", model, "--epochs", 2, "--batch-size", 12]
    options += ["--hidden", "5"] if model == "mlp" else []
    assert train(*options, "--out", tmp_path / "numpy") == 0
    monkeypatch.setattr(cli_options, "backend", lambda parser, name: backend)
    assert cli.main(["train", "--quiet", *map(str, options), "--out", str(tmp_path / "other")]) == 0
    assert f"| backend {backend.name} |" in capsys.readouterr().out.splitlines()[-1]
    ref = models.load_model(tmp_path / "numpy" / "model.npz", backend="numpy").state()
    got = models.load_model(tmp_path / "other" / "model.npz", backend="numpy").state()
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-4, atol=1e-5, err_msg=k)


# ---- what a user sees without --quiet -------------------------------------------------------------

HEADER = re.compile(r"^gpugrad train: (training|resuming|starting again \(no epoch had ended\)) "
                    r"linear softmax on digits \(1212 train, 135 validation, 450 test; 64 features\) "
                    r"(for \d+ epochs?|up to epoch \d+) \| sgd, lr 0\.2, lam 0\.001, batch 100 \| "
                    r"backend numpy \| out (.+)$")


def command(name, *argv):
    """cli.main for `gpugrad <name> --backend numpy ...` (no --quiet: what a user sees); SystemExit's
    code for a refusal."""
    try:
        return cli.main([name, "--backend", "numpy", *map(str, argv)])
    except SystemExit as e:
        return e.code


def run_cli(*argv):
    return command("train", *argv)


def test_a_run_prints_its_header_line_and_its_summary(tmp_path, capsys, quick_plots):
    out = tmp_path / "run"
    assert run_cli("--epochs", 2, "--out", out) == 0
    captured = capsys.readouterr()
    [header] = captured.err.splitlines()  # stderr is no terminal here: no progress bar
    m = HEADER.match(header)
    assert m and m.group(1) == "training" and m.group(2) == "for 2 epochs" and m.group(3) == str(out), header
    assert summary(captured.out)[1:] == (2, str(out))
    assert run_cli("--resume", out, "--epochs", 3) == 0
    captured = capsys.readouterr()
    m = HEADER.match(captured.err.strip())
    assert m and m.group(1) == "resuming" and m.group(2) == "up to epoch 3", captured.err


# `python -m gpugrad` started as a terminal starts it: SIGINT neither blocked nor ignored. A process
# inherits both from its parent, and Python turns SIGINT into KeyboardInterrupt only where it finds
# SIGINT at its default; a test process's threads and libraries may have left it otherwise (in CI
# a run so started went on training after the SIGINT, twice).
AS_FROM_A_TERMINAL = ("import runpy, signal; signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT}); "
                      "signal.signal(signal.SIGINT, signal.default_int_handler); "
                      "runpy.run_module('gpugrad', run_name='__main__', alter_sys=True)")


def test_ctrl_c_stops_a_real_run_writes_its_outputs_and_says_how_to_continue(tmp_path, quick_plots):
    """SIGINT to a real `gpugrad train` process: exit status 130, the outputs of the epochs done,
    and the line that says how far it got and how to continue; then --resume continues it."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", AS_FROM_A_TERMINAL, "train", "--backend", "numpy",
                             "--epochs", "100000", "--out", str(out)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONFAULTHANDLER": "1"})  # SIGABRT: every thread's stack
    try:
        wait_for_checkpoint(proc, out)
        proc.send_signal(signal.SIGINT)
        try:  # (the outputs are written with a sync to disk each: slow on a busy disk)
            stdout, stderr = proc.communicate(timeout=150)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            pytest.fail("gpugrad train did not stop within 150 s of SIGINT; where it was:\n"
                        + proc.communicate(timeout=30)[1][-6000:])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stderr
    lines = stderr.strip().splitlines()
    assert HEADER.match(lines[0]), stderr
    m = re.fullmatch(r"gpugrad train: stopped after epoch (\d+) of 100000; continue with: "
                     rf"gpugrad train --resume {re.escape(str(out))}", lines[-1])
    assert m and len(lines) == 2, stderr
    done = int(m.group(1))
    accuracy, epochs, _ = summary(stdout)
    assert epochs == done >= 1
    history = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in history] == list(range(1, done + 1))
    model = models.load_model(out / "model.npz", backend="numpy")
    assert same_state(model, trainer.load_checkpoint(out / "checkpoint.npz")["model"])
    for png in ("curves.png", "templates.png"):
        assert (out / png).read_bytes()[:8] == PNG
    result = json.loads((out / "run.json").read_text())["result"]
    assert result["stopped"] == "interrupted" and result["epochs"] == done
    assert result["test"]["accuracy"] == pytest.approx(accuracy, abs=5e-5)
    assert train("--resume", out, "--epochs", done + 1) == 0


def interrupt_after(monkeypatch, saves, error=KeyboardInterrupt):
    """Make the trainer raise ``error`` right after its checkpoint number ``saves`` (0: at the first,
    before it is written), as a Ctrl-C or a NaN cost between epochs would."""
    real, count = trainer.Trainer.save_checkpoint, [0]

    def save(self, path):
        if count[0] == saves:
            raise error("the cost became nan at epoch 3, step 1 of 13" if error is FloatingPointError else "")
        count[0] += 1
        return real(self, path)
    monkeypatch.setattr(trainer.Trainer, "save_checkpoint", save)


def test_ctrl_c_writes_the_outputs_of_the_epochs_in_the_checkpoint(tmp_path, capsys, monkeypatch,
                                                                   quick_plots):
    out = tmp_path / "run"
    interrupt_after(monkeypatch, 2)
    assert run_cli("--epochs", 5, "--out", out) == 130
    captured = capsys.readouterr()
    assert captured.err.splitlines()[-1] == (f"gpugrad train: stopped after epoch 2 of 5; continue with: "
                                             f"gpugrad train --resume {out}")
    assert summary(captured.out)[1] == 2
    assert [r["epoch"] for r in json.loads((out / "history.json").read_text())] == [1, 2]
    assert [name for name, _ in quick_plots] == ["history", "templates"]
    monkeypatch.undo()
    assert train("--resume", out) == 0  # the run's own --epochs 5
    assert train("--epochs", 5, "--out", tmp_path / "straight") == 0
    assert same_state(models.load_model(out / "model.npz", backend="numpy"),
                      models.load_model(tmp_path / "straight" / "model.npz", backend="numpy"))


def test_a_run_stopped_in_its_first_epoch_can_be_started_again_in_its_folder(tmp_path, capsys,
                                                                              monkeypatch, quick_plots):
    """No checkpoint yet: nothing is saved, and neither --resume nor a new run with the same --out
    refuses the folder (the loop a user could once only leave with rm -r)."""
    out = tmp_path / "run"
    interrupt_after(monkeypatch, 0)
    assert run_cli("--epochs", 2, "--out", out) == 130
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"gpugrad train: interrupted before epoch 1 ended; nothing was saved; start it again with: "
        f"gpugrad train --resume {out}")
    assert sorted(p.name for p in out.iterdir()) == ["run.json"]
    monkeypatch.undo()
    assert run_cli("--resume", out) == 0
    captured = capsys.readouterr()
    assert HEADER.match(captured.err.strip()).group(1) == "starting again (no epoch had ended)"
    assert summary(captured.out)[1] == 2
    # The same goes for a run that diverged in its first epoch: the folder is taken over.
    bad = tmp_path / "nan"
    assert run_cli("--lr", "1e30", "--epochs", 2, "--out", bad) == 1
    err = capsys.readouterr().err.splitlines()[-1]
    assert "at epoch 1, step" in err and f"nothing was saved: train with other settings (--out {bad} " \
        "may be used again)" in err, err
    assert run_cli("--lr", 0.1, "--epochs", 2, "--out", bad) == 0
    assert json.loads((bad / "run.json").read_text())["settings"]["lr"] == 0.1


def test_a_folder_a_run_is_training_in_is_neither_taken_over_nor_resumed(tmp_path, capsys, monkeypatch,
                                                                          quick_plots):
    """A first epoch can take minutes: while its run holds the folder's lock, another run does not
    take the folder (run.json, no checkpoint yet) over, and --resume refuses it."""
    monkeypatch.chdir(tmp_path)
    busy = tmp_path / "runs" / "digits-softmax"
    busy.mkdir(parents=True)
    (busy / "run.json").write_text("{}")
    held = cli._hold(busy)  # as the training process holds it
    try:
        for argv in (("--out", busy), ("--resume", busy)):
            assert run_cli(*argv) == 2
            err = capsys.readouterr().err.strip()
            assert err.endswith(f"{busy}: a gpugrad train process is training in this folder now"), err
        assert train("--epochs", 1) == 0  # the default folder name passes it by
        assert summary(capsys.readouterr().out)[2] == os.path.join("runs", "digits-softmax-2")
    finally:
        held.close()
    assert train("--epochs", 1) == 0  # released: the folder is taken over
    assert summary(capsys.readouterr().out)[2] == os.path.join("runs", "digits-softmax")


def test_a_run_that_diverges_later_keeps_the_outputs_of_the_epochs_before(tmp_path, capsys, monkeypatch,
                                                                          quick_plots):
    out = tmp_path / "run"
    interrupt_after(monkeypatch, 2, FloatingPointError)
    assert run_cli("--epochs", 5, "--out", out) == 1
    captured = capsys.readouterr()
    assert captured.err.splitlines()[-1] == (
        f"gpugrad train: error: the cost became nan at epoch 3, step 1 of 13; the outputs of its 2 "
        f"epochs are in {out} (to train with other settings: another --out, or --overwrite)")
    assert summary(captured.out)[1] == 2
    assert json.loads((out / "run.json").read_text())["result"]["stopped"] == "diverged"


def test_overwrite_replaces_a_finished_run_and_leaves_other_files(tmp_path, capsys, quick_plots):
    out = tmp_path / "run"
    assert train("--epochs", 1, "--out", out) == 0
    (out / "notes.txt").write_text("mine")
    assert run_cli("--epochs", 1, "--out", out) == 2
    assert capsys.readouterr().err.strip() == (
        f"gpugrad train: error: --out {out}: the folder is not empty; it holds a run: continue it "
        f"with --resume {out}, or replace it with --overwrite")
    assert train("--model", "mlp", "--hidden", "8", "--epochs", 2, "--out", out, "--overwrite") == 0
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.npz", "curves.png", "history.csv",
                                                     "history.json", "model.npz", "notes.txt", "run.json"]
    assert (out / "notes.txt").read_text() == "mine"  # no templates.png of the linear run either
    assert trainer.load_checkpoint(out / "checkpoint.npz")["meta"]["epoch"] == 2
    assert run_cli("--resume", out, "--overwrite") == 2
    assert "--overwrite does not apply with --resume" in capsys.readouterr().err


RESUME_REFUSALS = [
    (lambda out: ("--resume", out, "--lr", 0.05), "--lr 0.05 differs from the run in {out} (--lr 0.2)"),
    (lambda out: ("--resume", out, "--epochs", 1), "--epochs 1: the run in {out} has already trained 2 epochs"),
    (lambda out: ("--resume", out, "--momentum", 0.9),
     "--momentum 0.9: the run in {out} does not use it (its optimiser is sgd)"),
    (lambda out: ("--resume", out, "--out", "elsewhere"), "--out does not apply with --resume"),
    (lambda out: ("--resume", out, "--preset", "assignment1"), "--preset does not apply with --resume"),
    (lambda out: ("--resume", out.parent / "missing"), "--resume {out.parent}/missing: no such folder"),
    (lambda out: ("--resume", out.parent), "no run.json there (not a gpugrad train output folder)"),
]


def test_resume_refusals_are_one_line_naming_the_option(tmp_path, capsys, quick_plots):
    out = tmp_path / "run"
    assert train("--epochs", 2, "--out", out) == 0
    capsys.readouterr()
    for argv, message in RESUME_REFUSALS:
        assert run_cli(*argv(out)) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.startswith("gpugrad train: error: "), captured
        assert len(captured.err.strip().splitlines()) == 1 and message.format(out=out) in captured.err, \
            captured.err
    # A checkpoint that is not one: named, and said to be no gpugrad checkpoint (numpy's
    # allow_pickle hint is no help).
    (out / "checkpoint.npz").write_text("epoch 2, trust me\n")
    assert run_cli("--resume", out) == 2
    assert capsys.readouterr().err.strip() == (
        f"gpugrad train: error: --resume {out}: {out / 'checkpoint.npz'}: not a gpugrad checkpoint: "
        f"a text file, not an .npz archive")


def test_run_json_records_only_the_settings_the_run_uses(tmp_path, quick_plots):
    def settings(*argv):
        out = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
        assert train(*argv, "--epochs", 1, "--out", out) == 0
        return json.loads((out / "run.json").read_text())["settings"]
    s = settings()  # softmax, plain sgd, constant rate
    for unused in ("momentum", "eta_min", "eta_max", "n_s", "step_size", "gamma", "hidden", "batchnorm"):
        assert unused not in s, unused
    assert (s["optimizer"], s["schedule"], s["lr"], s["lam"]) == ("sgd", "constant", 0.2, 0.001)
    s = settings("--optimizer", "momentum", "--schedule", "cyclical", "--model", "mlp", "--hidden", 6)
    assert "lr" not in s and (s["momentum"], s["eta_min"], s["eta_max"], s["hidden"], s["batchnorm"]) == \
        (0.9, 1e-5, 0.1, "6", False)
    assert s["n_s"] == 2 * (1212 // 100)  # filled in from the data: the value the run used
    s = settings("--schedule", "step", "--optimizer", "adam")
    assert (s["lr"], s["step_size"], s["gamma"]) == (0.001, 10 * 13, 0.1) and "momentum" not in s


def test_a_rising_cost_is_reported_while_training_and_shaded_in_the_curves(tmp_path, capsys, monkeypatch,
                                                                           quick_plots):
    """--lr 100 on digits: the cost jumps around far above its best; a warning line says so during
    the run (not after), and the curves shade those epochs."""
    out = tmp_path / "run"
    assert run_cli("--lr", 100, "--epochs", 12, "--out", out) == 0
    err = capsys.readouterr().err.splitlines()
    warning = [line for line in err if line.startswith("gpugrad train: warning: ")]
    assert len(warning) == 1 and "the training cost has stayed above 1.5x its lowest" in warning[0] and \
        "the learning rate (100) is probably too high" in warning[0], err
    assert err.index(warning[0]) == 1  # right after the header, before the run's end
    rows = json.loads((out / "history.json").read_text())
    high = trainer.cost_too_high([r["cost"] for r in rows])
    from matplotlib.axes import Axes
    spans = []
    real = Axes.axvspan
    monkeypatch.setattr(Axes, "axvspan", lambda self, *a, **kw: spans.append(a) or real(self, *a, **kw))
    REAL_PLOT_HISTORY(rows, tmp_path / "curves.png")  # what the run drew in its curves.png
    assert spans and sum(hi - lo for lo, hi in spans) == high.sum()  # one epoch wide each
    assert all(high[int(lo + 0.5) - 1:int(hi - 0.5)].all() for lo, hi in spans)
    # The default rate trains quietly.
    assert run_cli("--epochs", 12, "--out", tmp_path / "fine") == 0
    assert not [line for line in capsys.readouterr().err.splitlines() if "warning" in line]


def test_single_class_data_is_refused_with_the_estimators_message(tmp_path, capsys):
    from gpugrad import SoftmaxClassifier
    X = np.random.default_rng(0).standard_normal((40, 3))
    np.savez(tmp_path / "one.npz", X=X, y=np.full(40, 7))
    with pytest.raises(ValueError) as estimator:
        SoftmaxClassifier(backend="numpy").fit(X, np.full(40, 7))
    assert run_cli("--data", tmp_path / "one.npz", "--out", tmp_path / "run") == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"gpugrad train: error: --data {tmp_path / 'one.npz'}: "
                   + str(estimator.value).replace("SoftmaxClassifier", "gpugrad train"))
    assert "needs samples of at least 2 classes, but the data contain only one class: [7]" in err
    assert not (tmp_path / "run").exists()


def test_train_help_starts_fast_and_imports_no_scientific_stack():
    """`gpugrad train --help` imports neither scikit-learn, scipy, pandas, matplotlib nor tqdm, and a
    digits run imports no scikit-learn, scipy or pandas (matplotlib only to draw its curves)."""
    code = ("import sys, io, contextlib; from gpugrad.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "heavy = ('sklearn', 'scipy', 'pandas', 'matplotlib', 'tqdm', 'torch', 'dask')\n"
            "print(sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0] in heavy}), file=sys.stderr)")
    for argv, allowed in ((["train", "--help"], []), (["predict", "--help"], []),
                          (["train", "--backend", "numpy", "--quiet", "--epochs", "1", "--out", "RUN"],
                           ["matplotlib"])):
        with tempfile.TemporaryDirectory() as tmp:
            argv = [a.replace("RUN", os.path.join(tmp, "run")) for a in argv]
            r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                               cwd=tmp, timeout=120)
        assert r.returncode == 0, r.stderr
        assert eval(r.stderr.strip().splitlines()[-1]) == allowed, (argv, r.stderr)


# ---- gpugrad predict --------------------------------------------------------------------------------

def predict(*argv):
    return command("predict", *argv)


def test_predict_writes_the_labels_and_the_accuracy_of_a_trained_run(tmp_path, capsys, quick_plots):
    run = tmp_path / "run"
    assert train("--epochs", 3, "--out", run) == 0
    accuracy = summary(capsys.readouterr().out)[0]
    csv_path = tmp_path / "p.csv"
    assert predict(run, "digits", "--out", csv_path) == 0  # the run's folder: its model.npz
    line = capsys.readouterr().out.strip()
    m = re.fullmatch(r"accuracy (\d\.\d{4}) \((\d+) of 450\) \| 450 predictions of the 450 digits test "
                     rf"rows -> {re.escape(str(csv_path))} \| LinearClassifier\(64 -> 10, softmax, 650 "
                     r"parameters, float32, numpy, normalises inputs\)", line)
    assert m and float(m.group(1)) == accuracy, line  # the run's own test accuracy
    ds = data.load_digits()
    model = models.load_model(run / "model.npz", backend="numpy")
    X = (ds.X_test - model.buffers["x_mean"]) / model.buffers["x_std"]
    want = np.argmax(X @ model.params["W"].T + model.params["b"], axis=1)  # by hand
    rows = csv_path.read_text().splitlines()
    assert rows[0] == "prediction,label" and len(rows) == 451
    assert [r.split(",") for r in rows[1:]] == [[str(p), str(t)] for p, t in zip(want, ds.y_test)]
    assert int(m.group(2)) == int((want == ds.y_test).sum())
    assert predict(run / "model.npz", "digits", "--out", tmp_path / "p.npy") == 0
    assert np.array_equal(np.load(tmp_path / "p.npy"), want)


def test_predict_maps_classes_back_to_the_datas_own_labels(tmp_path, capsys, quick_plots):
    """A model trained on labels 3, 7, 11 predicts 3, 7 or 11; new rows without labels get
    predictions only; rows with labels, the accuracy against them."""
    rng = np.random.default_rng(1)
    y = rng.choice([3, 7, 11], 300)
    X = rng.standard_normal((300, 4)) + y[:, None] / 3.0
    np.savez(tmp_path / "train.npz", X=X, y=y)
    assert train("--data", tmp_path / "train.npz", "--epochs", 5, "--out", tmp_path / "run") == 0
    capsys.readouterr()
    np.savez(tmp_path / "new.npz", X=X[:50])
    assert predict(tmp_path / "run", tmp_path / "new.npz", "--out", tmp_path / "new.csv") == 0
    assert capsys.readouterr().out.startswith(f"50 predictions of the 50 rows of {tmp_path / 'new.npz'} -> ")
    rows = (tmp_path / "new.csv").read_text().splitlines()
    assert rows[0] == "prediction" and set(rows[1:]) <= {"3", "7", "11"} and len(rows) == 51
    model = models.load_model(tmp_path / "run" / "model.npz", backend="numpy")
    assert model.class_names == ["3", "7", "11"]
    want = np.array([3, 7, 11])[np.asarray(model.predict(X[:50]))]
    assert [int(r) for r in rows[1:]] == want.tolist()
    np.savez(tmp_path / "labelled.npz", X=X[:50], y=y[:50])
    assert predict(tmp_path / "run", tmp_path / "labelled.npz", "--out", tmp_path / "l.npy") == 0
    right = int((want == y[:50]).sum())
    assert capsys.readouterr().out.startswith(f"accuracy {right / 50:.4f} ({right} of 50) | ")
    assert np.array_equal(np.load(tmp_path / "l.npy"), want)


def test_predict_refuses_bad_input_with_one_line_naming_it(tmp_path, capsys, quick_plots):
    run = tmp_path / "run"
    assert train("--epochs", 1, "--out", run) == 0
    capsys.readouterr()
    (tmp_path / "text.npz").write_text("not an archive\n")
    np.savez(tmp_path / "wide.npz", X=np.zeros((3, 65)))
    np.savez(tmp_path / "noX.npz", rows=np.zeros((3, 64)))
    np.savez(tmp_path / "labels.npz", X=np.zeros((3, 64)), y=np.array([1, 2, 12]))
    (tmp_path / "empty").mkdir()
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "run.json").write_text("{}")
    cases = [
        ((tmp_path / "missing.npz", "digits"), f"MODEL {tmp_path / 'missing.npz'}: no such file or folder"),
        ((tmp_path / "text.npz", "digits"),
         f"MODEL {tmp_path / 'text.npz'}: not a gpugrad model file: a text file, not an .npz archive"),
        ((tmp_path / "empty", "digits"), f"MODEL {tmp_path / 'empty'}: the folder holds no model.npz"),
        ((tmp_path / "unfinished", "digits"),
         f"its run has not finished: gpugrad train --resume {tmp_path / 'unfinished'} writes it"),
        ((run, tmp_path / "wide.npz"), "its rows have 65 features; the model in"),
        ((run, tmp_path / "noX.npz"), "it has no array X (it holds: rows)"),
        ((run, tmp_path / "text.npz"), f"DATA {tmp_path / 'text.npz'}: a text file, not an .npz archive"),
        ((run, tmp_path / "labels.npz"), "label y[2] = 12 is not one of the model's classes (0, 1, 2,"),
        ((run, tmp_path / "none.npz"), f"DATA {tmp_path / 'none.npz'}: no such file or folder"),
        ((run, "digits", "--out", tmp_path / "p.txt"), "--out"),
        ((run, "digits", "--out", tmp_path / "no" / "p.csv"), f"folder {tmp_path / 'no'} does not exist"),
    ]
    for argv, message in cases:
        assert predict(*argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("gpugrad predict: error: ") and len(err.splitlines()) == 1, err
        assert message in err, err
    assert not (tmp_path / "predictions.csv").exists() and not (tmp_path / "p.txt").exists()

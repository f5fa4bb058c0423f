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
import time
from pathlib import Path

import numpy as np
import pytest

from gpugrad import cli, data, models, trainer

PNG = b"\x89PNG\r\n\x1a\n"
SUMMARY = re.compile(r"^test accuracy (\d\.\d{4}) \| (\d+) epochs? in [\d.]+ s \| backend numpy \| out (.+)$")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def quick_plots(monkeypatch):
    """Rendering PNGs is matplotlib's time, not the command line's, and tests/test_plots.py checks
    the pictures: tests that take this fixture get stand-ins that record what was asked and write
    a PNG signature only (the first test here and the CIFAR-10 one render the real PNGs)."""
    calls = []
    from gpugrad import plots

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
    assert all(0 <= r["val_accuracy"] <= 1 and r["cost"] >= r["loss"] for r in rows)
    csv_lines = (out / "history.csv").read_text().splitlines()
    assert csv_lines[0].startswith("epoch,loss,cost,accuracy,val_loss") and len(csv_lines) == 4
    for png in ("curves.png", "templates.png"):
        assert (out / png).read_bytes()[:8] == PNG, png
    run = json.loads((out / "run.json").read_text())
    assert run["settings"]["epochs"] == 3 and run["model"] == model.config()
    keep, held = data.stratified_split(ds.y_train, 0.1, 0)  # the trainer's validation split
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


def test_a_run_killed_mid_training_leaves_a_checkpoint_that_resumes_exactly(tmp_path, capsys, quick_plots):
    out = tmp_path / "killed"
    options = ["--data", "digits", "--backend", "numpy", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "gpugrad", "train", *options, "--epochs", "1000",
                             "--out", str(out)], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (out / "checkpoint.npz").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no checkpoint after 60 s"
            time.sleep(0.01)
        time.sleep(0.05)  # kill somewhere in a later epoch, maybe while a checkpoint is written
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    epoch = trainer.load_checkpoint(out / "checkpoint.npz")["meta"]["epoch"]
    assert 1 <= epoch < 1000
    assert train("--resume", out, "--epochs", epoch + 2) == 0
    assert summary(capsys.readouterr().out)[1] == epoch + 2
    assert cli.main(["train", *options, "--epochs", str(epoch + 2), "--out", str(tmp_path / "straight")]) == 0
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
    assert epochs == 2 and 0 <= accuracy <= 1
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
def test_train_on_each_backend_matches_numpy(tmp_path, monkeypatch, capsys, quick_plots, backend, model):
    """`gpugrad train` on the backend under test (numpy, the emulated CUDA backend, a GPU) ends with
    the weights a numpy run reaches, within float32 rounding."""
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 48)
    np.savez(tmp_path / "small.npz", X=rng.integers(0, 256, (48, 12)).astype(np.uint8) + y[:, None] * 20,
             y=y)
    options = ["--data", tmp_path / "small.npz", "--model", model, "--epochs", 2, "--batch-size", 12]
    options += ["--hidden", "5"] if model == "mlp" else []
    assert train(*options, "--out", tmp_path / "numpy") == 0
    monkeypatch.setattr(cli, "_backend", lambda parser, name: backend)
    assert cli.main(["train", "--quiet", *map(str, options), "--out", str(tmp_path / "other")]) == 0
    assert f"| backend {backend.name} |" in capsys.readouterr().out.splitlines()[-1]
    ref = models.load_model(tmp_path / "numpy" / "model.npz", backend="numpy").state()
    got = models.load_model(tmp_path / "other" / "model.npz", backend="numpy").state()
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-4, atol=1e-5, err_msg=k)

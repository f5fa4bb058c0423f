"""The trainer: exact resume, checkpoints that survive SIGKILL, NaN stops, early stopping,
one host read an epoch on the CUDA backend, history, progress bar, input checks."""
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import gpugrad as gg
from gpugrad.training.models import MLP, LinearClassifier
from gpugrad.training.trainer import Trainer, load_checkpoint


def blobs(rng, n=240, d=6, C=3, dtype=np.float64):
    """Separable-ish clusters: a problem training visibly improves on."""
    centres = rng.standard_normal((C, d)) * 3
    y = rng.integers(0, C, n)
    return (centres[y] + rng.standard_normal((n, d))).astype(dtype), y


def make(kind, backend="numpy", d=6, C=3, **kw):
    if kind == "linear":
        return LinearClassifier(d, C, backend=backend, dtype="float64", **kw)
    return MLP(d, C, (8,), batchnorm=True, backend=backend, dtype="float64", **kw)


def trainer(model, **kw):
    opts = dict(epochs=4, batch_size=32, lam=1e-3, seed=3, validation_fraction=0.2, progress=False)
    opts.update(kw)
    return Trainer(model, opts.pop("optimizer", gg.optim.Adam(0.01)), **opts)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_training_learns_and_records_history(rng, kind):
    X, y = blobs(rng)
    t = trainer(make(kind), epochs=6)
    h = t.fit(X, y)
    assert len(h) == 6 and h["epoch"] == list(range(1, 7))
    assert h["loss"][-1] < h["loss"][0] and h["accuracy"][-1] > 0.8 and h["val_accuracy"][-1] > 0.8
    row = h.rows[-1]
    assert row["cost"] == pytest.approx(row["loss"] + 1e-3 * float(t.model.penalty()))
    assert row["lr"] == 0.01 and row["seconds"] > 0
    ev = t.evaluate(X, y)
    S = t.model.scores(t.model.prepare(X))  # by hand from the scores: mean loss, accuracy, cost
    loss = np.mean(np.logaddexp.reduce(S, axis=1) - S[np.arange(len(y)), y])
    penalty = sum((W ** 2).sum() for k, W in t.model.params.items() if k.startswith("W"))
    assert ev["accuracy"] == np.mean(np.argmax(S, axis=1) == y) > 0.8
    assert ev["loss"] == pytest.approx(loss, rel=1e-12)
    assert ev["cost"] == pytest.approx(loss + 1e-3 * penalty, rel=1e-12)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
@pytest.mark.parametrize("optimizer", ["sgd", "nesterov", "adam"])
def test_resume_after_any_epoch_is_bit_identical(tmp_path, rng, kind, optimizer):
    X, y = blobs(rng)
    opt = lambda: gg.optim.make_optimizer(optimizer, lr=gg.optim.Cyclical(1e-3, 0.05, 5))  # noqa: E731
    straight = trainer(make(kind), optimizer=opt(), epochs=5)
    straight.fit(X, y)
    for stop in (1, 3):
        ck = tmp_path / f"ck{stop}.npz"
        trainer(make(kind), optimizer=opt(), epochs=stop, checkpoint=ck).fit(X, y)
        resumed = trainer(make(kind, seed=99), optimizer=opt(), epochs=5, checkpoint=ck)
        resumed.fit(X, y, resume=ck)  # a differently initialised model: everything comes from ck
        for k, v in straight.model.state().items():
            np.testing.assert_array_equal(resumed.model.state()[k], v, err_msg=f"{k} after stopping at {stop}")
        figures = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h.rows]  # noqa: E731
        assert figures(resumed.history) == figures(straight.history)


def test_resume_refuses_other_settings_and_other_models(tmp_path, rng):
    X, y = blobs(rng)
    ck = tmp_path / "ck.npz"
    trainer(make("linear"), epochs=1, checkpoint=ck).fit(X, y)
    with pytest.raises(ValueError, match="batch_size=32.*batch_size=64"):
        trainer(make("linear"), epochs=2, batch_size=64).fit(X, y, resume=ck)
    with pytest.raises(ValueError, match="ck.npz.*not this mlp model"):
        trainer(make("mlp"), epochs=2).fit(X, y, resume=ck)


def test_nan_cost_stops_naming_epoch_and_step_and_keeps_the_checkpoint(tmp_path, rng):
    X, y = blobs(rng, n=100)
    ck = tmp_path / "ck.npz"
    t = trainer(make("linear"), optimizer=gg.optim.SGD(0.1), epochs=2, checkpoint=ck, validation_fraction=0)
    t.fit(X, y)
    before = ck.read_bytes()
    t.epochs = 3
    blow_up = {"step": 0}
    real = t.model.program

    class Poisoned:  # the step's program, with a NaN loss at the third step
        def __init__(self, program):
            self.program = program

        def run(self, *args):
            blow_up["step"] += 1
            loss = self.program.run(*args)
            return loss * np.nan if blow_up["step"] == 3 else loss

    t.model.program = lambda *a, **k: Poisoned(real(*a, **k))
    with pytest.raises(FloatingPointError, match=r"nan at epoch 3, step 3 of 4.*ck.npz \(epoch 2\)"):
        t.fit(X, y)
    assert ck.read_bytes() == before


def test_sigkill_at_any_moment_leaves_a_loadable_checkpoint(tmp_path):
    ck = tmp_path / "ck.npz"
    script = textwrap.dedent(f"""
        import numpy as np, gpugrad as gg, sys
        rng = np.random.default_rng(0)
        X, y = rng.standard_normal((2000, 64)), rng.integers(0, 10, 2000)
        m = gg.models.MLP(64, 10, (64,), backend="numpy")
        t = gg.Trainer(m, "sgd", epochs=10**6, batch_size=500, progress=False, checkpoint={str(ck)!r},
                       callbacks=[lambda t, e, r: print(e, flush=True)])
        t.fit(X, y)
    """)
    for delay in (0.4, 0.9, 1.3):
        p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "1"  # one checkpoint written at least
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        ckpt = load_checkpoint(ck)
        assert ckpt["meta"]["epoch"] >= 1 and len(ckpt["meta"]["history"]) == ckpt["meta"]["epoch"]


def test_early_stopping_restores_the_best_epoch(rng):
    X, y = rng.standard_normal((100, 30)), rng.integers(0, 3, 100)  # random labels: it overfits
    seen = []
    t = trainer(make("linear", d=30), optimizer=gg.optim.SGD(0.5), epochs=60, early_stopping=True,
                n_iter_no_change=3, callbacks=[lambda t, e, r: seen.append(t.model.state()["W"])])
    h = t.fit(X, y)
    best = int(np.nanargmin(h["val_loss"]))
    assert len(h) < 60 and len(h) - 1 - best >= 3
    np.testing.assert_array_equal(t.model.params["W"], seen[best])


def test_callback_can_stop_training(rng):
    X, y = blobs(rng, n=64)
    h = trainer(make("linear"), epochs=10, callbacks=[lambda t, e, r: e == 2]).fit(X, y)
    assert len(h) == 2


def test_fit_again_continues_the_epochs(rng):
    X, y = blobs(rng, n=64)
    t = trainer(make("linear"), epochs=2)
    t.fit(X, y)
    t.epochs = 3
    assert t.fit(X, y)["epoch"] == [1, 2, 3]


def test_history_files(tmp_path, rng):
    X, y = blobs(rng, n=64)
    h = trainer(make("linear"), epochs=2, validation_fraction=0, eval_train=False).fit(X, y)
    assert math.isnan(h["accuracy"][0]) and math.isnan(h["val_loss"][0])
    rows = json.loads(open(h.to_json(tmp_path / "h.json")).read())
    assert rows[0]["accuracy"] is None and rows[1]["epoch"] == 2
    lines = open(h.to_csv(tmp_path / "h.csv")).read().splitlines()
    assert lines[0].split(",") == list(gg.trainer.COLUMNS) and len(lines) == 3


def test_progress_bar_when_asked_and_quiet_otherwise(rng, capsys):
    X, y = blobs(rng, n=64)
    trainer(make("linear"), epochs=2, progress=True).fit(X, y)
    assert "step" in capsys.readouterr().err
    trainer(make("linear"), epochs=2, progress=None).fit(X, y)  # stderr is not a terminal here
    assert capsys.readouterr().err == ""


def test_bad_data_and_settings_are_named(rng):
    X, y = blobs(rng, n=64)
    with pytest.raises(ValueError, match=r"y\[5\] = 3"):
        trainer(make("linear")).fit(X, np.where(np.arange(64) == 5, 3, y))
    Xn = X.copy()
    Xn[7, 2] = np.nan
    with pytest.raises(ValueError, match="X.*NaN"):
        trainer(make("linear")).fit(Xn, y)
    with pytest.raises(ValueError, match="batch_size"):
        trainer(make("linear"), batch_size=0)
    with pytest.raises(ValueError, match="validation_fraction"):
        trainer(make("linear"), validation_fraction=1.0)
    with pytest.raises(ValueError, match="sample_weight must be >= 0"):
        trainer(make("linear")).fit(X, y, sample_weight=-np.ones(64))
    with pytest.raises(TypeError, match="labels y must be integers"):
        trainer(make("linear")).fit(X, y.astype(float))


def test_sample_weights_equal_repeated_rows(rng):
    """Full-batch steps: integer weights w_i give the gradient of the data with row i repeated w_i times
    (divided by the same n), so plain gradient descent lands on the same weights."""
    X, y = blobs(rng, n=30)
    w = rng.integers(0, 3, 30)
    a = Trainer(make("linear"), gg.optim.SGD(0.5), epochs=5, batch_size=30, progress=False)
    a.fit(X, y, sample_weight=w.astype(float))
    rep = np.repeat(np.arange(30), w)
    b = Trainer(make("linear"), gg.optim.SGD(0.5 * len(rep) / 30), epochs=5, batch_size=len(rep), progress=False)
    b.fit(X[rep], y[rep])
    np.testing.assert_allclose(a.model.params["W"], b.model.params["W"], rtol=1e-10)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_cuda_backend_reads_the_host_once_an_epoch(backend, rng, monkeypatch, kind):
    """On the emulated CUDA backend: the epoch's one device-to-host read (besides checkpoints), the
    data checked once, and the same training as numpy within float32 rounding."""
    if backend.xp is np:
        pytest.skip("the numpy backend has no host/device boundary")
    X, y = blobs(rng, n=96, dtype=np.float32)
    mk = lambda be: (LinearClassifier(6, 3, backend=be) if kind == "linear"  # noqa: E731
                     else MLP(6, 3, (8,), batchnorm=True, backend=be))
    reads = {"to_numpy": 0, "first_invalid": 0}
    for name in reads:
        real = getattr(backend, name)
        monkeypatch.setattr(backend, name, lambda *a, _real=real, _n=name, **k: (
            reads.__setitem__(_n, reads[_n] + 1), _real(*a, **k))[1])
    got = Trainer(mk(backend), gg.optim.SGD(0.1), epochs=3, batch_size=32, lam=1e-3, progress=False)
    got.fit(X, y, X[:20], y[:20])
    assert reads == {"to_numpy": 3, "first_invalid": 2}  # an epoch each; X and X_val checked once
    ref = Trainer(mk("numpy"), gg.optim.SGD(0.1), epochs=3, batch_size=32, lam=1e-3, progress=False)
    ref.fit(X, y, X[:20], y[:20])
    for k, v in ref.model.state().items():
        np.testing.assert_allclose(got.model.state()[k], v, rtol=2e-4, atol=2e-5, err_msg=k)
    assert got.history["val_accuracy"] == ref.history["val_accuracy"]


def test_a_rising_cost_warns_once_while_training(rng):
    """A learning rate far too high: RisingCostWarning once, during the fit (the epoch it is
    detected at and the lowest cost named); a sound rate: no warning."""
    import warnings
    from gpugrad.training.trainer import RisingCostWarning, cost_too_high
    # Fixed data: at a rate this high the costs jump about, and on some draws they start so high
    # that no 3 epochs in a row stay above 1.5x the lowest (so no warning is due).
    X, y = blobs(np.random.default_rng(0))
    t = trainer(make("linear"), optimizer=gg.optim.SGD(300.0), epochs=15)
    with pytest.warns(RisingCostWarning, match=r"stayed above 1\.5x its lowest .* the learning rate "
                                               r"\(300\) is probably too high") as caught:
        h = t.fit(X, y)
    assert len(caught) == 1 and caught[0].filename == __file__  # at the fit call
    high = cost_too_high(h["cost"])
    first = next(i for i in range(3, len(high) + 1) if high[i - 3:i].all())  # 3 in a row
    assert first < 15 and f"(epoch {first}: " in str(caught[0].message)  # said as it happened
    with warnings.catch_warnings():
        warnings.simplefilter("error", RisingCostWarning)
        trainer(make("linear"), optimizer=gg.optim.SGD(0.1), epochs=15).fit(X, y)

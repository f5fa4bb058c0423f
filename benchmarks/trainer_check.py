"""Training on a GPU: the trainer, the estimators and `gpugrad train` on the card, checked against the
numpy backend, and the time of an epoch beside PyTorch's.

    python benchmarks/trainer_check.py [--n 50000] [--out DIR]

Data: CIFAR-10-shaped and synthetic (uint8 pixels (n, 3072), 10 classes, labels from a random linear
teacher so accuracy means something), made in memory.

Checks, each from the same start as the numpy backend:
- one epoch of SGD (batch 100) of the linear classifier (uint8 pixels normalised on the fly by the
  fused step) and of the MLP 3072-50-50-10 with batch normalisation: the weights agree within
  float32 rounding grown over the epoch's steps, and so do the history's figures;
- ``SoftmaxClassifier(backend="cupy")``: CuPy in, CuPy out, the same accuracy as on numpy;
- ``gpugrad train --backend cupy`` on an .npz of the data: exit 0 and its output files.
Timings: CUDA events around whole epochs (median of several, after a warm-up epoch), at the course's
shape (N = 50,000, d = 3072, C = 10, batch 100, SGD): the linear model with float32 X and with uint8
X, and the MLP; the same loops in PyTorch eager when torch is installed. One read of the data (X once
from device memory) is printed beside them as the floor.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's gpugrad, installed or not
import gpugrad as gg  # noqa: E402
from gpugrad.training.models import MLP, LinearClassifier  # noqa: E402

try:
    import cupy
except ImportError:  # the script's checks need a GPU; tests drive it on the emulated backend
    cupy = None
try:
    import torch
    HAVE_TORCH = torch.cuda.is_available()
except ImportError:
    torch, HAVE_TORCH = None, False

RESULTS = {"env": {}, "correctness": [], "timing": []}
D, C, BATCH = 3072, 10, 100


def log(*a):
    print(*a, flush=True)


def synthetic(n, d=D, classes=C, seed=0):
    """(X uint8 (n, d), y (n,)): pixels, labels = argmax of a random linear teacher on them."""
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 256, (n, d), dtype=np.uint8)
    teacher = rng.standard_normal((classes, d))
    y = np.argmax((X - 127.5) @ teacher.T + rng.standard_normal((n, classes)) * 200, axis=1)
    return X, y


def model(kind, backend, mean, std, d=D, hidden=(50, 50)):
    if kind == "linear":
        return LinearClassifier(d, C, backend=backend, x_mean=mean, x_std=std, seed=1)
    return MLP(d, C, hidden, batchnorm=True, backend=backend, x_mean=mean, x_std=std, seed=1)


def record(name, err, tol, **info):
    ok = bool(err <= tol)
    RESULTS["correctness"].append({"check": name, "err": float(err), "tol": tol, "ok": ok, **info})
    log(f"  {'ok  ' if ok else 'FAIL'} {name}: {err:.2e} (tol {tol:.0e})")
    return ok


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def check_trainer(X, y, hidden):
    """One epoch on the GPU and on numpy from the same start: weights and history agree."""
    mean, std = gg.data.normalisation(X)
    for kind in ("linear", "mlp"):
        runs = {}
        for be in ("numpy", "cupy"):
            t = gg.Trainer(model(kind, be, mean, std, X.shape[1], hidden), gg.optim.SGD(0.01),
                           epochs=1, batch_size=BATCH, lam=1e-3, seed=2, progress=False)
            t.fit(X, y)
            runs[be] = t
        # float32 rounding differs in order between the kernels and BLAS; over the epoch's steps the
        # difference grows, and the MLP's ReLUs and batch statistics amplify it.
        tol = 1e-4 if kind == "linear" else 3e-3
        ref, got = runs["numpy"].model.state(), runs["cupy"].model.state()
        for k, v in ref.items():
            if k.startswith("b") and f"gamma{k[1:]}" in ref:
                # A bias before batch norm has no gradient: both stay at rounding noise around 0.
                record(f"{kind} epoch: {k} (no gradient under batch norm)", float(np.abs(got[k]).max()), 1e-4)
                continue
            record(f"{kind} epoch: {k}", rel(got[k], v), tol)
        a, b = runs["cupy"].history.rows[0], runs["numpy"].history.rows[0]
        record(f"{kind} epoch: training loss", abs(a["loss"] - b["loss"]) / b["loss"], tol)


def check_estimator(X, y):
    """SoftmaxClassifier on the card: CuPy in, CuPy out, numpy's accuracy."""
    n = len(y) // 5 * 4
    acc = {}
    for be in ("numpy", "cupy"):
        clf = gg.SoftmaxClassifier(backend=be, max_iter=3, random_state=0)
        Xtr, Xte = (X[:n], X[n:]) if be == "numpy" else (cupy.asarray(X[:n]), cupy.asarray(X[n:]))
        with warnings.catch_warnings():  # 3 L-BFGS iterations on purpose: the same ones on both
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(Xtr, y[:n])
        pred = clf.predict(Xte)
        if be == "cupy":
            record("estimator: predict returns the caller's array type", float(not isinstance(pred, cupy.ndarray)), 0)
            pred = cupy.asnumpy(pred)
        acc[be] = float((pred == y[n:]).mean())
    record("estimator: test accuracy, cupy against numpy", abs(acc["cupy"] - acc["numpy"]), 0.01, **acc)


def check_cli(X, y, folder):
    """gpugrad train on the card, on an .npz of the data."""
    from gpugrad.tools import cli
    data = Path(folder) / "synthetic.npz"
    np.savez(data, X=X, y=y)
    out = Path(folder) / "run"
    code = cli.main(["train", "--data", str(data), "--backend", "cupy", "--epochs", "2", "--out", str(out),
                     "--quiet"])
    files = sorted(p.name for p in out.iterdir()) if out.exists() else []
    record("gpugrad train --backend cupy: exit status", float(code or 0), 0, files=files)
    missing = {"model.npz", "history.csv", "history.json", "curves.png"} - set(files)
    record("gpugrad train --backend cupy: output files missing", float(len(missing)), 0, missing=sorted(missing))


# ---- timing ---------------------------------------------------------------------------------------
def events():
    """(start, end, elapsed ms): CUDA events on the current stream."""
    return cupy.cuda.Event(), cupy.cuda.Event(), cupy.cuda.get_elapsed_time


def gpugrad_epoch_ms(trainer, X, y, epochs):
    """Median ms of an epoch of ``trainer`` over ``epochs`` epochs after a warm-up one; X and y are
    already on the device, so each ``fit`` only runs epochs (plus one data check, a few us)."""
    times = []
    for e in range(epochs + 1):
        start, end, elapsed = events()
        trainer.epochs += 1
        start.record()
        trainer.fit(X, y)
        end.record()
        end.synchronize()
        if e:
            times.append(elapsed(start, end))
    return float(np.median(times))


def torch_epoch_ms(kind, X, y, mean, std, epochs, hidden=(50, 50)):
    """The same epoch in PyTorch eager: device-side permutation, gather, forward, backward, SGD."""
    dev = torch.device("cuda")
    Xt, yt = torch.as_tensor(X, device=dev), torch.as_tensor(y, device=dev)
    mt = torch.as_tensor(mean, dtype=torch.float32, device=dev)
    st = torch.as_tensor(std, dtype=torch.float32, device=dev)
    sizes = (X.shape[1], *hidden) if kind == "mlp" else (X.shape[1],)
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.BatchNorm1d(b), torch.nn.ReLU()]
    net = torch.nn.Sequential(*layers, torch.nn.Linear(sizes[-1], C)).to(dev)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, weight_decay=2e-3)  # lam ||W||^2 -> 2 lam W
    times = []
    for e in range(epochs + 1):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        order = torch.randperm(len(y), device=dev)
        for i in range(0, len(y), BATCH):
            idx = order[i:i + BATCH]
            xb = Xt[idx]
            xb = (xb.float() - mt) / st if xb.dtype == torch.uint8 else xb
            loss = torch.nn.functional.cross_entropy(net(xb), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        end.record()
        end.synchronize()
        if e:
            times.append(start.elapsed_time(end))
    return float(np.median(times))


def bench(n, epochs, hidden):
    X, y = synthetic(n)
    mean, std = gg.data.normalisation(X)
    Xd, yd = cupy.asarray(X), cupy.asarray(y)
    X32 = ((Xd - cupy.asarray(mean, np.float32)) / cupy.asarray(std, np.float32)).astype(np.float32)
    bw = copy_bandwidth()
    for kind, name, data in (("linear", "float32 X", X32), ("linear", "uint8 X", Xd), ("mlp", "uint8 X", Xd)):
        normalised = data.dtype == np.float32  # float32 X comes normalised already
        m = model(kind, "cupy", None if normalised else mean, None if normalised else std, X.shape[1], hidden)
        t = gg.Trainer(m, gg.optim.SGD(0.01), epochs=0, batch_size=BATCH, lam=1e-3, eval_train=False,
                       progress=False)
        row = {"workload": f"epoch {kind} n={n} d={X.shape[1]} {name}", "floor_ms": data.nbytes / bw * 1e3,
               "gpugrad_ms": gpugrad_epoch_ms(t, data, yd, epochs)}
        if HAVE_TORCH:
            row["torch_eager_ms"] = torch_epoch_ms(kind, cupy.asnumpy(data), y, mean, std, epochs, hidden)
        RESULTS["timing"].append(row)
        log("  " + json.dumps(row))


def copy_bandwidth():
    """Device-to-device copy bandwidth in bytes/s (bytes read + written), to put the floor beside."""
    a = cupy.empty(1 << 28, dtype=np.float32)
    b = cupy.empty_like(a)
    cupy.copyto(b, a)
    start, end, elapsed = events()
    start.record()
    for _ in range(10):
        cupy.copyto(b, a)
    end.record()
    end.synchronize()
    return 2 * a.nbytes * 10 / (elapsed(start, end) / 1e3)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=50000, help="training rows of the timed epochs")
    ap.add_argument("--check-n", type=int, default=10000, help="training rows of the checks")
    ap.add_argument("--epochs", type=int, default=5, help="timed epochs (after one warm-up epoch)")
    ap.add_argument("--hidden", default="50,50", help="the MLP's hidden layers")
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args(argv)
    hidden = tuple(int(h) for h in args.hidden.split(","))
    RESULTS["env"].update(date=time.strftime("%Y-%m-%d"), backend=gg.why_backend(), numpy=np.__version__,
                          cupy=getattr(cupy, "__version__", None), torch=getattr(torch, "__version__", None))
    log("== environment:", json.dumps(RESULTS["env"]))
    log("== correctness (cupy against numpy, same start)")
    X, y = synthetic(args.check_n)
    check_trainer(X, y, hidden)
    check_estimator(X, y)
    with tempfile.TemporaryDirectory() as folder:
        check_cli(X[:2000], y[:2000], folder)
    if not args.skip_timing:
        log("== timing (CUDA events, median ms per epoch)")
        bench(args.n, args.epochs, hidden)
    failed = [r for r in RESULTS["correctness"] if not r["ok"]]
    log(f"\n== summary: {len(RESULTS['correctness']) - len(failed)} checks ok, {len(failed)} failed")
    log(f"{'workload':<44}{'gpugrad ms':>11}{'torch ms':>10}{'floor ms':>10}")
    for r in RESULTS["timing"]:
        log(f"{r['workload']:<44}{r['gpugrad_ms']:11.2f}{r.get('torch_eager_ms', float('nan')):10.2f}"
            f"{r['floor_ms']:10.3f}")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "trainer_check.json").write_text(json.dumps(RESULTS, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

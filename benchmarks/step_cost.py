"""What a training step costs on a GPU, counted without one: launches, host syncs, allocations, bytes.

    python benchmarks/step_cost.py [--n 10000] [--batch 100] [--d 3072] [--hidden 50,50] [--uint8] [--json]

Runs gpugrad's CuPy backend on the kernel emulator (tests/emu: needs g++ and an importable cupy,
no GPU) with the card set to an H100's 132 SMs, and counts what each piece of work would ask of
the card (``emulator.counting()``, tests/emu/cost.py): kernel launches (gpugrad's kernels and each
CuPy array operation, a launch or library call on a card), host synchronisations, device
allocations, host-to-device uploads, and the bytes the launches read and write. Per line:

- the fused linear step: ``gg.linear_grad`` on device arrays, validate=False (batch rows, d, C);
- the linear SGD step through ``gg.Trainer``: one pass of its loop (gather the batch, the step,
  the per-step cost kept on the device, the update), counted at the epoch's second step;
- the MLP step (d-50-50-C with batch normalisation, SGD with momentum), the same way;
- an epoch of N rows of each (``Trainer.fit``, one epoch: checks, steps, the end-of-epoch read),
  in all and per step.

Each step is counted after the first (which loads kernels and makes the backend's scratch), so
it is what every later step costs. ``--json`` prints the figures (with the launches by name) as
JSON. The counts are the same on any card; the bytes depend on the grid (partial sums per block).
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))             # the checkout's gpugrad, installed or not
sys.path.insert(0, str(ROOT / "tests"))   # the emulator (tests/emu) and its CuPy stand-in

H100 = dict(sm_count=132, smem_optin=232448, cc=90)


def _marked(trainer, cost):
    """Mark `cost` where each step of the trainer's loop starts and where the epoch's end begins."""
    step, row = trainer._step, trainer._row

    def marked_step(*args, **kwargs):
        cost.mark("step")
        return step(*args, **kwargs)

    def marked_row(*args, **kwargs):
        cost.mark("end of epoch")
        return row(*args, **kwargs)

    trainer._step, trainer._row = marked_step, marked_row


def _data(E, rng, n, d, classes, uint8):
    """Device arrays (X, y) of n rows and the normalisation (x_mean, x_std) uint8 X takes, or None."""
    if uint8:
        X = rng.integers(0, 256, (n, d), dtype=np.uint8)
        norm = (np.full(d, 127.5), np.full(d, 74.0))
    else:
        X = rng.standard_normal((n, d)).astype(np.float32)
        norm = (None, None)
    return E.emucupy.asarray(X), E.emucupy.asarray(rng.integers(0, classes, n)), norm


def _trainer(gg, kind, be, d, classes, hidden, batch, norm):
    mean, std = norm
    if kind == "linear":
        model = gg.models.LinearClassifier(d, classes, backend=be, x_mean=mean, x_std=std, seed=1)
        optimizer = gg.optim.SGD(0.01)
    else:
        model = gg.models.MLP(d, classes, hidden, batchnorm=True, backend=be, x_mean=mean, x_std=std, seed=1)
        optimizer = gg.optim.SGD(0.01, momentum=0.9)
    return gg.Trainer(model, optimizer, epochs=1, batch_size=batch, progress=False)


def epoch_cost(E, gg, be, kind, X, y, *, d, classes, hidden, batch, norm):
    """(the whole epoch, its steady step (the second), its steps) of one Trainer.fit epoch."""
    trainer = _trainer(gg, kind, be, d, classes, hidden, batch, norm)
    with E.counting() as cost:
        cost.mark("setup")
        _marked(trainer, cost)
        trainer.fit(X, y)
    steps = [c for label, c in cost.segments() if label == "step"]
    if len(steps) < 2:
        raise ValueError(f"an epoch of {X.shape[0]} rows in batches of {batch} has {len(steps)} step: "
                         "at least 2 are needed (the first is not a steady one)")
    return cost, steps[1], steps


def linear_step_cost(E, gg, X, y, W, b):
    """The fused step on device arrays, counted at its second call."""
    gg.linear_grad(X, y, W, b, 1e-4, validate=False)
    with E.counting() as cost:
        gg.linear_grad(X, y, W, b, 1e-4, validate=False)
    return cost


def measure(n=10_000, batch=100, d=3072, classes=10, hidden=(50, 50), uint8=False, seed=0):
    """{name: {"title", the Cost's figures, and for epochs "per_step" and "steps"}} (see the module
    docstring), counted on the emulated CUDA backend."""
    import pytest
    import gpugrad as gg
    from emu import emulator as E

    rng = np.random.default_rng(seed)
    out = {}
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        E.use(None)
        be = E.as_cuda_backend(mp, card=H100)
        X, y, norm = _data(E, rng, n, d, classes, uint8)
        xb, yb = X[:batch], y[:batch]
        W = E.emucupy.asarray((rng.standard_normal((classes, d)) * 0.01).astype(np.float32))
        b = E.emucupy.zeros(classes, np.float32)
        kind = "uint8 X normalised on the fly" if uint8 else "float32 X"
        if uint8:
            cost = linear_step_cost_norm(E, gg, xb, yb, W, b, norm)
        else:
            cost = linear_step_cost(E, gg, xb, yb, W, b)
        out["fused linear step"] = {"title": f"linear step (gg.linear_grad, validate=False; {batch} x {d}, C={classes}, "
                                       f"{kind})", **cost.as_dict()}
        arch = "-".join(map(str, (d, *hidden, classes)))
        for model, (step_key, epoch_key), title in (
                ("linear", ("linear SGD step", "linear epoch"), f"linear SGD step through the Trainer ({kind})"),
                ("mlp", ("MLP step", "MLP epoch"), f"MLP step {arch} with batch norm, SGD with momentum ({kind})")):
            epoch, step, steps = epoch_cost(E, gg, be, model, X, y, d=d, classes=classes, hidden=hidden,
                                            batch=batch, norm=norm)
            out[step_key] = {"title": f"{title}, batch {batch}", **step.as_dict()}
            out[epoch_key] = {"title": f"{'linear' if model == 'linear' else 'MLP ' + arch} epoch, N={n}, "
                                      f"batch {batch} (Trainer.fit, 1 epoch)", "steps": len(steps), **epoch.as_dict()}
    return out


def linear_step_cost_norm(E, gg, X, y, W, b, norm):
    """The fused step of uint8 X normalised on the fly, counted at its second call."""
    mean, std = (E.emucupy.asarray(v.astype(np.float32)) for v in norm)
    gg.linear_grad(X, y, W, b, 1e-4, x_mean=mean, x_std=std, validate=False)
    with E.counting() as cost:
        gg.linear_grad(X, y, W, b, 1e-4, x_mean=mean, x_std=std, validate=False)
    return cost


def line(entry: dict) -> str:
    """ "title: 3 launches, 0 host syncs, 0 allocations, 0 uploads, 1.23 MB moved" (epochs: also per step)."""
    mb = (entry["bytes_read"] + entry["bytes_written"]) / 1e6
    text = (f"{entry['title']}: {entry['launches']} launches, {entry['syncs']} host syncs, "
            f"{entry['allocations']} allocations, {entry['uploads']} uploads, {mb:.3g} MB moved")
    if "steps" in entry:
        s = entry["steps"]
        text += (f"; per step ({s} steps): {entry['launches'] / s:.3g} launches, {entry['syncs'] / s:.3g} syncs, "
                 f"{entry['allocations'] / s:.3g} allocations")
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=10_000, help="rows in the epoch (default 10000)")
    p.add_argument("--batch", type=int, default=100, help="rows per step (default 100)")
    p.add_argument("--d", type=int, default=3072, help="features (default 3072)")
    p.add_argument("--classes", type=int, default=10, help="classes (default 10)")
    p.add_argument("--hidden", default="50,50", help="the MLP's hidden layers (default 50,50)")
    p.add_argument("--uint8", action="store_true", help="uint8 X normalised on the fly (default float32 X)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("--verbose", action="store_true", help="also list each step's launches by name")
    a = p.parse_args(argv)
    try:
        hidden = tuple(int(h) for h in a.hidden.split(",") if h)
    except ValueError:
        p.error(f"--hidden must be sizes separated by commas, like 50,50; got {a.hidden!r}")
    for name in ("n", "batch", "d", "classes"):
        if getattr(a, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(a, name)}")
    if a.n < 2 * a.batch:
        p.error(f"--n ({a.n}) must hold at least two batches of --batch ({a.batch}): the first step is not "
                "a steady one")
    try:
        figures = measure(a.n, a.batch, a.d, a.classes, hidden, a.uint8)
    except ImportError as e:
        print(f"step_cost: the emulator needs cupy importable and g++ ({e})", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(figures, indent=1))
        return 0
    for entry in figures.values():
        print(line(entry))
        if a.verbose and "steps" not in entry:
            print("    " + ", ".join(entry["kernels"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

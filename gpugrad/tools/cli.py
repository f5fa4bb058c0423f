"""The command line: ``gpugrad train``, ``gpugrad predict``, ``gpugrad gradcheck`` and
``gpugrad bench`` (also ``python -m gpugrad``; ``gpugrad bench`` is described in ``gpugrad.bench``).
Each command imports what it needs when it needs it: ``gpugrad train --help`` loads neither
scikit-learn nor matplotlib, and a run on digits loads no scikit-learn at all.

``gpugrad train`` trains a classifier (the linear softmax or SVM classifier, or an MLP) with the
mini-batch trainer and writes everything a run produces into one folder::

    gpugrad train                                   # softmax classifier on digits, backend "auto"
    gpugrad train --model mlp --hidden 50,50 --batchnorm --optimizer adam --epochs 20
    gpugrad train --data ~/cifar-10-batches-py --preset assignment1
    gpugrad train --resume runs/digits-softmax --epochs 80   # continue that run to 80 epochs

The output folder (``--out``; by default ``runs/<data>-<model>``, with ``-2``, ``-3``, ... added
when that name is taken) holds::

    run.json         the run's settings (what --resume reads back) and, at the end, its results
    checkpoint.npz   the latest checkpoint (weights, optimiser state, RNG state, epoch, history),
                     rewritten atomically after every epoch: a killed run can be resumed
    model.npz        the final parameters (gpugrad.models.load_model reads it)
    history.csv, history.json   one row per epoch: loss, cost, accuracy (training, validation), lr
    curves.png       loss / cost / accuracy per epoch, training against validation
    templates.png    the linear models' class templates (the rows of W as images)

A run that stops early, by Ctrl-C (exit status 130) or a NaN cost (exit status 1), still writes
the outputs of the epochs its checkpoint holds and says how far it got ("stopped after epoch 3
of 40; continue with: gpugrad train --resume DIR"). A folder whose run stopped before its first
epoch ended holds only run.json: --resume starts that run again, and a new run may take the
folder; --overwrite lets a new run replace a finished one. While a run trains, a training cost
that stays above 1.5x its lowest for 3 epochs (a learning rate too high) is reported by a
warning line.

``gpugrad predict MODEL DATA`` writes the predicted labels of a saved model (model.npz, or a run's
folder) for DATA ('digits' test rows, a CIFAR-10 test_batch, an .npz with X and maybe y) to a
.csv or .npy file, and prints the accuracy when DATA has labels.

``gpugrad gradcheck`` is the course's gradient check: the model's analytic gradients
(``loss_grad``) against central differences of its cost, in float64 on a few rows of digits,
one relative error ||g_a - g_n|| / (||g_a|| + ||g_n||) per parameter; exit status 1 when one
exceeds ``--tol``.

Bad option values are refused before any work with one line naming the option, exit status 2::

    $ gpugrad train --batch-size 0
    gpugrad train: error: --batch-size must be a positive integer, got 0
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

from ..engine import _validation
from . import bench, options
from ..training.saving import atomic_write, json_safe, npz_arrays
from ..training.optim import OPTIMIZERS
from .. import __version__
from ..training import data, models, optim
from ..training import trainer as trainer_mod
from ..training.data import stratified_split
from ..training.trainer import History, RisingCostWarning, load_checkpoint

__all__ = ["main", "build_parser", "parse_hidden", "PRESETS", "DEFAULTS"]

# ---------------------------------------------------------------------------------------------
# Settings: built-in defaults, presets, and which settings a resumed run may change
# ---------------------------------------------------------------------------------------------

# Every training setting, with the value used when neither the command line nor a preset gives
# one. None means "worked out from the data or the optimiser" (see _resolve).
DEFAULTS = {
    "data": "digits", "model": "softmax", "hidden": "50", "batchnorm": False, "dtype": "float32",
    "optimizer": "sgd", "momentum": 0.9, "lr": None,
    "schedule": "constant", "step_size": None, "gamma": 0.1, "eta_min": 1e-5, "eta_max": 0.1,
    "n_s": None, "lam": 1e-3, "epochs": 40, "batch_size": 100, "seed": 0,
    "validation_fraction": 0.1,
}

# The learning rate when --lr is not given: plain SGD takes larger steps than momentum (whose
# effective step is lr / (1 - momentum)) and Adam (whose steps are about lr in size).
DEFAULT_LR = {"sgd": 0.2, "momentum": 0.01, "nesterov": 0.01, "adam": 0.001}

# Named bundles of settings, one option away. Options given on the command line override them.
PRESETS = {
    # DD2424 assignment 1, first parameter setting: lam=0, eta=0.001, n_batch=100, n_epochs=40,
    # plain mini-batch gradient descent on the softmax linear classifier.
    "assignment1": {"model": "softmax", "optimizer": "sgd", "schedule": "constant", "lr": 0.001,
                    "lam": 0.0, "batch_size": 100, "epochs": 40},
}

# Settings that define the run: --resume refuses a different value for these.
FIXED_ON_RESUME = ("data", "model", "hidden", "batchnorm", "dtype", "optimizer", "momentum", "lr",
                   "schedule", "step_size", "gamma", "eta_min", "eta_max", "n_s", "lam",
                   "batch_size", "seed", "validation_fraction")

RUN_FILE, CHECKPOINT_FILE, MODEL_FILE = "run.json", "checkpoint.npz", "model.npz"
MODELS = ("softmax", "svm", "mlp")
# The settings each schedule is built from: the keys of its config() in gpugrad.optim.
SCHEDULE_SETTINGS = {"constant": ("lr",), "step": ("lr", "step_size", "gamma"),
                     "cyclical": ("eta_min", "eta_max", "n_s")}
SCHEDULES = tuple(SCHEDULE_SETTINGS)
BACKENDS = ("auto", "numpy", "cupy")


# ---------------------------------------------------------------------------------------------
# Parsing and checking option values
# ---------------------------------------------------------------------------------------------

def parse_hidden(text: str) -> tuple[int, ...]:
    """The hidden layer sizes of ``--hidden``: a comma list of positive integers.

        >>> parse_hidden("50,50")
        (50, 50)
        >>> parse_hidden("0")
        Traceback (most recent call last):
        ...
        ValueError: --hidden must be a comma list of positive integers (e.g. 50,50), got '0'
    """
    parts = [p.strip() for p in str(text).split(",")]
    try:
        sizes = tuple(int(p) for p in parts)
    except ValueError:
        sizes = ()
    if not sizes or any(s <= 0 for s in sizes):
        raise ValueError(f"--hidden must be a comma list of positive integers (e.g. 50,50), got {text!r}")
    return sizes


# The numeric options of gpugrad train, in the order they are checked, with their kinds.
TRAIN_NUMBERS = {
    "epochs": "a positive integer", "batch_size": "a positive integer",
    "seed": "a non-negative integer", "lr": "a positive number", "lam": "a non-negative number",
    "momentum": "a number in [0, 1)", "step_size": "a positive integer", "gamma": "a positive number",
    "eta_min": "a non-negative number", "eta_max": "a positive number", "n_s": "a positive integer",
    "validation_fraction": "a number in [0, 1)",
}


def _check_values(parser, args):
    """Convert and check every numeric option given on the command line (None stays None)."""
    options.check_numbers(parser, args, TRAIN_NUMBERS)
    if args.hidden is not None:
        try:
            parse_hidden(args.hidden)
        except ValueError as e:
            parser.error(str(e))


def _data_kind(parser, spec: str) -> str:
    """'digits', 'cifar10' or 'npz' for a --data value; refuses what cannot be a dataset."""
    if spec == "digits":
        return "digits"
    path = Path(spec).expanduser()
    if path.is_dir():
        if not sorted(path.glob("data_batch_*")):
            parser.error(f"--data {spec}: a folder must hold the CIFAR-10 python batches "
                         f"(data_batch_1 ... data_batch_5, test_batch); none found there")
        return "cifar10"
    if path.is_file():
        if path.suffix.lower() != ".npz":
            parser.error(f"--data {spec}: expected 'digits', a CIFAR-10 folder or an .npz file "
                         f"with arrays X and y")
        return "npz"
    parser.error(f"--data {spec}: no such file or folder (expected 'digits', a CIFAR-10 folder "
                 f"or an .npz file)")


def _data_name(spec: str, kind: str) -> str:
    """The data's part of the default output folder's name: digits, cifar10, or the .npz file's stem."""
    return Path(spec).stem if kind == "npz" else kind


def _resolve(parser, args) -> dict:
    """The run's settings: command line, then the preset, then DEFAULTS; checks combinations."""
    given = {k: getattr(args, k) for k in DEFAULTS if getattr(args, k) is not None}
    preset = PRESETS[args.preset] if args.preset else {}
    opts = {**DEFAULTS, **preset, **given}
    opts["preset"] = args.preset
    # Options that only mean something with another one are refused rather than ignored.
    if opts["model"] != "mlp":
        for name, flag in (("hidden", "--hidden"), ("batchnorm", "--batchnorm")):
            if name in given:
                parser.error(f"{flag} applies to --model mlp only (the run's model is {opts['model']})")
    if "momentum" in given and opts["optimizer"] not in ("momentum", "nesterov"):
        parser.error(f"--momentum applies to --optimizer momentum or nesterov only "
                     f"(the optimiser is {opts['optimizer']})")
    for schedule, names in SCHEDULE_SETTINGS.items():
        for name in names:
            if name != "lr" and name in given and opts["schedule"] != schedule:
                parser.error(f"--{name.replace('_', '-')} applies to --schedule {schedule} only "
                             f"(the schedule is {opts['schedule']})")
    if opts["schedule"] == "cyclical":
        if "lr" in given:
            parser.error("--lr does not apply to --schedule cyclical: it runs from --eta-min to --eta-max")
        if opts["eta_min"] >= opts["eta_max"]:
            parser.error(f"--eta-min must be below --eta-max, got {opts['eta_min']} >= {opts['eta_max']}")
    elif opts["lr"] is None:
        opts["lr"] = DEFAULT_LR[opts["optimizer"]]
    if opts["model"] == "mlp":
        opts["hidden"] = _as_stored("hidden", opts["hidden"])
    # run.json records the settings the run uses, and only those.
    return {k: v for k, v in opts.items() if _unused_because(k, opts) is None}


def _unused_because(name, opts) -> str | None:
    """Why the run of settings ``opts`` does not use the setting ``name`` (None: it does).

        >>> _unused_because("momentum", {"optimizer": "sgd"})
        'its optimiser is sgd'
    """
    if name in ("hidden", "batchnorm") and opts["model"] != "mlp":
        return f"its model is {opts['model']}"
    if name == "momentum" and opts["optimizer"] not in ("momentum", "nesterov"):
        return f"its optimiser is {opts['optimizer']}"
    if name in ("lr", "step_size", "gamma", "eta_min", "eta_max", "n_s") and \
            name not in SCHEDULE_SETTINGS[opts["schedule"]]:
        return f"its schedule is {opts['schedule']}"
    return None


def _as_stored(name, value):
    """A --hidden or --data value as run.json keeps it, so that --resume compares like with like:
    hidden sizes as "50,50", a data file or folder as its absolute path; others unchanged."""
    if name == "hidden" and value is not None:
        return ",".join(map(str, parse_hidden(value)))
    if name == "data" and value not in (None, "digits"):
        return str(Path(value).expanduser().resolve())
    return value


# ---------------------------------------------------------------------------------------------
# The parser
# ---------------------------------------------------------------------------------------------

class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is the one line "gpugrad train: error: ..." (exit status 2) without
    the usage block before it: the line that names the option is the one a user needs to see."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``gpugrad`` parser with its ``train``, ``predict``, ``gradcheck`` and ``bench`` subcommands."""
    parser = _Parser(
        prog="gpugrad", description="Train and check classifiers with gpugrad.",
        epilog="Run 'gpugrad train --help', 'gpugrad predict --help', 'gpugrad gradcheck --help' or "
               "'gpugrad bench --help' for their options.")
    parser.add_argument("--version", action="version", version=f"gpugrad {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="{train,predict,gradcheck,bench}")
    _add_train(sub)
    _add_gradcheck(sub)
    _add_predict(sub)
    b = bench.add_parser(sub)
    b.set_defaults(func=bench.command, subparser=b)
    return parser


def _add_train(sub):
    """``gpugrad train`` and its three groups of options."""
    t = sub.add_parser(
        "train", prog="gpugrad train", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="train a classifier; writes model, checkpoint, history and plots to one folder",
        description=(
            "Train a classifier with mini-batch gradient descent and write the run to one folder:\n"
            "run.json (settings, results), checkpoint.npz (after every epoch), model.npz,\n"
            "history.csv/.json, curves.png and, for the linear models, templates.png.\n"
            "With no options: the softmax linear classifier on scikit-learn's digits,\n"
            "backend auto (CuPy when a CUDA device is usable, numpy otherwise).\n\n"
            "Presets (--preset NAME; options given beside it override it):\n"
            "  assignment1   DD2424 assignment 1: softmax, sgd, lam 0, lr (eta) 0.001,\n"
            "                batch size 100, 40 epochs"),
        epilog=(
            "examples:\n"
            "  gpugrad train\n"
            "  gpugrad train --model mlp --hidden 50,50 --batchnorm --optimizer adam --epochs 20\n"
            "  gpugrad train --data ~/cifar-10-batches-py --preset assignment1\n"
            "  gpugrad train --resume runs/digits-softmax --epochs 80"))
    _add_data_options(t.add_argument_group("data and model"))
    _add_optimisation_options(t.add_argument_group("optimisation"))
    _add_running_options(t.add_argument_group("running"))
    t.set_defaults(func=_train_command, subparser=t)


def _add_data_options(g):
    """``gpugrad train``: the data and the model."""
    d = DEFAULTS
    g.add_argument("--data", metavar="SPEC",
                   help=f"'digits' (scikit-learn's bundled 8x8 digits, 75/25 stratified split), "
                        f"a CIFAR-10 python folder (data_batch_1..5, test_batch), or an .npz file "
                        f"with arrays X (n, d) and y (n,) (25%% held out for testing) "
                        f"(default: {d['data']})")
    g.add_argument("--model", choices=MODELS,
                   help=f"softmax or svm: the linear classifier s = Wx + b with that loss; "
                        f"mlp: ReLU layers then softmax (default: {d['model']})")
    g.add_argument("--hidden", metavar="SIZES",
                   help=f"MLP hidden layer sizes, a comma list (default: {d['hidden']})")
    g.add_argument("--batchnorm", action="store_const", const=True,
                   help="MLP: batch normalisation after each hidden linear layer")
    g.add_argument("--dtype", choices=("float32", "float64"),
                   help=f"the dtype the model computes in (default: {d['dtype']})")


def _add_optimisation_options(g):
    """``gpugrad train``: the optimiser, its schedule and the cost."""
    d = DEFAULTS
    g.add_argument("--optimizer", choices=OPTIMIZERS,
                   help=f"sgd, momentum (heavy ball), nesterov, adam (default: {d['optimizer']})")
    g.add_argument("--momentum", metavar="BETA",
                   help=f"momentum / nesterov: the velocity's decay (default: {d['momentum']})")
    g.add_argument("--lr", metavar="ETA",
                   help="learning rate (constant schedule), or the starting rate of --schedule step "
                        "(default: sgd 0.2, momentum/nesterov 0.01, adam 0.001)")
    g.add_argument("--schedule", choices=SCHEDULES,
                   help=f"constant; step: lr * gamma^floor(t / step-size); cyclical: triangular "
                        f"between --eta-min and --eta-max with half-cycle --n-s updates "
                        f"(default: {d['schedule']})")
    g.add_argument("--step-size", metavar="STEPS",
                   help="step: updates between decays (default: 10 epochs' updates)")
    g.add_argument("--gamma", help=f"step: the decay factor (default: {d['gamma']})")
    g.add_argument("--eta-min", help=f"cyclical: the lowest rate (default: {d['eta_min']})")
    g.add_argument("--eta-max", help=f"cyclical: the highest rate (default: {d['eta_max']})")
    g.add_argument("--n-s", metavar="STEPS",
                   help="cyclical: updates per half cycle (default: 2 epochs' updates, the course's "
                        "n_s = 2 floor(n / n_batch))")
    g.add_argument("--lam", metavar="LAMBDA",
                   help=f"L2 penalty lam * sum ||W||^2 over the weight matrices (default: {d['lam']})")
    g.add_argument("--epochs", metavar="N", help=f"epochs to train (default: {d['epochs']})")
    g.add_argument("--batch-size", metavar="N", help=f"mini-batch size (default: {d['batch_size']})")
    g.add_argument("--seed", metavar="N",
                   help=f"seeds the initial weights and the shuffles; the train/test split is fixed "
                        f"(default: {d['seed']})")
    g.add_argument("--validation-fraction", metavar="F",
                   help=f"part of the training set held out for the validation curves; 0: none. "
                        f"CIFAR-10 holds out that part of its training batches "
                        f"(default: {d['validation_fraction']})")
    g.add_argument("--preset", choices=sorted(PRESETS), help="a named bundle of settings (see above)")


def _add_running_options(g):
    """``gpugrad train``: where it writes, checkpoints, resuming, output."""
    g.add_argument("--backend", choices=BACKENDS, default=None,
                   help="auto: CuPy when a CUDA device is usable, else numpy (default: auto)")
    g.add_argument("--out", metavar="FOLDER",
                   help="output folder, new or empty, or left by a run that stopped before its first "
                        "epoch ended (default: runs/<data>-<model>, with -2, -3, ... added when taken)")
    g.add_argument("--overwrite", action="store_true",
                   help="write the run into --out even if it holds files; an earlier run's files "
                        "there are replaced, others left alone")
    g.add_argument("--resume", metavar="FOLDER",
                   help="continue the run saved in FOLDER from its checkpoint, with its settings "
                        "(from epoch 1 when it stopped before one ended); --epochs may raise the "
                        "number of epochs")
    g.add_argument("--quiet", action="store_true", help="no progress bar and no start line")


def _add_gradcheck(sub):
    """``gpugrad gradcheck``."""
    c = sub.add_parser(
        "gradcheck", prog="gpugrad gradcheck", formatter_class=_Formatter,
        help="check a model's analytic gradients against central differences",
        description=(
            "The course's gradient check: the model's analytic gradients g_a (loss_grad) against\n"
            "central differences g_n = (J(p + h) - J(p - h)) / 2h of its cost J, in float64 on the\n"
            "first --n rows of digits. Per parameter it prints the relative error\n"
            "||g_a - g_n|| / (||g_a|| + ||g_n||) and max |g_a - g_n|; the exit status is 1 when a\n"
            "relative error exceeds --tol. A parameter that does not change the cost (a bias\n"
            "before batch normalisation) shows as 'no grad'."))
    c.add_argument("--model", choices=MODELS, default="softmax", help="the model to check")
    c.add_argument("--hidden", metavar="SIZES", help="MLP hidden layer sizes (default: 50)")
    c.add_argument("--batchnorm", action="store_true", help="MLP: batch normalisation")
    c.add_argument("--n", default="8", metavar="ROWS", help="rows in the batch")
    c.add_argument("--lam", default="0.01", metavar="LAMBDA", help="the L2 penalty (checked too)")
    c.add_argument("--seed", default="0", metavar="N", help="seeds the initial weights")
    c.add_argument("--h", default="1e-5", metavar="STEP", help="the finite-difference step")
    c.add_argument("--tol", default="1e-6", metavar="TOL", help="the largest relative error accepted")
    c.add_argument("--backend", choices=BACKENDS, default="auto", help="the backend to check")
    c.set_defaults(func=_gradcheck_command, subparser=c)


def _add_predict(sub):
    """``gpugrad predict``."""
    d = DEFAULTS
    p = sub.add_parser(
        "predict", prog="gpugrad predict", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="predict classes with a saved model; the accuracy when the data have labels",
        description=(
            "Predict the class of each row of DATA with a saved model and write the predictions\n"
            "to a file: .csv (a header, then one line per row: the predicted class's label, and\n"
            "the true label when DATA has labels) or .npy (the predicted labels as an array).\n"
            "With labels, it also prints the accuracy."),
        epilog=("examples:\n"
                "  gpugrad predict runs/digits-softmax digits\n"
                "  gpugrad predict runs/cifar10-softmax/model.npz ~/cifar-10-batches-py --out test.csv\n"
                "  gpugrad predict model.npz new_rows.npz --out labels.npy"))
    p.add_argument("model", metavar="MODEL",
                   help="a model .npz (gpugrad train's model.npz, gpugrad.models.save_model) or a "
                        "gpugrad train output folder")
    p.add_argument("data", metavar="DATA",
                   help="'digits' (its test split, the rows gpugrad train holds out), a CIFAR-10 "
                        "folder (its test_batch), or an .npz file with an array X (n, d) and, for "
                        "the accuracy, labels y (n,)")
    p.add_argument("--out", metavar="FILE", default="predictions.csv",
                   help="the predictions file, .csv or .npy (default: predictions.csv)")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="auto: CuPy when a CUDA device is usable, else numpy (default: auto)")
    p.set_defaults(func=_predict_command, subparser=p)


def main(argv=None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); returns the exit status.

    Bad options raise SystemExit(2) with argparse's one-line message on stderr.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    args.argv = argv
    return args.func(args.subparser, args)


# ---------------------------------------------------------------------------------------------
# gpugrad train
# ---------------------------------------------------------------------------------------------

def _train_command(parser, args) -> int:
    _check_values(parser, args)
    if args.resume is not None:
        folder, opts, run = _resume_settings(parser, args)
    else:
        opts = _resolve(parser, args)
        opts["data_kind"] = _data_kind(parser, opts["data"])
        opts["data"] = _as_stored("data", opts["data"])
        folder = _output_folder(parser, args.out, _data_name(opts["data"], opts["data_kind"]),
                                opts["model"], args.overwrite)
        run = None
    backend = options.backend(parser, args.backend or "auto")
    try:
        return _train(parser, args, opts, folder, run, backend)
    except KeyboardInterrupt:  # before training started, or while the outputs were written
        if (folder / CHECKPOINT_FILE).exists():
            print(f"gpugrad train: interrupted; continue with: gpugrad train --resume {folder}",
                  file=sys.stderr)
        else:
            print(f"gpugrad train: interrupted before epoch 1 ended; nothing was saved{_again(folder)}",
                  file=sys.stderr)
        return 130


def _again(folder: Path) -> str:
    """The hint after a run that stopped before its first checkpoint."""
    if (folder / RUN_FILE).is_file():
        return f"; start it again with: gpugrad train --resume {folder}"
    return ""


# The files a run writes into its folder (and --overwrite removes from an earlier run's).
OUTPUT_FILES = (RUN_FILE, CHECKPOINT_FILE, MODEL_FILE, "history.csv", "history.json", "curves.png",
                "templates.png")


def _unstarted(path: Path) -> bool:
    """A folder left by a run that stopped before its first epoch ended: run.json and no
    checkpoint, nothing but gpugrad's files, and no run training there now (a first epoch can
    take minutes). A new run may take it over (--resume starts it again): there is no trained
    state in it to lose."""
    if not (path / RUN_FILE).is_file() or (path / CHECKPOINT_FILE).exists():
        return False
    if not all(p.name in OUTPUT_FILES or p.name.startswith(".tmp-") for p in path.iterdir()):
        return False
    return not _in_use(path)


def _hold(folder: Path):
    """An exclusive lock on the run's folder for as long as the returned handle lives (the
    training process holds it), so another gpugrad train neither takes the folder over nor
    resumes it meanwhile. None where the system has no flock (the check is then skipped)."""
    try:
        import fcntl
    except ImportError:  # Windows
        return None
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise
    return _Held(fd)


class _Held:
    """A held flock on a folder: released when closed or collected."""

    def __init__(self, fd):
        self.fd = fd

    def close(self):
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the lock
            self.fd = None

    __del__ = close


def _in_use(folder: Path) -> bool:
    """Whether a gpugrad train process holds the folder's lock (``_hold``) now."""
    try:
        held = _hold(folder)
    except OSError:
        return True
    if held is not None:
        held.close()
    return False


def _output_folder(parser, out, data_name, model, overwrite=False) -> Path:
    """--out, or the first free runs/<data>-<model>[-k]; not created yet. A folder holding files is
    refused, unless it is one a run left before its first epoch ended (taken over) or --overwrite
    is given (gpugrad's files there are replaced, others left alone)."""
    if out is not None:
        path = Path(out).expanduser()
        if path.exists() and not path.is_dir():
            parser.error(f"--out {out}: is a file, not a folder")
        if path.is_dir() and _in_use(path):
            parser.error(f"--out {out}: a gpugrad train process is training in this folder now")
        if path.is_dir() and any(path.iterdir()) and not overwrite and not _unstarted(path):
            if (path / RUN_FILE).exists():
                hint = (f"it holds a run: continue it with --resume {out}, or replace it with "
                        f"--overwrite")
            else:
                hint = "a run would overwrite files there; --overwrite writes it there anyway"
            parser.error(f"--out {out}: the folder is not empty; {hint}")
        return path
    base = Path("runs") / f"{data_name}-{model}"
    path, k = base, 1
    while path.exists() and not _unstarted(path):
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    return path


def _resume_settings(parser, args):
    """(folder, settings, run.json dict) of --resume FOLDER; refuses changed settings. A folder
    whose run stopped before its first epoch ended (no checkpoint) starts again from epoch 1
    with its settings."""
    folder = Path(args.resume).expanduser()
    if not folder.is_dir():
        parser.error(f"--resume {args.resume}: no such folder")
    if not (folder / RUN_FILE).is_file():
        parser.error(f"--resume {args.resume}: no {RUN_FILE} there (not a gpugrad train output folder)")
    if _in_use(folder):
        parser.error(f"--resume {args.resume}: a gpugrad train process is training in this folder now")
    for option, why in (("out", "the run continues in its own folder"),
                        ("preset", "the run keeps its own settings"),
                        ("overwrite", "the run continues; to replace it, start a new one with --out "
                                      f"{args.resume} --overwrite")):
        if getattr(args, option) not in (None, False):
            parser.error(f"--{option} does not apply with --resume: {why}")
    try:
        run = json.loads((folder / RUN_FILE).read_text())
        opts = dict(run["settings"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        parser.error(f"--resume {args.resume}: {RUN_FILE} is unreadable ({e})")
    for name in FIXED_ON_RESUME:
        value = _as_stored(name, getattr(args, name, None))
        if value is None:
            continue
        flag = "--" + name.replace("_", "-")
        if name not in opts:
            parser.error(f"{flag} {getattr(args, name)}: the run in {args.resume} does not use it "
                         f"({_unused_because(name, opts) or 'not one of its settings'})")
        if value != opts[name]:
            parser.error(f"{flag} {getattr(args, name)} differs from the run in {args.resume} "
                         f"({flag} {opts[name]}); --resume keeps the run's settings (only "
                         f"--epochs, --backend and --quiet may change)")
    done = 0
    if (folder / CHECKPOINT_FILE).exists():
        try:
            done = load_checkpoint(folder / CHECKPOINT_FILE)["meta"]["epoch"]
        except (ValueError, KeyError, OSError) as e:
            parser.error(f"--resume {args.resume}: {e}")
    if args.epochs is not None:
        if args.epochs < done:
            parser.error(f"--epochs {args.epochs}: the run in {args.resume} has already trained "
                         f"{done} epochs")
        opts["epochs"] = args.epochs
    return folder, opts, run


def _load_data(opts, parser):
    """The Dataset of the run's --data. The test split is fixed (seed 0), whatever --seed says."""
    kind, spec = opts["data_kind"], opts["data"]
    try:
        if kind == "digits":
            return data.load_digits()
        if kind == "npz":
            return data.load_npz(spec)
        ds = data.load_cifar10(spec, n_val=0)
    except (ValueError, TypeError, OSError) as e:
        parser.error(f"--data {spec}: {e}")
    # CIFAR-10's validation rows are the last part of its training batches (the course's split).
    n_val = int(round(len(ds.y_train) * opts["validation_fraction"]))
    if n_val == 0:
        return ds
    cut = len(ds.y_train) - n_val
    return dataclasses.replace(ds, X_train=ds.X_train[:cut], y_train=ds.y_train[:cut],
                               X_val=ds.X_train[cut:], y_val=ds.y_train[cut:])


def _fingerprint(X, y) -> str:
    """sha256 of the training arrays: --resume refuses data that changed under the run."""
    h = hashlib.sha256()
    for a in (X, y):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.data)
    return h.hexdigest()


def _make_model(opts, ds, backend):
    """The model of settings ``opts`` (model, hidden, batchnorm, dtype, seed) for the Dataset ds,
    normalising inputs by the mean and std of its training rows."""
    mean, std = data.normalisation(ds.X_train)
    n_features, n_classes = ds.X_train.shape[1], ds.n_classes
    common = dict(dtype=opts["dtype"], backend=backend, x_mean=mean, x_std=std, seed=opts["seed"])
    if opts["model"] == "mlp":
        return models.MLP(n_features, n_classes, hidden=parse_hidden(opts["hidden"]), loss="softmax",
                          batchnorm=opts["batchnorm"], **common)
    return models.LinearClassifier(n_features, n_classes, loss=opts["model"], **common)


def _make_optimizer(opts, n_train):
    """The optimiser of the run's settings; fills in the schedule's data-dependent defaults."""
    schedule = opts["schedule"]
    if schedule == "cyclical" and opts["n_s"] is None:
        opts["n_s"] = 2 * max(1, n_train // opts["batch_size"])
    if schedule == "step" and opts["step_size"] is None:
        opts["step_size"] = 10 * max(1, math.ceil(n_train / opts["batch_size"]))
    lr = optim.make_schedule({"schedule": schedule, **{k: opts[k] for k in SCHEDULE_SETTINGS[schedule]}})
    # make_optimizer reads momentum for "momentum" and "nesterov" only (the runs that record it).
    return optim.make_optimizer(opts["optimizer"], lr=lr, momentum=opts.get("momentum", DEFAULTS["momentum"]))


def _write_json(path: Path, obj) -> None:
    """Write JSON atomically (``saving.atomic_write``): a kill never leaves half a file."""
    text = (json.dumps(obj, indent=2) + "\n").encode()
    atomic_write(path, lambda f: f.write(text))


def _train(parser, args, opts, folder: Path, run, backend) -> int:
    """A run (new, or ``run`` resumed) in ``folder``: the data read and checked, the model and
    optimiser made, run.json written, the trainer run under the folder's lock, the outputs written.
    Returns the exit status."""
    ds, counts, fingerprint = _training_data(parser, opts, folder, run)
    model = _make_model(opts, ds, backend)
    optimizer = _make_optimizer(opts, counts[0])
    checkpoint = folder / CHECKPOINT_FILE
    resume = checkpoint if run is not None and checkpoint.exists() else None
    folder.mkdir(parents=True, exist_ok=True)
    try:
        lock = _hold(folder)  # held while this run trains and writes: the folder is this run's
    except OSError:
        parser.error(f"{folder}: a gpugrad train process started training in this folder meanwhile")
    try:
        run = _run_record(args, opts, model, ds, counts, fingerprint, folder, run)
        _write_json(folder / RUN_FILE, run)
        if not args.quiet:
            verb = ("resuming" if resume else "starting again (no epoch had ended)" if args.resume
                    else "training")
            print(_header(verb, opts, ds, counts, backend, folder), file=sys.stderr)
        trainer = trainer_mod.Trainer(
            model, optimizer, epochs=opts["epochs"], batch_size=opts["batch_size"], lam=opts["lam"],
            seed=opts["seed"], validation_fraction=0.0 if ds.X_val is not None else opts["validation_fraction"],
            progress=False if args.quiet else None, checkpoint=checkpoint)
        return _fit_and_write(trainer, model, ds, folder, run, backend, opts, resume)
    finally:
        if lock is not None:
            lock.close()


def _training_data(parser, opts, folder: Path, run):
    """(ds, (n_fit, n_val, n_test), fingerprint) of the run's --data: two classes at least for a
    new run, the same training data as when a resumed run started."""
    ds = _load_data(opts, parser)
    if run is None:
        names = ds.class_names or [str(c) for c in range(ds.n_classes)]
        try:  # the estimators' rule and words: one class is nothing to classify
            _validation.check_two_classes([_label(names[c]) for c in np.unique(ds.y_train)], "gpugrad train")
        except ValueError as e:
            parser.error(f"--data {opts['data']}: {e}")
    val_given = ds.X_val is not None
    n_fit = len(ds.y_train)
    if not val_given and opts["validation_fraction"]:  # the trainer's own split, for the counts
        n_fit = len(stratified_split(ds.y_train, opts["validation_fraction"], opts["seed"])[0])
    n_val = len(ds.y_val) if val_given else len(ds.y_train) - n_fit
    n_test = 0 if ds.y_test is None else len(ds.y_test)
    fingerprint = _fingerprint(ds.X_train, ds.y_train)
    if run is not None and run.get("data_sha256") not in (None, fingerprint):
        parser.error(f"--resume {folder}: the training data of {opts['data']} changed since the run "
                     f"started; it cannot continue on other data")
    return ds, (n_fit, n_val, n_test), fingerprint


def _run_record(args, opts, model, ds, counts, fingerprint, folder: Path, run) -> dict:
    """run.json's contents: a new run's (an earlier run's output files removed first), or the
    resumed run's with its new settings and command."""
    if run is not None:
        run["settings"] = opts
        run.pop("result", None)
        run.setdefault("resumed", []).append("gpugrad " + " ".join(args.argv))
        return run
    for name in OUTPUT_FILES:  # an earlier run's files (--overwrite, or one that never trained)
        (folder / name).unlink(missing_ok=True)
    n_fit, n_val, n_test = counts
    return {"gpugrad": _version(), "command": "gpugrad " + " ".join(args.argv),
            "settings": opts, "model": model.config(), "data_sha256": fingerprint,
            "dataset": {"name": ds.name, "n_train": n_fit, "n_val": n_val, "n_test": n_test,
                        "n_features": int(ds.X_train.shape[1]), "n_classes": ds.n_classes,
                        "image_shape": None if ds.image_shape is None else list(ds.image_shape),
                        "class_names": ds.class_names}}


def _fit_and_write(trainer, model, ds, folder: Path, run, backend, opts, resume) -> int:
    """Train (from the checkpoint ``resume`` when given) and write the outputs; a Ctrl-C or a
    diverged cost writes what the checkpoint holds instead (``_stopped``). Returns the exit status."""
    val_given = ds.X_val is not None
    try:
        with _warnings_as_lines():
            history = trainer.fit(ds.X_train, ds.y_train,
                                  ds.X_val if val_given else None, ds.y_val if val_given else None,
                                  resume=resume)
    except KeyboardInterrupt:
        return _stopped(model, ds, folder, run, trainer, backend, opts, status=130,
                        why="interrupted", message=None)
    except FloatingPointError as e:
        return _stopped(model, ds, folder, run, trainer, backend, opts, status=1, why="diverged",
                        message=str(e))
    _outputs(model, history, ds, folder, run, trainer, backend)
    return 0


def _header(verb, opts, ds, counts, backend, folder) -> str:
    """The line a run starts with: what trains on what, for how long, how, where."""
    n_fit, n_val, n_test = counts
    val = f"{n_val} validation" if n_val else "no validation"
    what = (f"mlp {opts['hidden']}{' batchnorm' if opts['batchnorm'] else ''}"
            if opts["model"] == "mlp" else f"linear {opts['model']}")
    # --epochs is the run's total: a resumed run goes on up to that epoch.
    epochs = opts["epochs"]
    until = f"up to epoch {epochs}" if verb == "resuming" else f"for {epochs} epoch{'' if epochs == 1 else 's'}"
    return (f"gpugrad train: {verb} {what} on {ds.name} ({n_fit} train, {val}, {n_test} test; "
            f"{ds.X_train.shape[1]} features) {until} | {_describe_optimizer(opts)} | "
            f"backend {backend.name} | out {folder}")


def _label(name: str):
    """A class name as the estimators show the label: an integer when it is one."""
    try:
        return int(name)
    except ValueError:
        return name


def _stopped(model, ds, folder, run, trainer, backend, opts, status, why, message) -> int:
    """A run that stopped before its last epoch (Ctrl-C, a NaN cost): write the outputs of the
    epochs its checkpoint holds (model, history, curves, run.json with the test accuracy), and
    say how far it got and what to do next. Returns the exit status."""
    checkpoint = folder / CHECKPOINT_FILE
    prefix = "gpugrad train: " + ("error: " + message + "; " if message else "")
    if not checkpoint.exists():
        if why == "interrupted":
            print(f"{prefix}interrupted before epoch 1 ended; nothing was saved{_again(folder)}",
                  file=sys.stderr)
        else:
            print(f"{prefix}no epoch ended, so nothing was saved: train with other settings "
                  f"(--out {folder} may be used again)", file=sys.stderr)
        return status
    ck = load_checkpoint(checkpoint, backend=model.backend, model=model)  # the epochs done, in place
    done, history = ck["meta"]["epoch"], History(ck["meta"]["history"])
    _outputs(model, history, ds, folder, run, trainer, backend, stopped=why)
    if why == "interrupted":
        print(f"gpugrad train: stopped after epoch {done} of {opts['epochs']}; continue with: "
              f"gpugrad train --resume {folder}", file=sys.stderr)
    else:
        print(f"{prefix}the outputs of its {done} epoch{'' if done == 1 else 's'} are in {folder} "
              f"(to train with other settings: another --out, or --overwrite)", file=sys.stderr)
    return status


def _outputs(model, history, ds, folder, run, trainer, backend, stopped=None):
    """Write model.npz, history.csv/.json, the plots and run.json's result, then print the summary
    line: test accuracy, epochs, time, backend, folder."""
    models.save_model(model, folder / MODEL_FILE, class_names=ds.class_names)
    history.to_csv(folder / "history.csv")
    history.to_json(folder / "history.json")
    _plots(model, history, ds, folder)
    test = (trainer.evaluate(ds.X_test, ds.y_test) if ds.y_test is not None else None)
    seconds = sum(float(r.get("seconds", 0.0)) for r in history.rows)
    run["result"] = {"epochs": len(history), "seconds": seconds, "backend": backend.name,
                     "test": test, "last": json_safe(history.rows[-1]) if len(history) else None}
    if stopped:
        run["result"]["stopped"] = stopped
    _write_json(folder / RUN_FILE, run)
    accuracy = (f"test accuracy {test['accuracy']:.4f}" if test is not None else "no test set")
    epochs = f"{len(history)} epoch{'' if len(history) == 1 else 's'}"
    # Epochs on digits take milliseconds: below a second, two significant digits ("0.0034 s"),
    # not a "0.00 s" that reads as if nothing was timed.
    decimals = 1 if seconds >= 1 else 2 if seconds <= 0 else max(2, 1 - math.floor(math.log10(seconds)))
    took = f"{seconds:.{decimals}f} s"
    print(f"{accuracy} | {epochs} in {took} | backend {backend.name} | out {folder}", flush=True)


class _warnings_as_lines:
    """Within it, the trainer's RisingCostWarning is one line on stderr, "gpugrad train: warning:
    ...", written above the progress bar when there is one; other warnings are left as they are."""

    def __enter__(self):
        import warnings
        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if not issubclass(category, RisingCostWarning):
                return shown(message, category, filename, lineno, file, line)
            text = f"gpugrad train: warning: {message}"
            if "tqdm" in sys.modules:  # a bar may be on screen: tqdm.write keeps it intact
                from tqdm import tqdm
                tqdm.write(text, file=sys.stderr)
            else:
                print(text, file=sys.stderr)
        warnings.showwarning = show
        warnings.simplefilter("always", RisingCostWarning)
        return self

    def __exit__(self, *exc):
        return self._catch.__exit__(*exc)


def _plots(model, history, ds, folder):
    from ..training import plots  # start-up time: plots (and matplotlib) load after training
    plots.plot_history(history.rows, folder / "curves.png")
    if model.kind == "linear" and ds.image_shape is not None:
        W = model.backend.to_numpy(model.params["W"])
        plots.plot_templates(W, ds.image_shape, folder / "templates.png", class_names=ds.class_names)


def _describe_optimizer(opts) -> str:
    name = opts["optimizer"]
    if name in ("momentum", "nesterov"):
        name += f" {opts['momentum']}"
    if opts["schedule"] == "cyclical":
        rate = f"cyclical lr {opts['eta_min']}..{opts['eta_max']} n_s {opts['n_s']}"
    elif opts["schedule"] == "step":
        rate = f"lr {opts['lr']} x {opts['gamma']} every {opts['step_size']} updates"
    else:
        rate = f"lr {opts['lr']}"
    return f"{name}, {rate}, lam {opts['lam']}, batch {opts['batch_size']}"


def _version() -> str:
    return __version__


# ---------------------------------------------------------------------------------------------
# gpugrad predict
# ---------------------------------------------------------------------------------------------

PREDICT_FORMATS = (".csv", ".npy")


def _predict_command(parser, args) -> int:
    out = Path(args.out).expanduser()
    if out.suffix.lower() not in PREDICT_FORMATS:
        parser.error(f"--out {args.out}: the predictions file must end in .csv (one label a line) "
                     f"or .npy (an array)")
    if not out.parent.is_dir():
        parser.error(f"--out {args.out}: folder {out.parent} does not exist")
    if out.is_dir():
        parser.error(f"--out {args.out}: is a folder; name a .csv or .npy file")
    backend = options.backend(parser, args.backend)
    model = _load_predict_model(parser, args.model, backend)
    X, labels, what = _predict_data(parser, args.data)
    if X.shape[1] != model.n_features:
        parser.error(f"DATA {args.data}: its rows have {X.shape[1]} features; the model in "
                     f"{args.model} takes {model.n_features}")
    names = model.class_names or [str(c) for c in range(model.n_classes)]
    if labels is not None:
        known = set(names)
        bad = [i for i, label in enumerate(labels) if label not in known]
        if bad:
            parser.error(f"DATA {args.data}: label y[{bad[0]}] = {labels[bad[0]]} is not one of the "
                         f"model's classes ({', '.join(names)})")
    predicted = np.asarray(names)[_predict_indices(model, X)]
    _write_predictions(out, predicted, labels)
    line = [f"{len(predicted)} predictions of {what} -> {out}"]
    if labels is not None:
        accuracy = float(np.mean(predicted == np.asarray(labels)))
        line.insert(0, f"accuracy {accuracy:.4f} ({int(round(accuracy * len(labels)))} of {len(labels)})")
    print(" | ".join(line + [f"{model!r}"]))
    return 0


def _load_predict_model(parser, spec, backend):
    """The model of MODEL: a model .npz, or a gpugrad train folder (its model.npz)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / MODEL_FILE).is_file():
            hint = (f" (its run has not finished: gpugrad train --resume {spec} writes it)"
                    if (path / RUN_FILE).is_file() else "")
            parser.error(f"MODEL {spec}: the folder holds no {MODEL_FILE}{hint}")
        path = path / MODEL_FILE
    elif not path.exists():
        parser.error(f"MODEL {spec}: no such file or folder")
    try:
        return models.load_model(path, backend=backend)
    except (ValueError, OSError) as e:
        text = str(e)  # the loaders' messages start with the file's path: name it once
        parser.error(f"MODEL {text if text.startswith(str(path)) else f'{spec}: {text}'}")


def _predict_data(parser, spec):
    """(X, labels as strings or None, a description) of DATA: digits' test split, a CIFAR-10
    folder's test_batch, or an .npz's X (and y, when it has one)."""
    path = Path(spec).expanduser()
    try:
        if spec == "digits":
            ds = data.load_digits()
            return ds.X_test, [ds.class_names[c] for c in ds.y_test], f"the {len(ds.y_test)} digits test rows"
        if path.is_dir():
            ds = data.load_cifar10(path, n_val=0)
            return ds.X_test, [ds.class_names[c] for c in ds.y_test], f"the CIFAR-10 test_batch of {path}"
        if path.is_file() and path.suffix.lower() == ".npz":
            return _npz_rows(path)
    except (ValueError, TypeError, OSError) as e:
        parser.error(f"DATA {spec}: {e}")
    if path.exists():
        parser.error(f"DATA {spec}: expected 'digits', a CIFAR-10 folder or an .npz file with an "
                     f"array X (and y for the accuracy)")
    parser.error(f"DATA {spec}: no such file or folder")


def _npz_rows(path: Path):
    """X (checked) and y as label strings, or None, of an .npz file (no pickles)."""
    arrays = npz_arrays(path)
    if "X" not in arrays:
        raise ValueError(f"it has no array X (it holds: {', '.join(sorted(arrays)) or 'nothing'})")
    X = data.check_features(arrays["X"], str(path))
    y = arrays.get("y")
    if y is None:
        return X, None, f"the {len(X)} rows of {path}"
    if y.ndim != 1 or len(y) != len(X):
        raise ValueError(f"y has shape {y.shape}; X has {len(X)} rows: expected ({len(X)},)")
    if y.dtype.kind not in "iu":
        raise TypeError(f"labels y must be integers, got dtype {y.dtype}")
    return X, [str(v) for v in y.tolist()], f"the {len(X)} rows of {path}"


def _predict_indices(model, X, batch=8192):
    """(n,) numpy class indices argmax_j s_j, scored ``batch`` rows at a time."""
    to_np = model.backend.to_numpy
    parts = [np.asarray(to_np(model.predict(X[i:i + batch]))) for i in range(0, len(X), batch)]
    return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, np.int64)


def _write_predictions(out: Path, predicted, labels):
    """.csv: a header, then one line per row (prediction, and the label when known); .npy: the
    predicted labels as an array (integers when every class name is one). Written atomically."""
    if out.suffix.lower() == ".npy":
        try:
            array = predicted.astype(np.int64)
        except ValueError:
            array = predicted
        atomic_write(out, lambda f: np.save(f, array))
        return
    lines = ["prediction" if labels is None else "prediction,label"]
    lines += (list(predicted) if labels is None else [f"{p},{t}" for p, t in zip(predicted, labels)])
    text = ("\n".join(lines) + "\n").encode()
    atomic_write(out, lambda f: f.write(text))


# ---------------------------------------------------------------------------------------------
# gpugrad gradcheck
# ---------------------------------------------------------------------------------------------

def _gradcheck_command(parser, args) -> int:
    options.check_numbers(parser, args, {"n": "a positive integer", "lam": "a non-negative number",
                                  "seed": "a non-negative integer", "h": "a positive number",
                                  "tol": "a positive number"})
    n, lam, seed, h, tol = args.n, args.lam, args.seed, args.h, args.tol
    if args.model != "mlp":
        for name in ("hidden", "batchnorm"):
            if getattr(args, name) not in (None, False):
                parser.error(f"--{name} applies to --model mlp only")
    try:
        hidden = parse_hidden(args.hidden or "50")
    except ValueError as e:
        parser.error(str(e))
    backend = options.backend(parser, args.backend)
    ds = data.load_digits()
    if n > len(ds.y_train):
        parser.error(f"--n must be at most {len(ds.y_train)} (the digits training rows), got {n}")
    X, y = ds.X_train[:n], ds.y_train[:n]
    model = _make_model({"model": args.model, "hidden": ",".join(map(str, hidden)),
                         "batchnorm": args.batchnorm, "dtype": "float64", "seed": seed}, ds, backend)
    if args.model == "mlp":
        what = f"mlp {X.shape[1]}-{'-'.join(map(str, hidden))}-{ds.n_classes}" + (
            " batchnorm" if args.batchnorm else "")
    else:
        what = f"linear {args.model}"
    results = gradient_errors(model, backend.asarray(X), backend.asarray(y), lam, h=h)
    print(f"gradient check: {what}, lam {lam:g}, {n} rows of digits, float64, backend "
          f"{backend.name}, central differences h={h:g}")
    print("relative error ||g_a - g_n|| / (||g_a|| + ||g_n||), g_a = model.loss_grad, "
          "g_n = numerical")
    width = max(9, *(len(k) for k in results))
    print(f"{'parameter':<{width}}  {'shape':<10}  {'relative':>11}  {'max |g_a - g_n|':>15}  "
          f"{'max |g_a|':>9}")
    bad = []
    for name, r in results.items():
        shape = "x".join(map(str, model.params[name].shape))
        rel = "0 (no grad)" if r["zero"] else f"{r['relative']:.2e}"
        print(f"{name:<{width}}  {shape:<10}  {rel:>11}  {r['max_abs']:15.2e}  {r['max_analytic']:9.2e}")
        if not (r["zero"] or r["relative"] <= tol):
            bad.append(name)
    zero = [k for k, r in results.items() if r["zero"]]
    if zero:
        print(f"no grad: {', '.join(zero)} {'does' if len(zero) == 1 else 'do'} not change the cost "
              f"(both gradients below "
              f"{ZERO_GRADIENT:g}; biases before batch normalisation are such)")
    if bad:
        print(f"FAILED: {', '.join(bad)} above {tol:g}")
        return 1
    print(f"ok: every relative error is below {tol:g}")
    return 0


# A parameter whose analytic and numerical gradients are both below this everywhere does not
# move the cost (a bias followed by batch normalisation): its relative error would compare two
# rounding noises, so it is reported as "no grad" instead. The numerical gradient's noise is about
# eps_machine * |J| / h (~1e-11 at h = 1e-5), far below it; a real gradient of a few rows is far above.
ZERO_GRADIENT = 1e-8


def gradient_errors(model, X, y, lam, h=1e-5) -> dict[str, dict]:
    """Compare ``model.loss_grad``'s gradients with central differences of its cost, per parameter.

    g_a comes from ``model.loss_grad(X, y, lam)``; g_n[i] = (J(p + h e_i) - J(p - h e_i)) / (2h)
    from the cost J the same call returns (training mode: batch normalisation's running averages
    move between calls, but the training-mode cost does not read them). For each parameter:
    relative = ||g_a - g_n|| / (||g_a|| + ||g_n||) (norms over its entries), max_abs =
    max |g_a - g_n|, max_analytic = max |g_a|, zero = both gradients below ``ZERO_GRADIENT``.
    A parameter's entries are perturbed in place and restored.

        >>> import numpy as np
        >>> from gpugrad.models import LinearClassifier
        >>> m = LinearClassifier(3, 2, backend="numpy", dtype="float64")
        >>> r = gradient_errors(m, np.eye(3), np.array([0, 1, 1]), lam=0.1)
        >>> sorted(r), r["W"]["relative"] < 1e-7
        (['W', 'b'], True)
    """
    to_np = model.backend.to_numpy
    _, _, grads = model.loss_grad(X, y, lam)
    analytic = {k: np.array(to_np(g), dtype=np.float64) for k, g in grads.items()}

    def cost():
        return float(model.loss_grad(X, y, lam)[0])

    results = {}
    for name, p in model.params.items():
        flat = p.reshape(-1)  # a view: perturbs the parameter in place
        g_n = np.zeros(flat.size)
        for j in range(flat.size):
            old = float(flat[j])
            flat[j] = old + h
            plus = cost()
            flat[j] = old - h
            minus = cost()
            flat[j] = old
            # Divide by the step actually taken: (old + h) - (old - h) is not exactly 2h in floats.
            g_n[j] = (plus - minus) / ((old + h) - (old - h))
        g_a = analytic[name].reshape(-1)
        norm = np.linalg.norm(g_a) + np.linalg.norm(g_n)
        top = max(np.abs(g_a).max(initial=0.0), np.abs(g_n).max(initial=0.0))
        results[name] = {"relative": float(np.linalg.norm(g_a - g_n) / norm) if norm > 0 else 0.0,
                         "max_abs": float(np.abs(g_a - g_n).max(initial=0.0)),
                         "max_analytic": float(np.abs(g_a).max(initial=0.0)),
                         "zero": bool(top < ZERO_GRADIENT)}
    return results

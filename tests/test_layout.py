"""The folders (engine, backends, training, sklearn_dask, tools) and the short module paths users
import: each short path is the same module object, and pickles that name the short paths load."""
import importlib
import pickle
import subprocess
import sys

import numpy as np
import pytest

import gpugrad

pytest.importorskip("sklearn")


@pytest.mark.parametrize("short", sorted(gpugrad.MODULES))
def test_each_short_path_is_the_module_in_its_folder(short):
    module = importlib.import_module(f"gpugrad.{short}")
    assert module is importlib.import_module(f"gpugrad.{gpugrad.MODULES[short]}")
    assert getattr(gpugrad, short) is module


def test_a_pickle_naming_the_short_path_loads_and_predicts_the_same():
    """An estimator pickled when it lived at gpugrad.estimators (protocol 2 names its class as
    text: the module path is rewritten to the old one) loads and gives the same probabilities."""
    X = np.random.default_rng(0).standard_normal((30, 3))
    clf = gpugrad.SoftmaxClassifier(backend="numpy").fit(X, (X[:, 0] > 0).astype(int))
    blob = pickle.dumps(clf, protocol=2)
    old = blob.replace(b"gpugrad.sklearn_dask.estimators\n", b"gpugrad.estimators\n")
    assert old != blob
    np.testing.assert_array_equal(pickle.loads(old).predict_proba(X), clf.predict_proba(X))


def test_the_command_line_starts_without_the_heavy_modules():
    """``gpugrad --help`` loads no scikit-learn, Dask, matplotlib or PyTorch (start-up time)."""
    code = ("import sys; from gpugrad.tools import cli; cli.build_parser(); "
            "print(sorted(m for m in ('sklearn', 'dask', 'matplotlib', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

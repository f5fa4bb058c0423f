"""gpugrad: the back-propagation lecture as a batched gradient engine.

The folders follow the lecture's map:

- ``gpugrad.engine``: the graph and the chain rule. ``graph``: computational graph nodes
  (``tensor``), the generic forward listing and the generic backward pass (the lecture's BackOp);
  ``ops``: one vector-Jacobian product per operation; ``gradient_check``: ``gradcheck`` (central
  differences) and ``jacobian`` (from the VJPs); ``fused``: the fused mini-batch gradients
  (``linear_grad`` and its building blocks); ``compiled``: a model's graph traced once and replayed
  for every batch as a fixed schedule of fused backend calls (how the MLP trains); ``sparse``:
  sparse inputs (scipy.sparse, cupyx.scipy.sparse) taken as they are.
- ``gpugrad.backends``: numpy (reference) and CuPy (fused CUDA kernels), one interface.
- ``gpugrad.training``: ``models`` (the linear classifier and the MLP), ``optim`` (optimisers and
  schedules), ``trainer`` (the mini-batch trainer with history and checkpoints), ``data`` (data
  sets), ``saving`` (JSON, atomic writes, .npz files), ``plots`` (training curves and class
  templates), ``sparse_sgd`` (SGD on sparse X in steps that touch only the batch's columns).
- ``gpugrad.sklearn_dask``: ``estimators`` (the scikit-learn drop-ins ``SoftmaxClassifier``,
  ``SVMClassifier``, ``MLPClassifier``) and ``distributed`` (training on Dask arrays).
- ``gpugrad.tools``: ``cli`` (``gpugrad train``, ``predict``, ``gradcheck`` and ``bench``), ``bench``
  (its workloads and peers), ``options`` (what the tools share in reading options).
- ``gpugrad.checks``: the one parameter check (a number's kind and bounds) every layer uses.

Every module is also importable by its short name, as ``gpugrad.models``, ``gpugrad.trainer``,
``gpugrad.estimators`` ... (the same module object; pickles that name those paths load).
"""
import importlib
import importlib.abc
import importlib.util
import sys

from .backends import cupy_available, get_backend, why_backend
from .engine.fused import linear_grad, softmax_cross_entropy_grad, svm_grad
from .engine.graph import Tensor, tensor, no_grad
from .engine.ops import batch_norm, cross_entropy, exp, linear, log, relu, softmax, svm_loss
from .engine.gradient_check import gradcheck, jacobian
from .engine import compiled
from .training import models, optim
from .training.trainer import History, Trainer

# Where each module lives, by the short name it is also known by (gpugrad.<short name>).
MODULES = {
    "graph": "engine.graph", "ops": "engine.ops", "gradient_check": "engine.gradient_check",
    "fused": "engine.fused", "compiled": "engine.compiled", "sparse": "engine.sparse",
    "_validation": "engine._validation",
    "models": "training.models", "optim": "training.optim", "trainer": "training.trainer",
    "data": "training.data", "saving": "training.saving", "plots": "training.plots",
    "sparse_sgd": "training.sparse_sgd",
    "estimators": "sklearn_dask.estimators", "distributed": "sklearn_dask.distributed",
    "cli": "tools.cli", "bench": "tools.bench", "options": "tools.options",
}


class _ShortNames(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import gpugrad.models`` (and pickles naming ``gpugrad.estimators.SoftmaxClassifier``)
    gives the module at its place in the folders: the same object, loaded on first use."""

    def find_spec(self, fullname, path=None, target=None):
        prefix, _, short = fullname.partition(".")
        if prefix == __name__ and short in MODULES:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        # The import system takes what sys.modules holds after this: the module in its folder.
        short = module.__name__.partition(".")[2]
        sys.modules[module.__name__] = importlib.import_module(f"{__name__}.{MODULES[short]}")


if not any(isinstance(f, _ShortNames) for f in sys.meta_path):
    sys.meta_path.append(_ShortNames())
for _short, _path in MODULES.items():  # those loaded already (the engine, training): attributes too
    if f"{__name__}.{_path}" in sys.modules:
        sys.modules[f"{__name__}.{_short}"] = globals()[_short] = sys.modules[f"{__name__}.{_path}"]
del _short, _path

_ESTIMATORS = ("SoftmaxClassifier", "SVMClassifier", "MLPClassifier")


def __getattr__(name):
    """The estimators (they import scikit-learn), data, plots, the Dask path and the tools load on
    first use (start-up time: ``import gpugrad`` loads none of them)."""
    if name in _ESTIMATORS:
        return getattr(importlib.import_module(f"{__name__}.estimators"), name)
    if name in MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'gpugrad' has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
    "Tensor", "tensor", "no_grad",
    "exp", "log", "relu", "softmax", "cross_entropy", "svm_loss", "batch_norm", "linear",
    "gradcheck", "jacobian",
    "linear_grad", "softmax_cross_entropy_grad", "svm_grad",
    "get_backend", "cupy_available", "why_backend",
    "compiled", "models", "optim", "Trainer", "History",
    "SoftmaxClassifier", "SVMClassifier", "MLPClassifier",
]

"""gpugrad: the back-propagation lecture as a batched gradient engine.

- ``gpugrad.graph``: computational graph nodes (``tensor``), the generic forward listing and the
  generic backward pass (the lecture's BackOp); ``gpugrad.compiled``: a model's graph traced once
  and replayed for every batch as a fixed schedule of fused backend calls (how the MLP trains).
- ``gpugrad.ops``: one vector-Jacobian product per operation.
- ``gpugrad.gradient_check``: ``gradcheck`` (central differences) and ``jacobian`` (from the VJPs).
- ``gpugrad.fused``: the fused mini-batch gradients (``linear_grad`` and its building blocks).
- ``gpugrad.sparse``: sparse inputs (scipy.sparse, cupyx.scipy.sparse) taken as they are;
  ``gpugrad.sparse_sgd``: SGD on them in steps that touch only the batch's columns.
- ``gpugrad.backends``: numpy (reference) and CuPy (fused CUDA kernels), one interface.
- ``gpugrad.models``: the linear classifier and the MLP; ``gpugrad.optim``: optimisers and
  schedules; ``gpugrad.trainer``: the mini-batch trainer with history and checkpoints.
- ``gpugrad.data``: data sets; ``gpugrad.plots``: training curves and class templates.
- ``gpugrad.estimators``: the scikit-learn drop-ins (``SoftmaxClassifier``, ``SVMClassifier``,
  ``MLPClassifier``); ``gpugrad.cli``: ``gpugrad train``, ``gpugrad predict``, ``gpugrad gradcheck``
  and ``gpugrad bench`` (its workloads and peers in ``gpugrad.bench``); ``gpugrad.distributed``:
  training on Dask arrays.
"""
from .backends import cupy_available, get_backend, why_backend
from .fused import linear_grad, softmax_cross_entropy_grad, svm_grad
from .graph import Tensor, tensor, no_grad
from .ops import batch_norm, cross_entropy, exp, linear, log, relu, softmax, svm_loss
from .gradient_check import gradcheck, jacobian
from . import compiled, models, optim
from .trainer import History, Trainer

_LAZY = {"SoftmaxClassifier": "estimators", "SVMClassifier": "estimators", "MLPClassifier": "estimators",
         "data": None, "plots": None, "estimators": None, "distributed": None, "bench": None,
         "cli": None}


def __getattr__(name):
    """The estimators (they import scikit-learn), data and plots load on first use."""
    if name not in _LAZY:
        raise AttributeError(f"module 'gpugrad' has no attribute {name!r}")
    import importlib
    module = importlib.import_module(f".{_LAZY[name] or name}", __name__)
    return module if _LAZY[name] is None else getattr(module, name)

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

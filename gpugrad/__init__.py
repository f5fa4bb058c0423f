"""gpugrad: the back-propagation lecture as a batched gradient engine.

- ``gpugrad.graph``: computational graph nodes (``tensor``), the generic forward listing and the
  generic backward pass (the lecture's BackOp).
- ``gpugrad.ops``: one vector-Jacobian product per operation.
- ``gpugrad.gradient_check``: ``gradcheck`` (central differences) and ``jacobian`` (from the VJPs).
- ``gpugrad.fused``: the fused mini-batch gradients (``linear_grad`` and its building blocks).
- ``gpugrad.backends``: numpy (reference) and CuPy (fused CUDA kernels), one interface.
"""
from .backends import cupy_available, get_backend, why_backend
from .fused import linear_grad, softmax_cross_entropy_grad, svm_grad
from .graph import Tensor, tensor, no_grad
from .ops import cross_entropy, exp, log, relu, softmax, svm_loss
from .gradient_check import gradcheck, jacobian

__version__ = "0.1.0"

__all__ = [
    "Tensor", "tensor", "no_grad",
    "exp", "log", "relu", "softmax", "cross_entropy", "svm_loss",
    "gradcheck", "jacobian",
    "linear_grad", "softmax_cross_entropy_grad", "svm_grad",
    "get_backend", "cupy_available", "why_backend",
]

"""Backends: one interface, two array modules.

`NumpyBackend` is complete and is the reference for correctness; `CupyBackend` subclasses it,
sets ``xp = cupy`` and overrides only what a fused CUDA kernel makes faster.

    >>> import gpugrad as gg
    >>> gg.get_backend("auto").name in ("numpy", "cupy")
    True
"""
from __future__ import annotations

from .arrays import is_array, is_cupy_array, move_to, to_host
from .numpy_backend import NumpyBackend

__all__ = ["NumpyBackend", "get_backend", "backend_for", "why_backend", "cupy_available", "is_array",
           "is_cupy_array", "move_to", "to_host"]

_NUMPY = NumpyBackend()
_CUPY = None          # created on first use: importing cupy is slow and may fail
_CUPY_WHY = None      # one line: why the CUDA backend is (not) usable


def _probe_cupy():
    """Try to make the CuPy backend once; remember the one-line reason when it fails."""
    global _CUPY, _CUPY_WHY
    if _CUPY is not None or _CUPY_WHY is not None:
        return _CUPY
    try:
        import cupy
    except Exception as e:  # ImportError, or a broken CUDA install raising at import
        _CUPY_WHY = f"cupy is not importable ({type(e).__name__}: {e})"
        return None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        _CUPY_WHY = f"cupy {cupy.__version__} is installed but no CUDA device is usable ({e})"
        return None
    if count < 1:
        _CUPY_WHY = f"cupy {cupy.__version__} is installed but sees no CUDA device"
        return None
    from .cupy_backend import CupyBackend
    _CUPY = CupyBackend()
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    _CUPY_WHY = f"cupy {cupy.__version__} on {name} (device {cupy.cuda.Device().id} of {count})"
    return _CUPY


def cupy_available() -> bool:
    """True when CuPy imports and a CUDA device is usable."""
    return _probe_cupy() is not None


def why_backend() -> str:
    """One line saying which backend ``get_backend("auto")`` picks and why."""
    be = _probe_cupy()
    if be is not None:
        return f"auto -> cupy: {_CUPY_WHY}"
    return f"auto -> numpy: {_CUPY_WHY}"


def get_backend(name="auto"):
    """Return a backend by name: ``"numpy"``, ``"cupy"`` or ``"auto"``.

    ``"auto"`` picks CuPy when a CUDA device is usable, numpy otherwise
    (``gpugrad.why_backend()`` says which and why). A backend object passes through unchanged.
    The CuPy backend works on the current device: under ``with cupy.cuda.Device(1):`` its calls
    run on device 1, with kernels loaded there and the kernel variants measured for that card.
    """
    if isinstance(name, NumpyBackend):
        return name
    if name is None or name == "auto":
        return _probe_cupy() or _NUMPY
    if name == "numpy":
        return _NUMPY
    if name == "cupy":
        be = _probe_cupy()
        if be is None:
            raise RuntimeError(f"the cupy backend is not usable: {_CUPY_WHY}")
        return be
    raise ValueError(f"unknown backend {name!r}; expected 'numpy', 'cupy' or 'auto'")


def backend_for(*arrays):
    """The backend that owns these arrays: CuPy for any cupy.ndarray among them, else numpy."""
    for a in arrays:
        if is_cupy_array(a):
            return get_backend("cupy")
    return _NUMPY

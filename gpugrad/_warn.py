"""Warnings that point at the user's code: the first caller outside gpugrad.

A warning raised deep inside a fit (``warnings.warn`` with the default stacklevel) names a line of
gpugrad, which tells the user nothing about which of their calls it concerns, and Python's
default filter shows it once for all of them. ``warn`` walks up the stack past gpugrad's own
frames, so the warning names the user's ``fit``, ``train`` or ``partial_fit`` line (or, under a
scikit-learn helper such as ``cross_val_score``, the helper's line).

    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     warn("a note", UserWarning)
    >>> caught[0].filename == __file__ or caught[0].filename.startswith("<doctest")
    True
"""
from __future__ import annotations

import os
import sys
import warnings

__all__ = ["warn"]

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn(message, category)`` attributed to the innermost caller outside gpugrad."""
    frame, level = sys._getframe(1), 2  # stacklevel 2: warn's caller
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)

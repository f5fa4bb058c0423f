"""Parameter checks: the one rule for "a number of this kind within these bounds" (``number``).

The estimators, the command line, the trainer, the optimisers, the models, the data loaders and
the Dask path all check their numeric parameters here, each with its own words for the error
(``what``; by default the bounds said in full, e.g. "an integer >= 1"), so a bound is written once
as data and tested by one function.

    >>> number("batch_size", 0, integer=True, low=1)
    Traceback (most recent call last):
    ...
    ValueError: batch_size must be an integer >= 1, got 0
    >>> number("momentum", 0.9, low=0, high=1, high_open=True)
    0.9
    >>> describe(low=0, high=1, low_open=True, high_open=True)
    'a number > 0 and < 1'
"""
from __future__ import annotations

import math
import numbers

__all__ = ["within", "describe", "number", "integral", "CLI_KINDS", "parse_option"]


def within(value, *, integer=False, low=None, high=None, low_open=False, high_open=False,
           finite=True) -> bool:
    """Whether ``value`` is an integer (``integer``; numpy integers too) or a real number, never a
    bool, finite (unless ``finite=False``), and within [low, high] (``low_open``/``high_open``:
    the bound itself excluded; None: no bound)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral if integer else numbers.Real):
        return False
    if finite and not math.isfinite(value):
        return False
    if low is not None and not (value > low if low_open else value >= low):
        return False
    return high is None or (value < high if high_open else value <= high)


def describe(*, integer=False, low=None, high=None, low_open=False, high_open=False, **_) -> str:
    """The bounds in words: "an integer >= 1", "a number > 0 and < 1", "a number"."""
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        bounds.append(f"{'<' if high_open else '<='} {high}")
    return f"{'an integer' if integer else 'a number'} {' and '.join(bounds)}".strip()


def number(name, value, *, what=None, owner=None, convert=None, **bounds):
    """``value`` (``convert(value)`` when given: int for integers) if it is ``within`` the
    bounds, else ValueError "[{owner}: parameter ]{name} must be {what}, got {value!r}"."""
    v = value if convert is None else convert(value)
    if not within(v, **bounds):
        where = f"{owner}: parameter " if owner else ""
        raise ValueError(f"{where}{name} must be {what or describe(**bounds)}, got {value!r}")
    return int(v) if bounds.get("integer") else v


def integral(value):
    """A float holding a whole number as that int (5.0 -> 5; a schedule read back from JSON);
    anything else unchanged, for ``number`` to judge."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


# The kinds of number the command line's options take, by the words its errors use.
CLI_KINDS = {
    "a positive integer": dict(integer=True, low=1),
    "a non-negative integer": dict(integer=True, low=0),
    "a positive number": dict(low=0, low_open=True),
    "a non-negative number": dict(low=0),
    "a number in [0, 1)": dict(low=0, high=1, high_open=True),
}


def parse_option(option, text, what):
    """A command-line option's text as the kind of number ``what`` names (a key of CLI_KINDS);
    None stays None; else ValueError "{option} must be {what}, got {text}"."""
    if text is None:
        return None
    bounds = CLI_KINDS[what]
    try:
        value = (int if bounds.get("integer") else float)(text)
    except (TypeError, ValueError):
        value = None
    if value is None or not within(value, **bounds):
        raise ValueError(f"{option} must be {what}, got {text}")
    return value

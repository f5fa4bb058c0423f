"""What the command line's tools (``gpugrad train``/``predict``/``gradcheck`` and ``gpugrad bench``)
share in reading their options: numbers checked by ``gpugrad.checks``, the backend by name; a bad
value goes to ``parser.error`` (exit status 2) naming the option."""
from __future__ import annotations

from .. import checks
from ..backends import get_backend


def number(parser, option, text, what):
    """text as the kind of number ``what`` names (a key of ``checks.CLI_KINDS``), else
    parser.error naming the option; None stays None."""
    try:
        return checks.parse_option(option, text, what)
    except ValueError as e:
        parser.error(str(e))


def check_numbers(parser, args, kinds: dict) -> None:
    """Convert and check, in place on args, each option named in kinds ({dest: kind})."""
    for name, what in kinds.items():
        setattr(args, name, number(parser, "--" + name.replace("_", "-"), getattr(args, name), what))


def backend(parser, name):
    """The backend called ``name`` (``gpugrad.get_backend``), else parser.error naming it."""
    try:
        return get_backend(name)
    except RuntimeError as e:
        parser.error(f"--backend {name}: {e}")

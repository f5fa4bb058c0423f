"""``python -m gpugrad``: the same command line as the ``gpugrad`` script (see gpugrad.cli)."""
import sys

from .tools.cli import main

if __name__ == "__main__":  # not when imported (pytest's doctest collection imports this module)
    sys.exit(main())

"""``python -m tensortrain``: the ``tensortrain`` command (see :mod:`tensortrain.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":  # (imported, e.g. by pydoc or a doctest collector, it runs nothing)
    sys.exit(main())

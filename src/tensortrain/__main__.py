"""``python -m tensortrain``: the ``tensortrain`` command (see :mod:`tensortrain.cli`)."""

import sys

from .cli import main

sys.exit(main())

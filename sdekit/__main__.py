"""``python -m sdekit``: the ``sdekit`` command (see :mod:`sdekit.cli`)."""

import sys

from .cli import main

sys.exit(main())

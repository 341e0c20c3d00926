"""``python -m dlas``: the same as the ``dlas`` command."""

import sys

from dlas.cli import main

sys.exit(main())

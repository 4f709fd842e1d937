"""``python -m l0prune.cli``: the ``l0prune`` command line."""

import sys

from . import main

sys.exit(main())

"""``python -m interakt_logging``: the same command line as ``interakt-logging``."""

import sys

from ._cli import main

sys.exit(main())

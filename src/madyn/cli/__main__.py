"""``python -m madyn.cli``: the ``madyn`` command."""

import sys

from madyn.cli.main import main

sys.exit(main())

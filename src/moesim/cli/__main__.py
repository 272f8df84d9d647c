"""`python -m moesim.cli`: the same as the `moesim` command."""

import sys

from . import main

sys.exit(main())

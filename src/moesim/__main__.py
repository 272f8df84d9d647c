"""`python -m moesim`: the same as the `moesim` command."""

import sys

from .cli import main

sys.exit(main())

"""`python -m needle train ...`: the same as the `needle` console script."""

import sys

from .apps.cli import main

sys.exit(main())

"""``python -m diffusability …`` — the same as the ``diffusability`` console script."""

import sys

from .cli import main

sys.exit(main())

"""``python -m castream.cli``."""

import sys

from . import main

sys.exit(main())

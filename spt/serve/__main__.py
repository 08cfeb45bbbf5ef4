"""``python -m spt.serve``."""

import sys

from spt.serve.cli import main

sys.exit(main())

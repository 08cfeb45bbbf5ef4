"""``python -m spt.compare`` and ``import spt.compare`` keep working: the tool lives in :mod:`spt.tools.compare`."""

import sys

from spt.tools import compare as _tool

if __name__ == "__main__":
    sys.exit(_tool.main())
sys.modules[__name__] = _tool

"""``python -m spt.analysis`` and ``import spt.analysis`` keep working: the tool lives in :mod:`spt.tools.analysis`."""

import sys

from spt.tools import analysis as _tool

if __name__ == "__main__":
    sys.exit(_tool.main())
sys.modules[__name__] = _tool

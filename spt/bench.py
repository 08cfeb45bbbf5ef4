"""``python -m spt.bench`` and ``import spt.bench`` keep working: the tool lives in :mod:`spt.tools.bench`."""

import sys

from spt.tools import bench as _tool

if __name__ == "__main__":
    sys.exit(_tool.main())
sys.modules[__name__] = _tool

"""``scripts/equivalence.py`` (the recorded runs' cases, runner and comparison) as a module the
tests share: test_equivalence, test_registry and test_precision read the same cases."""

from __future__ import annotations

import importlib.util

from spt import CONF_DIR

_spec = importlib.util.spec_from_file_location(
    "equivalence", CONF_DIR.parents[1] / "scripts" / "equivalence.py"
)
equivalence = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(equivalence)

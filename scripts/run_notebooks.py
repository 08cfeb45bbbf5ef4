"""Execute the notebooks on the real packaged MiniLM and store them with their outputs, so
they read on GitHub as they run (tests/test_notebooks.py still executes them, on tiny-bert):

    .venv/bin/python scripts/run_notebooks.py [notebooks/quickstart.ipynb ...]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> int:
    paths = [Path(p) for p in argv] or sorted((REPO / "notebooks").glob("*.ipynb"))
    os.environ.setdefault("SPT_DATA_DIR", str(REPO.parent / "shared" / "data"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "offline")
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        NotebookClient(
            nb,
            timeout=1800,
            kernel_name="python3",
            resources={"metadata": {"path": str(path.parent)}},
        ).execute()
        nbformat.write(nb, path)
        print(f"{path}: executed, outputs stored")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

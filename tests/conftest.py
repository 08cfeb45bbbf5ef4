"""Test settings: offline, tiny models, real data from ../shared/data (or $SPT_DATA_DIR)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("SPT_DATA_DIR") or REPO.parent / "shared" / "data")

# Nothing may reach a hub from a test; W&B never syncs.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["SPT_DATA_DIR"] = str(DATA_DIR)


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module: tiny models gain nothing from intra-op threads, and
    on a busy machine two OpenMP threads waiting on each other turn each matmul into
    milliseconds."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA_DIR.is_dir():
        pytest.skip(f"benchmark data not found at {DATA_DIR}; set SPT_DATA_DIR")
    return DATA_DIR


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


def pytest_collection_modifyitems(config, items):
    """Real-backbone tests (``slow``; CI runs those marked ``ci``) first: on two xdist workers
    the longest test then starts at once instead of being the tail that the other worker waits
    for. The sort is stable, so the rest keep their order."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)

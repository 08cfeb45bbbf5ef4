"""Notebooks are executed on tiny models so they never rot."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, monkeypatch, data_dir):
    monkeypatch.setenv("SPT_NOTEBOOK_MODEL", "tiny-bert")
    monkeypatch.setenv("SPT_NOTEBOOK_STEPS", "4")
    monkeypatch.setenv("SPT_NOTEBOOK_OUT", str(tmp_path))
    nb = nbformat.read(path, as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    outputs = "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    assert os.environ.get("SPT_NOTEBOOK_MODEL") == "tiny-bert"
    CHECKS[path.stem](outputs, tmp_path)


def _quickstart(outputs: str, out) -> None:
    import re

    assert "dev accuracy:" in outputs and "reloaded dev accuracy" in outputs
    # one line per prompt position (method.length=8): its norm and 3 nearest vocabulary tokens
    lines = re.findall(
        r"^\s*(\d+)  norm\s+([\d.]+)  nearest \[(.+)\]  cos \[(.+)\]$", outputs, flags=re.M
    )
    assert [int(pos) for pos, *_ in lines] == list(range(8))
    assert all(float(norm) > 0 and len(toks.split(",")) == 3 for _, norm, toks, _ in lines)
    assert "mean vocabulary embedding norm:" in outputs
    assert (out / "prompt.safetensors").is_file()


def _compare_runs(outputs: str, out) -> None:
    assert "runs compared: 4" in outputs
    assert (out / "acc_vs_length.png").is_file()


CHECKS = {"quickstart": _quickstart, "compare_runs": _compare_runs}  # one per notebook


def test_every_notebook_is_checked():
    assert sorted(CHECKS) == [p.stem for p in NOTEBOOKS]

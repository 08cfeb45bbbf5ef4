"""Editing an artifact's metadata the way a hand edit (or a tool) would: in the safetensors
header, which is the source of truth, and in the ``.json`` copy beside it."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file, save_file


def edit_meta(path, edit) -> dict:
    """Apply ``edit(meta)`` (in place, or returning a new dict) to both copies; returns it."""
    path = Path(path).with_suffix(".safetensors")
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["spt"])
    meta = edit(meta) or meta
    text = json.dumps(meta, indent=2, sort_keys=True)
    save_file(load_file(str(path)), str(path), metadata={"spt": text})
    path.with_suffix(".json").write_text(text + "\n")
    return meta

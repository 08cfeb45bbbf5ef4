"""Nested config trees as flat dotted keys (what config diffs and run comparisons compare)."""

from __future__ import annotations


def flatten(tree, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; leaves (lists included) are kept as they are."""
    if isinstance(tree, dict):
        return {
            k: v for key, sub in tree.items() for k, v in flatten(sub, f"{prefix}{key}.").items()
        }
    return {prefix[:-1]: tree}

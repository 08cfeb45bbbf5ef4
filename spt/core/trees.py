"""Config trees: flat dotted keys (what config diffs and run comparisons compare), and settings
nodes as the frozen dataclasses methods take (``method.head``, ``method.scheduler``)."""

from __future__ import annotations

import dataclasses

from spt.errors import SptError


def flatten(tree, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; leaves (lists included) are kept as they are."""
    if isinstance(tree, dict):
        return {
            k: v for key, sub in tree.items() for k, v in flatten(sub, f"{prefix}{key}.").items()
        }
    return {prefix[:-1]: tree}


def plain(value):
    """Settings as plain values: settings nodes (frozen dataclasses) as dicts, tuples as
    lists, at every depth (what checkpoints, loaded ``weights_only``, and artifacts hold)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def settings_node(cls, value, node: str):
    """A frozen dataclass ``cls`` from a config node ``value`` (a mapping; missing keys keep
    their defaults), an instance already, or None (all defaults); an unknown key is an error
    naming ``node`` and the keys it takes."""
    if isinstance(value, cls):
        return value
    if value is None:
        return cls()
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise SptError(f"{node} has no {unknown}: it takes {' and '.join(fields)}")
    return cls(**dict(value))

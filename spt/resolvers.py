"""The OmegaConf resolvers spt's configs use, registered on import (light: no torch)."""

from __future__ import annotations

from omegaconf import OmegaConf

from spt.errors import SptError


def _lookup(table, key):
    """``${spt.lookup:${table},${key}}``: ``table[key]``, for settings that follow another one
    (e.g. CoOp's epochs per shot count)."""
    if key not in table:
        raise SptError(
            f"no entry for {key!r} in {dict(table)}: use one of {list(table)} or "
            "set the dependent key directly"
        )
    return table[key]


OmegaConf.register_new_resolver("spt.lookup", _lookup, replace=True)

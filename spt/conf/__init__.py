"""The Hydra configs (a package so that Hydra finds them as ``pkg://spt.conf`` in an installed wheel)."""

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


def _multirun_job():
    """Hydra's config of the job being composed, when it is one job of a multirun; else None
    (a single run, or a config composed outside Hydra's app, e.g. in tests)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        hydra = HydraConfig.get()
    except ValueError:  # HydraConfig was not set
        return None
    return hydra if hydra.mode == RunMode.MULTIRUN else None


def _sweep_job() -> str:
    """``${spt.sweep_job:}``: in a sweep job, `` #<job number> <its overrides>`` (so every job
    of a sweep has its own W&B name); else an empty string."""
    hydra = _multirun_job()
    if hydra is None:
        return ""
    return f" #{hydra.job.num} {hydra.job.override_dirname}".rstrip()


def _sweep_tags(tags) -> list:
    """``${spt.sweep_tags:${tags}}``: the run's tags, plus ``sweep:<sweep folder>`` in a sweep
    job (the W&B filter for one sweep's jobs)."""
    tags = list(tags or [])
    hydra = _multirun_job()
    if hydra is None:
        return tags
    from pathlib import Path

    return [*tags, f"sweep:{Path(hydra.sweep.dir).name}"]


def _job_dir(num, overrides) -> str:
    """``${spt.job_dir:${hydra.job.num},${hydra.job.override_dirname}}``: a sweep job's folder,
    ``<n>_<its overrides>`` (``3_method.length=20,seed=2``), so a listing says which job is
    which. Characters a path should not hold become ``_`` (``data.root=/a/b`` ->
    ``data.root=_a_b``); past 150 characters it is cut and a hash of the whole added, so the
    name stays unique and the same on a rerun (``resume=auto`` finds its jobs again)."""
    import hashlib
    import re

    safe = re.sub(r"[^A-Za-z0-9._=,+-]+", "_", str(overrides or "")).strip("_")
    if len(safe) > 150:
        digest = hashlib.sha256(str(overrides).encode()).hexdigest()[:8]
        head = safe[:140]
        head = head[: head.rfind(",")] if "," in head else head  # whole overrides only
        safe = f"{head}-{digest}"
    return f"{num}_{safe}" if safe else str(num)


OmegaConf.register_new_resolver("spt.sweep_job", _sweep_job, replace=True)
OmegaConf.register_new_resolver("spt.job_dir", _job_dir, replace=True)
OmegaConf.register_new_resolver("spt.sweep_tags", _sweep_tags, replace=True)

"""W&B runs for :mod:`spt.compare`, read through ``wandb.Api`` (the server: runs synced with
``wandb sync <run dir>/wandb/offline-run-*`` or logged online).

Local runs are read from spt's own files instead (``metrics.json``, the CSV log that every
logger config writes): wandb has no public reader for an offline run's ``run-<id>.wandb``
log (wandb/wandb#1768, #9448), and spt does not parse that binary format itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from spt.errors import SptError


@dataclass
class WandbRun:
    """What spt.compare reads from a W&B run: identity, the logged config (spt logs its whole
    resolved config), the last value of each logged metric, and the history rows."""

    id: str
    group: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    finished: bool = False  # the log holds the run's exit record


def api_runs(path: str, group: str | None = None) -> list[WandbRun]:
    """The runs of ``entity/project`` on the W&B server (``group``: one study), through
    ``wandb.Api``; needs network and a login (``WANDB_API_KEY``)."""
    import wandb

    try:
        found = wandb.Api().runs(path, filters={"group": group} if group else None)
        out = []
        for r in found:
            config = {k: v for k, v in dict(r.config).items() if not k.startswith("_")}
            summary = {k: v for k, v in dict(r.summary).items() if not k.startswith("_")}
            out.append(
                WandbRun(
                    id=r.id,
                    group=r.group or "",
                    tags=list(r.tags or []),
                    config=config,
                    summary=summary,
                    finished=r.state == "finished",
                )
            )
    except Exception as exc:  # no network, no login, no such project
        raise SptError(
            f"wandb:{path}: the W&B API could not list the runs "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); check the "
            "network and `wandb login`, or compare the local run directories "
            "instead"
        ) from None
    if not out:
        raise SptError(f"wandb:{path}: no runs{f' in group {group!r}' if group else ''}")
    return out

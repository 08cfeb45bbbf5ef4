"""What a sweep (``python -m spt.run -m ...``) leaves when it ends: ``summary.md`` and
``summary.csv`` in the sweep directory, one row per job (:mod:`spt.tools.compare`'s table), so a
finished sweep is read in one place rather than job folder by job folder."""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.experimental.callback import Callback

log = logging.getLogger("spt.run")


class SweepSummary(Callback):
    """A Hydra callback (``hydra.callbacks`` in spt/conf/hydra/default.yaml)."""

    def on_multirun_end(self, config, **kwargs) -> None:
        from spt.tools import compare

        sweep = Path(config.hydra.sweep.dir)
        rows = compare.collect([sweep]) if sweep.is_dir() else []
        if not rows:
            return
        cols = compare.columns(rows)
        (sweep / "summary.md").write_text(compare.markdown(rows, cols) + "\n")
        compare.write_csv(rows, sweep / "summary.csv", cols)
        log.info("sweep summary (%d runs): %s", len(rows), sweep / "summary.md")

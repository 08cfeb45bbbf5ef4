"""Entry point: ``python -m spt.run method=M model=S data=D [experiment=E] [key=value ...]``.

Composes the config (``spt/conf``), runs one job (:func:`spt.train.train`: build, fit,
evaluate, write the run directory) and returns ``optimized_metric`` for sweeps. User errors
print one ``spt: error:`` line and exit with status 2; a run that stops before training leaves
no run directory behind. torch and Lightning are imported only once a job runs, so ``--help``
and ``--cfg job`` answer in about a second.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

import spt.resolvers  # noqa: F401  (the ${spt.lookup:...} resolver, before Hydra composes)
from spt.errors import user_error

log = logging.getLogger("spt.run")


def _has_results(out_dir: Path) -> bool:
    return any(
        (out_dir / p).exists() for p in ("checkpoints", "prompt.safetensors", "metrics.json")
    )


def remove_empty_parents(path: Path, root: Path) -> None:
    """Remove the folders between ``path`` and ``root`` that are empty, bottom up (``root``
    stays): a failed run leaves no ``runs/<data>/<model>/<method>/`` shells behind."""
    root = root.resolve()
    for parent in path.resolve().parents:
        if parent == root or root not in parent.parents:
            return
        try:
            parent.rmdir()  # only an empty folder; a sibling run's folder stops the walk
        except OSError:
            return


def _finish_wandb() -> None:
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()


_JOB_STARTED = False  # set once Hydra hands a composed config to main: errors after are a job's


@hydra.main(version_base="1.3", config_path="conf", config_name="run")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    from spt.train import train

    global _JOB_STARTED
    _JOB_STARTED = True

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        metrics = train(cfg, out_dir)
    except Exception as exc:
        err = user_error(exc)
        if err is None:
            raise
        _finish_wandb()
        if not _has_results(out_dir):  # nothing worth keeping: leave no half-written run
            logging.shutdown()
            shutil.rmtree(out_dir, ignore_errors=True)
            remove_empty_parents(out_dir, Path(cfg.paths.root))
        print(f"spt: error: {err}", file=sys.stderr)
        sys.exit(2)
    finally:
        _finish_wandb()
    if "optimized_metric" not in metrics:  # a non-zero rank of a distributed run: rank 0 reports
        return None
    value = metrics.get(metrics.get("optimized_metric"))
    summary = ", ".join(
        f"{k.split('/', 1)[1]} {v:.4f}" for k, v in metrics.items() if k.startswith("val/")
    )
    print(
        f"spt: dev {summary} | run dir {out_dir}"
        + (
            f" | artifact {metrics['artifact']} ({metrics['artifact_bytes']} bytes)"
            if "artifact" in metrics
            else ""
        )
    )
    return value


def cli() -> None:
    """``python -m spt.run`` / ``spt run``: :func:`main`, with what Hydra itself refuses (an
    unknown group or option, an override that does not parse, a run directory that cannot be
    made) as one ``spt: error:`` line and exit status 2, like every other user error.
    HYDRA_FULL_ERROR makes Hydra re-raise these instead of printing a traceback and exiting 1
    (hydra/_internal/utils.py, run_and_report); anything else still raises in full."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        main()
    except (HydraException, OmegaConfBaseException) as err:
        if _JOB_STARTED:
            raise
        text = " ".join(str(err).split()) or type(err).__name__
        print(f"spt: error: {text} (python -m spt.run --help lists the groups)", file=sys.stderr)
        sys.exit(2)
    except OSError as err:
        if _JOB_STARTED:
            raise
        print(
            f"spt: error: cannot create the run directory: {err.strerror}: {err.filename} "
            "(set paths.root=<a writable folder>, or SPT_OUTPUT_DIR)",
            file=sys.stderr,
        )
        sys.exit(2)


if __name__ == "__main__":
    cli()

"""What makes a run resumable and rerunnable: the fit time and the resolved config carried in every
checkpoint, and the checks that a resume (``resume=last|auto|<path>``) or a rerun sweep continues
the run it thinks it does, naming the config keys that differ when it does not."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from omegaconf import OmegaConf

from spt.core.artifact import atomic_write
from spt.core.trees import flatten
from spt.errors import SptError

log = logging.getLogger("spt.run")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, with local checkpoints written to a temp file beside
    the target and renamed over it. Lightning's own goes through fsspec's transaction, whose
    temp file is made in $TMPDIR (fsspec/implementations/local.py, LocalFileOpener._open) and
    then moved: a kill mid-write leaves a checkpoint-sized file in /tmp that nothing removes,
    and a move across filesystems is a copy, so a kill mid-move leaves a half-written
    ``last.ckpt``. Here a reader sees the old checkpoint or the new one, and a killed
    writer's temp file is removed by the next save. Remote URLs (``s3://``) keep Lightning's
    path."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_write(Path(path), lambda tmp: torch.save(checkpoint, tmp))


class FitClock(L.Callback):
    """Seconds spent fitting, carried in the checkpoint: a resumed run reports the time of
    every stretch that led to its checkpoint plus its own, not only the stretch since the
    resume (work lost after the last checkpoint, which the resume redoes, is not counted)."""

    def __init__(self) -> None:
        self.before, self.started = 0.0, None

    def seconds(self) -> float:
        return self.before + (time.perf_counter() - self.started if self.started else 0.0)

    def on_fit_start(self, trainer, pl_module) -> None:
        self.started = time.perf_counter()

    def on_fit_end(self, trainer, pl_module) -> None:
        self.before, self.started = self.seconds(), None

    def state_dict(self) -> dict:
        return {"seconds": self.seconds()}

    def load_state_dict(self, state: dict) -> None:
        self.before = float(state.get("seconds", 0.0))


class CheckpointOnSigterm(L.Callback):
    """On SIGTERM (a SLURM preemption, a scheduler's timeout), save ``last.ckpt`` at the
    current step, so ``resume=last`` continues from there rather than from the last periodic
    checkpoint. Lightning's signal connector turns SIGTERM into ``SIGTERMException`` right
    after a finished batch's ``on_train_batch_end`` (training_epoch_loop.py), the point
    where the periodic checkpoints are taken too, and calls ``on_exception`` before tearing
    down: the loops and the data loader's position are still there to save."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.saved_at: int | None = None

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if isinstance(exception, SIGTERMException) and trainer.global_step > 0:
            trainer.save_checkpoint(self.path)
            self.saved_at = int(trainer.global_step)


class ConfigStamp(L.Callback):
    """Writes the run's resolved config (as :func:`in_run_dir` gives it) into every checkpoint
    (``spt_config``), so a resume can tell whether it continues the run it thinks it does
    (see :func:`check_resumed_config`)."""

    def __init__(self, stamp: dict) -> None:
        self.stamp = stamp

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["spt_config"] = self.stamp


def finished_run(resume: str | None, out_dir: Path, stamp: dict) -> dict | None:
    """With ``resume=auto``: the metrics of a run already finished in ``out_dir`` under the
    same config (a rerun sweep skips it), else None. A finished run with another config is
    refused, naming the keys that differ, rather than silently kept or overwritten; keys that
    only one of the two configs has (added to or dropped from spt/conf/ since) are not compared.
    ``stamp`` is this run's resolved config with run-dir paths relative (:func:`in_run_dir`).
    The saved one is compared with its paths relative to ``out_dir`` and, failing that, to
    the directory it was written in (its ``paths.output_dir``), so a finished run moved
    elsewhere still compares equal, and so does one whose ``paths.output_dir`` lies outside
    its run directory."""
    done = out_dir / "metrics.json"
    if resume != "auto" or not done.is_file():
        return None
    saved_path = out_dir / "config.yaml"
    saved = OmegaConf.to_container(OmegaConf.load(saved_path)) if saved_path.is_file() else {}
    differ = config_differences(stamp, in_run_dir(saved, out_dir))
    written_in = (saved.get("paths") or {}).get("output_dir")
    if differ and written_in and not config_differences(stamp, in_run_dir(saved, Path(written_in))):
        differ = ""  # moved here from where it ran
    if differ:
        raise SptError(
            f"resume=auto: {out_dir} holds a finished run with another config "
            f"({differ} differ); pass another hydra.run.dir / hydra.sweep.dir, or "
            "drop resume=auto to train it again there"
        )
    log.info("resume=auto: %s already finished; kept as it is", out_dir)
    return json.loads(done.read_text())


def check_resumed_config(resume: str, ckpt_path: Path, saved: dict | None, resolved: dict) -> None:
    """A checkpoint found by ``resume=auto`` / ``resume=last`` continues only the run that
    wrote it: one written under another config (a sweep rerun with changed overrides, say)
    is refused, naming the keys, before any model loads; the checkpoint is left as it is.
    Naming the checkpoint's path (``resume=<path>``) resumes it under the new config anyway,
    with a warning. Checkpoints written before spt stamped its config are not checked."""
    differ = config_differences(resolved, saved or {})
    if not differ:
        return
    if resume in ("auto", "last"):
        raise SptError(
            f"resume={resume}: {ckpt_path} was written by a run with another config "
            f"({differ} differ), so resuming it would mix two runs. Pass the same "
            "overrides as that run, or another hydra.run.dir / hydra.sweep.dir to "
            f"start afresh, or resume={ckpt_path} to continue it under this config "
            "on purpose"
        )
    log.warning(
        "resume=%s: continuing a checkpoint written under another config (%s differ)",
        ckpt_path,
        differ,
    )


def in_run_dir(tree, out_dir: Path):
    """``tree`` with every string that is ``out_dir`` or a path inside it written as
    ``<run dir>/...``: a run directory moved elsewhere (scratch to home) still compares equal."""
    root = str(out_dir)
    if isinstance(tree, dict):
        return {k: in_run_dir(v, out_dir) for k, v in tree.items()}
    if isinstance(tree, list):
        return [in_run_dir(v, out_dir) for v in tree]
    if isinstance(tree, str) and (tree == root or tree.startswith(root + "/")):
        return "<run dir>" + tree[len(root) :]
    return tree


def config_differences(new: dict, old: dict) -> str:
    """The dotted keys whose values differ between two resolved configs, comma-separated
    (the first five), or ``""``. Keys on one side only came or went with a later version of
    the config (a new key's default keeps the old behaviour), so only values both configs
    set are compared. ``resume`` is how a run starts, not what it is; ``run_name`` and
    ``logger.*`` are how it is named and reported (a sweep job's W&B name and tags carry its
    overrides and sweep folder), not what it computes."""
    flat_new, flat_old = flatten(new), flatten(old)
    differ = sorted(
        k
        for k in flat_new.keys() & flat_old.keys()
        if k not in ("resume", "run_name")
        and not k.startswith("logger.")
        and flat_new[k] != flat_old[k]
    )
    return ", ".join(differ[:5]) + (" ..." if len(differ) > 5 else "")


def resume_checkpoint(resume: str | None, out_dir: Path, resolved: dict) -> str | None:
    """The checkpoint ``resume`` names (``last`` = this run directory's ``last.ckpt``; ``auto``
    = that one if it exists, else none), checked before any model loads (that it loads
    safely, and that it was written under ``resolved``, given with paths relative to the run
    directory: :func:`check_resumed_config`); None to start afresh."""
    how = resume
    if not resume:
        return None
    if resume == "auto":  # "last" where the run directory has one
        if not (out_dir / "checkpoints" / "last.ckpt").is_file():
            return None
        resume = "last"
    path = out_dir / "checkpoints" / "last.ckpt" if resume == "last" else Path(resume)
    if not path.is_file():
        where = (
            "this run directory has none: pass hydra.run.dir=<the killed run's directory> "
            "(or, for a sweep job, hydra.sweep.dir=<the sweep's directory>)"
            if resume == "last"
            else "check the path"
        )
        raise SptError(f"resume={resume}: no checkpoint at {path}; {where}")
    try:  # checked now, before the model loads; weights_only: no pickled code ever runs
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise TypeError(f"it holds a {type(state).__name__}")
        missing = [k for k in ("state_dict", "loops", "global_step") if k not in state]
        if missing:
            raise KeyError(f"no Lightning {', '.join(missing)}")
        saved = state.get("spt_config")
    except Exception as err:
        raise SptError(
            f"resume={resume}: {path} is not a checkpoint spt can load safely "
            f"({type(err).__name__}: {str(err).splitlines()[0][:200]}). Checkpoints "
            "load with weights_only=True, so one holding other Python objects is "
            "refused: resume from a checkpoint spt wrote"
        ) from None
    check_resumed_config(how, path, saved, resolved)
    return str(path)

"""One job: build from config, fit, evaluate on the dev split, write the run directory.

Writes ``prompt.safetensors`` (the artifact, with its metadata), ``config.yaml`` (resolved),
``metrics.json`` and, on text-to-text tasks, ``predictions.jsonl``; returns the metrics.
:mod:`spt.run` is the command-line entry that calls it; this module holds what needs torch and
Lightning, so that ``python -m spt.run --help`` answers without importing them.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from spt.api import PromptModel
from spt.build import build, instantiate_callbacks, instantiate_loggers
from spt.console import quiet_third_parties
from spt.core.artifact import atomic_write_text
from spt.errors import SptError, is_count
from spt.resume import (
    AtomicCheckpointIO,
    CheckpointOnSigterm,
    ConfigStamp,
    FitClock,
    finished_run,
    in_run_dir,
    resume_checkpoint,
)

log = logging.getLogger("spt.run")


def train(cfg: DictConfig, out_dir: Path) -> dict:
    quiet_third_parties()
    if cfg.select not in ("last", "best"):  # checked before hours of training, not after
        raise SptError(f"select={cfg.select!r}: choose last or best")
    # Every interpolation resolves (or fails, naming the key) before the model loads.
    resolved = OmegaConf.to_container(cfg, resolve=True)
    stamp = in_run_dir(resolved, out_dir)  # what checkpoints carry and a resume compares
    done = finished_run(cfg.get("resume"), out_dir, stamp)
    if done is not None:
        return done
    ckpt_path = resume_checkpoint(cfg.get("resume"), out_dir, stamp)
    fit = bool(cfg.train) and not cfg.zero_shot
    seed = cfg.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise SptError(f"seed={seed!r}: an integer in [0, 2**32)")
    check_length(cfg.trainer, fit)
    L.seed_everything(cfg.seed, workers=True)
    backbone, datamodule, method = build(cfg)
    metric = optimized_metric(cfg, datamodule.task)
    check_rows(datamodule, fit)
    loggers = instantiate_loggers(cfg)
    for lg in loggers:
        lg.log_hyperparams(resolved)
    clock = FitClock()
    on_sigterm = CheckpointOnSigterm(out_dir / "checkpoints" / "last.ckpt")  # resume=last's
    trainer = build_trainer(
        cfg.trainer,
        plugins=[AtomicCheckpointIO()],
        logger=loggers or False,
        callbacks=[
            *instantiate_callbacks(cfg, fit, metric, loggers),
            clock,
            ConfigStamp(stamp),
            on_sigterm,
        ],
    )
    if fit:
        log.info("fitting")
        try:
            # weights_only: a checkpoint someone hands over runs no pickled code when resumed
            trainer.fit(method, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        except SystemExit as stop:  # Lightning's SIGTERMException is one; it would exit 0
            from lightning.pytorch.utilities.exceptions import SIGTERMException

            if not isinstance(stop, SIGTERMException):
                raise
            where = f"checkpoint at step {on_sigterm.saved_at}: {on_sigterm.path}"
            print(
                f"spt: stopped by SIGTERM; {where if on_sigterm.saved_at else 'no checkpoint'}"
                f"; continue with resume=last hydra.run.dir={out_dir}",
                file=sys.stderr,
            )
            raise SystemExit(143) from None  # 128 + SIGTERM: a scheduler reads a failure
        if trainer.global_step == 0:  # e.g. stopped by a callback before the first step
            raise SptError(
                "training ran 0 steps, so there is no trained prompt to save: check "
                "trainer.max_steps / max_epochs and the callbacks (train=false evaluates the "
                "prompt as initialised)"
            )
        if cfg.select == "best":
            ckpt = (
                trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
            )
            if not ckpt:
                raise SptError("select=best needs a ModelCheckpoint callback with a monitor")
            state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
            method.load_state_dict(state)
    if not (
        fit and cfg.select == "last" and getattr(method, "last_val_step", -1) == trainer.global_step
    ):  # else the fit's final validation already measured it
        log.info("evaluating on the dev split")
        trainer.validate(method, datamodule=datamodule, verbose=False)
    metrics = {k: v for k, v in method.last_val.items() if not k.endswith("_best")}
    if metric.endswith("_best"):  # a sweep may optimise the best dev value seen while fitting
        metrics[metric] = method.last_val.get(metric)
    metrics.update(
        {
            "fit_seconds": round(clock.seconds(), 1),
            "steps": int(trainer.global_step),
            **method.parameter_counts(),
            "zero_shot": bool(cfg.zero_shot),
            "method": HydraConfig.get().runtime.choices.get("method"),
            "model": backbone.name,
            "data": cfg.data.name,
            "seed": int(cfg.seed),
        }
    )
    if cfg.zero_shot:  # the prompt table exists but is not used
        metrics["params/trainable"] = metrics["params/trainable_pct"] = 0
    tensors = None if cfg.zero_shot else method.artifact_tensors()
    if tensors is not None:  # logged too, so a W&B run alone tells what serving it takes
        metrics["params/served"] = method.served_parameters(tensors)
    for lg in loggers:
        lg.log_metrics(
            {
                k: v
                for k, v in metrics.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            },
            step=int(trainer.global_step),
        )
        lg.save()  # the trainer already finalized its loggers: CSVLogger would drop these rows
    if trainer.is_global_zero:
        if tensors is not None:  # with what spt.load needs: settings, input formats, loader
            path = PromptModel(method, datamodule.formats, data=cfg.data.name).save(
                out_dir / "prompt.safetensors",
                dev_metrics={k: v for k, v in metrics.items() if k.startswith("val/")},
                command=command_line(),
            )
            metrics["artifact"] = str(path)
            metrics["artifact_bytes"] = path.stat().st_size
        if getattr(method.objective, "last_predictions", None):  # text-to-text: what was scored
            atomic_write_text(
                out_dir / "predictions.jsonl",
                "".join(json.dumps(row) + "\n" for row in method.objective.last_predictions),
            )
            metrics["predictions"] = str(out_dir / "predictions.jsonl")
        metrics["optimized_metric"] = metric
        atomic_write_text(out_dir / "config.yaml", OmegaConf.to_yaml(resolved))
        atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics


def check_length(trainer, fit: bool) -> None:
    """A fit that trains nothing, or never stops, is refused before the model loads; so is a
    validation interval Lightning would refuse with a traceback."""
    interval = trainer.get("val_check_interval")
    if interval is not None and (
        isinstance(interval, bool)
        or not isinstance(interval, (int, float))
        or (isinstance(interval, int) and interval < 1)
        or (isinstance(interval, float) and not 0 < interval <= 1)
    ):
        raise SptError(
            f"trainer.val_check_interval={interval!r}: a step count >= 1, or a fraction of "
            "an epoch in (0, 1]"
        )
    # Lightning checks neither: accumulate_grad_batches=0 divides by zero, a string compares
    # with an int. log_every_n_steps=0 is Lightning's "never log".
    for key, least in (("accumulate_grad_batches", 1), ("log_every_n_steps", 0)):
        value = trainer.get(key)
        if value is not None and not is_count(value, least):
            raise SptError(f"trainer.{key}={value!r}: an integer >= {least}")
    if not fit:
        return
    steps, epochs = trainer.get("max_steps", -1), trainer.get("max_epochs")
    for key, value in (("max_steps", steps), ("max_epochs", epochs)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise SptError(f"trainer.{key}={value!r} must be an integer")
    if steps == 0 or epochs == 0:
        raise SptError(
            f"trainer.{'max_steps' if steps == 0 else 'max_epochs'}=0 trains nothing: give a "
            "positive number, or train=false to evaluate the prompt as initialised"
        )
    if steps in (-1, None) and epochs in (-1, None):
        raise SptError(
            "trainer.max_steps=-1 with no max_epochs trains forever: set trainer.max_steps "
            "(500 by default) or trainer.max_epochs"
        )


def build_trainer(trainer_cfg, **kwargs) -> L.Trainer:
    """The Lightning Trainer, with what its constructor refuses (a precision, accelerator or
    device count it does not know, a clip value that is not a number) as one user error."""
    from hydra.errors import InstantiationException
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return instantiate(trainer_cfg, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if not isinstance(cause, (ValueError, TypeError, ImportError, MisconfigurationException)):
            raise
        text = " ".join(str(cause).split())
        raise SptError(f"the trainer.* settings: {text}") from None


def check_rows(datamodule, fit: bool) -> None:
    """Every split the run reads has rows: an empty train file would train 0 steps and an
    empty dev file fail after training."""
    for split in ("train", "dev") if fit else ("dev",):
        if datamodule.num_rows(split) == 0:
            raise SptError(
                f"data={datamodule.name}: the {split} split has no rows (an empty or "
                f"header-only file, or data.{split}_limit=0): give it data to "
                f"{'train on' if split == 'train' else 'evaluate on'}"
            )


def command_line() -> str:
    """The command that made this run (its Hydra overrides), for the artifact and model card."""
    overrides = [  # how a rerun starts and which search it belonged to are not this run
        o
        for o in HydraConfig.get().overrides.task
        if not o.startswith(("resume=", "hparams_search="))
    ]
    return " ".join(["python -m spt.run", *(shlex.quote(o) for o in overrides)])


def optimized_metric(cfg: DictConfig, task) -> str:
    """``cfg.optimized_metric``, or the task's first metric (``val/acc``, ``val/bleu``) when
    null; an unknown name is refused before training."""
    known = [f"val/{m}" for m in task.metrics]
    name = cfg.get("optimized_metric") or known[0]
    if name not in known and name.removesuffix("_best") not in known:
        raise SptError(
            f"optimized_metric={name!r}: data={task.name} reports "
            f"{', '.join(known)} (each also as <name>_best)"
        )
    return name

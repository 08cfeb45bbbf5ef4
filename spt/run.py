"""Entry point: ``python -m spt.run method=M model=S data=D [experiment=E] [key=value ...]``.

Builds everything from config (backbone, data, method, loggers, trainer), fits, evaluates on
the dev split, and writes into the run directory: ``prompt.safetensors`` + ``prompt.json``
(the artifact), ``config.yaml`` (resolved), ``metrics.json``. Returns ``optimized_metric``
for sweeps. User errors print one clear message and exit with status 2; a run that stops
before training leaves no run directory behind.
"""

from __future__ import annotations

import inspect
import json
import logging
import shutil
import sys
import time
import warnings
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from spt import __version__, methods
from spt.core.artifact import atomic_write_text, save_artifact
from spt.core.trees import flatten
from spt.errors import SptError, user_error
from spt.regularizers import attach

log = logging.getLogger("spt.run")
# The frozen backbone stays in eval mode on purpose (see FrozenBackboneMixin.train).
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


def _lookup(table, key):
    """``${spt.lookup:${table},${key}}``: ``table[key]``, for settings that follow another one
    (e.g. CoOp's epochs per shot count)."""
    if key not in table:
        raise SptError(f"no entry for {key!r} in {dict(table)}: use one of {list(table)} or "
                       "set the dependent key directly")
    return table[key]


OmegaConf.register_new_resolver("spt.lookup", _lookup, replace=True)


def build(cfg: DictConfig):
    """Backbone, data module and method (with its regularizer, if any) from config (no
    Trainer); used by run and tests."""
    log.info("instantiating backbone <%s>", cfg.model._target_)
    backbone = instantiate(cfg.model)
    log.info("instantiating data <%s> (%s)", cfg.data._target_, cfg.data.name)
    # Objects go in through a partial: instantiate() would turn dataclass kwargs into configs.
    data_extra = {}
    if "image_processor" in inspect.signature(get_class(cfg.data._target_)).parameters:
        data_extra["image_processor"] = backbone.image_processor  # image data (CLIP)
    datamodule = instantiate(cfg.data, _partial_=True)(tokenizer=backbone.tokenizer,
                                                       arch=backbone.arch, **data_extra)
    log.info("instantiating method <%s>", cfg.method._target_)
    info = methods.of_class(get_class(cfg.method._target_))
    if not (info.generation or hasattr(datamodule.task, "label_words")):
        raise SptError(f"method={info.name} classifies with label words; data={cfg.data.name} "
                       "is a generation task: use a classification dataset, or "
                       f"method={'|'.join(methods.names(generation=True))}")
    make = instantiate(cfg.method, _partial_=True)
    extra = {}
    if "datamodule" in inspect.signature(get_class(cfg.method._target_)).parameters:
        extra["datamodule"] = datamodule  # methods that read training examples (CPT's context)
    method = make(backbone=backbone, task=datamodule.task, init_texts=datamodule.train_texts(),
                  **extra)
    reg = cfg.get("regularizer")
    if reg and "_target_" in reg:  # regularizer=none composes an empty group
        log.info("instantiating regularizer <%s>", reg._target_)
        # a partial, so a bad setting raises its own SptError rather than Hydra's wrapper
        attach(instantiate(reg, _partial_=True)(), method)  # refuses a method it cannot serve
    if cfg.get("zero_shot"):
        method.use_soft_prompt = False
    datamodule.n_soft = method.n_soft_tokens
    return backbone, datamodule, method


def _loggers(cfg: DictConfig) -> list:
    loggers = []
    for name, conf in (cfg.get("logger") or {}).items():
        if conf is not None and "_target_" in conf:
            log.info("instantiating logger <%s>", name)
            loggers.append(instantiate(conf))
    return loggers


def _callbacks(cfg: DictConfig, fit: bool, metric: str) -> list:
    out = []
    for conf in (cfg.get("callbacks") or {}).values():
        if conf is not None and "_target_" in conf:
            extra = {}
            if "ModelCheckpoint" in conf._target_:
                if not fit:
                    continue
                if conf.get("monitor", "") is None:
                    extra["monitor"] = metric
            out.append(instantiate(conf, **extra))
    return out


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


class ConfigStamp(L.Callback):
    """Writes the run's resolved config (as :func:`in_run_dir` gives it) into every checkpoint
    (``spt_config``), so a resume can tell whether it continues the run it thinks it does
    (see :func:`check_resumed_config`)."""

    def __init__(self, stamp: dict) -> None:
        self.stamp = stamp

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["spt_config"] = self.stamp


def train(cfg: DictConfig, out_dir: Path) -> dict:
    if cfg.select not in ("last", "best"):  # checked before hours of training, not after
        raise SptError(f"select={cfg.select!r}: choose last or best")
    # Every interpolation resolves (or fails, naming the key) before the model loads.
    resolved = OmegaConf.to_container(cfg, resolve=True)
    stamp = in_run_dir(resolved, out_dir)  # what checkpoints carry and a resume compares
    done = finished_run(cfg.get("resume"), out_dir, stamp)
    if done is not None:
        return done
    ckpt_path = resume_checkpoint(cfg.get("resume"), out_dir, stamp)
    L.seed_everything(cfg.seed, workers=True)
    backbone, datamodule, method = build(cfg)
    metric = optimized_metric(cfg, datamodule.task)
    fit = bool(cfg.train) and not cfg.zero_shot
    loggers = _loggers(cfg)
    for lg in loggers:
        lg.log_hyperparams(resolved)
    clock = FitClock()
    trainer: L.Trainer = instantiate(cfg.trainer, logger=loggers or False,
                                     callbacks=[*_callbacks(cfg, fit, metric), clock,
                                                ConfigStamp(stamp)])
    if fit:
        log.info("fitting")
        # weights_only: a checkpoint someone hands over runs no pickled code when resumed
        trainer.fit(method, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        if cfg.select == "best":
            ckpt = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback \
                else ""
            if not ckpt:
                raise SptError("select=best needs a ModelCheckpoint callback with a monitor")
            state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
            method.load_state_dict(state)
    if not (fit and cfg.select == "last" and getattr(method, "last_val_step", -1)
            == trainer.global_step):  # else the fit's final validation already measured it
        log.info("evaluating on the dev split")
        trainer.validate(method, datamodule=datamodule, verbose=False)
    metrics = {k: v for k, v in method.last_val.items() if not k.endswith("_best")}
    if metric.endswith("_best"):  # a sweep may optimise the best dev value seen while fitting
        metrics[metric] = method.last_val.get(metric)
    metrics.update({
        "fit_seconds": round(clock.seconds(), 1),
        "steps": int(trainer.global_step),
        **method.parameter_counts(),
        "zero_shot": bool(cfg.zero_shot),
        "method": HydraConfig.get().runtime.choices.get("method"),
        "model": backbone.name,
        "data": cfg.data.name,
        "seed": int(cfg.seed),
    })
    if cfg.zero_shot:  # the prompt table exists but is not used
        metrics["params/trainable"] = metrics["params/trainable_pct"] = 0
    tensors = None if cfg.zero_shot else method.artifact_tensors()
    if tensors is not None:  # logged too, so a W&B run alone tells what serving it takes
        metrics["params/served"] = method.served_parameters(tensors)
    for lg in loggers:
        lg.log_metrics({k: v for k, v in metrics.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)},
                       step=int(trainer.global_step))
        lg.save()  # the trainer already finalized its loggers: CSVLogger would drop these rows
    if trainer.is_global_zero:
        if tensors is not None:
            meta = {**method.artifact_meta(), "spt_version": __version__, "data": cfg.data.name,
                    "template": cfg.data.get("template"),
                    "dev_metrics": {k: v for k, v in metrics.items() if k.startswith("val/")},
                    "served_parameters": metrics["params/served"]}
            path = save_artifact(out_dir / "prompt.safetensors", tensors, meta)
            metrics["artifact"] = str(path)
            metrics["artifact_bytes"] = path.stat().st_size
        if getattr(method, "last_predictions", None):  # text-to-text: what was scored
            atomic_write_text(out_dir / "predictions.jsonl", "".join(
                json.dumps(row) + "\n" for row in method.last_predictions))
            metrics["predictions"] = str(out_dir / "predictions.jsonl")
        metrics["optimized_metric"] = metric
        atomic_write_text(out_dir / "config.yaml", OmegaConf.to_yaml(resolved))
        atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics


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
    if differ and written_in and not config_differences(stamp,
                                                        in_run_dir(saved, Path(written_in))):
        differ = ""  # moved here from where it ran
    if differ:
        raise SptError(f"resume=auto: {out_dir} holds a finished run with another config "
                       f"({differ} differ); pass another hydra.run.dir / hydra.sweep.dir, or "
                       "drop resume=auto to train it again there")
    log.info("resume=auto: %s already finished; kept as it is", out_dir)
    return json.loads(done.read_text())


def check_resumed_config(resume: str, ckpt_path: Path, saved: dict | None,
                         resolved: dict) -> None:
    """A checkpoint found by ``resume=auto`` / ``resume=last`` continues only the run that
    wrote it: one written under another config (a sweep rerun with changed overrides, say)
    is refused, naming the keys, before any model loads; the checkpoint is left as it is.
    Naming the checkpoint's path (``resume=<path>``) resumes it under the new config anyway,
    with a warning. Checkpoints written before spt stamped its config are not checked."""
    differ = config_differences(resolved, saved or {})
    if not differ:
        return
    if resume in ("auto", "last"):
        raise SptError(f"resume={resume}: {ckpt_path} was written by a run with another config "
                       f"({differ} differ), so resuming it would mix two runs. Pass the same "
                       "overrides as that run, or another hydra.run.dir / hydra.sweep.dir to "
                       f"start afresh, or resume={ckpt_path} to continue it under this config "
                       "on purpose")
    log.warning("resume=%s: continuing a checkpoint written under another config (%s differ)",
                ckpt_path, differ)


def in_run_dir(tree, out_dir: Path):
    """``tree`` with every string that is ``out_dir`` or a path inside it written as
    ``<run dir>/...``: a run directory moved elsewhere (scratch to home) still compares equal."""
    root = str(out_dir)
    if isinstance(tree, dict):
        return {k: in_run_dir(v, out_dir) for k, v in tree.items()}
    if isinstance(tree, list):
        return [in_run_dir(v, out_dir) for v in tree]
    if isinstance(tree, str) and (tree == root or tree.startswith(root + "/")):
        return "<run dir>" + tree[len(root):]
    return tree


def config_differences(new: dict, old: dict) -> str:
    """The dotted keys whose values differ between two resolved configs, comma-separated
    (the first five), or ``""``. Keys on one side only came or went with a later version of
    the config (a new key's default keeps the old behaviour), so only values both configs
    set are compared; ``resume`` is how a run starts, not what it is."""
    flat_new, flat_old = flatten(new), flatten(old)
    differ = sorted(k for k in flat_new.keys() & flat_old.keys()
                    if k != "resume" and flat_new[k] != flat_old[k])
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
        where = ("this run directory has none: pass hydra.run.dir=<the killed run's directory> "
                 "(or, for a sweep job, hydra.sweep.dir=<the sweep's directory>)"
                 if resume == "last" else "check the path")
        raise SptError(f"resume={resume}: no checkpoint at {path}; {where}")
    try:  # checked now, before the model loads; weights_only: no pickled code ever runs
        saved = torch.load(path, map_location="cpu", weights_only=True).get("spt_config")
    except Exception as err:
        raise SptError(f"resume={resume}: {path} is not a checkpoint spt can load safely "
                       f"({type(err).__name__}: {str(err).splitlines()[0][:200]}). Checkpoints "
                       "load with weights_only=True, so one holding other Python objects is "
                       "refused: resume from a checkpoint spt wrote") from None
    check_resumed_config(how, path, saved, resolved)
    return str(path)


def optimized_metric(cfg: DictConfig, task) -> str:
    """``cfg.optimized_metric``, or the task's first metric (``val/acc``, ``val/bleu``) when
    null; an unknown name is refused before training."""
    known = [f"val/{m}" for m in task.metrics]
    name = cfg.get("optimized_metric") or known[0]
    if name not in known and name.removesuffix("_best") not in known:
        raise SptError(f"optimized_metric={name!r}: data={task.name} reports "
                       f"{', '.join(known)} (each also as <name>_best)")
    return name


def _has_results(out_dir: Path) -> bool:
    return any((out_dir / p).exists() for p in ("checkpoints", "prompt.safetensors",
                                                 "metrics.json"))


def _finish_wandb() -> None:
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()


@hydra.main(version_base="1.3", config_path="conf", config_name="run")
def main(cfg: DictConfig) -> float | None:
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
        print(f"spt: error: {err}", file=sys.stderr)
        sys.exit(2)
    finally:
        _finish_wandb()
    if "optimized_metric" not in metrics:  # a non-zero rank of a distributed run: rank 0 reports
        return None
    value = metrics.get(metrics.get("optimized_metric"))
    summary = ", ".join(f"{k.split('/', 1)[1]} {v:.4f}" for k, v in metrics.items()
                        if k.startswith("val/"))
    print(f"spt: dev {summary} | run dir {out_dir}"
          + (f" | artifact {metrics['artifact']} ({metrics['artifact_bytes']} bytes)"
             if "artifact" in metrics else ""))
    return value


if __name__ == "__main__":
    main()

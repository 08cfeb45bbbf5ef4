"""Objects from config: the backbone, data module and method (with its regularizer) of a run, its
loggers and callbacks. Configs build objects; the objects never read configs."""

from __future__ import annotations

import inspect
import logging

from hydra.utils import get_class, instantiate
from omegaconf import DictConfig

import spt.resolvers  # noqa: F401  (${spt.lookup:...})
from spt import methods
from spt.data.generation import GenerationTaskInfo
from spt.errors import SptError
from spt.regularizers import attach

log = logging.getLogger("spt.run")


def build(cfg: DictConfig):
    """Backbone, data module and method (with its regularizer, if any) from config (no
    Trainer); used by run and tests."""
    log.info("instantiating backbone <%s>", cfg.model._target_)
    backbone = instantiate(cfg.model)
    datamodule = build_data(cfg.data, backbone)
    log.info("instantiating method <%s>", cfg.method._target_)
    info = methods.of_class(get_class(cfg.method._target_))
    if isinstance(datamodule.task, GenerationTaskInfo) and not info.generation:
        raise SptError(
            f"method={info.name} classifies with label words; data={cfg.data.name} "
            "is a generation task: use a classification dataset, or "
            f"method={'|'.join(methods.names(generation=True))}"
        )
    make = instantiate(cfg.method, _partial_=True)
    extra = {}
    if "datamodule" in inspect.signature(get_class(cfg.method._target_)).parameters:
        extra["datamodule"] = datamodule  # methods that read training examples (CPT's context)
    method = make(
        backbone=backbone, task=datamodule.task, init_texts=datamodule.train_texts(), **extra
    )
    reg = cfg.get("regularizer")
    if reg and "_target_" in reg:  # regularizer=none composes an empty group
        log.info("instantiating regularizer <%s>", reg._target_)
        # a partial, so a bad setting raises its own SptError rather than Hydra's wrapper
        attach(instantiate(reg, _partial_=True)(), method)  # refuses a method it cannot serve
    if cfg.get("zero_shot"):
        method.use_soft_prompt = False
    datamodule.n_soft = method.n_soft_tokens
    return backbone, datamodule, method


def build_data(data: DictConfig, backbone):
    """The data module of a ``data`` config node, for ``backbone``'s tokenizer (and image
    processor, for CLIP)."""
    log.info("instantiating data <%s> (%s)", data._target_, data.name)
    # Objects go in through a partial: instantiate() would turn dataclass kwargs into configs.
    extra = {}
    if "image_processor" in inspect.signature(get_class(data._target_)).parameters:
        extra["image_processor"] = backbone.image_processor  # image data (CLIP)
    return instantiate(data, _partial_=True)(
        tokenizer=backbone.tokenizer, arch=backbone.arch, **extra
    )


def instantiate_loggers(cfg: DictConfig) -> list:
    loggers = []
    for name, conf in (cfg.get("logger") or {}).items():
        if conf is not None and "_target_" in conf:
            log.info("instantiating logger <%s>", name)
            loggers.append(instantiate(conf))
    return loggers


def instantiate_callbacks(cfg: DictConfig, fit: bool, metric: str, loggers: list) -> list:
    """The ``callbacks`` group's callbacks; a ``monitor: null`` (checkpointing, early stopping)
    watches the run's optimized metric."""
    out = []
    for name, conf in (cfg.get("callbacks") or {}).items():
        if conf is not None and "_target_" in conf:
            extra = {}
            if "ModelCheckpoint" in conf._target_ and not fit:
                continue
            if "monitor" in conf and conf.monitor is None:
                extra["monitor"] = metric
            if "LearningRateMonitor" in conf._target_ and not loggers:
                raise SptError(
                    f"callbacks.{name} logs learning rates, but this run has no logger: "
                    "use logger=csv, logger=tensorboard or logger=default"
                )
            out.append(instantiate(conf, **extra))
    return out

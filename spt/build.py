"""Objects from config: the backbone, data module and method (with its regularizer) of a run, its
loggers and callbacks. Configs build objects; the objects never read configs."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

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


# InputFormat field -> the data config key that sets it, per kind
FORMAT_KEYS = {
    "classification": {
        "template": "template",
        "label_names": "label_names",
        "label_words": "label_words",
        "label_score": "label_score",
        "max_length": "max_length",
        "label_reserve": "label_reserve",
        "soft_first": "soft_first",
    },
    "text-to-text": {
        "template": "template",
        "max_length": "max_source_length",
        "max_target_length": "max_target_length",
        "max_new_tokens": "max_new_tokens",
        "num_beams": "num_beams",
        "soft_first": "soft_first",
    },
    "image": {"label_words": "label_words"},
}
_CODE_KEYS = ("_target_", "_partial_", "_args_", "_recursive_", "_convert_")


def _plain_values(node):
    """A config subtree without anything that names code (``_target_`` and friends)."""
    if isinstance(node, dict):
        return {k: _plain_values(v) for k, v in node.items() if k not in _CODE_KEYS}
    if isinstance(node, list):
        return [_plain_values(v) for v in node]
    return node


def data_config(name: str, formats, run_dir: Path | None, sets: list[str]):
    """spt's ``data=<name>`` group, with the artifact's formats, the run's plain data values
    and ``sets`` applied, in that order."""
    import yaml
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from spt import CONF_DIR

    if not (CONF_DIR / "data" / f"{name}.yaml").is_file():
        known = sorted(p.stem for p in (CONF_DIR / "data").glob("*.yaml"))
        raise SptError(f"--data {name}: no spt/conf/data/{name}.yaml; choose one of {known}")
    bad = [s for s in sets if not s.startswith("data.") or "=" not in s]
    if bad:
        raise SptError(f"--set {bad[0]!r}: give data.KEY=VALUE (a key of the data config)")
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="run", overrides=[f"data={name}"])
    except (HydraException, OmegaConfBaseException) as err:
        raise SptError(f"--data {name}: {' '.join(str(err).split())}") from None
    data = cfg.data
    tasks = data.get("tasks")
    for i, fmt in enumerate(formats):
        node = data if tasks is None else tasks.get(fmt.name)
        if node is None:
            raise SptError(f"data={name} has no task {fmt.name!r} (the prompt's task {i})")
        for field, key in FORMAT_KEYS[fmt.kind].items():
            value = getattr(fmt, field)
            node[key] = list(value) if isinstance(value, tuple) else value
    if run_dir is not None and (run_dir / "config.yaml").is_file():
        try:
            saved = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"), resolve=False)
        except Exception as err:  # a hand-edited or damaged file
            raise SptError(f"{run_dir / 'config.yaml'} is not a readable config: {err}") from None
        values = _plain_values((saved or {}).get("data") or {})
        if values.get("name") not in (None, name):
            values = {}  # another dataset than the one asked for: its values do not apply
        try:
            data.merge_with(values)
        except OmegaConfBaseException as err:
            raise SptError(
                f"{run_dir / 'config.yaml'}: its data settings do not fit spt's data={name} "
                f"config ({' '.join(str(err).split())[:200]}); evaluate the artifact alone "
                f"(give {run_dir / 'prompt.safetensors'}) with --set data.KEY=VALUE"
            ) from None
    try:
        for s in sets:
            key, _, value = s.partition("=")
            OmegaConf.update(cfg, key, yaml.safe_load(value) if value else None)
        OmegaConf.resolve(cfg.data)
    except OmegaConfBaseException as err:
        raise SptError(f"data settings: {' '.join(str(err).split())}") from None
    return cfg.data

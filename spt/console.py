"""A quiet, informative console (issue 20): third-party noise filtered, one plain line per
validation. Each filter is narrow (one logger and message, or one warning) and says why; nothing
spt or the user's code logs is touched.

A run's log then reads: what is built, the trainable count, one ``validation`` line per
validation (step, metrics, elapsed, ETA: a SLURM log shows progress, which a progress bar
redrawn in place does not), and spt's summary line.
"""

from __future__ import annotations

import logging
import time
import warnings

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger

log = logging.getLogger("spt.run")

# (logger, message start, why it is dropped)
_DROPPED = (
    ("lightning.pytorch.utilities.rank_zero", "GPU available:", "device facts the config holds"),
    ("lightning.pytorch.utilities.rank_zero", "TPU available:", "device facts the config holds"),
    ("lightning.pytorch.utilities.rank_zero", "HPU available:", "device facts the config holds"),
    ("lightning.pytorch.utilities.rank_zero", "💡 Tip:", "advertisements (litlogger, litmodels)"),
)


class _DropStarting(logging.Filter):
    def __init__(self, starts: tuple[str, ...]):
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.starts)


def quiet_third_parties() -> None:
    """Install the filters (idempotent). Call once logging is configured (Hydra's handlers)."""
    by_logger: dict[str, tuple[str, ...]] = {}
    for name, start, _why in _DROPPED:
        by_logger[name] = (*by_logger.get(name, ()), start)
    for name, starts in by_logger.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropStarting) for f in logger.filters):
            logger.addFilter(_DropStarting(starts))
    # Lightning adds a console handler to its "lightning" logger and also propagates to the
    # root, so under Hydra's handlers every Lightning line was printed twice ("INFO: ..." and
    # Hydra's format): keep Hydra's (lightning/__init__.py).
    lightning = logging.getLogger("lightning")
    if logging.getLogger().handlers:
        for handler in list(lightning.handlers):
            if type(handler) is logging.StreamHandler:
                lightning.removeHandler(handler)
    # torchdata's StatefulDataLoader calls the deprecated torch.set_vital on every loader it
    # builds (torchdata/stateful_dataloader/stateful_dataloader.py); nothing for a user to do
    warnings.filterwarnings(
        "ignore", message=r"'set_vital' is deprecated", category=UserWarning, module="torchdata"
    )
    # The frozen backbone stays in eval mode on purpose (FrozenBackboneMixin.train).
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    # Lightning 2.6's own pytree helper on torch 2.13 (lightning/pytorch/utilities/_pytree.py)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


class WandbLogger(_LightningWandbLogger):
    """Lightning's W&B logger without the ``anonymous=None`` it always hands ``wandb.init``
    (lightning/pytorch/loggers/wandb.py), which wandb 0.2x answers with a deprecation warning on
    every run although nobody set it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)


class ProgressBar(RichProgressBar):
    """Lightning's rich bar without its logger version (``v_num``, a W&B run id) and with
    ``Epoch N`` rather than ``Epoch N/-2`` when training is bounded by steps
    (``max_epochs=-1``)."""

    def get_metrics(self, trainer, pl_module):
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items

    def _get_train_description(self, current_epoch: int) -> str:
        if self.trainer.max_epochs is not None and self.trainer.max_epochs >= 0:
            return super()._get_train_description(current_epoch)
        description = f"Epoch {current_epoch}"
        return f"{description:{len(self.validation_description)}}"


class ProgressLine(L.Callback):
    """One log line per validation: ``validation | step 250/500 | val/acc 0.8125 | 1m20s
    elapsed, ETA 1m20s``."""

    def __init__(self) -> None:
        self.started = None

    def on_fit_start(self, trainer, pl_module) -> None:
        self.started = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = {
            k: float(v)
            for k, v in trainer.callback_metrics.items()
            if k.startswith("val/") and not k.endswith("_best")
        }
        shown = " | ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()))
        step, total = trainer.global_step, trainer.max_steps
        line = f"validation | step {step}" + (f"/{total}" if total and total > 0 else "")
        if shown:
            line += f" | {shown}"
        if self.started is not None:
            elapsed = time.perf_counter() - self.started
            line += f" | {_duration(elapsed)} elapsed"
            if total and total > 0 and 0 < step < total:
                line += f", ETA {_duration(elapsed / step * (total - step))}"
        log.info(line)


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")

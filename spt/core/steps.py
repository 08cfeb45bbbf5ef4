"""Step helpers shared by the classification methods (functions, not base classes)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MaxMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from spt.errors import SptError

LOSSES = ("class_ce", "lm")


def classification_metrics(metrics: tuple[str, ...], num_classes: int) -> MetricCollection:
    """``acc`` (micro accuracy) and/or ``f1_macro`` (macro-F1, e.g. for CB)."""
    make = {
        "acc": lambda: MulticlassAccuracy(num_classes=num_classes, average="micro"),
        "f1_macro": lambda: MulticlassF1Score(num_classes=num_classes, average="macro"),
    }
    unknown = [m for m in metrics if m not in make]
    if unknown:
        raise SptError(f"unknown metric(s) {unknown} in data.metrics: choose from {sorted(make)}")
    return MetricCollection({m: make[m]() for m in metrics})


def best_trackers(metrics: tuple[str, ...]) -> nn.ModuleDict:
    return nn.ModuleDict({m: MaxMetric() for m in metrics})


def classification_loss(scores: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    """``class_ce``: cross-entropy over the class scores (rank classification as a softmax over
    the label words). ``lm``: the LM loss of the gold label's tokens only (the scores are
    summed log-probabilities), as in text-to-text training."""
    if kind == "class_ce":
        return F.cross_entropy(scores.float(), labels)
    if kind == "lm":
        return -scores.float().gather(1, labels.unsqueeze(1)).mean()
    raise SptError(f"method.loss={kind!r}: choose one of {LOSSES}")


def log_epoch_metrics(module, metrics: MetricCollection, best: nn.ModuleDict, stage: str) -> dict:
    """Compute, log as ``<stage>/<name>`` and ``<stage>/<name>_best``, reset; return values."""
    values = {k: v.detach() for k, v in metrics.compute().items()}
    metrics.reset()
    return log_metric_values(module, values, best, stage)


def log_metric_values(
    module, values: dict[str, torch.Tensor], best: nn.ModuleDict, stage: str
) -> dict:
    """Log ``values`` as ``<stage>/<name>`` and, for validation, their running best as
    ``val/<name>_best`` (not during the sanity check); return them as floats."""
    out = {}
    for name, value in values.items():
        out[f"{stage}/{name}"] = value
        if name in best and stage == "val" and not module.trainer.sanity_checking:
            best[name].update(value)
            out[f"{stage}/{name}_best"] = best[name].compute()
    module.log_dict(out, prog_bar=True)
    return {k: float(v) for k, v in out.items()}


def check_finite(loss: torch.Tensor, step: int) -> torch.Tensor:
    """``loss``, or an SptError naming the step when it is NaN or infinite: training stops before
    the optimizer step, so the last checkpoint (``checkpoints/last.ckpt``) is from before it."""
    if not torch.isfinite(loss):
        raise SptError(
            f"non-finite training loss ({loss.item()}) at step {step}: lower the "
            "learning rate (method.optimizer.lr) and train again. Training stopped "
            "before this step's update: a checkpoint saved before it, if any "
            "(checkpoints/last.ckpt), is kept with its run directory"
        )
    return loss

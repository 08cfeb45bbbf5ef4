"""What a method is trained and evaluated on, as a component it owns (``method.objective``).

A method builds one with :func:`objective_for` from its task: :class:`Classification` (class
scores from the backbone's scorer, ``backbone.ops.classifier``: a trained head on the pooled
output or label words under the LM head; cross-entropy; accuracy / F1) or :class:`Generation`
(text-to-text: the target's token cross-entropy, the architecture's ``lm_loss``; validation
generates with :func:`spt.core.generate.generate` and scores BLEU / ROUGE-L through the data
module). The frozen-backbone mixin hands Lightning's steps to it, so no method inherits the
steps from another class and no behaviour depends on a mixin order (issue 19).

An objective is an ``nn.Module``: it owns the encoder head (``objective.head``, trained, saved
in the artifact as ``head.*``) and the metrics, so they move with the method. Its steps take the
method as their first argument, for its ``forward``, ``embed`` / ``kv_prefix``, logging and
regularizer (``method.regularizer``, attached by :func:`spt.regularizers.attach`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from spt.core.generate import generate
from spt.core.steps import (
    LOSSES,
    best_trackers,
    check_finite,
    classification_loss,
    classification_metrics,
    log_epoch_metrics,
    log_metric_values,
)
from spt.core.trees import settings_node
from spt.errors import SptError

CLASSIFICATION_DATA = "sst2, rte, cb, boolq, agnews, trec"


@dataclass(frozen=True)
class Head:
    """``method.head``: the encoder-only classification head, ``Dropout(dropout) ->
    Linear(d, classes)`` on the pooled output, trained at ``lr`` (None: the optimizer's)."""

    dropout: float = 0.1
    lr: float | None = 0.01

    def __post_init__(self) -> None:
        lr, p = self.lr, self.dropout
        if lr is not None and (
            isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf
        ):
            raise SptError(f"method.head.lr={lr!r}: a number > 0, or null for the optimizer's")
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
            raise SptError(f"method.head.dropout={p!r}: a probability in [0, 1)")

    @classmethod
    def of(cls, value) -> Head:
        """From a config node (a mapping; missing keys keep their defaults) or a Head."""
        return settings_node(cls, value, "method.head")


def objective_for(
    base, task, *, loss: str, head, method: str, generates: bool, pooling: str | None = None
):
    """The objective of ``task`` for a method on ``base``: :class:`Generation` for a
    text-to-text task (refused where the method or the backbone cannot generate), else
    :class:`Classification`."""
    if loss not in LOSSES:
        raise SptError(f"method.loss={loss!r}: choose one of {', '.join(LOSSES)}")
    tasks = tuple(task.tasks) if hasattr(task, "tasks") else (task,)
    if hasattr(tasks[0], "label_words"):
        return Classification(base, task, loss, Head.of(head), pooling)
    base.ops.check_generation(f"data={task.name} (a generation task on {base.name})")
    if not generates:
        raise SptError(
            f"method={method} classifies with label words; data={task.name} is a generation "
            f"task: use a classification dataset ({CLASSIFICATION_DATA}) or a method that "
            "generates text"
        )
    return Generation(base, task)


def task_names_for(task, task_names, n_tasks: int) -> list[str]:
    """The names of a prompt table's ``n_tasks`` rows: a mixture's tasks, ``task_names``, or
    the task's name repeated."""
    if hasattr(task, "tasks"):
        names = [t.name for t in task.tasks]
        if n_tasks != len(names):
            raise SptError(
                f"data={task.name} mixes {len(names)} tasks ({names}) but "
                f"method.n_tasks={n_tasks}: set method.n_tasks={len(names)}"
            )
        if task_names is not None and list(task_names) != names:
            raise SptError(
                f"method.task_names={list(task_names)} do not match the mixture's tasks "
                f"{names}: drop method.task_names"
            )
        task_names = names
    out = list(task_names or [task.name] * n_tasks)
    if len(out) != n_tasks:
        raise SptError(f"method.task_names has {len(out)} names for n_tasks={n_tasks}")
    return out


class Objective(nn.Module):
    """The interface: the Lightning steps of a method, and what its artifact records."""

    generative = False

    def __init__(self, base, task):
        super().__init__()
        self.base = base  # a Backbone record, not a submodule
        self.task = task
        self.tasks = tuple(task.tasks) if hasattr(task, "tasks") else (task,)
        self.multitask = hasattr(task, "tasks")
        self.best = best_trackers(task.metrics)
        self.head = None

    def head_groups(self) -> list[dict]:
        """The head's optimizer group (none without a head)."""
        return []

    def head_tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def load_head_tensors(self, tensors: dict[str, torch.Tensor], path) -> None:
        """Nothing to load without a head."""


class Classification(Objective):
    """Class scores, the classification loss (``class_ce`` or ``lm``) and per-task metrics; in
    a mixture each row is scored against its own task's labels."""

    def __init__(self, base, task, loss: str, head: Head, pooling: str | None = None):
        super().__init__(base, task)
        self.loss_kind = loss
        self.head_lr = head.lr
        # None on CLIP, which scores images against prompted class names (spt.methods.coop)
        self.scorer = base.ops.classifier(base, self.tasks, self.multitask, head.dropout, pooling)
        if self.scorer is not None:
            self.head = self.scorer.head  # a trained head (encoder-only), or None
        metrics = [classification_metrics(t.metrics, t.num_classes) for t in self.tasks]
        self.metrics = nn.ModuleList(metrics) if self.multitask else metrics[0]

    @property
    def labels(self) -> list:
        """Each task's label words as token ids (label-word scorers)."""
        return self.scorer.labels

    # -- scores ----------------------------------------------------------------------------
    def class_scores(self, model, embeds, mask, prefix=None, task_ids=None) -> torch.Tensor:
        """``[B, C]`` class scores from the (prompted) input embeddings ``[B, L, d]``.
        ``prefix``: per-layer key/values as the architecture splits them. In a mixture each
        row is scored with its own task's labels (``task_ids``) and ``C`` is the largest label
        set, the rest of a row's scores being -inf."""
        if not self.multitask:
            return self.scorer.task_scores(model, embeds, mask, prefix, 0)
        if task_ids is None:
            raise SptError("scoring a task mixture needs the batch's task_ids")
        width = max(t.num_classes for t in self.tasks)
        out = torch.full((embeds.shape[0], width), -torch.inf, device=embeds.device)
        # one backbone pass for every row when the tasks differ only after it
        shared = self.scorer.shared_pass(model, embeds, mask, prefix)
        for t in task_ids.unique().tolist():
            rows = (task_ids == t).nonzero().squeeze(1)
            if shared is not None:
                scores = shared(rows, t)
            else:
                rows_prefix = None if prefix is None else self.base.ops.prefix_rows(prefix, rows)
                scores = self.scorer.task_scores(model, embeds[rows], mask[rows], rows_prefix, t)
            out[rows, : scores.shape[1]] = scores.float()
        return out

    # -- steps -----------------------------------------------------------------------------
    def training_step(self, method, batch: dict) -> torch.Tensor:
        scores = method(batch)
        task_loss = classification_loss(scores, batch["labels"], self.loss_kind)
        loss = task_loss + self.regularize(method, batch)
        acc = (scores.argmax(-1) == batch["labels"]).float().mean()
        n = len(batch["labels"])
        method.log_dict({"train/loss": loss, "train/acc": acc}, prog_bar=True, batch_size=n)
        if method.regularizer is not None:
            method.log("train/task_loss", task_loss, batch_size=n)
        return check_finite(loss, method.global_step)

    def regularize(self, method, batch: dict) -> torch.Tensor | float:
        """The method's regularizer term for this training batch (0 without one); logs its
        parts (``train/reg`` and the regularizer's own, e.g. ``train/pun``)."""
        reg = method.regularizer
        if reg is None:
            return 0.0
        term, logs = reg(method, batch)
        prefixes = tuple(getattr(reg, "every_step_logs", ()))
        every_step = {k: float(logs.pop(k)) for k in list(logs) if k.startswith(prefixes)}
        method.log_dict({"train/reg": term.detach(), **logs}, batch_size=len(batch["labels"]))
        if every_step:  # past log_every_n_steps' thinning
            for logger in method.loggers:
                logger.log_metrics(every_step, step=method.global_step)
        return term

    def validation_step(self, method, batch: dict) -> None:
        preds = method(batch).argmax(-1)
        if not self.multitask:
            self.metrics.update(preds, batch["labels"])
            return
        for t in batch["task_ids"].unique().tolist():
            rows = batch["task_ids"] == t
            self.metrics[t].update(preds[rows], batch["labels"][rows])

    def epoch_end(self, method, stage: str) -> dict:
        if not self.multitask:
            return log_epoch_metrics(method, self.metrics, self.best, stage)
        # <stage>/<task>/<metric> per task and <stage>/<metric>, their mean (best tracked)
        values = {}
        for info, metrics in zip(self.tasks, self.metrics, strict=True):
            if all(m.update_count == 0 for m in metrics.values()):
                continue  # this task was not evaluated (e.g. a limited sanity check)
            for name, value in metrics.compute().items():
                values[f"{info.name}/{name}"] = value.detach()
            metrics.reset()
        for name in self.task.metrics:
            per = [v for k, v in values.items() if k.endswith(f"/{name}")]
            if per:
                values[name] = torch.stack(per).mean()
        return log_metric_values(method, values, self.best, stage)

    def predict(self, method, batch: dict) -> torch.Tensor:
        """Class indices ``[B]``."""
        return method(batch).argmax(-1)

    # -- the head: its optimizer group and artifact tensors --------------------------------
    def head_groups(self) -> list[dict]:
        if self.head is None:
            return []
        group = {"params": list(self.head.parameters())}
        if self.head_lr is not None:
            group["lr"] = self.head_lr
        return [group]

    def head_tensors(self) -> dict[str, torch.Tensor]:
        if self.head is None:
            return {}
        return {f"head.{n}": p.detach().float() for n, p in self.head.named_parameters()}

    def load_head_tensors(self, tensors: dict[str, torch.Tensor], path) -> None:
        if self.head is None:
            return
        with torch.no_grad():
            for name, p in self.head.named_parameters():
                key = f"head.{name}"
                if key not in tensors or tensors[key].shape != p.shape:
                    classes = [t.num_classes for t in self.tasks]
                    raise SptError(
                        f"{path} lacks a matching {key!r} for this run's head "
                        f"(classes per task: {classes})"
                    )
                p.copy_(tensors[key])

    def meta(self) -> dict:
        if self.multitask:
            return {
                "loss": self.loss_kind,
                "label_names": {t.name: list(t.label_names) for t in self.tasks},
                "label_words": {t.name: list(t.label_words) for t in self.tasks},
            }
        return {
            "loss": self.loss_kind,
            "label_names": list(self.task.label_names),
            "label_words": list(self.task.label_words),
        }


class Generation(Objective):
    """Text-to-text: the target's token cross-entropy; validation generates and scores."""

    generative = True
    loss_kind = "lm"

    def __init__(self, base, task):
        super().__init__(base, task)
        self.outputs: list[tuple[int, str]] = []
        self.last_predictions: list[dict] = []

    def training_step(self, method, batch: dict) -> torch.Tensor:
        with method.adapting(batch):
            embeds = method.embed(batch)
            prefix = method.kv_prefix(batch, embeds.dtype)
            loss = self.base.ops.lm_loss(
                method.backbone, embeds, batch["attention_mask"], batch["labels"], prefix
            )
        method.log("train/loss", loss, prog_bar=True, batch_size=len(batch["input_ids"]))
        return check_finite(loss, method.global_step)

    @torch.no_grad()
    def texts(self, method, batch: dict) -> list[str]:
        """Decoded generations for a batch (the text before the first end-of-sequence)."""
        tok = self.base.tokenizer
        tokens = generate(
            method, batch, max_new_tokens=self.task.max_new_tokens, num_beams=self.task.num_beams
        )
        texts = []
        for row in tokens.tolist():
            if tok.eos_token_id in row:
                row = row[: row.index(tok.eos_token_id)]
            texts.append(tok.decode(row, skip_special_tokens=True).strip())
        return texts

    def validation_step(self, method, batch: dict) -> None:
        texts = self.texts(method, batch)
        self.outputs.extend(zip(batch["ref_index"].tolist(), texts, strict=True))

    def epoch_end(self, method, stage: str) -> dict:
        """BLEU / ROUGE-L of the collected generations against the data module's references;
        the generations are kept (``last_predictions``) for the run to write out."""
        dm = getattr(method.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "score"):
            raise SptError(
                "scoring generations needs the text-to-text data module: pass "
                "datamodule= to trainer.fit/validate"
            )
        outputs = sorted(self.outputs)
        self.outputs = []
        if not outputs:
            return {}
        idx = [i for i, _ in outputs]
        texts = [t for _, t in outputs]
        split = "dev" if stage == "val" else dm.test_split
        refs, sources = dm.references(split), dm.sources(split)
        self.last_predictions = [
            {"ref_index": i, "input": sources[i], "prediction": t, "references": refs[i]}
            for i, t in outputs
        ]
        values = {k: torch.tensor(v) for k, v in dm.score(split, texts, idx).items()}
        return log_metric_values(method, values, self.best, stage)

    def predict(self, method, batch: dict) -> list[str]:
        """Generated texts."""
        return self.texts(method, batch)

    def meta(self) -> dict:
        return {"loss": self.loss_kind, "task_kind": "text-to-text"}

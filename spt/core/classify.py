"""Task plumbing shared by the methods: the scorer per architecture (LM-head verbalizer or a
pooled-output head), the Lightning steps, metrics and the head's artifact tensors. A method
mixes this in next to :class:`~spt.core.mixin.FrozenBackboneMixin`; methods never subclass
each other.

Text-to-text tasks (a :class:`~spt.data.generation.GenerationTaskInfo`, e.g. ``data=e2e``)
take the same steps in generation mode: training minimises the target text's token
cross-entropy (the architecture's ``lm_loss``), validation generates with
:func:`spt.core.generate.generate` and scores BLEU / ROUGE-L through the data module.

A regularizer (``spt/conf/regularizer``, attached by :func:`spt.regularizers.attach` as
``self.regularizer``) adds its term to the classification training loss; methods whose prompt is
input vectors mix in :class:`SoftPromptScoring` so a regularizer can score substituted ones."""

from __future__ import annotations

import torch
from torch import nn

from spt.core.generate import generate
from spt.core.steps import (
    best_trackers,
    check_finite,
    classification_loss,
    classification_metrics,
    log_epoch_metrics,
    log_metric_values,
)
from spt.errors import SptError


class ClassificationMixin:
    """Needs ``self.base`` and ``self.backbone`` (from the frozen-backbone mixin)."""

    regularizer = None  # e.g. spt.regularizers.nemesis.Nemesis; set by spt.regularizers.attach

    def setup_method(
        self,
        frame,
        *,
        backbone,
        task,
        backbone_dropout: bool,
        supports,
        loss: str,
        head_dropout: float,
        head_lr,
        task_names,
        n_tasks: int,
        optimizer,
        scheduler,
        warmup_steps: int,
        pooling: str | None = None,
    ) -> None:
        """The construction steps every classification method shares, in order: hparams (from
        the method's ``__init__`` ``frame``), the frozen backbone, the scorer, task names and
        the optimizer settings."""
        self.save_hyperparameters(
            ignore=["backbone", "task", "optimizer", "init_texts", "datamodule"],
            frame=frame,
            logger=False,
        )
        self.attach_backbone(backbone, backbone_dropout, method=self.method_name, supports=supports)
        self.setup_classification(task, loss, head_dropout, head_lr, self.method_name, pooling)
        self.set_task_names(task_names, n_tasks, task.name)
        self.optimizer_factory = optimizer
        self.scheduler_name = scheduler
        self.warmup_steps = warmup_steps

    def setup_classification(
        self,
        task,
        loss: str,
        head_dropout: float,
        head_lr: float | None,
        method: str,
        pooling: str | None = None,
    ) -> None:
        """One task (``TaskInfo`` / ``GenerationTaskInfo``) or a mixture (``MultiTaskInfo``,
        whose tasks each keep their own label words, head and metrics). The class scorer
        comes from the backbone's architecture (``self.base.ops.classifier``); ``pooling``
        is the encoder head's input (None: the backbone's)."""
        self.task = task
        self.tasks = tuple(task.tasks) if hasattr(task, "tasks") else (task,)
        self.multitask = hasattr(task, "tasks")
        self.loss_kind = loss
        self.head_lr = head_lr
        self.head = None
        self.generative = not hasattr(self.tasks[0], "label_words")
        self.scorer = None
        if self.generative:
            self.base.ops.check_generation(
                f"data={task.name} (a generation task on {self.base.name})"
            )
            if not self.supports_generation:
                raise SptError(
                    f"method={method} classifies with label words; data={task.name} "
                    "is a generation task: use a classification dataset (sst2, rte, "
                    "cb, boolq, agnews, trec) or a method that generates text"
                )
            self.loss_kind = "lm"
            self.val_best = best_trackers(task.metrics)
            self.val_outputs: list[tuple[int, str]] = []
            return
        # None on CLIP, which scores images against prompted class names (spt.methods.coop)
        self.scorer = self.base.ops.classifier(
            self.base, self.tasks, self.multitask, head_dropout, pooling
        )
        if self.scorer is not None:
            self.head = self.scorer.head  # a trained head (encoder-only) is the method's state
        metrics = [classification_metrics(t.metrics, t.num_classes) for t in self.tasks]
        self.val_metrics = nn.ModuleList(metrics) if self.multitask else metrics[0]
        self.val_best = best_trackers(task.metrics)

    @property
    def task_labels(self) -> list:
        """Each task's label words as token ids (label-word scorers: decoder-only and
        encoder-decoder backbones)."""
        return self.scorer.labels

    @property
    def labels(self):
        """The first task's label tokens."""
        return self.task_labels[0]

    def set_task_names(self, task_names, n_tasks: int, default: str) -> None:
        if self.multitask:
            names = [t.name for t in self.tasks]
            if n_tasks != len(names):
                raise SptError(
                    f"data={self.task.name} mixes {len(names)} tasks ({names}) but "
                    f"method.n_tasks={n_tasks}: set method.n_tasks={len(names)}"
                )
            if task_names is not None and list(task_names) != names:
                raise SptError(
                    f"method.task_names={list(task_names)} do not match the "
                    f"mixture's tasks {names}: drop method.task_names"
                )
            task_names = names
        self.task_names = list(task_names or [default] * n_tasks)
        if len(self.task_names) != n_tasks:
            raise SptError(
                f"method.task_names has {len(self.task_names)} names for n_tasks={n_tasks}"
            )

    def class_scores(
        self,
        embeds: torch.Tensor,
        mask: torch.Tensor,
        prefix=None,
        task_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``[B, C]`` class scores from the (prompted) input embeddings. ``prefix``: per-layer
        key/values ``[B, layers, 2, heads, P, d]``; on T5 an (encoder, decoder[, cross])
        tuple. In a mixture each row is scored with its own task's labels (``task_ids``) and
        ``C`` is the largest label set, the rest of a row's scores being -inf."""
        if not self.multitask:
            return self._task_scores(embeds, mask, prefix, 0)
        if task_ids is None:
            raise SptError("scoring a task mixture needs the batch's task_ids")
        width = max(t.num_classes for t in self.tasks)
        out = torch.full((embeds.shape[0], width), -torch.inf, device=embeds.device)
        shared = self._shared_pass(embeds, mask, prefix)
        for t in task_ids.unique().tolist():
            rows = (task_ids == t).nonzero().squeeze(1)
            if shared is not None:
                scores = shared(rows, t)
            else:
                scores = self._task_scores(
                    embeds[rows], mask[rows], _select_rows(self.base.ops, prefix, rows), t
                )
            out[rows, : scores.shape[1]] = scores.float()
        return out

    def _shared_pass(self, embeds, mask, prefix):
        """In a mixture, one backbone pass for every row when the tasks differ only after it
        (``(rows, task) -> scores``), or None where each task needs its own pass."""
        return self.scorer.shared_pass(self.backbone, embeds, mask, prefix)

    def _task_scores(self, embeds, mask, prefix, t: int) -> torch.Tensor:
        return self.scorer.task_scores(self.backbone, embeds, mask, prefix, t)

    def sequence_loss(self, batch: dict) -> torch.Tensor:
        """Text-to-text: the target's token cross-entropy with this method's prompt."""
        embeds = self.embed(batch)
        prefix = self.kv_prefix(batch, embeds.dtype) if hasattr(self, "kv_prefix") else None
        return self.base.ops.lm_loss(
            self.backbone, embeds, batch["attention_mask"], batch["labels"], prefix
        )

    # -- Lightning steps -------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if self.generative:
            loss = self.sequence_loss(batch)
            self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["input_ids"]))
        else:
            scores = self(batch)
            task_loss = classification_loss(scores, batch["labels"], self.loss_kind)
            loss = task_loss + self.regularize(batch)
            acc = (scores.argmax(-1) == batch["labels"]).float().mean()
            self.log_dict(
                {"train/loss": loss, "train/acc": acc},
                prog_bar=True,
                batch_size=len(batch["labels"]),
            )
            if self.regularizer is not None:
                self.log("train/task_loss", task_loss, batch_size=len(batch["labels"]))
        return check_finite(loss, self.global_step)

    def regularize(self, batch: dict) -> torch.Tensor | float:
        """The regularizer's term for this training batch (0 without one); logs its parts
        (``train/reg`` and the regularizer's own, e.g. ``train/pun``)."""
        if self.regularizer is None:
            return 0.0
        term, logs = self.regularizer(self, batch)
        prefixes = tuple(getattr(self.regularizer, "every_step_logs", ()))
        every_step = {k: float(logs.pop(k)) for k in list(logs) if k.startswith(prefixes)}
        self.log_dict({"train/reg": term.detach(), **logs}, batch_size=len(batch["labels"]))
        if every_step:  # past log_every_n_steps' thinning
            for logger in self.loggers:
                logger.log_metrics(every_step, step=self.global_step)
        return term

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.generative:
            texts = self.generate_texts(batch)
            self.val_outputs.extend(zip(batch["ref_index"].tolist(), texts, strict=True))
            return
        preds = self(batch).argmax(-1)
        if not self.multitask:
            self.val_metrics.update(preds, batch["labels"])
            return
        for t in batch["task_ids"].unique().tolist():
            rows = batch["task_ids"] == t
            self.val_metrics[t].update(preds[rows], batch["labels"][rows])

    def on_validation_epoch_end(self) -> None:
        if self.generative:
            self.last_val = self._score_generations("val")
        elif self.multitask:
            self.last_val = self._log_mixture_metrics("val")
        else:
            self.last_val = log_epoch_metrics(self, self.val_metrics, self.val_best, "val")
        self.last_val_step = self.global_step

    def _log_mixture_metrics(self, stage: str) -> dict:
        """``<stage>/<task>/<metric>`` per task and ``<stage>/<metric>``, their mean (whose
        best is tracked)."""
        values = {}
        for info, metrics in zip(self.tasks, self.val_metrics, strict=True):
            if all(m.update_count == 0 for m in metrics.values()):
                continue  # this task was not evaluated (e.g. a limited sanity check)
            for name, value in metrics.compute().items():
                values[f"{info.name}/{name}"] = value.detach()
            metrics.reset()
        for name in self.task.metrics:
            per = [v for k, v in values.items() if k.endswith(f"/{name}")]
            if per:
                values[name] = torch.stack(per).mean()
        return log_metric_values(self, values, self.val_best, stage)

    @torch.no_grad()
    def generate_texts(self, batch: dict) -> list[str]:
        """Decoded generations for a batch (the text before the first end-of-sequence)."""
        tok = self.base.tokenizer
        tokens = generate(
            self, batch, max_new_tokens=self.task.max_new_tokens, num_beams=self.task.num_beams
        )
        texts = []
        for row in tokens.tolist():
            if tok.eos_token_id in row:
                row = row[: row.index(tok.eos_token_id)]
            texts.append(tok.decode(row, skip_special_tokens=True).strip())
        return texts

    def _score_generations(self, stage: str) -> dict:
        """BLEU / ROUGE-L of the collected generations against the data module's references;
        the generations are kept (``last_predictions``) for the run to write out."""
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "score"):
            raise SptError(
                "scoring generations needs the text-to-text data module: pass "
                "datamodule= to trainer.fit/validate"
            )
        outputs = sorted(self.val_outputs)
        self.val_outputs = []
        if not outputs:
            return {}
        idx = [i for i, _ in outputs]
        texts = [t for _, t in outputs]
        refs = dm.references("dev")
        self.last_predictions = [
            {"ref_index": i, "prediction": t, "references": refs[i]} for i, t in outputs
        ]
        values = {k: torch.tensor(v) for k, v in dm.score("dev", texts, idx).items()}
        return log_metric_values(self, values, self.val_best, stage)

    def predict_step(self, batch: dict, batch_idx: int):
        """Class indices ``[B]``, or generated texts on a text-to-text task."""
        if self.generative:
            return self.generate_texts(batch)
        return self(batch).argmax(-1)

    # -- the head: its optimizer group and artifact tensors --------------------------------
    def head_param_groups(self) -> list[dict]:
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

    def classification_meta(self) -> dict:
        if self.generative:
            return {"loss": self.loss_kind, "task_kind": "text-to-text"}
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


class SoftPromptScoring:
    """For methods whose prompt is a sequence of input vectors at the batch's soft slots (prompt,
    ptuning, mpt). The method defines ``soft_prompts(task_ids [B]) -> [B, N, d]`` (its own
    vectors for each row's task) and ``embed(batch, prompts=None)``; this adds the class scores
    with other vectors in their place, which regularizers use to probe corrupted prompts."""

    def scores_with_prompts(self, batch: dict, prompts: torch.Tensor) -> torch.Tensor:
        """``[B, C]`` class scores with ``prompts [B, N, d]`` at the soft slots instead of the
        method's own vectors (``scores_with_prompts(b, soft_prompts(b["task_ids"]))`` equals
        ``forward(b)``)."""
        return self.class_scores(
            self.embed(batch, prompts), batch["attention_mask"], task_ids=batch["task_ids"]
        )


def _select_rows(ops, prefix, rows: torch.Tensor):
    """The prefix (None, or as the architecture splits it) of the given batch rows."""
    return None if prefix is None else ops.prefix_rows(prefix, rows)

"""Task plumbing shared by the methods: the scorer per architecture (LM-head verbalizer or a
pooled-output head), the Lightning steps, metrics and the head's artifact tensors. A method
mixes this in next to :class:`~spt.core.mixin.FrozenBackboneMixin`; methods never subclass
each other.

Text-to-text tasks (a :class:`~spt.data.generation.GenerationTaskInfo`, e.g. ``data=e2e``)
take the same steps in generation mode: training minimises the target text's token
cross-entropy (:func:`~spt.core.scoring.lm_loss`), validation generates with
:func:`spt.generate.generate` and scores BLEU / ROUGE-L through the data module.

A regularizer (``spt/conf/regularizer``, attached by :func:`spt.regularizers.attach` as
``self.regularizer``) adds its term to the classification training loss; methods whose prompt is
input vectors mix in :class:`SoftPromptScoring` so a regularizer can score substituted ones."""

from __future__ import annotations

import torch
from torch import nn

from spt.core.errors import SptError
from spt.core.scoring import (
    LabelTokens,
    decoder_scores,
    label_tokens,
    lm_loss,
    pooled,
    seq2seq_scores,
)
from spt.core.steps import (
    best_trackers,
    check_finite,
    classification_loss,
    classification_metrics,
    log_epoch_metrics,
    log_metric_values,
)


class ClassificationMixin:
    """Needs ``self.base`` and ``self.backbone`` (from the frozen-backbone mixin)."""

    regularizer = None  # e.g. spt.regularizers.nemesis.Nemesis; set by spt.regularizers.attach

    def setup_method(self, frame, *, backbone, task, backbone_dropout: bool, supports, loss: str,
                     head_dropout: float, head_lr, task_names, n_tasks: int, optimizer,
                     scheduler, warmup_steps: int) -> None:
        """The construction steps every classification method shares, in order: hparams (from
        the method's ``__init__`` ``frame``), the frozen backbone, the scorer, task names and
        the optimizer settings."""
        self.save_hyperparameters(ignore=["backbone", "task", "optimizer", "init_texts",
                                          "datamodule"],
                                  frame=frame, logger=False)
        self.attach_backbone(backbone, backbone_dropout, method=self.method_name,
                             supports=supports)
        self.setup_classification(task, loss, head_dropout, head_lr, self.method_name)
        self.set_task_names(task_names, n_tasks, task.name)
        self.optimizer_factory = optimizer
        self.scheduler_name = scheduler
        self.warmup_steps = warmup_steps

    def setup_classification(self, task, loss: str, head_dropout: float,
                             head_lr: float | None, method: str) -> None:
        """One task (``TaskInfo`` / ``GenerationTaskInfo``) or a mixture (``MultiTaskInfo``,
        whose tasks each keep their own label words, head and metrics)."""
        self.task = task
        self.tasks = tuple(task.tasks) if hasattr(task, "tasks") else (task,)
        self.multitask = hasattr(task, "tasks")
        self.loss_kind = loss
        self.head_lr = head_lr
        self.head = None
        self.generative = not hasattr(self.tasks[0], "label_words")
        if self.generative:
            if self.base.arch == "encoder":
                raise SptError(f"data={task.name} is a generation task and {self.base.name} is "
                               "encoder-only: use a decoder-only or encoder-decoder model")
            if not getattr(self, "supports_generation", True):
                raise SptError(f"method={method} classifies with label words; data={task.name} "
                               "is a generation task: use a classification dataset (sst2, rte, "
                               "cb, boolq, agnews, trec) or method=prompt|prefix|ptuning|"
                               "ptuning_v2")
            self.loss_kind = "lm"
            self.val_best = best_trackers(task.metrics)
            self.val_outputs: list[tuple[int, str]] = []
            return
        if self.base.arch == "clip":
            pass  # CLIP scores images against prompted class names (spt.methods.coop)
        elif self.base.arch == "encoder":
            heads = [nn.Sequential(nn.Dropout(head_dropout),
                                   nn.Linear(self.base.hidden_size, t.num_classes))
                     for t in self.tasks]
            self.head = nn.ModuleList(heads) if self.multitask else heads[0]
        else:
            self.task_labels = [label_tokens(self.base.tokenizer, list(t.label_words),
                                             self.base.arch, t.label_after_space)
                                for t in self.tasks]
            self.labels = self.task_labels[0]
        metrics = [classification_metrics(t.metrics, t.num_classes) for t in self.tasks]
        self.val_metrics = nn.ModuleList(metrics) if self.multitask else metrics[0]
        self.val_best = best_trackers(task.metrics)

    def set_task_names(self, task_names, n_tasks: int, default: str) -> None:
        if self.multitask:
            names = [t.name for t in self.tasks]
            if n_tasks != len(names):
                raise SptError(f"data={self.task.name} mixes {len(names)} tasks ({names}) but "
                               f"method.n_tasks={n_tasks}: set method.n_tasks={len(names)}")
            if task_names is not None and list(task_names) != names:
                raise SptError(f"method.task_names={list(task_names)} do not match the "
                               f"mixture's tasks {names}: drop method.task_names")
            task_names = names
        self.task_names = list(task_names or [default] * n_tasks)
        if len(self.task_names) != n_tasks:
            raise SptError(f"method.task_names has {len(self.task_names)} names for "
                           f"n_tasks={n_tasks}")

    def class_scores(self, embeds: torch.Tensor, mask: torch.Tensor, prefix=None,
                     task_ids: torch.Tensor | None = None) -> torch.Tensor:
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
                scores = self._task_scores(embeds[rows], mask[rows], _select_rows(prefix, rows),
                                           t)
            out[rows, : scores.shape[1]] = scores.float()
        return out

    def _shared_pass(self, embeds, mask, prefix):
        """In a mixture, one backbone pass for every row when the tasks differ only after it:
        encoder heads on the pooled output, or decoder label words of one token each (scored
        as one union of label ids). Returns ``(rows, task) -> scores``, or None where each
        task needs its own pass (multi-token label words, T5)."""
        if self.base.arch == "encoder":
            pooling = getattr(self, "pooling", None) or self.base.pooling
            hidden = pooled(self.backbone, embeds, mask, pooling, prefix).float()
            return lambda rows, t: self.head[t](hidden[rows])
        if self.base.arch == "decoder" and all(lt.single_token for lt in self.task_labels):
            union = LabelTokens(torch.cat([lt.ids for lt in self.task_labels]),
                                torch.cat([lt.mask for lt in self.task_labels]))
            scores = decoder_scores(self.backbone, embeds, mask, union, prefix)
            ends = torch.tensor([t.num_classes for t in self.tasks]).cumsum(0).tolist()
            return lambda rows, t: scores[rows, ends[t] - self.tasks[t].num_classes: ends[t]]
        return None

    def _task_scores(self, embeds, mask, prefix, t: int) -> torch.Tensor:
        if self.base.arch == "encoder":
            pooling = getattr(self, "pooling", None) or self.base.pooling
            head = self.head[t] if self.multitask else self.head
            return head(pooled(self.backbone, embeds, mask, pooling, prefix).float())
        labels = self.task_labels[t]
        if self.base.arch == "decoder":
            scores = decoder_scores(self.backbone, embeds, mask, labels, prefix)
        else:
            scores = seq2seq_scores(self.backbone, embeds, mask, labels, prefix)
        if self.tasks[t].label_score == "mean":  # per label token (data.label_score)
            scores = scores / labels.mask.sum(1).to(scores)
        return scores

    def sequence_loss(self, batch: dict) -> torch.Tensor:
        """Text-to-text: the target's token cross-entropy with this method's prompt."""
        embeds = self.embed(batch)
        prefix = self.kv_prefix(batch, embeds.dtype) if hasattr(self, "kv_prefix") else None
        return lm_loss(self.backbone, self.base.arch, embeds, batch["attention_mask"],
                       batch["labels"], prefix)

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
            self.log_dict({"train/loss": loss, "train/acc": acc}, prog_bar=True,
                          batch_size=len(batch["labels"]))
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
        from spt.generate import generate

        tok = self.base.tokenizer
        tokens = generate(self, batch, max_new_tokens=self.task.max_new_tokens,
                          num_beams=self.task.num_beams)
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
            raise SptError("scoring generations needs the text-to-text data module: pass "
                           "datamodule= to trainer.fit/validate")
        outputs = sorted(self.val_outputs)
        self.val_outputs = []
        if not outputs:
            return {}
        idx = [i for i, _ in outputs]
        texts = [t for _, t in outputs]
        refs = dm.references("dev")
        self.last_predictions = [{"ref_index": i, "prediction": t, "references": refs[i]}
                                 for i, t in outputs]
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
                    raise SptError(f"{path} lacks a matching {key!r} for this run's head "
                                   f"(classes per task: {classes})")
                p.copy_(tensors[key])

    def classification_meta(self) -> dict:
        if self.generative:
            return {"loss": self.loss_kind, "task_kind": "text-to-text"}
        if self.multitask:
            return {"loss": self.loss_kind,
                    "label_names": {t.name: list(t.label_names) for t in self.tasks},
                    "label_words": {t.name: list(t.label_words) for t in self.tasks}}
        return {"loss": self.loss_kind, "label_names": list(self.task.label_names),
                "label_words": list(self.task.label_words)}


class SoftPromptScoring:
    """For methods whose prompt is a sequence of input vectors at the batch's soft slots (prompt,
    ptuning, mpt). The method defines ``soft_prompts(task_ids [B]) -> [B, N, d]`` (its own
    vectors for each row's task) and ``embed(batch, prompts=None)``; this adds the class scores
    with other vectors in their place, which regularizers use to probe corrupted prompts."""

    def scores_with_prompts(self, batch: dict, prompts: torch.Tensor) -> torch.Tensor:
        """``[B, C]`` class scores with ``prompts [B, N, d]`` at the soft slots instead of the
        method's own vectors (``scores_with_prompts(b, soft_prompts(b["task_ids"]))`` equals
        ``forward(b)``)."""
        return self.class_scores(self.embed(batch, prompts), batch["attention_mask"],
                                 task_ids=batch["task_ids"])


def _select_rows(prefix, rows: torch.Tensor):
    """The prefix (a tensor, a T5 tuple of tensors/None, or None) of the given batch rows."""
    if prefix is None:
        return None
    if isinstance(prefix, tuple):
        return tuple(p[rows] if p is not None else None for p in prefix)
    return prefix[rows]

"""Multitask Prompt Tuning: Wang, Panda, Karlinsky, Feris, Sun & Kim 2023, "Multitask Prompt
Tuning Enables Parameter-Efficient Transfer Learning", arXiv:2303.02861.

Task k's prompt is a shared prompt times a rank-r task matrix, ``P_k = P* ∘ (U_k V_k^T)``
(:class:`~spt.modules.low_rank_prompts.LowRankTaskPrompts`; the paper uses rank 1), placed in
the input like a Prompt Tuning prompt.

- ``stage: source``: ``P*`` and every source task's ``(U_k, V_k)`` are trained on a task
  mixture (``data=mix_source``), distilled from single-task teachers, one Prompt Tuning
  artifact per source task (``method=prompt`` runs): the loss adds
  ``distill_weight * (KL(teacher || student) on the class scores + MSE on the final hidden
  states that feed the LM head)`` to the task loss. PEFT's MPT has no distillation
  (huggingface/peft#1124). The run's artifact holds ``shared``, ``u``, ``v`` and the
  materialised per-task prompts.
- ``stage: target``: ``P*`` is read from a source-stage artifact (``source_file``) and a new
  ``(U, V)`` per target task is learned, starting at ``W = 1`` (the shared prompt itself);
  ``P*`` trains too unless ``train_shared: false``.

The artifact's ``prompt`` tensor is the materialised ``[n_tasks, length, d]`` table, so a
trained MPT prompt also serves through ``method=prompt method.init=file``.
"""

from __future__ import annotations

import contextlib
import logging

import lightning as L
import torch
import torch.nn.functional as F

from spt.backbones import Backbone
from spt.backbones.arch import insert_soft
from spt.core import inits
from spt.core.artifact import check_base, load_artifact
from spt.core.mixin import HPARAMS_IGNORE, FrozenBackboneMixin, Schedule
from spt.core.objective import Head, objective_for, task_names_for
from spt.core.steps import LOSSES, check_finite, classification_loss
from spt.errors import SptError, is_count
from spt.modules.low_rank_prompts import LowRankTaskPrompts

log = logging.getLogger(__name__)

STAGES = ("source", "target")
SHARED_INITS = ("sampled_vocab", "uniform", "text", "file")


class MPT(FrozenBackboneMixin, L.LightningModule):
    """Multitask Prompt Tuning (source or target stage).

    Args:
        backbone / task: as for :class:`~spt.methods.prompt.PromptTuning`; ``task`` is a
            mixture (:class:`~spt.data.multitask.MultiTaskInfo`) in the source stage.
        stage: ``source`` or ``target``.
        length: prompt vectors (the paper uses 100 on T5-Base).
        rank: rank r of each task matrix (paper: 1).
        init: the source stage's shared prompt: ``sampled_vocab`` | ``uniform`` | ``text`` |
            ``file`` (resume a run of this method: ``init_file``).
        teachers: source stage: task name -> Prompt Tuning artifact of that task on this
            backbone (same length, template and verbalizer); null trains without distillation.
        distill_weight: lambda, the weight of KL + hidden-state MSE.
        source_file: target stage: the source stage's ``prompt.safetensors``.
        train_shared: target stage: keep training ``P*`` (True) or freeze it.
        Other args as for prompt tuning.
    """

    method_name = "mpt"
    prompt_kind = "input"  # spt.methods.PROMPT_KINDS
    supports_generation = False
    training_settings = ("teachers", "source_file")  # distillation and the target's start

    def __init__(
        self,
        backbone: Backbone,
        task,
        stage: str = "source",
        length: int = 20,
        rank: int = 1,
        init: str = "sampled_vocab",
        init_text: str | None = None,
        init_file: str | None = None,
        vocab_top_k: int = 5000,
        teachers: dict[str, str] | None = None,
        distill_weight: float = 1.0,
        source_file: str | None = None,
        train_shared: bool = True,
        init_texts: list[str] | None = None,
        n_tasks: int = 1,
        task_names: list[str] | None = None,
        loss: str = "class_ce",
        head: Head = Head(dropout=0.1, lr=0.01),
        backbone_dropout: bool = False,
        optimizer=None,
        scheduler: Schedule = Schedule("constant"),
        seed: int = 0,
        supports: list[str] | None = None,
    ):
        super().__init__()
        _validate(
            stage=stage,
            length=length,
            rank=rank,
            init=init,
            init_text=init_text,
            init_file=init_file,
            teachers=teachers,
            distill_weight=distill_weight,
            source_file=source_file,
            loss=loss,
            n_tasks=n_tasks,
        )
        # logger=False: the run logs the whole resolved config itself
        self.save_hyperparameters(ignore=HPARAMS_IGNORE, logger=False)
        self.attach_backbone(backbone, backbone_dropout, supports)
        self.objective = objective_for(
            self.base,
            task,
            loss=loss,
            head=head,
            method=self.method_name,
            generates=self.supports_generation,
        )
        self.task_names = task_names_for(task, task_names, n_tasks)
        self.set_optimizer(optimizer, scheduler)
        self.stage = stage
        self.distill_weight = float(distill_weight)
        g = torch.Generator().manual_seed(seed)
        self.prompts = LowRankTaskPrompts(n_tasks, length, backbone.hidden_size, rank, g)
        if init == "file":
            self.load_mpt_file(init_file)
        elif stage == "target":
            self._load_shared(source_file)
        else:
            self._init_shared(init, init_text, vocab_top_k, init_texts, g)
        if stage == "target" and not train_shared:
            self.prompts.shared.requires_grad_(False)
        self.teacher_names: list[str] = []
        self.register_buffer("teacher_prompts", None, persistent=False)
        if teachers:
            self._load_teachers(dict(teachers))
        self.check_frozen()

    # -- initialisation --------------------------------------------------------------------
    def _init_shared(self, init, init_text, top_k, texts, g) -> None:
        vec = inits.initial_prompt(
            init, self.base, self.prompts.length, g, init_text=init_text, top_k=top_k, texts=texts
        )
        with torch.no_grad():
            self.prompts.shared.copy_(vec[0])

    def _read(self, path, stage: str | None = None) -> dict[str, torch.Tensor]:
        tensors, meta = load_artifact(path)
        check_base(meta, self.base.identity(), path)
        if meta.get("method") != self.method_name:
            raise SptError(f"{path} was saved by method={meta.get('method')}, not method=mpt")
        if stage is not None and meta.get("stage") != stage:
            raise SptError(
                f"{path} is an MPT {meta.get('stage')}-stage artifact; "
                f"method.source_file needs the {stage} stage's prompt.safetensors"
            )
        want = tuple(self.prompts.shared.shape)
        if tuple(tensors["shared"].shape) != want:
            raise SptError(
                f"{path} holds a shared prompt of shape "
                f"{list(tensors['shared'].shape)}, this run expects {list(want)}: "
                f"set method.length={tensors['shared'].shape[0]}"
            )
        return tensors

    def _load_shared(self, path) -> None:
        with torch.no_grad():
            self.prompts.shared.copy_(self._read(path, stage="source")["shared"])

    def load_mpt_file(self, path) -> None:
        """Resume: the shared prompt, every task's U and V, and the head(s)."""
        tensors = self._read(path)
        for name in ("u", "v"):
            got, want = tensors[name].shape, getattr(self.prompts, name).shape
            if got != want:
                raise SptError(
                    f"{path} holds {name} of shape {list(got)}, this run expects "
                    f"{list(want)}: match method.n_tasks, rank and length"
                )
        with torch.no_grad():
            for name in ("shared", "u", "v"):
                getattr(self.prompts, name).copy_(tensors[name])
        self.objective.load_head_tensors(tensors, path)

    def _load_teachers(self, teachers: dict[str, str]) -> None:
        if self.base.ops.lm_head(self.backbone) is None:  # the hidden states it reads
            raise SptError(
                "method.teachers: distillation compares LM-head class scores; "
                f"{self.base.name} ({self.base.arch}-only) has no LM head: use a "
                "decoder-only or encoder-decoder model, or method.teachers=null"
            )
        names = [t.name for t in self.objective.tasks]
        if sorted(teachers) != sorted(names):
            raise SptError(
                f"method.teachers names {sorted(teachers)} but the tasks are "
                f"{names}: give one Prompt Tuning artifact per task"
            )
        table = []
        for info in self.objective.tasks:
            path = teachers[info.name]
            tensors, meta = load_artifact(path)
            check_base(meta, self.base.identity(), path)
            if meta.get("method") != "prompt" or "prompt" not in tensors:
                raise SptError(
                    f"teacher {path} is not a Prompt Tuning artifact "
                    f"(method={meta.get('method')}): train it with method=prompt"
                )
            prompt = tensors["prompt"]
            if prompt.shape[1:] != self.prompts.shared.shape:
                raise SptError(
                    f"teacher {path} has {prompt.shape[1]} prompt vectors; this run "
                    f"has method.length={self.prompts.length}: they must match"
                )
            if list(meta.get("label_words") or []) != list(info.label_words):
                raise SptError(
                    f"teacher {path} was trained with label words "
                    f"{meta.get('label_words')}, task {info.name} uses "
                    f"{list(info.label_words)}: use the same data config"
                )
            table.append(prompt[0])
        self.teacher_names = names
        self.teacher_prompts = torch.stack(table)

    # -- forward and losses ----------------------------------------------------------------
    @property
    def n_soft_tokens(self) -> int:
        return self.prompts.length

    def soft_prompts(self, task_ids: torch.Tensor) -> torch.Tensor:
        """Each row's task prompt ``P* ∘ W_k``, ``[B, length, d]``."""
        return self.prompts(task_ids)

    def embed(self, batch: dict, prompts: torch.Tensor | None = None) -> torch.Tensor:
        embeds = self.base.input_embeddings(batch["input_ids"])
        if prompts is None:
            prompts = self.soft_prompts(batch["task_ids"])
        return insert_soft(embeds, batch["soft_mask"], prompts)

    def forward(self, batch: dict) -> torch.Tensor:
        return self.class_scores(
            self.embed(batch), batch["attention_mask"], task_ids=batch["task_ids"]
        )

    def scores_with_prompts(self, batch: dict, prompts: torch.Tensor) -> torch.Tensor:
        """``[B, C]`` class scores with ``prompts [B, N, d]`` at the soft slots instead of this
        method's own vectors (regularizers probe corrupted prompts with it;
        ``scores_with_prompts(b, soft_prompts(b["task_ids"]))`` equals ``forward(b)``)."""
        return self.class_scores(
            self.embed(batch, prompts), batch["attention_mask"], task_ids=batch["task_ids"]
        )

    @contextlib.contextmanager
    def _capture_hidden(self):
        """Collects the final hidden states the LM head reads during the calls inside."""
        seen: list[torch.Tensor] = []
        head = self.backbone.get_output_embeddings()
        handle = head.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
        try:
            yield seen
        finally:
            handle.remove()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if self.teacher_prompts is None:
            return super().training_step(batch, batch_idx)
        with self._capture_hidden() as student_hidden:
            scores = self(batch)
        with torch.no_grad(), self._capture_hidden() as teacher_hidden:
            teacher = self.class_scores(
                self.embed(batch, self.teacher_prompts[batch["task_ids"]]),
                batch["attention_mask"],
                task_ids=batch["task_ids"],
            )
        task_loss = classification_loss(scores, batch["labels"], self.objective.loss_kind)
        reg = self.objective.regularize(self, batch)
        kl = distill_kl(scores, teacher)
        # task groups are scored in the same order for both, with differently shaped hiddens
        mse = F.mse_loss(
            torch.cat([h.flatten() for h in student_hidden]).float(),
            torch.cat([h.flatten() for h in teacher_hidden]).float(),
        )
        loss = task_loss + self.distill_weight * (kl + mse) + reg
        acc = (scores.argmax(-1) == batch["labels"]).float().mean()
        self.log_dict(
            {
                "train/loss": loss,
                "train/task_loss": task_loss,
                "train/kl": kl,
                "train/mse": mse,
                "train/acc": acc,
            },
            prog_bar=True,
            batch_size=len(batch["labels"]),
        )
        return check_finite(loss, self.global_step)

    def param_groups(self) -> list[dict]:
        own = [p for p in self.prompts.parameters() if p.requires_grad]
        return [{"params": own}, *self.objective.head_groups()]

    # -- artifact --------------------------------------------------------------------------
    def artifact_tensors(self) -> dict[str, torch.Tensor]:
        p = self.prompts
        return {
            "prompt": p.table().detach().float(),
            "shared": p.shared.detach().float(),
            "u": p.u.detach().float(),
            "v": p.v.detach().float(),
            **self.objective.head_tensors(),
        }

    def artifact_meta(self) -> dict:
        return {
            "method": self.method_name,
            "stage": self.stage,
            "length": self.prompts.length,
            "rank": self.prompts.rank,
            "n_tasks": self.prompts.n_tasks,
            "task_names": self.task_names,
            "teachers": self.hparams.teachers,
            "distill_weight": self.distill_weight,
            "source_file": self.hparams.source_file,
            **self.objective.meta(),
            "base": self.base.identity(),
            "trainable_parameters": self.parameter_counts()["params/trainable"],
        }


def distill_kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``KL(teacher || student)`` of the class distributions ``softmax(scores)``, averaged over
    rows; classes outside a row's task (-inf in a mixture) are left out."""
    valid = torch.isfinite(teacher)
    s = F.log_softmax(student.float().masked_fill(~valid, -1e4), dim=-1)
    t = F.log_softmax(teacher.float().masked_fill(~valid, -1e4), dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean")


def _validate(
    *,
    stage,
    length,
    rank,
    init,
    init_text,
    init_file,
    teachers,
    distill_weight,
    source_file,
    loss,
    n_tasks,
) -> None:
    if stage not in STAGES:
        raise SptError(f"method.stage={stage!r}: choose source or target")
    for key, value in (("length", length), ("rank", rank), ("n_tasks", n_tasks)):
        if not is_count(value):
            raise SptError(f"method.{key}={value!r} must be an integer >= 1")
    if init not in SHARED_INITS:
        raise SptError(f"method.init={init!r}: choose one of {', '.join(SHARED_INITS)}")
    if init == "text" and not init_text:
        raise SptError("method.init=text needs method.init_text='...'")
    if init == "file" and not init_file:
        raise SptError("method.init=file needs method.init_file=/path/to/prompt.safetensors")
    if stage == "target" and init != "file" and not source_file:
        raise SptError(
            "method.stage=target needs method.source_file=<source run>/"
            "prompt.safetensors (the source stage's artifact)"
        )
    if stage == "target" and teachers:
        raise SptError(
            "method.teachers is for the source stage; the target stage trains "
            "without distillation: drop method.teachers"
        )
    if not isinstance(distill_weight, int | float) or distill_weight < 0:
        raise SptError(f"method.distill_weight={distill_weight!r} must be a number >= 0")
    if loss not in LOSSES:
        raise SptError(f"method.loss={loss!r}: choose one of {', '.join(LOSSES)}")

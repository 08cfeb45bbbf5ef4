"""Prompt Tuning: Lester, Al-Rfou & Constant 2021, "The Power of Scale for Parameter-Efficient
Prompt Tuning", arXiv:2104.08691.

``length`` trainable vectors are placed in the input embedding sequence (where the template's
``{soft}`` marker is; prepended by default) of a frozen model. Classes are scored by the LM head
(decoder-only, encoder-decoder) or by a small trainable head on the pooled output
(encoder-only). Prompts live in a table with a task axis, gathered per row by ``task_ids``.
"""

from __future__ import annotations

import logging

import lightning as L
import torch

from spt.backbones import Backbone
from spt.backbones.arch import insert_soft
from spt.core import inits
from spt.core.artifact import check_base, load_artifact
from spt.core.mixin import HPARAMS_IGNORE, FrozenBackboneMixin, Schedule
from spt.core.objective import Head, objective_for, task_names_for
from spt.core.steps import LOSSES
from spt.data.task import TaskInfo  # noqa: I001
from spt.errors import SptError
from spt.modules import PromptTable

log = logging.getLogger(__name__)


class PromptTuning(FrozenBackboneMixin, L.LightningModule):
    """Prompt Tuning on encoder-only, decoder-only and encoder-decoder backbones.

    Args:
        backbone: the frozen model (see :mod:`spt.backbones`).
        task: labels, verbalizer words and metrics of the task (from the data module).
        length: number of soft-prompt vectors (Lester: gains saturate around 20).
        init: ``uniform`` | ``sampled_vocab`` | ``class_labels`` | ``text`` | ``file``.
        init_text: text whose token embeddings initialise the prompt (``init=text``).
        init_file: a saved prompt artifact (``init=file``); must match the base model.
        vocab_top_k: size of the "most common tokens" pool for ``sampled_vocab`` (5,000).
        init_texts: training inputs, used to count token frequencies when the vocabulary is
            not sorted by frequency (WordPiece).
        n_tasks / task_names: rows of the prompt table.
        loss: ``class_ce`` or ``lm`` (see :func:`spt.core.steps.classification_loss`).
        head: the encoder-only classification head's ``dropout`` and ``lr``
            (:class:`~spt.core.objective.Head`; the prompt uses the optimizer's lr).
        backbone_dropout: run the frozen backbone with its dropout on during training.
        optimizer: a partial optimizer (``_partial_: true`` in YAML) called with param groups.
        scheduler: ``name`` (a ``transformers.get_scheduler`` name) and ``warmup_steps``
            (:class:`~spt.core.mixin.Schedule`).
        seed: seeds the initialisation.
        supports: the architectures the YAML declares; others are refused.
    """

    method_name = "prompt"
    prompt_kind = "input"  # spt.methods.PROMPT_KINDS

    def __init__(
        self,
        backbone: Backbone,
        task: TaskInfo,
        length: int = 20,
        init: str = "class_labels",
        init_text: str | None = None,
        init_file: str | None = None,
        vocab_top_k: int = 5000,
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
            length=length,
            init=init,
            loss=loss,
            n_tasks=n_tasks,
            init_text=init_text,
            init_file=init_file,
            vocab_top_k=vocab_top_k,
        )
        # The run logs the whole resolved config itself; logger=False keeps Lightning from
        # merging (and clashing with) the data module's hparams.
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
        self.use_soft_prompt = True  # False = zero-shot: the template and verbalizer only

        self.prompt = PromptTable(n_tasks, length, backbone.hidden_size)
        self._initialise(init, init_text, init_file, vocab_top_k, init_texts, seed)
        self.check_frozen()

    # -- initialisation --------------------------------------------------------------------
    def _initialise(self, init, init_text, init_file, top_k, texts, seed) -> None:
        if init == "file":
            self.load_prompt_file(init_file)
            return
        if init == "class_labels" and self.objective.generative:
            raise SptError(
                f"method.init=class_labels needs label words; data={self.objective.task.name} "
                "is a generation task: set method.init=sampled_vocab (or text, "
                "uniform, file)"
            )
        words = None
        if init == "class_labels":  # each task's row from its own label words
            tok = self.base.tokenizer
            words = []
            for info in self.objective.tasks:
                ids = self.base.ops.label_tokens(
                    tok, list(info.label_words), info.label_after_space
                ).lists()
                words.append([[i for i in w if i != tok.eos_token_id] or w for w in ids])
        vec = inits.initial_prompt(
            init,
            self.base,
            self.prompt.length,
            torch.Generator().manual_seed(seed),
            init_text=init_text,
            top_k=top_k,
            texts=texts,
            label_words=words,
        )
        with torch.no_grad():
            self.prompt.weight.copy_(vec.expand_as(self.prompt.weight))

    def load_prompt_file(self, path) -> None:
        """Load prompt (and head) tensors from an artifact made for this base model."""
        tensors, meta = load_artifact(path)
        check_base(meta, self.base.identity(), path)
        if "prompt" not in tensors:
            raise SptError(f"{path} holds no 'prompt' tensor (it has {sorted(tensors)})")
        want = tuple(self.prompt.weight.shape)
        got = tuple(tensors["prompt"].shape)
        if got != want:
            raise SptError(
                f"{path} holds a prompt of shape {list(got)} [n_tasks, length, dim], "
                f"this run expects {list(want)}: set method.length={got[1]} and "
                f"method.n_tasks={got[0]}"
            )
        with torch.no_grad():
            self.prompt.weight.copy_(tensors["prompt"])
        self.objective.load_head_tensors(tensors, path)

    # -- forward ---------------------------------------------------------------------------
    @property
    def n_soft_tokens(self) -> int:
        """How many input positions the data module reserves for the soft prompt."""
        return self.prompt.length if self.use_soft_prompt else 0

    def soft_prompts(self, task_ids: torch.Tensor) -> torch.Tensor:
        """The prompt vectors of each row's task, ``[B, length, d]``."""
        return self.prompt(task_ids)

    def embed(self, batch: dict, prompts: torch.Tensor | None = None) -> torch.Tensor:
        """Input embeddings with ``prompts [B, length, d]`` (default: this method's own) at
        the soft slots."""
        embeds = self.base.input_embeddings(batch["input_ids"])
        if self.use_soft_prompt:
            if prompts is None:
                prompts = self.soft_prompts(batch["task_ids"])
            embeds = insert_soft(embeds, batch["soft_mask"], prompts)
        return embeds

    def forward(self, batch: dict) -> torch.Tensor:
        """Class scores ``[B, C]`` for a batch from the data module."""
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

    def param_groups(self) -> list[dict]:
        return [{"params": list(self.prompt.parameters())}, *self.objective.head_groups()]

    # -- artifact --------------------------------------------------------------------------
    def artifact_tensors(self) -> dict[str, torch.Tensor]:
        return {"prompt": self.prompt.weight.detach().float(), **self.objective.head_tensors()}

    def artifact_meta(self) -> dict:
        hp = self.hparams
        return {
            "method": self.method_name,
            "length": self.prompt.length,
            "n_tasks": self.prompt.n_tasks,
            "task_names": self.task_names,
            "init": hp.init,
            "init_text": hp.init_text,
            **self.objective.meta(),
            "base": self.base.identity(),
            "trainable_parameters": self.parameter_counts()["params/trainable"],
        }


def _validate(*, length, init, loss, n_tasks, init_text, init_file, vocab_top_k) -> None:
    if not isinstance(length, int) or isinstance(length, bool) or length < 1:
        raise SptError(
            f"method.length={length!r}: the prompt needs at least one vector "
            "(an integer >= 1; Lester et al. use 1-150, 20 by default)"
        )
    if not isinstance(n_tasks, int) or n_tasks < 1:
        raise SptError(f"method.n_tasks={n_tasks!r} must be an integer >= 1")
    if init not in inits.INITS:
        raise SptError(f"method.init={init!r}: choose one of {', '.join(inits.INITS)}")
    if loss not in LOSSES:
        raise SptError(f"method.loss={loss!r}: choose one of {', '.join(LOSSES)}")
    if init == "text" and not init_text:
        raise SptError("method.init=text needs method.init_text='...'")
    if init == "file" and not init_file:
        raise SptError("method.init=file needs method.init_file=/path/to/prompt.safetensors")
    if not isinstance(vocab_top_k, int) or vocab_top_k < 1:
        raise SptError(f"method.vocab_top_k={vocab_top_k!r} must be an integer >= 1")

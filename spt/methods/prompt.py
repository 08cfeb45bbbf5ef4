"""Prompt Tuning: Lester, Al-Rfou & Constant 2021, "The Power of Scale for Parameter-Efficient
Prompt Tuning", arXiv:2104.08691.

``length`` trainable vectors are placed in the input embedding sequence (where the template's
``{soft}`` marker is; prepended by default) of a frozen model. Classes are scored by the LM head
(decoder-only, encoder-decoder) or by a small trainable head on the pooled output
(encoder-only). Prompts live in a table with a task axis, gathered per row by ``task_ids``.

``residual=<bottleneck>`` is Residual Prompt Tuning (Razdaibiedina et al., Findings of ACL
2023, arXiv:2305.03937): the table is reparameterised as ``P' = P + LN(MLP(P))`` while
training, which the paper finds faster and more stable than plain prompt tuning, and the MLP is
dropped at inference. It is an option here rather than a method of its own because what it
serves is exactly a Prompt Tuning prompt: the artifact's ``prompt`` is ``P'``, so serving, the
PEFT export (PROMPT_TUNING) and any plain ``method=prompt`` run loading it (``init=file``) use
it unchanged. ``P`` and the MLP ride along as ``residual.*`` tensors: ``spt.load``, eval and
resuming rebuild the MLP from them (the saved settings name ``residual``) and compute the same
``P'``.
"""

from __future__ import annotations

import logging

import lightning as L
import torch

from spt.backbones import Backbone
from spt.backbones.arch import insert_soft
from spt.core import inits
from spt.core.artifact import check_base, load_artifact, load_module_tensors
from spt.core.mixin import HPARAMS_IGNORE, FrozenBackboneMixin, Schedule
from spt.core.objective import Head, objective_for, task_names_for
from spt.data.task import TaskInfo  # noqa: I001
from spt.errors import SptError, is_count
from spt.modules import PromptTable
from spt.modules.residual_mlp import ResidualReparam

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
        residual: Residual Prompt Tuning's MLP width (null: plain Prompt Tuning).
        residual_dropout: dropout inside that MLP (the authors' default 0).
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
        residual: int | None = None,
        residual_dropout: float = 0.0,
    ):
        super().__init__()
        if residual is not None and not is_count(residual):
            raise SptError(
                f"method.residual={residual!r}: null (plain Prompt Tuning) or the width of "
                "Residual Prompt Tuning's MLP, an integer >= 1 (e.g. 400)"
            )
        if not isinstance(residual_dropout, (int, float)) or not 0 <= residual_dropout < 1:
            raise SptError(f"method.residual_dropout={residual_dropout!r}: a probability in [0, 1)")
        inits.check_settings(
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
        self.residual = None
        if residual is not None:
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                self.residual = ResidualReparam(backbone.hidden_size, residual, residual_dropout)
        self._initialise(init, init_text, init_file, vocab_top_k, init_texts, seed)
        self.check_frozen()

    # -- initialisation --------------------------------------------------------------------
    def _initialise(self, init, init_text, init_file, top_k, texts, seed) -> None:
        if init == "file":
            self.load_prompt_file(init_file)
            return
        inits.fill_table(
            self.prompt.weight,
            self.base,
            self.objective,
            init,
            torch.Generator().manual_seed(seed),
            init_text=init_text,
            top_k=top_k,
            texts=texts,
        )

    def load_prompt_file(self, path) -> None:
        """Load prompt (and head) tensors from an artifact made for this base model. With
        ``residual``, an artifact of a residual run gives back ``P`` and the MLP (training
        resumes where it was); any other gives ``P`` its prompt and a fresh MLP."""
        tensors, meta = load_artifact(path)
        check_base(meta, self.base.identity(), path)
        if self.residual is not None and "residual.prompt" in tensors:
            inits.load_table(self.prompt.weight, {"prompt": tensors["residual.prompt"]}, path)
            load_module_tensors(
                self.residual, tensors, "residual.", path, "method.residual (the MLP width)"
            )
        else:
            inits.load_table(self.prompt.weight, tensors, path)
        self.objective.load_head_tensors(tensors, path)

    # -- forward ---------------------------------------------------------------------------
    @property
    def n_soft_tokens(self) -> int:
        """How many input positions the data module reserves for the soft prompt."""
        return self.prompt.length if self.use_soft_prompt else 0

    def table(self) -> torch.Tensor:
        """The prompts as the model reads them, ``[n_tasks, length, d]``: the table, or with
        ``residual`` its reparameterisation ``P + LN(MLP(P))``."""
        if self.residual is None:
            return self.prompt.weight
        return self.residual(self.prompt.weight)

    def soft_prompts(self, task_ids: torch.Tensor) -> torch.Tensor:
        """The prompt vectors of each row's task, ``[B, length, d]``."""
        if self.residual is None:
            return self.prompt(task_ids)
        return self.table().index_select(0, task_ids)

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
        own = [*self.prompt.parameters(), *(self.residual.parameters() if self.residual else ())]
        return [{"params": own}, *self.objective.head_groups()]  # the MLP at the prompt's lr

    # -- artifact --------------------------------------------------------------------------
    def artifact_tensors(self) -> dict[str, torch.Tensor]:
        training = self.residual is not None and self.residual.training
        if training:  # the served prompt is the eval-mode one: no dropout mask saved
            self.residual.eval()
        try:
            out = {"prompt": self.table().detach().float(), **self.objective.head_tensors()}
        finally:
            if training:
                self.residual.train()
        if self.residual is not None:  # what spt.load and resuming rebuild the MLP from
            out["residual.prompt"] = self.prompt.weight.detach().float()
            out.update(
                {f"residual.{n}": p.detach().float() for n, p in self.residual.named_parameters()}
            )
        return out

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

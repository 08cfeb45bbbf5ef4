"""DePT: Shi & Lipani, "DePT: Decomposed Prompt Tuning for Parameter-Efficient Fine-tuning",
ICLR 2024, arXiv:2309.05173.

Prompt Tuning's cost grows with the prompt's length, since every soft vector is one more
position in every layer. DePT spends the same parameter budget on a shorter prompt ``P`` of
``m`` vectors plus a low-rank update of the frozen input embeddings ``E`` of the input's own
tokens (the paper's Section 2):

    E' = E + (alpha / sqrt(r)) * A @ B,     A in R^{s x r}, B in R^{r x d},

where ``s`` is the number of input positions covered (the reference pads every input to its
``max_length`` s) and the scale is ``lora_alpha / sqrt(r)`` with alpha 8, as the authors' code
has it (ZhengxiangShi/DePT, peft/tuners/prompt_tuning_lora.py, PromptEmbeddingLoRA; alpha is
not exposed by its train.py). ``B`` starts at zero, so step 0 is Prompt Tuning with the
shorter prompt. The model then reads ``[P; E']``; only ``P``, ``A`` and ``B`` train, ``P`` and
``A, B`` at two learning rates (train.py: AdamW with a group at ``--lora_embedding_lr``).

**The budget.** A prompt of ``l`` vectors costs ``l * d``; DePT matches it with
``m * d + (s + d) * r = l * d``. The paper's default for ``l = 100`` on T5-base (d 768,
s 256) is ``m = 60, r = 30`` (every released checkpoint satisfies the equation exactly: also
``(80, 15)``, ``(40, 45)``, and ``(60, 24)`` at s 512). So by default spt takes ``budget`` =
Prompt Tuning's length (20, spt's ``method=prompt`` default), gives the update 40% of it
(``r = floor(0.4 * budget * d / (s + d))``, at least 1) and the prompt the rest
(``m = floor((budget * d - (s + d) * r) / d)``): 60 and 30 for the paper's case.

**Positions.** The k-th real, non-soft token of a row (template text included: the reference's
template is part of its input) gets row k of ``A @ B``, counted from the row's first real
token, so left and right padding give a token the same update; padding and soft slots get none,
and tokens past ``s`` none (the reference truncates at ``s``). The reference's decoder-only
path instead adds row i to absolute padded position i of a left-padded batch, which gives a
token a different row for each input length; spt uses the encoder-decoder reading (the paper's
T5 experiments) on every architecture. On decoder-only text-to-text rows the target tokens
get no update (the reference adds it only when ``past_key_values is None``, at the prompt), so
training sees what generation sees.

One update per task (a task axis, gathered by ``task_ids``), like every spt prompt.
"""

from __future__ import annotations

import math

import lightning as L
import torch

from spt.backbones import Backbone
from spt.backbones.arch import insert_soft
from spt.core import inits
from spt.core.artifact import check_base, load_artifact, load_module_tensors
from spt.core.mixin import HPARAMS_IGNORE, FrozenBackboneMixin, Schedule
from spt.core.objective import Head, objective_for, task_names_for
from spt.data.batches import IGNORE
from spt.data.task import TaskInfo  # noqa: I001
from spt.errors import SptError, is_count
from spt.modules import PromptTable
from spt.modules.embedding_update import LowRankEmbeddingUpdate

PROMPT_SHARE = 0.6  # m / l of the paper's default (60 of 100); the update gets the rest


def budget_split(
    budget: int, dim: int, positions: int, length: int | None = None, rank: int | None = None
) -> tuple[int, int]:
    """``(m, r)`` with ``m * dim + (positions + dim) * r <= budget * dim``: the given ones
    kept; with neither given, ``r`` takes 40% of the budget (at least 1) and ``m`` the rest;
    with one given, the other is the most that fits."""
    total = budget * dim
    if length is None and rank is None:
        rank = max(1, int((1 - PROMPT_SHARE) * total) // (positions + dim))
    if rank is None:
        rank = (total - length * dim) // (positions + dim)
        if rank < 1:
            raise SptError(
                f"method.length={length} leaves no budget for a rank >= 1 of the embedding "
                f"update (method.budget={budget} vectors of {dim} = {total} parameters; a rank "
                f"costs positions + d = {positions + dim}): lower method.length, raise "
                "method.budget, or set method.rank"
            )
    if length is None:
        length = (total - rank * (positions + dim)) // dim
        if length < 1:
            raise SptError(
                f"method.budget={budget} vectors of {dim} = {total} parameters leave no prompt "
                f"beside a rank-{rank} update (a rank costs positions + d = "
                f"{positions + dim}): raise method.budget, or lower method.rank or "
                "method.positions"
            )
    return length, rank


class DecomposedPromptTuning(FrozenBackboneMixin, L.LightningModule):
    """DePT on encoder-only, decoder-only and encoder-decoder backbones.

    Args:
        length: soft-prompt vectors ``m`` (null: from ``budget``).
        rank: rank ``r`` of the embedding update (null: from ``budget``).
        budget: the Prompt Tuning length whose parameter count ``length`` and ``rank`` share
            (see the module docstring); unused when both are given.
        positions: input positions ``s`` the update covers (the data's ``max_length``).
        alpha: the update's scale is ``alpha / sqrt(rank)`` (the reference's 8).
        low_rank_lr: the learning rate of ``A`` and ``B`` (the prompt uses the optimizer's).
        init / init_text / init_file / vocab_top_k / init_texts: the prompt's initialisation,
            as :class:`spt.methods.prompt.PromptTuning`'s (``file`` loads the update too).
        Other args as for :class:`spt.methods.prompt.PromptTuning`.
    """

    method_name = "dept"
    prompt_kind = "input_update"  # spt.methods.PROMPT_KINDS

    def __init__(
        self,
        backbone: Backbone,
        task: TaskInfo,
        length: int | None = None,
        rank: int | None = None,
        budget: int = 20,
        positions: int = 256,
        alpha: float = 8.0,
        low_rank_lr: float = 1e-4,
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
        scheduler: Schedule = Schedule("linear"),
        seed: int = 0,
        supports: list[str] | None = None,
    ):
        super().__init__()
        for key, value in (("budget", budget), ("positions", positions)):
            if not is_count(value):
                raise SptError(f"method.{key}={value!r}: an integer >= 1")
        for key, value in (("length", length), ("rank", rank)):
            if value is not None and not is_count(value):
                raise SptError(
                    f"method.{key}={value!r}: null (from method.budget) or an integer >= 1"
                )
        for key, value in (("alpha", alpha), ("low_rank_lr", low_rank_lr)):
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not 0 < value < math.inf
            ):
                raise SptError(f"method.{key}={value!r}: a number > 0")
        m, r = budget_split(budget, backbone.hidden_size, positions, length, rank)
        inits.check_settings(
            length=m,
            init=init,
            loss=loss,
            n_tasks=n_tasks,
            init_text=init_text,
            init_file=init_file,
            vocab_top_k=vocab_top_k,
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
        self.use_soft_prompt = True  # False = zero-shot: no prompt and no update
        self.low_rank_lr = float(low_rank_lr)

        self.prompt = PromptTable(n_tasks, m, backbone.hidden_size)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.update = LowRankEmbeddingUpdate(
                n_tasks, positions, r, backbone.hidden_size, alpha / math.sqrt(r)
            )
        if init == "file":
            self.load_prompt_file(init_file)
        else:
            inits.fill_table(
                self.prompt.weight,
                self.base,
                self.objective,
                init,
                torch.Generator().manual_seed(seed),
                init_text=init_text,
                top_k=vocab_top_k,
                texts=init_texts,
            )
        self.check_frozen()

    # -- forward ---------------------------------------------------------------------------
    @property
    def n_soft_tokens(self) -> int:
        """How many input positions the data module reserves for the soft prompt."""
        return self.prompt.length if self.use_soft_prompt else 0

    def soft_prompts(self, task_ids: torch.Tensor) -> torch.Tensor:
        """The prompt vectors of each row's task, ``[B, m, d]``."""
        return self.prompt(task_ids)

    def embedding_update(self, batch: dict) -> torch.Tensor:
        """``[B, T, d]``: each input token's row of ``A @ B`` (zero for padding, soft slots,
        decoder-only targets and tokens past ``positions``)."""
        gets = batch["attention_mask"].bool() & ~batch["soft_mask"].bool()
        labels = batch.get("labels")  # [B] class ids, or [B, T] targets of text-to-text
        if labels is not None and labels.dim() == 2 and self.base.ops.target_follows_prompt:
            gets = gets & (labels == IGNORE)  # the target tokens that follow the source
        index = gets.long().cumsum(1) - 1  # 0 at each row's first input token
        return self.update(batch["task_ids"], index, gets)

    def embed(self, batch: dict, prompts: torch.Tensor | None = None) -> torch.Tensor:
        """Input embeddings plus the low-rank update, with ``prompts [B, length, d]``
        (default: this method's own) at the soft slots."""
        embeds = self.base.input_embeddings(batch["input_ids"])
        if not self.use_soft_prompt:
            return embeds
        embeds = embeds + self.embedding_update(batch).to(embeds.dtype)
        if prompts is None:
            prompts = self.soft_prompts(batch["task_ids"])
        return insert_soft(embeds, batch["soft_mask"], prompts)

    def forward(self, batch: dict) -> torch.Tensor:
        """Class scores ``[B, C]`` for a batch from the data module."""
        return self.class_scores(
            self.embed(batch), batch["attention_mask"], task_ids=batch["task_ids"]
        )

    def scores_with_prompts(self, batch: dict, prompts: torch.Tensor) -> torch.Tensor:
        """``[B, C]`` class scores with ``prompts [B, m, d]`` at the soft slots (and this
        method's embedding update), as regularizers and analysis probe them."""
        return self.class_scores(
            self.embed(batch, prompts), batch["attention_mask"], task_ids=batch["task_ids"]
        )

    def param_groups(self) -> list[dict]:
        return [
            {"params": list(self.prompt.parameters())},
            # "setting": the config key of this group's lr (the optimizer-group contract test)
            {
                "params": list(self.update.parameters()),
                "lr": self.low_rank_lr,
                "setting": "low_rank_lr",
            },
            *self.objective.head_groups(),
        ]

    # -- artifact and serving ----------------------------------------------------------------
    served_tensors = ("prompt", "update.", "head.")
    # What spt.serve stacks: artifact tensor -> this module's tensor with a task axis.
    served_rows = (("prompt", "prompt.weight"), ("update.a", "update.a"), ("update.b", "update.b"))

    @classmethod
    def serving_settings(cls, meta: dict, tensors: dict) -> dict:
        """Constructor settings of the served module, from a run's artifact (plain values);
        runs stack into one served table only when they agree."""
        saved = meta["settings"]
        return {
            "length": int(tensors["prompt"].shape[1]),
            "rank": int(tensors["update.a"].shape[2]),
            "positions": int(tensors["update.a"].shape[1]),
            "alpha": saved["alpha"],
            "init": "uniform",  # the rows are copied in
        }

    def artifact_tensors(self) -> dict[str, torch.Tensor]:
        return {
            "prompt": self.prompt.weight.detach().float(),
            "update.a": self.update.a.detach().float(),
            "update.b": self.update.b.detach().float(),
            **self.objective.head_tensors(),
        }

    def artifact_meta(self) -> dict:
        hp = self.hparams
        return {
            "method": self.method_name,
            "length": self.prompt.length,
            "rank": self.update.rank,
            "positions": self.update.positions,
            "scale": self.update.scale,
            "n_tasks": self.prompt.n_tasks,
            "task_names": self.task_names,
            "init": hp.init,
            "init_text": hp.init_text,
            **self.objective.meta(),
            "base": self.base.identity(),
            "trainable_parameters": self.parameter_counts()["params/trainable"],
        }

    def load_prompt_file(self, path) -> None:
        """The prompt, the update's factors and the head from an artifact of this method."""
        tensors, meta = load_artifact(path)
        check_base(meta, self.base.identity(), path)
        inits.load_table(self.prompt.weight, tensors, path)
        self.objective.load_head_tensors(tensors, path)
        load_module_tensors(
            self.update,
            tensors,
            "update.",
            path,
            f"method.rank / positions / n_tasks; saved by method={meta.get('method')}",
        )

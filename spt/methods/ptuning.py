"""P-Tuning (v1): Liu et al. 2021, "GPT Understands, Too", arXiv:2103.10385.

Pseudo-tokens ``[P]`` sit anywhere in a template (``data.template`` with ``{soft:N}`` slots,
e.g. ``"{soft:2}Review: {sentence} {soft:1} Sentiment:"``); their embeddings come from a
bi-LSTM + MLP (or MLP) prompt encoder over trainable inputs, run once per step on the task
table. The artifact keeps both the encoder weights (training resumes from them; PEFT's saved
adapters lose them) and the materialised prompt (what inference needs).
"""

from __future__ import annotations

import lightning as L
import torch

from spt.backbones import Backbone
from spt.backbones.arch import insert_soft
from spt.core.artifact import check_base, load_artifact, load_module_tensors
from spt.core.mixin import HPARAMS_IGNORE, FrozenBackboneMixin, Schedule
from spt.core.objective import Head, objective_for, task_names_for
from spt.core.steps import LOSSES
from spt.errors import SptError, is_count
from spt.modules.prompt_encoder import PromptEncoder


class PTuning(FrozenBackboneMixin, L.LightningModule):
    """P-Tuning v1 on encoder-only, decoder-only and encoder-decoder backbones.

    Args:
        length: number of pseudo-tokens in all (the template's ``{soft:N}`` counts add up to it).
        encoder: ``lstm`` (bi-LSTM + MLP, the paper's) or ``mlp``.
        hidden: encoder width (default: the backbone's hidden size).
        encoder_dropout: dropout between the LSTM layers.
        init_std: std of the encoder inputs' normal init.
        init / init_file: ``random``, or ``file`` to resume from a saved artifact's encoder.
        Other args as for :class:`spt.methods.prompt.PromptTuning`.
    """

    method_name = "ptuning"
    prompt_kind = "input"  # spt.methods.PROMPT_KINDS

    def __init__(
        self,
        backbone: Backbone,
        task,
        length: int = 6,
        encoder: str = "lstm",
        hidden: int | None = None,
        encoder_dropout: float = 0.0,
        init_std: float = 1.0,
        init: str = "random",
        init_file: str | None = None,
        n_tasks: int = 1,
        task_names: list[str] | None = None,
        loss: str = "class_ce",
        head: Head = Head(dropout=0.1, lr=None),
        backbone_dropout: bool = False,
        optimizer=None,
        scheduler: Schedule = Schedule("constant"),
        seed: int = 0,
        supports: list[str] | None = None,
        init_texts: list[str] | None = None,
    ):
        super().__init__()
        if not is_count(length):
            raise SptError(
                f"method.length={length!r}: needs at least one pseudo-token (an integer >= 1)"
            )
        if encoder not in ("lstm", "mlp"):
            raise SptError(f"method.encoder={encoder!r}: choose lstm or mlp")
        if hidden is not None and (not isinstance(hidden, int) or hidden < 2):
            raise SptError(f"method.hidden={hidden!r} must be null or an integer >= 2")
        if loss not in LOSSES:
            raise SptError(f"method.loss={loss!r}: choose one of {', '.join(LOSSES)}")
        if init not in ("random", "file") or (init == "file" and not init_file):
            raise SptError(
                f"method.init={init!r}: choose random, or file with "
                "method.init_file=/path/to/prompt.safetensors"
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
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.prompt_encoder = PromptEncoder(
                n_tasks, length, backbone.hidden_size, encoder, hidden, encoder_dropout, init_std
            )
        if init == "file":
            self.load_prompt_file(init_file)
        self.check_frozen()

    @property
    def n_soft_tokens(self) -> int:
        return self.prompt_encoder.length

    def soft_prompts(self, task_ids: torch.Tensor) -> torch.Tensor:
        """The encoder's pseudo-token vectors for each row's task, ``[B, length, d]``."""
        return self.prompt_encoder(task_ids)

    def embed(self, batch: dict, prompts: torch.Tensor | None = None) -> torch.Tensor:
        """Input embeddings with ``prompts [B, length, d]`` (default: the encoder's) at the
        ``{soft:N}`` slots."""
        if prompts is None:
            prompts = self.soft_prompts(batch["task_ids"])
        embeds = self.base.input_embeddings(batch["input_ids"])
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

    def param_groups(self) -> list[dict]:
        return [{"params": list(self.prompt_encoder.parameters())}, *self.objective.head_groups()]

    # -- artifact --------------------------------------------------------------------------
    def artifact_tensors(self) -> dict[str, torch.Tensor]:
        out = {"prompt": self.prompt_encoder.table().detach().float()}
        out.update(
            {
                f"prompt_encoder.{n}": p.detach().float()
                for n, p in self.prompt_encoder.named_parameters()
            }
        )
        return {**out, **self.objective.head_tensors()}

    def artifact_meta(self) -> dict:
        return {
            "method": self.method_name,
            "length": self.prompt_encoder.length,
            "n_tasks": self.prompt_encoder.n_tasks,
            "task_names": self.task_names,
            "encoder": self.prompt_encoder.kind,
            **self.objective.meta(),
            "base": self.base.identity(),
            "trainable_parameters": self.parameter_counts()["params/trainable"],
        }

    def load_prompt_file(self, path) -> None:
        """Resume from an artifact's encoder weights (same base model and encoder setup)."""
        tensors, meta = load_artifact(path)
        check_base(meta, self.base.identity(), path)
        load_module_tensors(
            self.prompt_encoder,
            tensors,
            "prompt_encoder.",
            path,
            f"method.length / hidden / encoder; saved by method={meta.get('method')}",
        )
        self.objective.load_head_tensors(tensors, path)

"""P-Tuning v2: Liu et al. 2022, "P-Tuning v2: Prompt Tuning Can Be Comparable to Fine-tuning
Universally Across Scales and Tasks", arXiv:2110.07602.

Deep prompts: trainable key/value vectors in every layer (not only at the input), trained
directly by default (the paper finds reparameterisation helps some tasks, not all), with
dropout on the prompts, and a classification head on the [CLS]/pooled output for encoder-only
backbones instead of a verbalizer. Decoder-only backbones score label words with the LM head.
"""

from __future__ import annotations

import lightning as L
import torch

from spt.backbones import Backbone
from spt.core.kv_prompts import (
    kv_artifact_meta,
    kv_artifact_tensors,
    kv_prompt,
    kv_scores,
    load_kv_artifact,
    validate_kv,
)
from spt.core.mixin import HPARAMS_IGNORE, FrozenBackboneMixin, Schedule
from spt.core.objective import Head, objective_for, task_names_for
from spt.errors import SptError


class PTuningV2(FrozenBackboneMixin, L.LightningModule):
    """P-Tuning v2 for classification on encoder-only, decoder-only and T5 backbones.

    Args:
        length: deep-prompt length per layer (the paper: 20 for simple classification, up to
            100+ for hard sequence tasks).
        reparam / hidden: optional MLP reparameterisation (off by default).
        prompt_dropout: dropout on the deep prompts while training (0.1).
        pooling: the encoder head's input: ``auto`` (the reference head: the model's pooler,
            tanh(W h_CLS), where it has one, else ``cls``), ``pooler``, ``cls`` (the raw
            [CLS] state), ``mean``, or null for the backbone's default.
        Other args as for :class:`spt.methods.prefix.PrefixTuning`.
    """

    method_name = "ptuning_v2"
    prompt_kind = "kv"  # spt.methods.PROMPT_KINDS
    served_tensors = ("prefix", "head.")  # the materialised prefixes, not the MLP

    def __init__(
        self,
        backbone: Backbone,
        task,
        length: int = 20,
        reparam: bool = False,
        hidden: int = 512,
        prompt_dropout: float = 0.1,
        init_std: float = 0.02,
        cross_attention: bool = False,
        pooling: str | None = "auto",
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
        validate_kv(
            length=length,
            n_tasks=n_tasks,
            hidden=hidden,
            loss=loss,
            init=init,
            init_file=init_file,
            reference="Liu et al. use 20 for classification",
        )
        if pooling not in (None, "auto", "cls", "mean", "pooler"):
            raise SptError(f"method.pooling={pooling!r}: choose auto, pooler, cls, mean or null")
        # auto: the reference classifier reads BERT's pooler output, outputs[1], then dropout
        # and a linear layer (P-tuning-v2 model/sequence_classification.py,
        # BertPrefixForSequenceClassification.forward)
        pooling = backbone.ops.resolve_pooling(backbone.model, pooling)
        if not 0.0 <= prompt_dropout < 1.0:
            raise SptError(f"method.prompt_dropout={prompt_dropout!r} must be in [0, 1)")
        self.pooling = pooling
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
            pooling=pooling,
        )
        self.task_names = task_names_for(task, task_names, n_tasks)
        self.set_optimizer(optimizer, scheduler)
        self.prefix = kv_prompt(
            self.base,
            n_tasks,
            length,
            reparam,
            hidden,
            prompt_dropout,
            init_std,
            seed,
            cross_attention,
        )
        if init == "file":
            load_kv_artifact(self, init_file)
        self.check_frozen()

    # -- the prompt: key/value prefixes in every layer (spt.core.kv_prompts) ---------------
    # What spt.serve stacks: artifact tensor -> this module's tensor with a task axis.
    served_rows = (("prefix", "prefix.weight"),)

    @classmethod
    def serving_settings(cls, meta: dict, tensors: dict) -> dict:
        """Constructor settings of the served module, from a run's artifact (plain values);
        runs stack into one served table only when they agree."""
        return {
            "length": int(tensors["prefix"].shape[1]),
            "reparam": False,
            "cross_attention": bool(meta.get("cross_attention", False)),
            "pooling": meta["settings"].get("pooling"),  # the head reads what it trained on
        }

    @property
    def n_soft_tokens(self) -> int:
        return 0  # nothing goes into the input sequence

    def embed(self, batch: dict) -> torch.Tensor:
        """The plain input embeddings ``[B, L, d]``."""
        return self.base.input_embeddings(batch["input_ids"])

    def kv_prefix(self, batch: dict, dtype=torch.float32):
        """Per-row prefixes ``[B, layers, 2, kv_heads, P, head_dim]``; on T5 an (encoder,
        decoder self-attention, cross-attention or None) triple."""
        return self.prefix.layout.split(self.prefix(batch["task_ids"]).to(dtype))

    def forward(self, batch: dict) -> torch.Tensor:
        """Class scores ``[B, C]``."""
        return kv_scores(self, batch)

    def param_groups(self) -> list[dict]:
        return [{"params": list(self.prefix.parameters())}, *self.objective.head_groups()]

    def artifact_tensors(self) -> dict[str, torch.Tensor]:
        return kv_artifact_tensors(self)

    def artifact_meta(self) -> dict:
        return kv_artifact_meta(self)

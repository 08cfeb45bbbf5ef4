"""Prefix Tuning: Li & Liang 2021, "Prefix-Tuning: Optimizing Continuous Prompts for
Generation", arXiv:2101.00190.

Trainable key/value prefixes are prepended to every attention layer of a frozen model. With
``reparam`` (the paper's default) the prefixes come from a small embedding through an MLP,
``Linear(d, hidden) -> Tanh -> Linear(hidden, layers * 2 * kv_dim)``, run once per step on the
whole task table. Sizes (layers, KV heads of grouped-query attention, head dim) are read from
the backbone's config.

Decoder-only: the prefixes enter through the transformers ``Cache`` API, the inputs' positions
start after them and the attention mask is extended. Encoder-only (BERT family): the same cache
path reaches every layer's bidirectional self-attention; the inputs' positions follow the
prefix, as when the reference passes it to HF BERT as ``past_key_values``.
Encoder-decoder (T5): the Hugging Face T5 encoder ignores its ``cache``, so encoder
prefixes take their own route (:mod:`spt.backbones.t5_prefix`); decoder self-attention
prefixes use the cache API, and so do the optional cross-attention prefixes
(``cross_attention``), whose mask is widened by :class:`~spt.backbones.t5_prefix.CrossPrefixRoute`.
"""

from __future__ import annotations

import lightning as L
import torch

from spt.backbones import Backbone
from spt.backbones.arch import attention_sizes
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

__all__ = ["PrefixTuning", "attention_sizes"]


class PrefixTuning(FrozenBackboneMixin, L.LightningModule):
    """Prefix Tuning for classification on encoder-only, decoder-only and T5 backbones.

    Args:
        backbone / task: as for :class:`spt.methods.prompt.PromptTuning`.
        length: prefix length per layer (the paper uses 10 for table-to-text).
        reparam: produce the prefixes through the MLP (True) or train them directly.
        hidden: the MLP's hidden width (512 in the paper).
        prefix_dropout: dropout on the prefixes during training.
        init_std: std of the normal init of the prefix embedding (or the direct prefixes).
            1.0, the N(0, 1) of Li & Liang's ``nn.Embedding`` (PrefixTuning ``self.wte``) and
            of PEFT's prefix encoder. At 0.02 the tanh-MLP output is its biases' and the
            positions start nearly identical (mean pairwise cosine 0.95 at SmolLM2's sizes).
        cross_attention: also prefix the decoder's cross-attention (encoder-decoder only);
            None (the default): on for encoder-decoder backbones, as Li & Liang's seq2seq
            model prefixes encoder, decoder and cross-attention.
        shared_reparam: encoder-decoder with ``reparam``: one MLP for all three prefix sets
            (True), or each set its own embedding and MLP (False, the paper's).
            Parameters at the paper's BART-large sizes (d=1024, 12+12 layers, length 10,
            hidden 512): each set's MLP is 10*1024 + (1024*512+512) + (512*24,576+24,576) =
            13,142,528, 39.4M for the three (a shared MLP: 38.4M); the materialised prefixes
            served are 3*10*24,576 = 737,280 numbers, 0.18% of BART-large's 406M.
        init / init_file: ``random`` or ``file`` (an artifact of this method and base model).
        supports: the architectures this method's YAML declares; others are refused.
        Other args as for prompt tuning.
    """

    method_name = "prefix"
    prompt_kind = "kv"  # spt.methods.PROMPT_KINDS
    served_tensors = ("prefix", "head.")  # the materialised prefixes, not the MLP

    def __init__(
        self,
        backbone: Backbone,
        task,
        length: int = 10,
        reparam: bool = True,
        hidden: int = 512,
        prefix_dropout: float = 0.0,
        init_std: float = 1.0,
        cross_attention: bool | None = None,
        shared_reparam: bool = False,
        init: str = "random",
        init_file: str | None = None,
        n_tasks: int = 1,
        task_names: list[str] | None = None,
        loss: str = "class_ce",
        head: Head = Head(dropout=0.1, lr=0.01),
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
            reference="Li & Liang use 10 for table-to-text",
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
        self.prefix = kv_prompt(
            self.base,
            n_tasks,
            length,
            reparam,
            hidden,
            prefix_dropout,
            init_std,
            seed,
            cross_attention,
            shared_reparam,
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
            "reparam": False,  # the artifact holds the materialised prefix
            "cross_attention": bool(meta.get("cross_attention", False)),
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

"""Prefix-Tuning+: Wang et al. 2025, "Prefix-Tuning+: Modernizing Prefix-Tuning by Decoupling
the Prefix from Attention", arXiv:2506.13674 (v3: PrefixMemory-Tuning).

Prefix tuning's prefix competes with the input inside each attention softmax, so its influence
shrinks as inputs grow and a long prefix crowds out the input; the paper traces prefix tuning's
weakness on modern LLMs to this. Prefix-Tuning+ moves the prefix out of the head: with a kernel
``sim(q, k) = phi(q)^T phi(k)`` the prefix's contribution to a head's output is
``phi(q_i)^T sum_p phi(k_p) v_p^T``, a matrix ``M`` that is trained directly and added outside
the softmax, ``o_i = Attn(q_i, K, V) + phi(q_i)^T M`` (the construction the paper gives for
decoder-only models; :mod:`spt.backbones.prefix_plus` has the details and what of the paper
could be read here). One ``M [head_dim, head_dim]`` per key/value head in each of the top
``layers`` layers (all, as prefix tuning), per task, zero at the start so training begins at
the frozen model; nothing enters the sequence, so the input keeps its whole attention.

Llama-architecture decoders (SmolLM2 first, Mistral too): the term needs the layer's query
projection and rotary embedding. Other architectures are refused by name.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import nn

from spt.backbones import Backbone
from spt.backbones.adaption import LayerTerms, attention_layers, top_layers
from spt.backbones.arch import attention_sizes
from spt.backbones.prefix_plus import memory_output
from spt.core.artifact import check_base, load_artifact, load_module_tensors
from spt.core.mixin import HPARAMS_IGNORE, FrozenBackboneMixin, Schedule
from spt.core.objective import Head, objective_for, task_names_for
from spt.core.steps import LOSSES
from spt.data.task import TaskInfo  # noqa: I001
from spt.errors import SptError, is_count

WHAT = "Prefix-Tuning+ (method=prefix_plus)"


class PrefixMemory(nn.Module):
    """``memory [n_tasks, layers, kv_heads, head_dim, head_dim]``, zeros, fp32;
    ``forward(task_ids [B])`` gathers one set per row."""

    def __init__(self, n_tasks: int, layers: int, kv_heads: int, head_dim: int):
        super().__init__()
        self.memory = nn.Parameter(torch.zeros(n_tasks, layers, kv_heads, head_dim, head_dim))

    def forward(self, task_ids: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.memory.index_select(0, task_ids),)


class PrefixTuningPlus(FrozenBackboneMixin, L.LightningModule):
    """Prefix-Tuning+ on Llama-architecture decoders.

    Args:
        layers: how many of the top layers get a memory (null: all of them, as prefix tuning).
        init / init_file: ``zeros`` (the frozen model at the start), or ``file`` to load an
            artifact of this method.
        Other args as for :class:`spt.methods.prompt.PromptTuning`.
    """

    method_name = "prefix_plus"
    prompt_kind = "memory"  # spt.methods.PROMPT_KINDS
    supported_archs = ("decoder",)
    served_tensors = ("prefix_plus.", "head.")
    # What spt.serve stacks: artifact tensor -> this module's tensor with a task axis.
    served_rows = (("prefix_plus.memory", "prefix_plus.memory"),)

    def __init__(
        self,
        backbone: Backbone,
        task: TaskInfo,
        layers: int | None = None,
        init: str = "zeros",
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
        init_texts: list[str] | None = None,  # what spt.build hands every method; unused
    ):
        super().__init__()
        if not is_count(n_tasks):
            raise SptError(f"method.n_tasks={n_tasks!r}: an integer >= 1")
        if init not in ("zeros", "file") or (init == "file" and not init_file):
            raise SptError(
                f"method.init={init!r}: choose zeros, or file with "
                "method.init_file=/path/to/prompt.safetensors"
            )
        if loss not in LOSSES:
            raise SptError(f"method.loss={loss!r}: choose one of {', '.join(LOSSES)}")
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
        top, _ = top_layers(backbone.model, layers, lambda n: n, WHAT)  # null: every layer
        sizes = attention_sizes(backbone.config)
        self.prefix_plus = PrefixMemory(n_tasks, top, sizes["n_kv_heads"], sizes["head_dim"])
        # the attention hooks, adapting the layers inside adapting(batch) only
        self.terms = LayerTerms(backbone.model, top, memory_output)
        if init == "file":
            self.load_prompt_file(init_file)
        self.check_frozen()

    # -- forward ---------------------------------------------------------------------------
    @property
    def n_soft_tokens(self) -> int:
        return 0  # nothing goes into the input sequence

    def embed(self, batch: dict) -> torch.Tensor:
        """The plain input embeddings ``[B, L, d]`` (the layers' terms come from the hooks)."""
        return self.base.input_embeddings(batch["input_ids"])

    def adapting(self, batch: dict):
        """The batch rows' memories for the attention hooks, held while the backbone runs."""
        return self.terms.holding(self.prefix_plus(batch["task_ids"]))

    def forward(self, batch: dict) -> torch.Tensor:
        """Class scores ``[B, C]`` for a batch from the data module."""
        with self.adapting(batch):
            return self.class_scores(
                self.embed(batch), batch["attention_mask"], task_ids=batch["task_ids"]
            )

    def param_groups(self) -> list[dict]:
        return [{"params": list(self.prefix_plus.parameters())}, *self.objective.head_groups()]

    @classmethod
    def serving_settings(cls, meta: dict, tensors: dict) -> dict:
        """Constructor settings of the served module, from a run's artifact (plain values);
        runs stack into one served table only when they agree."""
        return {"layers": int(tensors["prefix_plus.memory"].shape[1])}

    # -- artifact --------------------------------------------------------------------------
    def artifact_tensors(self) -> dict[str, torch.Tensor]:
        return {
            "prefix_plus.memory": self.prefix_plus.memory.detach().float(),
            **self.objective.head_tensors(),
        }

    def artifact_meta(self) -> dict:
        return {
            "method": self.method_name,
            "layers": self.prefix_plus.memory.shape[1],
            "n_layers": len(attention_layers(self.backbone, WHAT)),
            "n_tasks": self.prefix_plus.memory.shape[0],
            "task_names": self.task_names,
            "init": self.hparams.init,
            "feature_map": "elu+1",
            **self.objective.meta(),
            "base": self.base.identity(),
            "trainable_parameters": self.parameter_counts()["params/trainable"],
        }

    def load_prompt_file(self, path) -> None:
        """Memories and head from an artifact of this method and base model."""
        tensors, meta = load_artifact(path)
        check_base(meta, self.base.identity(), path)
        load_module_tensors(
            self.prefix_plus,
            tensors,
            "prefix_plus.",
            path,
            f"method.layers / n_tasks; saved by method={meta.get('method')}",
        )
        self.objective.load_head_tensors(tensors, path)

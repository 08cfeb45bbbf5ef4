"""Adaption prompts: Zhang et al. 2023, "LLaMA-Adapter: Efficient Fine-tuning of Language Models
with Zero-init Attention", arXiv:2303.16199.

``length`` learnable prompt vectors in each of the top ``layers`` attention layers of a frozen
Llama-architecture decoder. The layer's queries attend to them through the frozen key and value
projections in a softmax of their own, scaled by a gate that starts at zero (the paper's
zero-initialised attention, Section 3.2), so training starts from the frozen model and the
prompts' influence grows only as the gates learn it. This is PEFT's ``AdaptionPromptConfig``
(a scalar gate per layer, prompts from N(0, 1): peft/tuners/adaption_prompt/layer.py), so
adapters move between the two; the attention itself lives in :mod:`spt.backbones.adaption`.
The paper trains 10 vectors in the top 30 of LLaMA-7B's 32 layers (1.2M parameters).

One prompt set and gate vector per task (a task axis, gathered by ``task_ids``). The hooks on
the backbone's attention read the rows that :meth:`AdaptionPrompt.adapting` holds for a batch
while the backbone runs on it (scoring, the LM loss, decoding), so a backbone shared with other
methods (``spt.serve``) is left alone between this method's calls.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import nn

from spt.backbones import Backbone
from spt.backbones.adaption import LayerTerms, attention_layers, top_layers
from spt.core.artifact import check_base, load_artifact, load_module_tensors
from spt.core.mixin import HPARAMS_IGNORE, FrozenBackboneMixin, Schedule
from spt.core.objective import Head, objective_for, task_names_for
from spt.core.steps import LOSSES
from spt.data.task import TaskInfo  # noqa: I001
from spt.errors import SptError, is_count


class AdaptionPromptTable(nn.Module):
    """``prompts [n_tasks, layers, length, d]`` (N(0, 1), as PEFT's) and ``gates [n_tasks,
    layers]`` (zeros), fp32; ``forward(task_ids [B])`` gathers one set per row."""

    def __init__(self, n_tasks: int, layers: int, length: int, dim: int):
        super().__init__()
        self.prompts = nn.Parameter(torch.randn(n_tasks, layers, length, dim))
        self.gates = nn.Parameter(torch.zeros(n_tasks, layers))

    def forward(self, task_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.prompts.index_select(0, task_ids), self.gates.index_select(0, task_ids)


class AdaptionPrompt(FrozenBackboneMixin, L.LightningModule):
    """LLaMA-Adapter adaption prompts on Llama-architecture decoders.

    Args:
        length: prompt vectors per adapted layer (the paper's 10).
        layers: how many of the top layers are adapted (null: all but the bottom two, the
            paper's 30 of 32; at least one).
        init / init_file: ``random`` (N(0, 1) prompts, zero gates), or ``file`` to load an
            artifact of this method.
        Other args as for :class:`spt.methods.prompt.PromptTuning`.
    """

    method_name = "adaption_prompt"
    prompt_kind = "adaption"  # spt.methods.PROMPT_KINDS
    supported_archs = ("decoder",)
    served_tensors = ("adaption.", "head.")
    # What spt.serve stacks: artifact tensor -> this module's tensor with a task axis.
    served_rows = (("adaption.prompts", "adaption.prompts"), ("adaption.gates", "adaption.gates"))

    def __init__(
        self,
        backbone: Backbone,
        task: TaskInfo,
        length: int = 10,
        layers: int | None = None,
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
        init_texts: list[str] | None = None,  # what spt.build hands every method; unused
    ):
        super().__init__()
        for key, value in (("length", length), ("n_tasks", n_tasks)):
            if not is_count(value):
                raise SptError(f"method.{key}={value!r}: an integer >= 1")
        if init not in ("random", "file") or (init == "file" and not init_file):
            raise SptError(
                f"method.init={init!r}: choose random, or file with "
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
        # null: all but the bottom two (the paper's 30 of 32)
        top, _ = top_layers(backbone.model, layers, lambda n: max(1, n - 2), "adaption prompts")
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.adaption = AdaptionPromptTable(n_tasks, top, length, backbone.hidden_size)
        # the attention hooks, adapting the layers inside adapting(batch) only
        self.terms = LayerTerms(backbone.model, top)
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
        """The batch rows' prompts and gates for the hooks, held while the backbone runs."""
        return self.terms.holding(self.adaption(batch["task_ids"]))

    def forward(self, batch: dict) -> torch.Tensor:
        """Class scores ``[B, C]`` for a batch from the data module."""
        with self.adapting(batch):
            return self.class_scores(
                self.embed(batch), batch["attention_mask"], task_ids=batch["task_ids"]
            )

    def param_groups(self) -> list[dict]:
        return [{"params": list(self.adaption.parameters())}, *self.objective.head_groups()]

    @classmethod
    def serving_settings(cls, meta: dict, tensors: dict) -> dict:
        """Constructor settings of the served module, from a run's artifact (plain values);
        runs stack into one served table only when they agree."""
        shape = tensors["adaption.prompts"].shape  # [1, layers, length, d]
        return {"layers": int(shape[1]), "length": int(shape[2])}

    # -- artifact --------------------------------------------------------------------------
    def artifact_tensors(self) -> dict[str, torch.Tensor]:
        return {
            "adaption.prompts": self.adaption.prompts.detach().float(),
            "adaption.gates": self.adaption.gates.detach().float(),
            **self.objective.head_tensors(),
        }

    def artifact_meta(self) -> dict:
        layers = attention_layers(self.backbone)
        return {
            "method": self.method_name,
            "length": self.adaption.prompts.shape[2],
            "layers": self.adaption.prompts.shape[1],
            "n_layers": len(layers),  # the export numbers layers from it
            # o_proj's bias: PEFT adds it to the term again (spt.backbones.adaption.heads_out)
            "attention_bias": layers[-1].o_proj.bias is not None,
            "n_tasks": self.adaption.prompts.shape[0],
            "task_names": self.task_names,
            "init": self.hparams.init,
            **self.objective.meta(),
            "base": self.base.identity(),
            "trainable_parameters": self.parameter_counts()["params/trainable"],
        }

    def load_prompt_file(self, path) -> None:
        """Prompts, gates and head from an artifact of this method and base model."""
        tensors, meta = load_artifact(path)
        check_base(meta, self.base.identity(), path)
        load_module_tensors(
            self.adaption,
            tensors,
            "adaption.",
            path,
            f"method.length / layers / n_tasks; saved by method={meta.get('method')}",
        )
        self.objective.load_head_tensors(tensors, path)

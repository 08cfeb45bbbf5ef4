"""Key/value prompts in every attention layer, shared by Prefix Tuning and P-Tuning v2.

On T5 the table holds the encoder's layers, then the decoder's: encoder prefixes reach encoder
self-attention through :mod:`spt.backbones.t5_prefix`, decoder prefixes reach decoder
self-attention through the cache API; with ``cross_attention`` a third block of decoder layers
holds cross-attention prefixes (read before the encoder's keys/values).

A method mixes :class:`KVPromptMixin` in next to the frozen-backbone and classification
mixins; it owns a :class:`~spt.modules.prefix_encoder.PrefixEncoder` as ``self.prefix``.
"""

from __future__ import annotations

import torch

from spt.core.artifact import check_base, load_artifact, load_module_tensors
from spt.core.steps import LOSSES
from spt.errors import SptError
from spt.modules.prefix_encoder import PrefixEncoder


def validate_kv(*, length, n_tasks, hidden, loss, init, init_file, reference: str) -> None:
    if not isinstance(length, int) or isinstance(length, bool) or length < 1:
        raise SptError(
            f"method.length={length!r}: needs at least one position per layer "
            f"(an integer >= 1; {reference})"
        )
    if not isinstance(n_tasks, int) or n_tasks < 1:
        raise SptError(f"method.n_tasks={n_tasks!r} must be an integer >= 1")
    if not isinstance(hidden, int) or hidden < 1:
        raise SptError(f"method.hidden={hidden!r} must be an integer >= 1")
    if loss not in LOSSES:
        raise SptError(f"method.loss={loss!r}: choose one of {', '.join(LOSSES)}")
    if init not in ("random", "file") or (init == "file" and not init_file):
        raise SptError(
            f"method.init={init!r}: choose random, or file with "
            "method.init_file=/path/to/prompt.safetensors"
        )


class KVPromptMixin:
    """Needs ``self.base``/``self.backbone`` (frozen-backbone mixin) and the classification
    mixin's ``class_scores``, ``head_*`` and ``classification_meta``."""

    def setup_kv_prompts(
        self,
        n_tasks: int,
        length: int,
        reparam: bool,
        hidden: int,
        dropout: float,
        init_std: float,
        seed: int,
        cross_attention: bool | None = False,
        shared_reparam: bool = True,
    ) -> None:
        """``shared_reparam=False`` (T5 with ``reparam``): the encoder, decoder and
        cross-attention prefixes each get their own embedding and MLP, as in Li & Liang's
        seq2seq model; True: one MLP produces all of them."""
        # where the table's rows go (one stack; T5's encoder, decoder[, cross-attention])
        self.layout = self.base.ops.kv_layout(self.base.config, cross_attention, shared_reparam)
        self.sizes = dict(self.layout.sizes)
        self.cross_attention = self.layout.cross_attention
        self.shared_reparam = bool(shared_reparam)
        blocks = self.layout.blocks
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.prefix = PrefixEncoder(
                n_tasks,
                length,
                reparam=reparam,
                hidden=hidden,
                dropout=dropout,
                init_std=init_std,
                blocks=blocks,
                **self.sizes,
            )

    @classmethod
    def serving_settings(cls, method_cfg) -> dict:
        """Constructor settings (beyond the prefix table) a served module of this method takes
        from a run's ``method`` config; runs stack into one served table only when they agree."""
        return {}

    @property
    def n_soft_tokens(self) -> int:
        return 0  # nothing goes into the input sequence

    def embed(self, batch: dict) -> torch.Tensor:
        """The plain input embeddings: these methods add nothing to the input sequence."""
        return self.base.input_embeddings(batch["input_ids"])

    def kv_prefix(self, batch: dict, dtype=torch.float32):
        """Per-row prefixes ``[B, layers, 2, heads, P, d]``; on T5 an (encoder, decoder self-attn,
        cross-attn or None) triple."""
        return self.layout.split(self.prefix(batch["task_ids"]).to(dtype))

    def forward(self, batch: dict) -> torch.Tensor:
        """Class scores ``[B, C]``: the input embeddings plus per-layer key/value prompts."""
        embeds = self.embed(batch)
        return self.class_scores(
            embeds,
            batch["attention_mask"],
            self.kv_prefix(batch, embeds.dtype),
            task_ids=batch["task_ids"],
        )

    def param_groups(self) -> list[dict]:
        return [{"params": list(self.prefix.parameters())}, *self.head_param_groups()]

    def artifact_tensors(self) -> dict[str, torch.Tensor]:
        """The materialised prefixes (for inference) and the encoder's weights (to resume)."""
        out = {"prefix": self.prefix.table().detach().float()}
        out.update(
            {f"prefix_encoder.{n}": p.detach().float() for n, p in self.prefix.named_parameters()}
        )
        return {**out, **self.head_tensors()}

    def artifact_meta(self) -> dict:
        return {
            "method": self.method_name,
            "length": self.prefix.length,
            "n_tasks": self.prefix.n_tasks,
            "task_names": self.task_names,
            "reparam": self.prefix.reparam,
            "cross_attention": self.cross_attention,
            "shared_reparam": self.shared_reparam,
            **self.sizes,
            **self.classification_meta(),
            "base": self.base.identity(),
            "trainable_parameters": self.parameter_counts()["params/trainable"],
            "prefix_parameters": self.prefix.table().numel(),
        }

    def load_prefix_file(self, path) -> None:
        tensors, meta = load_artifact(path)
        check_base(meta, self.base.identity(), path)
        if meta.get("method") != self.method_name:
            raise SptError(
                f"{path} was saved by method={meta.get('method')}, not method={self.method_name}"
            )
        load_module_tensors(
            self.prefix,
            tensors,
            "prefix_encoder.",
            path,
            f"method.reparam (saved: {meta.get('reparam')}), shared_reparam "
            f"(saved: {meta.get('shared_reparam')}), hidden, length, n_tasks",
        )
        self.load_head_tensors(tensors, path)

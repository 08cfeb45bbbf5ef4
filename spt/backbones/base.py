"""The :class:`Backbone` record and the base-model identity stored in every artifact."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import torch
from torch import nn

from spt.backbones.arch import Arch
from spt.backbones.archs import ARCH_CLASSES, arch_ops

ARCHS = tuple(ARCH_CLASSES)  # the architectures spt implements (spt.backbones.archs)

# Config keys that change with how a model was loaded, not with what it is.
_VOLATILE_CONFIG_KEYS = {
    "_name_or_path",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "_attn_implementation",
    "_attn_implementation_autoset",
    "_commit_hash",
    "architectures",
    "use_cache",
    "attn_implementation",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
}


def contiguous_input(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook of the LM head: hand it a contiguous input.

    transformers computes ``logits_to_keep`` logits as ``lm_head(hidden[:, -k:, :])``, a
    non-contiguous view; on CPU ``F.linear`` then runs a batched matmul against the weight
    expanded per row (the slow strided path, cf. pytorch/pytorch#19338) instead of one GEMM.
    For SmolLM2's 49,152 x 576 head at 8 rows that was 244 ms of forward and backward against
    47 ms once contiguous: 12% of a prompt-tuning step. A no-op for contiguous inputs."""
    return (args[0].contiguous(), *args[1:])


@dataclass
class Backbone:
    """A pretrained model with what the methods need to know about it.

    Attributes:
        model: the Hugging Face model (``BertModel``-like for ``encoder``, ``*ForCausalLM``
            for ``decoder``, ``*ForConditionalGeneration`` for ``encoder-decoder``).
        tokenizer: its tokenizer.
        arch: one of :data:`ARCHS`.
        name: a human-readable identity (hub name, package or file name).
        pooling: how an encoder-only backbone pools tokens for a classification head:
            ``mean`` (over real tokens), ``cls`` (first token) or ``pooler`` (the model's pooler).
        vocab_sorted_by_frequency: whether low token ids are the frequent ones (true for
            SentencePiece and byte-level BPE vocabularies, false for WordPiece).
        image_processor: for ``clip``, the processor that turns PIL images into the vision
            tower's ``pixel_values``; None for text backbones.
        source: how it was loaded, as plain values: ``{"loader": <a name in
            spt.backbones.LOADERS>, **its arguments}``; an artifact stores it so that
            :func:`spt.load` can load the same model again (None: not reloadable by name).
        ops: the architecture's operations (:mod:`spt.backbones.arch`): scoring, prefix
            routes, LM loss, decoding steps, padding side.
    """

    model: nn.Module
    tokenizer: object
    arch: str
    name: str
    pooling: str = "mean"
    vocab_sorted_by_frequency: bool = True
    image_processor: object | None = None
    source: dict | None = None
    _identity: dict | None = field(default=None, repr=False)
    ops: Arch = field(init=False, repr=False)  # what differs by architecture (spt.backbones.arch)

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        self.ops = arch_ops(self.arch)
        head = self.ops.lm_head(self.model)
        if head is not None and not any(
            h is contiguous_input for h in head._forward_pre_hooks.values()
        ):
            head.register_forward_pre_hook(contiguous_input)

    @property
    def config(self):
        return self.model.config

    @property
    def hidden_size(self) -> int:
        return self.input_embeddings.weight.shape[1]

    @property
    def input_embeddings(self) -> nn.Embedding:
        """The token embedding table (of the text tower, for CLIP)."""
        return self.ops.input_embeddings(self.model)

    def identity(self) -> dict:
        """Name plus a fingerprint of the embedding matrix and the config (cached).

        The embedding matrix is hashed after rounding to bfloat16, so the same weights loaded
        in fp32, fp16 or bf16 have one fingerprint.
        """
        if self._identity is None:
            h = hashlib.sha256()
            weight = self.input_embeddings.weight.detach()
            h.update(str(tuple(weight.shape)).encode())
            h.update(weight.to(torch.bfloat16).view(torch.int16).cpu().numpy().tobytes())
            cfg = _stable(self.config.to_dict())
            h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
            self._identity = {
                "name": self.name,
                "arch": self.arch,
                "model_type": getattr(self.config, "model_type", "unknown"),
                "hidden_size": self.hidden_size,
                "fingerprint": h.hexdigest()[:16],
            }
        return dict(self._identity)


def _stable(config: dict) -> dict:
    """The config without the keys that change with how it was loaded, at every depth
    (composite configs such as CLIP's carry ``dtype`` in their text and vision parts)."""
    return {
        k: _stable(v) if isinstance(v, dict) else v
        for k, v in config.items()
        if k not in _VOLATILE_CONFIG_KEYS
    }

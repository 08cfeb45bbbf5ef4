"""What differs between architectures lives here, one small class each (issue 19; DESIGN.md:
injection and scoring belong to the backbone, not to every method).

:class:`Arch` is the interface and its defaults; :mod:`spt.backbones.encoder`,
:mod:`~spt.backbones.decoder`, :mod:`~spt.backbones.encoder_decoder` and
:mod:`~spt.backbones.clip` implement it. Methods and data modules call ``backbone.ops`` (or
:func:`spt.backbones.archs.arch_ops` on a data module's ``arch`` string) and never test the architecture's name, so
adding an architecture is one class here, not a branch in every function (PEFT's
``peft_model.py`` pattern, which spt avoids).

The helpers below are what the architectures share: input prompts at the template's soft slots,
key/value prefixes as a ``Cache``, positions that skip left padding, label words as token ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from spt.errors import SptError

CLIP_MODELS = "model=tiny-clip, clip-vit-b16 or clip-vit-b32"  # the CLIP configs (spt/conf/model)

# -- shared pieces ---------------------------------------------------------------------------


def insert_soft(embeds: torch.Tensor, soft_mask: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """Place ``soft [B, n, d]`` at the ``n`` positions of each row where ``soft_mask`` is set.

    Works for prompts anywhere in a template: the i-th marked position of a row gets the
    row's i-th soft vector.
    """
    if soft.shape[1] == 0:
        return embeds
    n = soft_mask.sum(1)
    if not bool((n == soft.shape[1]).all()):
        raise SptError(
            f"batch has {n.tolist()} soft-prompt slots per row but the prompt has "
            f"{soft.shape[1]} vectors: data.n_soft must equal the method's length"
        )
    return embeds.masked_scatter(soft_mask.unsqueeze(-1), soft.to(embeds.dtype))


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding: 0 at each row's first real token."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def prefix_cache(prefix: torch.Tensor | None):
    """A transformers ``DynamicCache`` holding per-layer key/value prefixes
    ``[B, layers, 2, kv_heads, P, head_dim]``; attention reads them before the input tokens.
    No prefix, no cache (None)."""
    if prefix is None:
        return None
    from transformers.cache_utils import DynamicCache

    return DynamicCache(
        ddp_cache_data=[(prefix[:, i, 0], prefix[:, i, 1]) for i in range(prefix.shape[1])]
    )


def prefixed_mask(attention_mask: torch.Tensor, prefix: torch.Tensor | None):
    """The attention mask with the prefix's columns in front, and the prefix length."""
    if prefix is None:
        return attention_mask, 0
    p = prefix.shape[-2]
    ones = attention_mask.new_ones(attention_mask.shape[0], p)
    return torch.cat([ones, attention_mask], dim=1), p


def gather_logprobs(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over label positions of log p(id); logits [N, M, V], ids/mask [N, M] -> [N]."""
    logp = F.log_softmax(logits.float(), dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    return (logp * mask).sum(-1)


def attention_sizes(config) -> dict[str, int]:
    """Layers, KV heads and head dim of a Hugging Face config (GQA-aware; T5 names too)."""
    layers = config.num_hidden_layers
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    hidden = config.hidden_size
    head_dim = getattr(config, "head_dim", None) or getattr(config, "d_kv", None) or hidden // heads
    return {"n_layers": layers, "n_kv_heads": kv_heads, "head_dim": head_dim, "d_model": hidden}


@dataclass
class LabelTokens:
    """Label words as token ids: ``ids [C, M]`` right-padded, ``mask [C, M]``."""

    ids: torch.Tensor
    mask: torch.Tensor

    @property
    def single_token(self) -> bool:
        return self.ids.shape[1] == 1

    def lists(self) -> list[list[int]]:
        return [row[m].tolist() for row, m in zip(self.ids, self.mask, strict=True)]


def pack_labels(tokenizer, words: list[str], seqs: list[list[int]]) -> LabelTokens:
    """Label words' token id lists as a right-padded :class:`LabelTokens`; refuses empty or
    identical tokenisations."""
    for word, ids in zip(words, seqs, strict=True):
        if not ids:
            raise SptError(f"label word {word!r} tokenizes to nothing: fix data.label_words")
    if len(set(map(tuple, seqs))) < len(seqs):
        raise SptError(
            f"two label words tokenize identically ({words}): make data.label_words distinct"
        )
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tokenizer.pad_token_id or 0, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = True
    return LabelTokens(ids, mask)


@dataclass(frozen=True)
class KVLayout:
    """How a method's key/value prompt table maps onto a model's attention layers.

    ``sizes`` go to :class:`~spt.modules.prefix_encoder.PrefixEncoder` (``n_layers`` is the
    table's total layer rows); ``parts`` are the row counts of the attention stacks the table
    feeds, in order (one part; or T5's encoder, decoder[, cross-attention]); ``blocks`` the
    per-part reparameterisation blocks, or None for one shared MLP."""

    sizes: dict
    parts: tuple[int, ...]
    cross_attention: bool = False
    blocks: tuple[int, ...] | None = None

    def split(self, prefix: torch.Tensor):
        """``[B, rows, ...]`` -> the prefix the architecture's scorer takes (one tensor, or a
        tuple per part, the cross-attention part None when off)."""
        if len(self.parts) == 1:
            return prefix
        e, d = self.parts[0], self.parts[1]
        cross = prefix[:, e + d :] if self.cross_attention else None
        return prefix[:, :e], prefix[:, e : e + d], cross


# -- the interface ---------------------------------------------------------------------------


class Arch:
    """One architecture family's operations. Subclasses override what differs; the defaults
    are those of a text model that cannot do what is asked (with the fix in the message)."""

    name = ""
    # Inputs are left-padded, so label tokens and generated tokens continue every row at the
    # end (decoder-only); otherwise right-padded.
    left_padded = False
    # A generation target continues the prompt in the same sequence (decoder-only), rather
    # than being a separate decoder target (encoder-decoder).
    target_follows_prompt = False

    # -- the model's parts -----------------------------------------------------------------
    def input_embeddings(self, model):
        """The token embedding table (of the text tower, for CLIP)."""
        return model.get_input_embeddings()

    def lm_head(self, model):
        """The LM head (output embeddings), or None for a model scored otherwise."""
        return None

    # -- data ------------------------------------------------------------------------------
    modality = "text"  # what its data modules read: "text", or "images" (CLIP)

    def check_data(self, modality: str, data: str) -> None:
        """Refuse a data module whose inputs (``text`` or ``images``) this model cannot read."""
        if modality == "images":
            raise SptError(
                f"data={data} holds images; the model is a text backbone "
                f"({self.name}): use a CLIP model ({CLIP_MODELS})."
            )

    def check_generation(self, what: str) -> None:
        """Refuse text generation (``what`` names who asked) on a model that cannot do it."""

    def label_reserve(self, longest: int) -> int:
        """Input positions a classification row keeps free for its label word's tokens."""
        return 0

    # -- classification --------------------------------------------------------------------
    def label_tokens(self, tokenizer, words: list[str], after_space: bool = False) -> LabelTokens:
        """Label words as this model's LM would produce them."""
        raise NotImplementedError

    def classifier(
        self, backbone, tasks, multitask: bool, head_dropout: float, pooling: str | None
    ):
        """The component that turns prompted inputs into class scores for ``tasks``: a
        :class:`~spt.backbones.scorers.HeadScorer` or
        :class:`~spt.backbones.scorers.LabelWordScorer`; None where the method scores classes
        itself (CLIP)."""
        raise NotImplementedError

    def label_scores(
        self, model, inputs_embeds, attention_mask, labels: LabelTokens, prefix=None
    ) -> torch.Tensor:
        """``[B, C]`` rank-classification scores: each class's summed label-token
        log-probability under the LM head."""
        raise SptError(f"{self.name} backbones have no LM head to score label words with")

    def resolve_pooling(self, model, pooling: str | None) -> str | None:
        """``auto``: the model's own pooler, tanh(W h_CLS), where it has one (the P-tuning v2
        reference reads BERT's pooler output, P-tuning-v2 model/sequence_classification.py,
        BertPrefixForSequenceClassification.forward), else ``cls``."""
        if pooling != "auto":
            return pooling
        return "pooler" if getattr(model, "pooler", None) is not None else "cls"

    # -- key/value prompts -----------------------------------------------------------------
    def kv_layout(
        self, config, cross_attention: bool | None = False, shared_reparam: bool = True
    ) -> KVLayout:
        """The key/value prompt table for this model (``cross_attention``: also prefix the
        decoder's cross-attention; None = the architecture's default)."""
        if cross_attention:
            raise SptError(
                f"method.cross_attention=true needs an encoder-decoder backbone; "
                f"this one is {self.name}-only: set method.cross_attention=false"
            )
        sizes = attention_sizes(config)
        return KVLayout(sizes=sizes, parts=(sizes["n_layers"],))

    def prefix_rows(self, prefix, rows: torch.Tensor):
        """The key/value prefix (as :meth:`KVLayout.split` gives it) of batch ``rows``."""
        return prefix[rows]

    # -- text generation -------------------------------------------------------------------
    def lm_loss(self, model, inputs_embeds, attention_mask, labels, prefix=None):
        """Mean token cross-entropy of a target text (text-to-text training)."""
        raise NotImplementedError

    def stepper(self, model, embeds, mask, prefix, use_cache: bool):
        """A decoding state: ``logits(tokens | None) -> [N, V]`` next-token logits after the
        prompt (None) or after feeding ``tokens [N]``, and ``reorder(idx)``."""
        raise NotImplementedError

    def new_tokens(self, generated: torch.Tensor) -> torch.Tensor:
        """Hugging Face ``generate`` output -> the generated tokens alone."""
        return generated


def check_target_tokens(target: torch.Tensor) -> None:
    if not bool((target != -100).any()):
        raise SptError(
            "a training batch has no target tokens: raise data.max_target_length "
            "or data.max_source_length"
        )

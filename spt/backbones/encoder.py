"""Encoder-only backbones (the BERT family): classes are scored by a trained head on the pooled
output; key/value prefixes reach every bidirectional self-attention layer through the cache API,
with the inputs' positions after the prefix (as when the P-tuning v2 reference hands its prefix
to HF BERT as ``past_key_values``). No text generation."""

from __future__ import annotations

import torch

from spt.backbones.arch import Arch, LabelTokens, pack_labels, prefix_cache, prefixed_mask
from spt.backbones.scorers import HeadScorer
from spt.backbones.tokens import space_mode, verbalizer_ids
from spt.errors import SptError

POOLINGS = ("mean", "cls", "pooler")


class Encoder(Arch):
    name = "encoder"

    def check_generation(self, what: str) -> None:
        raise SptError(
            f"{what} needs a decoder, but the backbone is encoder-only: use a "
            "decoder-only or encoder-decoder model"
        )

    def label_tokens(self, tokenizer, words: list[str], after_space: bool = False) -> LabelTokens:
        """The words' own tokens (the label-word initialisation of a prompt reads them; the
        head, not the words, scores classes)."""
        mode = space_mode(tokenizer)
        return pack_labels(
            tokenizer, words, [verbalizer_ids(tokenizer, w, False, mode) for w in words]
        )

    def classifier(
        self, backbone, tasks, multitask: bool, head_dropout: float, pooling: str | None
    ):
        return HeadScorer(
            self, backbone.hidden_size, tasks, multitask, head_dropout, pooling or backbone.pooling
        )

    def position_ids(self, model, inputs_embeds: torch.Tensor, p: int) -> torch.Tensor:
        """Position ids ``[B, L]`` for inputs after a key/value prefix of ``p`` positions,
        numbered as if ``p`` real tokens came first: the reference P-tuning v2 passes its
        prefix as ``past_key_values`` to HF BERT/RoBERTa, whose embeddings then offset the
        positions by the cache length (P-tuning-v2 model/sequence_classification.py;
        transformers BertEmbeddings, RobertaEmbeddings.create_position_ids_from_input_ids).
        Models that number positions after their padding row (the RoBERTa family,
        ``embeddings.padding_idx``) start there; ``arange(L)`` would read RoBERTa's padding
        row (issue 18)."""
        b, length, _ = inputs_embeds.shape
        pad = getattr(getattr(model, "embeddings", None), "padding_idx", None)
        start = (0 if pad is None else pad + 1) + p
        limit = getattr(model.config, "max_position_embeddings", None)
        if limit is not None and start + length > limit:
            raise SptError(
                f"{length} input tokens after a {p}-position prefix need position "
                f"{start + length - 1}, past this model's {limit} positions: lower "
                f"data.max_length to {limit - start} or method.length"
            )
        return torch.arange(start, start + length, device=inputs_embeds.device).expand(b, -1)

    def pooled(
        self,
        model,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        pooling: str,
        prefix: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The pooled hidden state ``[B, d]``: mean over real tokens, first token, or the
        model's own pooler. A ``prefix`` adds keys/values to every self-attention layer."""
        if prefix is None:
            out = model(inputs_embeds=inputs_embeds, attention_mask=attention_mask)
        else:
            am, p = prefixed_mask(attention_mask, prefix)
            out = model(
                inputs_embeds=inputs_embeds,
                attention_mask=am,
                position_ids=self.position_ids(model, inputs_embeds, p),
                cache=prefix_cache(prefix),
                use_cache=False,
            )
        hidden = out.last_hidden_state
        if pooling == "mean":
            m = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * m).sum(1) / m.sum(1).clamp(min=1)
        if pooling == "cls":
            return hidden[:, 0]
        if pooling == "pooler":
            if out.pooler_output is None:
                raise SptError("model.pooling=pooler but this model has no pooler: use mean or cls")
            return out.pooler_output
        raise SptError(f"model.pooling={pooling!r}: choose mean, cls or pooler")

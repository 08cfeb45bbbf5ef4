"""Encoder-decoder backbones (T5): a class's label word is the decoder's whole target; the
encoder is run once and every label decoded after it. Key/value prompts come in three parts:
encoder self-attention (its own route, :mod:`spt.backbones.t5_prefix`, since the HF T5 encoder
ignores its ``cache``), decoder self-attention and, optionally, cross-attention (both through an
``EncoderDecoderCache``; the cross-attention mask is widened by
:class:`~spt.backbones.t5_prefix.CrossPrefixRoute`)."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from spt.backbones.arch import (
    Arch,
    KVLayout,
    LabelTokens,
    attention_sizes,
    check_target_tokens,
    gather_logprobs,
    pack_labels,
    prefix_cache,
)
from spt.backbones.scorers import LabelWordScorer


def seq2seq_parts(prefix) -> tuple:
    """``(encoder, decoder self-attention, cross-attention)`` prefixes from a T5 prefix: None,
    an (encoder, decoder) pair or a triple; missing parts are None."""
    if prefix is None:
        return None, None, None
    return (*prefix, None, None)[:3]


def encode(
    model,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    prefix: torch.Tensor | None = None,
) -> torch.Tensor:
    """The encoder's last hidden state, with per-layer encoder prefixes
    ``[B, enc_layers, 2, heads, P, head_dim]`` routed into its self-attention."""
    from spt.backbones.t5_prefix import EncoderPrefixRoute

    route = (
        contextlib.nullcontext() if prefix is None else EncoderPrefixRoute.of(model).active(prefix)
    )
    with route:
        return model.get_encoder()(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask
        ).last_hidden_state


def decoder_cache(dec_prefix: torch.Tensor | None, cross_prefix: torch.Tensor | None = None):
    """An ``EncoderDecoderCache`` that starts with the decoder's self-attention prefix and the
    cross-attention prefix (each ``[B, dec_layers, 2, heads, P, head_dim]`` or None); the
    encoder's keys/values are appended after the cross prefix on the first decoder call.
    None when there is neither."""
    if dec_prefix is None and cross_prefix is None:
        return None
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    self_cache = prefix_cache(dec_prefix) if dec_prefix is not None else DynamicCache()
    cross_cache = prefix_cache(cross_prefix) if cross_prefix is not None else DynamicCache()
    cache = EncoderDecoderCache(self_cache, cross_cache)
    # A non-empty cross cache reads as "encoder keys already computed"; they are not yet.
    cache.is_updated = {k: False for k in cache.is_updated}
    return cache


def cross_route(model, cross_prefix: torch.Tensor | None):
    """Context for decoder calls: widens the cross-attention masks by the cross prefix length."""
    if cross_prefix is None:
        return contextlib.nullcontext()
    from spt.backbones.t5_prefix import CrossPrefixRoute

    return CrossPrefixRoute.of(model).active(cross_prefix.shape[-2])


class EncoderDecoder(Arch):
    name = "encoder-decoder"

    def lm_head(self, model):
        return model.get_output_embeddings()

    def label_tokens(self, tokenizer, words: list[str], after_space: bool = False) -> LabelTokens:
        """The word is the whole target, with the tokenizer's end-of-sequence token."""
        return pack_labels(
            tokenizer,
            words,
            [tokenizer(w.strip(), add_special_tokens=True)["input_ids"] for w in words],
        )

    def classifier(
        self, backbone, tasks, multitask: bool, head_dropout: float, pooling: str | None
    ):
        # every task decodes its own label words after the shared encoder pass
        return LabelWordScorer.of_tasks(self, backbone.tokenizer, tasks, shared_single_tokens=False)

    def label_scores(
        self, model, inputs_embeds, attention_mask, labels: LabelTokens, prefix=None
    ) -> torch.Tensor:
        """Encode once, decode every label word. ``prefix`` is ``(encoder, decoder[, cross])``
        (:func:`seq2seq_parts`), each ``[B, layers, 2, heads, P, d]`` or None."""
        b = inputs_embeds.shape[0]
        ids, mask = labels.ids.to(inputs_embeds.device), labels.mask.to(inputs_embeds.device)
        c = ids.shape[0]
        enc_prefix, dec_prefix, cross_prefix = seq2seq_parts(prefix)
        hidden = encode(model, inputs_embeds, attention_mask, enc_prefix)
        hidden = hidden.repeat_interleave(c, dim=0)  # [B*C, L, d]
        target = ids.repeat(b, 1)  # row r*C + k is class k of example r
        dec, cross = (
            p.repeat_interleave(c, dim=0) if p is not None else None
            for p in (dec_prefix, cross_prefix)
        )
        with cross_route(model, cross):
            out = model(
                encoder_outputs=(hidden,),
                attention_mask=attention_mask.repeat_interleave(c, 0),
                decoder_input_ids=model._shift_right(target),
                use_cache=False,
                cache=decoder_cache(dec, cross),
            )
        return gather_logprobs(out.logits, target, mask.repeat(b, 1)).view(b, c)

    def kv_layout(
        self, config, cross_attention: bool | None = False, shared_reparam: bool = True
    ) -> KVLayout:
        """Encoder layers, then the decoder's, then (``cross_attention``; None = on, Li &
        Liang's seq2seq default) a block of cross-attention layers. ``shared_reparam=False``
        gives each part its own embedding and MLP, as in Li & Liang's seq2seq model."""
        from spt.backbones.t5_prefix import check_transformers

        check_transformers()  # at load time, not at the first forward (issue 17)
        cross = True if cross_attention is None else bool(cross_attention)
        sizes = attention_sizes(config)
        enc, dec = sizes["n_layers"], config.num_decoder_layers
        parts = (enc, dec, *((dec,) if cross else ()))
        sizes["n_layers"] = sum(parts)
        return KVLayout(
            sizes=sizes,
            parts=parts,
            cross_attention=cross,
            blocks=None if shared_reparam else parts,
        )

    def prefix_rows(self, prefix, rows: torch.Tensor):
        return tuple(p[rows] if p is not None else None for p in prefix)

    def lm_loss(self, model, inputs_embeds, attention_mask, labels, prefix=None):
        """``labels [B, T]`` are the right-padded target (-100 on padding); the decoder reads
        it shifted right."""
        enc_prefix, dec_prefix, cross_prefix = seq2seq_parts(prefix)
        hidden = encode(model, inputs_embeds, attention_mask, enc_prefix)
        with cross_route(model, cross_prefix):
            logits = model(
                encoder_outputs=(hidden,),
                attention_mask=attention_mask,
                decoder_input_ids=model._shift_right(labels),
                use_cache=False,
                cache=decoder_cache(dec_prefix, cross_prefix),
            ).logits
        check_target_tokens(labels)
        return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)

    def stepper(self, model, embeds, mask, prefix, use_cache: bool):
        return Seq2SeqStepper(model, embeds, mask, prefix, use_cache)

    def new_tokens(self, generated: torch.Tensor) -> torch.Tensor:
        return generated[:, 1:]  # drop the decoder start token


class Seq2SeqStepper:
    """Encode once (with the encoder prefix); decode from a cache that starts with the decoder
    and cross-attention prefixes, or re-run the decoder (``use_cache=False``)."""

    def __init__(self, model, embeds, mask, prefix, use_cache: bool):
        enc, self.dec, self.cross = seq2seq_parts(prefix)
        self.model, self.mask, self.use_cache = model, mask, use_cache
        self.hidden = encode(model, embeds, mask, enc)
        start = model.config.decoder_start_token_id
        self.history = torch.full((len(mask), 1), start, dtype=torch.long, device=mask.device)
        self.cache = None
        if use_cache:
            from transformers.cache_utils import DynamicCache, EncoderDecoderCache

            self.cache = decoder_cache(self.dec, self.cross)
            if self.cache is None:  # (not `or`: an empty self-attention half has len 0)
                self.cache = EncoderDecoderCache(DynamicCache(), DynamicCache())

    def logits(self, tokens: torch.Tensor | None) -> torch.Tensor:
        if tokens is not None:
            self.history = torch.cat([self.history, tokens[:, None]], 1)
        ids = self.history[:, -1:] if self.use_cache else self.history
        cache = self.cache if self.use_cache else decoder_cache(self.dec, self.cross)
        with cross_route(self.model, self.cross):
            out = self.model(
                encoder_outputs=(self.hidden,),
                attention_mask=self.mask,
                decoder_input_ids=ids,
                cache=cache,
                use_cache=self.use_cache,
            )
        if self.use_cache:
            self.cache = out.cache
        return out.logits[:, -1]

    def reorder(self, idx: torch.Tensor) -> None:
        self.history, self.hidden, self.mask = self.history[idx], self.hidden[idx], self.mask[idx]
        self.dec, self.cross = (p[idx] if p is not None else None for p in (self.dec, self.cross))
        if self.use_cache:
            self.cache.reorder_cache(idx)

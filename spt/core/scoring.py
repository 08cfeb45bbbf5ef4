"""Shared forward helpers: put soft prompts into the input, and score classes per architecture.

All scorers take ``inputs_embeds [B, L, d]`` and ``attention_mask [B, L]`` and return
``[B, C]`` class scores:
- decoder-only and encoder-decoder: rank classification, the summed log-probability of
  each class's label tokens under the LM head (single- and multi-token label words);
- encoder-only: the pooled hidden state ``[B, d]`` (:func:`pooled`); a method's own head maps
  it to classes.
Decoder inputs are left-padded (the data module does it) so label tokens can be appended.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from spt.core.errors import SptError


def insert_soft(embeds: torch.Tensor, soft_mask: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """Place ``soft [B, n, d]`` at the ``n`` positions of each row where ``soft_mask`` is set.

    Works for prompts anywhere in a template: the i-th marked position of a row gets the
    row's i-th soft vector.
    """
    if soft.shape[1] == 0:
        return embeds
    n = soft_mask.sum(1)
    if not bool((n == soft.shape[1]).all()):
        raise SptError(f"batch has {n.tolist()} soft-prompt slots per row but the prompt has "
                       f"{soft.shape[1]} vectors: data.n_soft must equal the method's length")
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

    return DynamicCache(ddp_cache_data=[(prefix[:, i, 0], prefix[:, i, 1])
                                        for i in range(prefix.shape[1])])


def _prefixed(attention_mask: torch.Tensor, prefix: torch.Tensor | None):
    """The attention mask with the prefix's columns in front, and the prefix length."""
    if prefix is None:
        return attention_mask, 0
    p = prefix.shape[-2]
    ones = attention_mask.new_ones(attention_mask.shape[0], p)
    return torch.cat([ones, attention_mask], dim=1), p


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


def label_tokens(tokenizer, words: list[str], arch: str, after_space: bool = False) -> LabelTokens:
    """Tokenize label words as the LM would produce them.

    Decoder-only: the word as it follows the template, by the same function the data module
    uses (:func:`spt.data.template.verbalizer_ids`; ``after_space``: the template ends in a
    space). Encoder-decoder: the word is the whole target, with the tokenizer's end-of-sequence
    token.
    """
    from spt.data.template import space_mode, verbalizer_ids

    mode = None
    seqs = []
    for word in words:
        if arch == "decoder":
            mode = mode or space_mode(tokenizer)  # once per call, not per word
            ids = verbalizer_ids(tokenizer, word, after_space, mode)
        else:
            ids = tokenizer(word.strip(), add_special_tokens=True)["input_ids"]
        if not ids:
            raise SptError(f"label word {word!r} tokenizes to nothing: fix data.label_words")
        seqs.append(ids)
    if len(set(map(tuple, seqs))) < len(seqs):
        raise SptError(f"two label words tokenize identically ({words}): make data.label_words "
                       "distinct")
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tokenizer.pad_token_id or 0, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = True
    return LabelTokens(ids, mask)


def _gather_logprobs(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over label positions of log p(id); logits [N, M, V], ids/mask [N, M] -> [N]."""
    logp = F.log_softmax(logits.float(), dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    return (logp * mask).sum(-1)


def decoder_scores(model, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                   labels: LabelTokens, prefix: torch.Tensor | None = None) -> torch.Tensor:
    """Decoder-only rank classification. Inputs must be left-padded.

    ``prefix`` (``[B, layers, 2, kv_heads, P, head_dim]``) is prepended to every layer's
    keys and values; the inputs' positions start after it, as if P tokens came first.
    """
    b, length, _ = inputs_embeds.shape
    ids, mask = labels.ids.to(inputs_embeds.device), labels.mask.to(inputs_embeds.device)
    c, m = ids.shape
    if labels.single_token:  # one forward, the next-token distribution at the last position
        am, p = _prefixed(attention_mask, prefix)
        out = model(inputs_embeds=inputs_embeds, attention_mask=am,
                    position_ids=position_ids(attention_mask) + p, use_cache=False,
                    logits_to_keep=1,
                    cache=prefix_cache(prefix))
        logp = F.log_softmax(out.logits[:, -1].float(), dim=-1)
        return logp[:, ids[:, 0]]
    # Multi-token: the input once, its keys/values cached (after the prefix's, if any); the
    # cache repeated per label and every label's tokens but the last scored after it. Compute
    # is L + C*(M-1) positions a row instead of C*(L+M).
    from transformers.cache_utils import DynamicCache

    am, p = _prefixed(attention_mask, prefix)
    pos = position_ids(attention_mask) + p
    out = model(inputs_embeds=inputs_embeds, attention_mask=am, position_ids=pos,
                use_cache=True, logits_to_keep=1,
                cache=DynamicCache() if prefix is None else prefix_cache(prefix))
    first = F.log_softmax(out.logits[:, -1].float(), dim=-1)[:, ids[:, 0]]  # [B, C]
    cache = out.cache
    cache.batch_repeat_interleave(c)  # row-major: row i's C labels are rows i*C .. i*C+C-1
    y = model.get_input_embeddings()(ids[:, :-1]).to(inputs_embeds.dtype)  # [C, M-1, d]
    seq = y.unsqueeze(0).expand(b, c, m - 1, -1).reshape(b * c, m - 1, -1)
    ymask = mask[:, :-1].unsqueeze(0).expand(b, c, m - 1).reshape(b * c, m - 1)
    full = torch.cat([am.repeat_interleave(c, dim=0), ymask.to(am.dtype)], dim=1)
    ypos = pos[:, -1:].repeat_interleave(c, dim=0) + 1 + torch.arange(m - 1, device=pos.device)
    rest = model(inputs_embeds=seq, attention_mask=full, position_ids=ypos, use_cache=False,
                 cache=cache).logits  # position j predicts label token j + 1
    later = _gather_logprobs(rest, ids[:, 1:].repeat(b, 1), mask[:, 1:].repeat(b, 1))
    return first + later.view(b, c)


def encode(model, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
           prefix: torch.Tensor | None = None) -> torch.Tensor:
    """Encoder-decoder: the encoder's last hidden state, with per-layer encoder prefixes
    ``[B, enc_layers, 2, heads, P, head_dim]`` routed into its self-attention."""
    from spt.backbones.t5_prefix import EncoderPrefixRoute

    route = (contextlib.nullcontext() if prefix is None
             else EncoderPrefixRoute.of(model).active(prefix))
    with route:
        return model.get_encoder()(inputs_embeds=inputs_embeds,
                                   attention_mask=attention_mask).last_hidden_state


def seq2seq_parts(prefix) -> tuple:
    """``(encoder, decoder self-attention, cross-attention)`` prefixes from a T5 prefix: None,
    an (encoder, decoder) pair or a triple; missing parts are None."""
    if prefix is None:
        return None, None, None
    return (*prefix, None, None)[:3]


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


def seq2seq_scores(model, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                   labels: LabelTokens, prefix: tuple | None = None) -> torch.Tensor:
    """Encoder-decoder rank classification: encode once, decode every label word.

    ``prefix`` is ``(encoder, decoder[, cross])`` (see :func:`seq2seq_parts`), each
    ``[B, layers, 2, heads, P, d]`` or None; the decoder and cross-attention prefixes enter
    through the cache API.
    """
    b = inputs_embeds.shape[0]
    ids, mask = labels.ids.to(inputs_embeds.device), labels.mask.to(inputs_embeds.device)
    c = ids.shape[0]
    enc_prefix, dec_prefix, cross_prefix = seq2seq_parts(prefix)
    hidden = encode(model, inputs_embeds, attention_mask, enc_prefix)
    hidden = hidden.repeat_interleave(c, dim=0)  # [B*C, L, d]
    target = ids.repeat(b, 1)  # row r*C + k is class k of example r
    dec, cross = (p.repeat_interleave(c, dim=0) if p is not None else None
                  for p in (dec_prefix, cross_prefix))
    with cross_route(model, cross):
        out = model(encoder_outputs=(hidden,),
                    attention_mask=attention_mask.repeat_interleave(c, 0),
                    decoder_input_ids=model._shift_right(target), use_cache=False,
                    cache=decoder_cache(dec, cross))
    return _gather_logprobs(out.logits, target, mask.repeat(b, 1)).view(b, c)


def lm_loss(model, arch: str, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
            labels: torch.Tensor, prefix=None) -> torch.Tensor:
    """Mean token cross-entropy of a target text (text-to-text training).

    Decoder-only: ``labels [B, L]`` are aligned with the (left-padded) inputs, -100 except on
    the target's tokens, and position t predicts label t+1; ``prefix`` as in
    :func:`decoder_scores`. Encoder-decoder: ``labels [B, T]`` are the right-padded target
    (-100 on padding), the decoder reads it shifted right; ``prefix`` as in
    :func:`seq2seq_scores`.
    """
    if arch == "decoder":
        full, p = _prefixed(attention_mask, prefix)
        logits = model(inputs_embeds=inputs_embeds, attention_mask=full,
                       position_ids=position_ids(attention_mask) + p, use_cache=False,
                       cache=prefix_cache(prefix)).logits[:, :-1]
        target = labels[:, 1:]
    else:
        enc_prefix, dec_prefix, cross_prefix = seq2seq_parts(prefix)
        hidden = encode(model, inputs_embeds, attention_mask, enc_prefix)
        with cross_route(model, cross_prefix):
            logits = model(encoder_outputs=(hidden,), attention_mask=attention_mask,
                           decoder_input_ids=model._shift_right(labels), use_cache=False,
                           cache=decoder_cache(dec_prefix, cross_prefix)).logits
        target = labels
    if not bool((target != -100).any()):
        raise SptError("a training batch has no target tokens: raise data.max_target_length "
                       "or data.max_source_length")
    return F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), ignore_index=-100)


def encoder_position_ids(model, inputs_embeds: torch.Tensor, p: int) -> torch.Tensor:
    """Encoder-only position ids ``[B, L]`` for inputs after a key/value prefix of ``p``
    positions, numbered as if ``p`` real tokens came first: the reference P-tuning v2 passes
    its prefix as ``past_key_values`` to HF BERT/RoBERTa, whose embeddings then offset the
    positions by the cache length (P-tuning-v2 model/sequence_classification.py; transformers
    BertEmbeddings, RobertaEmbeddings.create_position_ids_from_input_ids). Models that number
    positions after their padding row (the RoBERTa family, ``embeddings.padding_idx``) start
    there; ``arange(L)`` would read RoBERTa's padding row (issue 18)."""
    b, length, _ = inputs_embeds.shape
    pad = getattr(getattr(model, "embeddings", None), "padding_idx", None)
    start = (0 if pad is None else pad + 1) + p
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and start + length > limit:
        raise SptError(f"{length} input tokens after a {p}-position prefix need position "
                       f"{start + length - 1}, past this model's {limit} positions: lower "
                       f"data.max_length to {limit - start} or method.length")
    return torch.arange(start, start + length, device=inputs_embeds.device).expand(b, -1)


def pooled(model, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
           pooling: str, prefix: torch.Tensor | None = None) -> torch.Tensor:
    """Encoder-only: the pooled hidden state ``[B, d]`` (mean over real tokens, first token,
    or the model's own pooler). A ``prefix`` adds keys/values to every self-attention layer;
    the inputs' positions follow it (:func:`encoder_position_ids`)."""
    if prefix is None:
        out = model(inputs_embeds=inputs_embeds, attention_mask=attention_mask)
    else:
        am, p = _prefixed(attention_mask, prefix)
        out = model(inputs_embeds=inputs_embeds, attention_mask=am,
                    position_ids=encoder_position_ids(model, inputs_embeds, p),
                    cache=prefix_cache(prefix), use_cache=False)
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

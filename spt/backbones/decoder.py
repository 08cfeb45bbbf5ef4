"""Decoder-only backbones (causal LMs: Llama, SmolLM2, GPT-2): inputs are left-padded so label
words and generated tokens continue every row at its end; classes are ranked by their label
words' log-probability; key/value prefixes enter through the transformers ``Cache`` API with
the inputs' positions after them."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from spt.backbones.arch import (
    Arch,
    LabelTokens,
    check_target_tokens,
    gather_logprobs,
    pack_labels,
    position_ids,
    prefix_cache,
    prefixed_mask,
)
from spt.backbones.scorers import LabelWordScorer
from spt.backbones.tokens import space_mode, verbalizer_ids


class Decoder(Arch):
    name = "decoder"
    left_padded = True
    target_follows_prompt = True

    def label_reserve(self, longest: int) -> int:
        return longest  # the label word is appended after the input

    def lm_head(self, model):
        return model.get_output_embeddings()

    def label_tokens(self, tokenizer, words: list[str], after_space: bool = False) -> LabelTokens:
        """The word as it follows the template, by the function the data module uses
        (:func:`~spt.backbones.tokens.verbalizer_ids`; ``after_space``: the template ends in
        a space)."""
        mode = space_mode(tokenizer)  # once per call, not per word
        return pack_labels(
            tokenizer, words, [verbalizer_ids(tokenizer, w, after_space, mode) for w in words]
        )

    def classifier(
        self, backbone, tasks, multitask: bool, head_dropout: float, pooling: str | None
    ):
        return LabelWordScorer.of_tasks(self, backbone.tokenizer, tasks, shared_single_tokens=True)

    def label_scores(
        self, model, inputs_embeds, attention_mask, labels: LabelTokens, prefix=None
    ) -> torch.Tensor:
        """Rank classification on left-padded inputs. ``prefix``
        (``[B, layers, 2, kv_heads, P, head_dim]``) is prepended to every layer's keys and
        values; the inputs' positions start after it, as if P tokens came first."""
        b, length, _ = inputs_embeds.shape
        ids, mask = labels.ids.to(inputs_embeds.device), labels.mask.to(inputs_embeds.device)
        c, m = ids.shape
        if labels.single_token:  # one forward, the next-token distribution at the last position
            am, p = prefixed_mask(attention_mask, prefix)
            out = model(
                inputs_embeds=inputs_embeds,
                attention_mask=am,
                position_ids=position_ids(attention_mask) + p,
                use_cache=False,
                logits_to_keep=1,
                cache=prefix_cache(prefix),
            )
            logp = F.log_softmax(out.logits[:, -1].float(), dim=-1)
            return logp[:, ids[:, 0]]
        # Multi-token: the input once, its keys/values cached (after the prefix's, if any); the
        # cache repeated per label and every label's tokens but the last scored after it.
        # Compute is L + C*(M-1) positions a row instead of C*(L+M).
        from transformers.cache_utils import DynamicCache

        am, p = prefixed_mask(attention_mask, prefix)
        pos = position_ids(attention_mask) + p
        out = model(
            inputs_embeds=inputs_embeds,
            attention_mask=am,
            position_ids=pos,
            use_cache=True,
            logits_to_keep=1,
            cache=DynamicCache() if prefix is None else prefix_cache(prefix),
        )
        first = F.log_softmax(out.logits[:, -1].float(), dim=-1)[:, ids[:, 0]]  # [B, C]
        cache = out.cache
        cache.batch_repeat_interleave(c)  # row-major: row i's C labels are rows i*C .. i*C+C-1
        y = model.get_input_embeddings()(ids[:, :-1]).to(inputs_embeds.dtype)  # [C, M-1, d]
        seq = y.unsqueeze(0).expand(b, c, m - 1, -1).reshape(b * c, m - 1, -1)
        ymask = mask[:, :-1].unsqueeze(0).expand(b, c, m - 1).reshape(b * c, m - 1)
        full = torch.cat([am.repeat_interleave(c, dim=0), ymask.to(am.dtype)], dim=1)
        ypos = pos[:, -1:].repeat_interleave(c, dim=0) + 1 + torch.arange(m - 1, device=pos.device)
        rest = model(
            inputs_embeds=seq, attention_mask=full, position_ids=ypos, use_cache=False, cache=cache
        ).logits  # position j predicts label token j + 1
        later = gather_logprobs(rest, ids[:, 1:].repeat(b, 1), mask[:, 1:].repeat(b, 1))
        return first + later.view(b, c)

    def lm_loss(self, model, inputs_embeds, attention_mask, labels, prefix=None):
        """``labels [B, L]`` are aligned with the (left-padded) inputs, -100 except on the
        target's tokens; position t predicts label t+1."""
        full, p = prefixed_mask(attention_mask, prefix)
        logits = model(
            inputs_embeds=inputs_embeds,
            attention_mask=full,
            position_ids=position_ids(attention_mask) + p,
            use_cache=False,
            cache=prefix_cache(prefix),
        ).logits[:, :-1]
        target = labels[:, 1:]
        check_target_tokens(target)
        return F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), ignore_index=-100)

    def stepper(self, model, embeds, mask, prefix, use_cache: bool):
        if use_cache:
            return CachedStepper(model, embeds, mask, prefix)
        return UncachedStepper(model, embeds, mask, prefix)


class CachedStepper:
    """Prefill the prompt after the key/value prefix, then one token per call."""

    def __init__(self, model, embeds, mask, prefix):
        self.model, self.embeds, self.prefix = model, embeds, prefix
        self.full, p = prefixed_mask(mask, prefix)
        self.pos = position_ids(mask) + p
        self.cache = prefix_cache(prefix)

    def logits(self, tokens: torch.Tensor | None) -> torch.Tensor:
        if tokens is None:  # the prompt
            inputs = {"inputs_embeds": self.embeds}
        else:
            self.full = torch.cat([self.full, self.full.new_ones(len(tokens), 1)], 1)
            self.pos = self.pos[:, -1:] + 1
            inputs = {"input_ids": tokens[:, None]}
        out = self.model(
            **inputs,
            attention_mask=self.full,
            position_ids=self.pos,
            cache=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.cache = out.cache
        return out.logits[:, -1]

    def reorder(self, idx: torch.Tensor) -> None:
        self.cache.reorder_cache(idx)
        self.full, self.pos = self.full[idx], self.pos[idx]


class UncachedStepper:
    """The reference: the prefix, the prompt and every token so far, each call."""

    def __init__(self, model, embeds, mask, prefix):
        self.model, self.embeds, self.mask, self.prefix = model, embeds, mask, prefix

    def logits(self, tokens: torch.Tensor | None) -> torch.Tensor:
        if tokens is not None:
            new = self.model.get_input_embeddings()(tokens)[:, None].to(self.embeds.dtype)
            self.embeds = torch.cat([self.embeds, new], 1)
            self.mask = torch.cat([self.mask, self.mask.new_ones(len(tokens), 1)], 1)
        full, p = prefixed_mask(self.mask, self.prefix)
        return self.model(
            inputs_embeds=self.embeds,
            attention_mask=full,
            position_ids=position_ids(self.mask) + p,
            use_cache=False,
            cache=prefix_cache(self.prefix),
        ).logits[:, -1]

    def reorder(self, idx: torch.Tensor) -> None:
        self.embeds, self.mask = self.embeds[idx], self.mask[idx]
        if self.prefix is not None:
            self.prefix = self.prefix[idx]

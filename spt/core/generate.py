"""Text generation with a trained soft prompt on decoder-only and encoder-decoder backbones.

- Input-level prompts (prompt, ptuning): greedy, beam search or sampling through Hugging Face
  ``generate`` on the input embeddings that carry the prompt (``method.embed(batch)``).
- Key/value prompts (prefix, ptuning_v2, and CPT's trained context;
  ``method.kv_prefix(batch)``): the prefix is loaded
  into the cache once, the prompt is prefilled after it, and decoding continues from that cache,
  greedy or beam search. HF ``generate`` cannot be handed a pre-filled cache together with
  ``inputs_embeds`` (it decodes from the wrong state, and beam search does not expand such a
  cache), so spt runs these loops itself over a small "stepper" that returns next-token logits
  and reorders its rows (the cache's ``reorder_cache``) when beams are re-ranked. Sampling
  uses Hugging Face's logits warpers (temperature, top-k, top-p) on the stepper's logits.
- Attention-hook methods (adaption_prompt, prefix_plus) decode through HF ``generate`` too,
  inside ``method.adapting(batch)``, which holds the batch rows' hook inputs for every step.
- ``use_cache=False`` re-runs the whole sequence at every step: the slow reference that the
  cached path must equal (tests assert it).
Decoder-only batches are left-padded, so every row continues from its last real token.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from spt.errors import SptError


def _adapting(decode):
    """Run the whole of decoding in ``method.adapting(batch)``: the per-batch rows a method's
    attention hooks read are set for every step and cleared after the last one."""

    @functools.wraps(decode)
    def run(method, batch: dict, *args, **kwargs):
        with method.adapting(batch):
            return decode(method, batch, *args, **kwargs)

    return run


@torch.no_grad()
@_adapting
def generate(
    method,
    batch: dict,
    max_new_tokens: int = 32,
    num_beams: int = 1,
    use_cache: bool = True,
    length_penalty: float = 1.0,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    **kwargs,
) -> torch.Tensor:
    """New token ids ``[B, T]`` (padded with the pad id after EOS) for each row of ``batch``.

    Beam search ranks finished hypotheses by summed log-probability / length**length_penalty
    and stops a row once no running beam can beat its ``num_beams`` finished ones (the
    Hugging Face default, ``early_stopping=False``). ``do_sample`` draws each token from the
    next-token distribution after temperature, top-k (0 = off) and top-p (nucleus) filtering,
    in that order, as Hugging Face ``generate`` does; both paths pass the three explicitly, so
    a model's own ``generation_config`` defaults (``top_k=50``) do not make them differ. Seed
    with ``torch.manual_seed`` (or :func:`spt.load`'s ``generate(seed=)``)."""
    base = method.base
    base.ops.check_generation("generation")
    check_sampling(max_new_tokens, num_beams, do_sample, temperature, top_p, top_k)
    tok = base.tokenizer
    embeds, mask, prefix = _inputs(method, batch)
    sampling = {"do_sample": False}
    if do_sample:
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": top_k}
    if prefix is not None:  # HF generate cannot start from a pre-filled cache: spt's loops
        stepper = _stepper(method, embeds, mask, prefix, use_cache, beams=num_beams)
        if do_sample:
            return _sampled(
                stepper, embeds.shape[0], tok, max_new_tokens, temperature, top_p, top_k
            )
        if num_beams == 1:
            return _greedy(
                stepper, embeds.shape[0], max_new_tokens, tok.pad_token_id, tok.eos_token_id
            )[0]
        return _beam(
            stepper,
            embeds.shape[0],
            num_beams,
            max_new_tokens,
            tok.pad_token_id,
            tok.eos_token_id,
            length_penalty,
        )
    out = method.backbone.generate(
        inputs_embeds=embeds,
        attention_mask=mask,
        max_new_tokens=max_new_tokens,
        num_beams=num_beams,
        use_cache=use_cache,
        length_penalty=length_penalty,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        **sampling,
        **kwargs,
    )
    return base.ops.new_tokens(out)  # (an encoder-decoder's start token dropped)


def check_sampling(max_new_tokens, num_beams, do_sample, temperature, top_p, top_k) -> None:
    """Refuse decoding settings that mean nothing, naming the setting."""
    for key, value in (("max_new_tokens", max_new_tokens), ("num_beams", num_beams)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise SptError(f"{key}={value!r} must be an integer >= 1")
    if not do_sample:
        return
    if num_beams > 1:
        raise SptError(
            f"do_sample with num_beams={num_beams}: spt samples or searches, not both; "
            "set num_beams=1 to sample, or drop do_sample for beam search"
        )
    if not isinstance(temperature, (int, float)) or not temperature > 0 or temperature == math.inf:
        raise SptError(f"temperature={temperature!r} must be a number > 0")
    if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise SptError(f"top_p={top_p!r} must be in (0, 1]")
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0:
        raise SptError(f"top_k={top_k!r} must be an integer >= 0 (0 = no top-k filter)")


def _warpers(temperature: float, top_k: int, top_p: float):
    """Hugging Face's own logits warpers, in the order its ``generate`` applies them."""
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    out = LogitsProcessorList()
    if temperature != 1.0:
        out.append(TemperatureLogitsWarper(temperature))
    if top_k:
        out.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        out.append(TopPLogitsWarper(top_p))
    return out


@torch.no_grad()
@_adapting
def greedy_reference(
    method, batch: dict, max_new_tokens: int = 32
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Greedy decoding by re-running the whole sequence at every step, with no cache.

    Slow on purpose: the reference that cached generation must equal. Returns the new token
    ids ``[B, T]`` and the next-token logits ``[B, V]`` of each step.
    """
    embeds, mask, prefix = _inputs(method, batch)
    tok = method.base.tokenizer
    stepper = _stepper(method, embeds, mask, prefix, use_cache=False)
    return _greedy(stepper, embeds.shape[0], max_new_tokens, tok.pad_token_id, tok.eos_token_id)


@torch.no_grad()
@_adapting
def beam_search(
    method,
    batch: dict,
    num_beams: int,
    max_new_tokens: int = 32,
    use_cache: bool = True,
    length_penalty: float = 1.0,
) -> torch.Tensor:
    """spt's own beam search for any method (the path key/value prompts take), exposed so it
    can be checked against Hugging Face ``generate`` on input-level prompts."""
    embeds, mask, prefix = _inputs(method, batch)
    tok = method.base.tokenizer
    stepper = _stepper(method, embeds, mask, prefix, use_cache, beams=num_beams)
    return _beam(
        stepper,
        embeds.shape[0],
        num_beams,
        max_new_tokens,
        tok.pad_token_id,
        tok.eos_token_id,
        length_penalty,
    )


@torch.no_grad()
@_adapting
def sample(
    method,
    batch: dict,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    use_cache: bool = True,
) -> torch.Tensor:
    """spt's own sampling loop for any method (the path key/value prompts take), exposed so
    that it can be checked against Hugging Face ``generate(do_sample=True)`` on input-level
    prompts with the same seed."""
    check_sampling(max_new_tokens, 1, True, temperature, top_p, top_k)
    embeds, mask, prefix = _inputs(method, batch)
    tok = method.base.tokenizer
    stepper = _stepper(method, embeds, mask, prefix, use_cache)
    return _sampled(stepper, embeds.shape[0], tok, max_new_tokens, temperature, top_p, top_k)


def _sampled(stepper, b: int, tok, max_new_tokens: int, temperature, top_p, top_k):
    warpers = _warpers(temperature, top_k, top_p)
    return _sample(stepper, b, max_new_tokens, tok.pad_token_id, tok.eos_token_id, warpers)


def _inputs(method, batch: dict):
    """What decoding starts from: the method's input embeddings, the attention mask (a method
    may mask tokens of its own, e.g. CPT drops the query's BOS after its context) and the
    key/value prefix, None for methods that prompt the input only (the mixin's defaults)."""
    embeds = method.embed(batch)
    return embeds, method.query_mask(batch), method.kv_prefix(batch, embeds.dtype)


# -- steppers: next-token logits for N rows, and a way to reorder those rows ----------------


def _stepper(method, embeds, mask, prefix, use_cache: bool, beams: int = 1):
    """Each row repeated ``beams`` times (rows r*beams .. r*beams+beams-1 are row r's)."""
    if beams > 1:
        embeds, mask = embeds.repeat_interleave(beams, 0), mask.repeat_interleave(beams, 0)
        if prefix is not None:
            rows = torch.arange(len(mask) // beams, device=mask.device).repeat_interleave(beams)
            prefix = method.base.ops.prefix_rows(prefix, rows)
    return method.base.ops.stepper(method.backbone, embeds, mask, prefix, use_cache)


# -- search loops -------------------------------------------------------------------------


def _pick(logits: torch.Tensor, done: torch.Tensor, pad: int) -> torch.Tensor:
    """Greedy choice; rows that already ended get the pad id."""
    return torch.where(done, torch.full_like(done, pad, dtype=torch.long), logits.argmax(-1))


def _greedy(
    stepper, b: int, max_new_tokens: int, pad: int, eos: int
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Token ids ``[B, T]`` and each step's next-token logits ``[B, V]``."""
    done = None
    steps, step_logits, nxt = [], [], None
    for _ in range(max_new_tokens):
        logits = stepper.logits(nxt)
        if done is None:  # on the model's device
            done = torch.zeros(b, dtype=torch.bool, device=logits.device)
        step_logits.append(logits)
        nxt = _pick(logits, done, pad)
        steps.append(nxt)
        done |= nxt == eos
        if done.all():
            break
    return torch.stack(steps, 1), step_logits


def _sample(stepper, b: int, max_new_tokens: int, pad: int, eos: int, warpers) -> torch.Tensor:
    """Ancestral sampling: each step draws one token per row from the warped distribution
    (one ``torch.multinomial`` over the batch, as Hugging Face's sampling loop does, so the
    same seed draws the same tokens on the same logits)."""
    done, steps, nxt = None, [], None
    for _ in range(max_new_tokens):
        logits = stepper.logits(nxt).float()
        if done is None:  # on the model's device
            done = torch.zeros(b, dtype=torch.bool, device=logits.device)
        history = torch.stack(steps, 1) if steps else logits.new_zeros(b, 0, dtype=torch.long)
        probs = torch.softmax(warpers(history, logits), dim=-1)
        nxt = torch.multinomial(probs, num_samples=1).squeeze(1)
        nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
        steps.append(nxt)
        done |= nxt == eos
        if done.all():
            break
    return torch.stack(steps, 1)


def _beam(
    stepper, b: int, k: int, max_new_tokens: int, pad: int, eos: int, length_penalty: float
) -> torch.Tensor:
    """Beam search over ``b`` rows with ``k`` beams each (the stepper holds ``b * k`` rows)."""
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(b)]
    done = [False] * b
    tokens = None
    for t in range(max_new_tokens):
        logp = F.log_softmax(stepper.logits(tokens).float(), dim=-1)
        dev, vocab = logp.device, logp.shape[-1]
        if t == 0:  # on the model's device
            scores = torch.full((b, k), -math.inf, device=dev)
            scores[:, 0] = 0.0  # the k copies of a row start as one live beam
            history = torch.zeros(b * k, 0, dtype=torch.long, device=dev)
        top_s, top_i = (scores.view(-1, 1) + logp).view(b, k * vocab).topk(2 * k, dim=1)
        src = torch.arange(k, device=dev).repeat(b, 1)
        new_tok = torch.full((b, k), pad, dtype=torch.long, device=dev)
        new_s = scores.clone()
        norm = (t + 1) ** length_penalty
        for i in range(b):
            if done[i]:
                continue
            kept = 0
            for rank, (s, idx) in enumerate(zip(top_s[i].tolist(), top_i[i].tolist(), strict=True)):
                beam, w = divmod(idx, vocab)
                if w == eos:  # a finished hypothesis, if it ranks among the top k
                    if rank < k and s > -math.inf:
                        finished[i].append((s / norm, [*history[i * k + beam].tolist(), eos]))
                    continue
                src[i, kept], new_tok[i, kept], new_s[i, kept] = beam, w, s
                kept += 1
                if kept == k:
                    break
            finished[i] = sorted(finished[i], key=lambda h: -h[0])[:k]
            if len(finished[i]) == k and new_s[i].max().item() / norm <= finished[i][-1][0]:
                done[i] = True
        idx = (torch.arange(b, device=dev)[:, None] * k + src).view(-1)
        history = torch.cat([history[idx], new_tok.view(-1, 1)], 1)
        scores = new_s
        if all(done):
            break
        stepper.reorder(idx)
        tokens = new_tok.view(-1)
    out = []
    for i in range(b):
        hyps = finished[i]
        if not done[i]:  # running beams compete with the finished ones at the length limit
            norm = history.shape[1] ** length_penalty
            hyps = hyps + [
                (scores[i, j].item() / norm, history[i * k + j].tolist())
                for j in range(k)
                if scores[i, j] > -math.inf
            ]
        out.append(max(hyps, key=lambda h: h[0])[1])
    width = max(map(len, out))
    return torch.tensor(
        [h + [pad] * (width - len(h)) for h in out], dtype=torch.long, device=history.device
    )

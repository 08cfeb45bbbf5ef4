"""LLaMA-Adapter's zero-initialised gated attention to adaption prompts, on Llama-architecture
attention layers (Zhang et al. 2023, arXiv:2303.16199, Section 3.2).

Architecture-specific (the Llama attention's q/k/v/o projections and rotary embedding), so it
lives here. Each adapted layer's self-attention output gains

    o_proj( g * softmax(q P_k^T / sqrt(head_dim)) P_v ),   P_k = k_proj(P), P_v = v_proj(P),

where ``q`` are the layer's rotary-embedded queries, ``P`` the layer's ``length`` prompt vectors
(their keys get no rotary embedding), the softmax runs over the prompt alone in fp32, and ``g``
is the layer's gate, zero at the start so the model begins as the frozen one. This is PEFT's
``AdaptedAttention`` (peft/tuners/adaption_prompt/layer.py: a raw scalar gate per layer, not
tanh; grouped-query heads repeated), so a PEFT adapter and spt's give equal logits. spt keeps
a task axis: each batch row reads its own task's prompts and gates.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

from spt.errors import SptError

# Model types whose attention is Llama's (q/k/v/o projections, rotary queries passed as
# position_embeddings): PEFT's TRANSFORMERS_MODEL_CONFIG has llama and mistral.
ADAPTED_TYPES = ("llama", "mistral")


def attention_layers(model) -> list:
    """The self-attention modules of a Llama-architecture model, bottom to top."""
    kind = getattr(model.config, "model_type", None)
    inner = getattr(model, "model", model)
    layers = getattr(inner, "layers", None)
    if kind not in ADAPTED_TYPES or layers is None:
        raise SptError(
            f"adaption prompts need a Llama-architecture decoder ({', '.join(ADAPTED_TYPES)}); "
            f"this model is {kind!r}: use method=prefix or method=prompt"
        )
    return [layer.self_attn for layer in layers]


def adapter_output(attn, hidden: torch.Tensor, position_embeddings, prompts, gates):
    """The term one adapted layer adds: ``hidden [B, T, d]``, ``prompts [B, length, d]``,
    ``gates [B]`` -> ``[B, T, d]``."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    b, t, _ = hidden.shape
    head_dim = attn.head_dim
    q = attn.q_proj(hidden).view(b, t, -1, head_dim).transpose(1, 2)
    cos, sin = position_embeddings
    q, _ = apply_rotary_pos_emb(q, q, cos, sin)
    p = prompts.to(hidden.dtype)
    k = attn.k_proj(p).view(b, p.shape[1], -1, head_dim).transpose(1, 2)
    v = attn.v_proj(p).view(b, p.shape[1], -1, head_dim).transpose(1, 2)
    groups = q.shape[1] // k.shape[1]  # grouped-query attention: each KV head serves `groups`
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = q @ k.transpose(2, 3) / math.sqrt(head_dim)
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    weights = gates.to(q.dtype).view(b, 1, 1, 1) * weights
    out = (weights @ v).transpose(1, 2).reshape(b, t, -1)
    return attn.o_proj(out)


def install(model, top: int, source) -> list:
    """Hooks on the top ``top`` attention layers of ``model`` that add :func:`adapter_output`
    while ``source()`` returns ``(prompts [B, top, length, d], gates [B, top])`` (layer 0 of
    them the lowest adapted layer) and leave the layer alone while it returns None. Returns
    the hook handles (``.remove()`` each to uninstall)."""
    layers = attention_layers(model)
    if not 1 <= top <= len(layers):
        raise SptError(
            f"adaption prompts for {top} layers, but the model has {len(layers)}: set "
            f"method.layers to 1..{len(layers)}"
        )
    handles = []
    for i, attn in enumerate(layers[len(layers) - top :]):

        def hook(module, args, kwargs, output, i=i):
            rows = source()
            if rows is None:
                return output
            prompts, gates = rows[0][:, i], rows[1][:, i]
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            if prompts.shape[0] != hidden.shape[0]:  # beam search: each row repeated
                reps = hidden.shape[0] // prompts.shape[0]
                prompts, gates = (
                    prompts.repeat_interleave(reps, 0),
                    gates.repeat_interleave(reps, 0),
                )
            extra = adapter_output(module, hidden, kwargs["position_embeddings"], prompts, gates)
            return (output[0] + extra, *output[1:])

        handles.append(attn.register_forward_hook(hook, with_kwargs=True))
    return handles


@contextlib.contextmanager
def adapted(model, prompts: torch.Tensor, gates: torch.Tensor):
    """Run ``model`` with adaption prompts ``prompts [B, L, length, d]`` and ``gates [B, L]``
    in its top ``L`` layers (the hooks of :func:`install`, removed on exit)."""
    handles = install(model, prompts.shape[1], lambda: (prompts, gates))
    try:
        yield model
    finally:
        for h in handles:
            h.remove()

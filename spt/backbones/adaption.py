"""LLaMA-Adapter's zero-initialised gated attention to adaption prompts, on Llama-architecture
attention layers (Zhang et al. 2023, arXiv:2303.16199, Section 3.2).

Architecture-specific (the Llama attention's q/k/v/o projections and rotary embedding), so it
lives here, with the hooks (:func:`install`) that add a method's term to each hooked layer's
attention output; Prefix-Tuning+'s term (:mod:`spt.backbones.prefix_plus`) uses them too.
Each adapted layer's self-attention output gains

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


def attention_layers(model, what: str = "adaption prompts") -> list:
    """The self-attention modules of a Llama-architecture model, bottom to top (``what``
    names the method in the refusal)."""
    kind = getattr(model.config, "model_type", None)
    inner = getattr(model, "model", model)
    layers = getattr(inner, "layers", None)
    if kind not in ADAPTED_TYPES or layers is None:
        raise SptError(
            f"{what}: only Llama-architecture decoders ({', '.join(ADAPTED_TYPES)}) are "
            f"supported, and this model is {kind!r}: use method=prefix or method=prompt"
        )
    return [layer.self_attn for layer in layers]


def top_layers(model, layers, default, what: str) -> tuple[int, int]:
    """``(top, total)``: how many of the model's ``total`` attention layers a method hooks,
    ``layers`` as its YAML gives it (None: ``default(total)``), checked before any table of
    that size is built."""
    total = len(attention_layers(model, what))  # refuses other architectures by name
    if layers is not None and (isinstance(layers, bool) or not isinstance(layers, int)):
        raise SptError(f"method.layers={layers!r}: null (the method's default) or an integer")
    top = default(total) if layers is None else layers
    if not 1 <= top <= total:
        raise SptError(
            f"method.layers={top}, but the model has {total} layers: set method.layers to "
            f"1..{total}"
        )
    return top, total


def rotary_queries(attn, hidden: torch.Tensor, position_embeddings) -> torch.Tensor:
    """A Llama attention layer's rotary-embedded queries ``[B, heads, T, head_dim]``, as its
    own forward computes them."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    b, t, _ = hidden.shape
    q = attn.q_proj(hidden).view(b, t, -1, attn.head_dim).transpose(1, 2)
    cos, sin = position_embeddings
    return apply_rotary_pos_emb(q, q, cos, sin)[0]


def heads_out(attn, out: torch.Tensor) -> torch.Tensor:
    """Per-head outputs ``[B, heads, T, head_dim]`` through the layer's output projection's
    weight alone: the layer's own output already carries its bias (``attention_bias=True``), so
    the term is what adding ``out`` to its heads' outputs adds, and a zero term is no change.
    (PEFT's ``AdaptedAttention`` calls ``o_proj`` whole, adding the bias twice on such models;
    the PEFT export refuses them.)"""
    b, _, t, _ = out.shape
    return F.linear(out.transpose(1, 2).reshape(b, t, -1), attn.o_proj.weight)


def adapter_output(attn, hidden: torch.Tensor, position_embeddings, prompts, gates):
    """The term one adapted layer adds: ``hidden [B, T, d]``, ``prompts [B, length, d]``,
    ``gates [B]`` -> ``[B, T, d]``."""
    b = hidden.shape[0]
    head_dim = attn.head_dim
    q = rotary_queries(attn, hidden, position_embeddings)
    p = prompts.to(hidden.dtype)
    k = attn.k_proj(p).view(b, p.shape[1], -1, head_dim).transpose(1, 2)
    v = attn.v_proj(p).view(b, p.shape[1], -1, head_dim).transpose(1, 2)
    groups = q.shape[1] // k.shape[1]  # grouped-query attention: each KV head serves `groups`
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = q @ k.transpose(2, 3) / math.sqrt(head_dim)
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    weights = gates.to(q.dtype).view(b, 1, 1, 1) * weights
    return heads_out(attn, weights @ v)


def install(model, top: int, source, term=adapter_output) -> list:
    """Hooks on the top ``top`` attention layers of ``model`` that add
    ``term(attn, hidden, position_embeddings, *rows)`` to the layer's output while ``source()``
    returns a tuple of tensors ``[B, top, ...]`` (layer 0 of them the lowest hooked layer; for
    adaption prompts ``(prompts [B, top, length, d], gates [B, top])``), and leave the layer
    alone while it returns None. Returns the hook handles (``.remove()`` each to uninstall)."""
    top_layers(model, top, None, "adaption prompts")  # the methods' own range check
    layers = attention_layers(model)
    handles = []
    for i, attn in enumerate(layers[len(layers) - top :]):

        def hook(module, args, kwargs, output, i=i):
            rows = source()
            if rows is None:
                return output
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            rows = [r[:, i] for r in rows]
            if rows[0].shape[0] != hidden.shape[0]:  # beam search: each row repeated
                reps = hidden.shape[0] // rows[0].shape[0]
                rows = [r.repeat_interleave(reps, 0) for r in rows]
            extra = term(module, hidden, kwargs["position_embeddings"], *rows)
            return (output[0] + extra, *output[1:])

        handles.append(attn.register_forward_hook(hook, with_kwargs=True))
    return handles


class LayerTerms:
    """The hooks of :func:`install` and the rows they read: the layers are adapted only inside
    ``with terms.holding(rows):`` (a method's ``adapting(batch)``), so a backbone shared with
    other methods runs unadapted outside this method's calls, whatever path (scoring, the LM
    loss, decoding) made them."""

    def __init__(self, model, top: int, term=adapter_output):
        self.rows = None
        self.handles = install(model, top, lambda: self.rows, term)

    @contextlib.contextmanager
    def holding(self, rows: tuple):
        outer, self.rows = self.rows, rows
        try:
            yield
        finally:
            self.rows = outer

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@contextlib.contextmanager
def adapted(model, prompts: torch.Tensor, gates: torch.Tensor):
    """Run ``model`` with adaption prompts ``prompts [B, L, length, d]`` and ``gates [B, L]``
    in its top ``L`` layers (the hooks of :func:`install`, removed on exit)."""
    terms = LayerTerms(model, prompts.shape[1])
    try:
        with terms.holding((prompts, gates)):
            yield model
    finally:
        terms.remove()

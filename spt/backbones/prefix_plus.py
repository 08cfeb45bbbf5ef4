"""Prefix-Tuning+'s attention-independent prefix term on Llama-architecture attention layers
(Wang et al. 2025, arXiv:2506.13674, "Prefix-Tuning+: Modernizing Prefix-Tuning by Decoupling
the Prefix from Attention"; v3 renamed it PrefixMemory-Tuning).

Prefix tuning's head output for query ``q_i`` over prefix keys/values ``(k_p, v_p)`` and the
input's ``(k_j, v_j)`` is one softmax over both, so a long input drowns the prefix and a long
prefix the input (the paper's Section 3). Written with a kernel ``sim(q, k) = phi(q)^T phi(k)``
(linear attention), the prefix's share of the numerator is ``phi(q_i)^T sum_p phi(k_p) v_p^T``:
a matrix that no longer depends on the prefix tokens being in the sequence. Prefix-Tuning+
trains that matrix ``M`` directly and adds its term *outside* the softmax, without the shared
denominator:

    o_i = Attn(q_i, K, V) + phi(q_i)^T M,        phi(x) = elu(x) + 1,

per head and layer. ``M`` is ``[head_dim, head_dim]`` per key/value head (the query heads of a
grouped-query group share it, as they would share a real prefix's keys and values), ``q_i`` are
the layer's rotary-embedded queries (HF prefix keys get no rotary embedding, so prefix tuning
sees the same queries), and the sum of heads goes through the frozen ``o_proj``.

What was read: the paper's abstract and a review of its derivation (the kernelised prefix term
above, the query-dependent bias outside the attention head); the full text and the authors'
code (github haonan3/PrefixMemory-Tuning) were not reachable from this machine. spt's choices
where those would decide: ``phi = elu + 1`` (Katharopoulos et al. 2020's map, which the
derivation's kernel needs positive), one ``M`` per key/value head and layer, and ``M = 0`` at
the start, so training starts from the frozen model (``from_prefix`` builds ``M`` from real
prefix keys/values instead; the tests use it as the reference computation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from spt.backbones.adaption import heads_out, rotary_queries


def feature_map(x: torch.Tensor) -> torch.Tensor:
    """``phi(x) = elu(x) + 1``: positive, so ``phi(q)^T phi(k)`` is a similarity."""
    return F.elu(x) + 1


def memory_output(attn, hidden: torch.Tensor, position_embeddings, memory: torch.Tensor):
    """The term one layer adds: ``hidden [B, T, d]``, ``memory [B, kv_heads, head_dim,
    head_dim]`` -> ``o_proj(phi(q) M)`` ``[B, T, d]``."""
    q = rotary_queries(attn, hidden, position_embeddings)  # [B, H, T, hd]
    m = memory.to(q.dtype)
    m = m.repeat_interleave(q.shape[1] // m.shape[1], dim=1)  # each KV head's query heads
    return heads_out(attn, feature_map(q) @ m)


def from_prefix(attn, prefix: torch.Tensor) -> torch.Tensor:
    """``M = sum_p phi(k_p) v_p^T`` per key/value head for prefix vectors ``prefix [P, d]``
    through the layer's frozen key/value projections: ``[kv_heads, head_dim, head_dim]``, the
    matrix whose term is the prefix's unnormalised linear-attention share."""
    k = attn.k_proj(prefix).view(prefix.shape[0], -1, attn.head_dim).transpose(0, 1)
    v = attn.v_proj(prefix).view(prefix.shape[0], -1, attn.head_dim).transpose(0, 1)
    return feature_map(k).transpose(1, 2) @ v

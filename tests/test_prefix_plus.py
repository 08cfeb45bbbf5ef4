"""Prefix-Tuning+ (spt/backbones/prefix_plus.py, spt/methods/prefix_plus.py) on a tiny
grouped-query Llama: the hooked layer adds exactly the kernelised prefix term
``sum_p phi(q)^T phi(k_p) v_p`` of a prefix of real tokens' keys and values (computed token by
token here, against the matrix ``M`` the method trains); zero memories are the frozen model;
rows read their own task; a shared backbone is left alone after the forward."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from spt.backbones import tiny
from spt.backbones.adaption import attention_layers, install
from spt.backbones.prefix_plus import from_prefix, memory_output
from spt.errors import SptError
from spt.methods.prefix_plus import PrefixTuningPlus
from tests.test_prompt import TASK, make_batch

pytestmark = pytest.mark.usefixtures("one_thread")


def optimizer():
    return functools.partial(torch.optim.AdamW, lr=1e-3)


def test_the_term_is_the_kernelised_attention_to_a_prefix_of_real_tokens():
    """Layer 1 of 2, its own input for three real tokens as the prefix: with ``M`` from
    :func:`from_prefix`, the hooked layer's output minus the plain one equals, head by head
    and query by query, ``o_proj(sum_p phi(q_i).phi(k_p) v_p)`` with phi = elu + 1, each query
    head reading its key/value head's prefix (GQA)."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    bb = tiny("llama")
    model = bb.model.eval()
    attn = attention_layers(model)[1]
    cfg = model.config
    assert cfg.num_key_value_heads < cfg.num_attention_heads
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 5, cfg.hidden_size, generator=g)
    positions = torch.arange(5).expand(2, -1)
    pe = model.model.rotary_emb(hidden, positions)
    prefix = bb.input_embeddings(torch.tensor([7, 8, 9]))  # real tokens
    with torch.no_grad():
        memory = from_prefix(attn, prefix)  # [kv_heads, hd, hd]
        plain = attn(hidden_states=hidden, position_embeddings=pe, attention_mask=None)[0]
        rows = (memory.expand(2, 1, -1, -1, -1),)  # the top layer only
        handles = install(model, 1, lambda: rows, memory_output)
        try:
            hooked = attn(hidden_states=hidden, position_embeddings=pe, attention_mask=None)[0]
        finally:
            for h in handles:
                h.remove()
        hd, heads = attn.head_dim, cfg.num_attention_heads
        group = heads // cfg.num_key_value_heads
        q = attn.q_proj(hidden).view(2, 5, heads, hd).transpose(1, 2)
        q, _ = apply_rotary_pos_emb(q, q, *pe)
        k = attn.k_proj(prefix).view(3, -1, hd)  # [P, kv_heads, hd], no rotary on a prefix
        v = attn.v_proj(prefix).view(3, -1, hd)
        want = torch.zeros(2, 5, heads, hd)
        for b in range(2):
            for i in range(5):
                for h in range(heads):
                    for p in range(3):
                        sim = (F.elu(q[b, h, i]) + 1) @ (F.elu(k[p, h // group]) + 1)
                        want[b, i, h] += sim * v[p, h // group]
        want = attn.o_proj(want.reshape(2, 5, -1))
    torch.testing.assert_close(hooked - plain, want, rtol=1e-5, atol=1e-5)
    assert want.abs().max() > 1e-2


def test_zero_memories_are_the_frozen_model_rows_read_their_task_and_the_backbone_is_left_alone():
    from spt.methods.prompt import PromptTuning

    bb = tiny("llama")
    m = PrefixTuningPlus(bb, task=TASK, n_tasks=2, optimizer=optimizer()).eval()
    assert {n for n, p in m.named_parameters() if p.requires_grad} == {"prefix_plus.memory"}
    assert m.prefix_plus.memory.shape == (2, 2, 2, 8, 8)  # tasks, layers, KV heads, hd, hd
    texts = ["a fine film", "dull"]
    batch = make_batch(bb, texts, 0)
    other = PromptTuning(bb, task=TASK, length=1, init="uniform").eval()
    with torch.no_grad():
        frozen = other.class_scores(
            bb.input_embeddings(batch["input_ids"]), batch["attention_mask"]
        )
        assert torch.equal(m(batch), frozen)  # zero memories: the frozen model's scores
        before = other(make_batch(bb, ["a fine film"], 1))
        m.prefix_plus.memory[1].normal_(generator=torch.Generator().manual_seed(1))
        mixed = make_batch(bb, texts, 0, task_ids=[0, 1])
        scores = m(mixed)
        assert m.terms.rows is None
        after = other(make_batch(bb, ["a fine film"], 1))
        alone = m(make_batch(bb, texts[1:], 0, task_ids=[1]))
    assert torch.equal(before, after)
    torch.testing.assert_close(scores[0], frozen[0], rtol=0, atol=0)  # task 0: still zero
    torch.testing.assert_close(scores[1], alone[0], rtol=0, atol=1e-5)
    assert (scores[1] - frozen[1]).abs().max() > 1e-3


def test_a_training_step_moves_the_memory_and_the_artifact_reloads_it(tmp_path):
    from spt.core.artifact import save_artifact

    bb = tiny("llama")
    m = PrefixTuningPlus(bb, task=TASK, layers=1, optimizer=optimizer())
    batch = make_batch(bb, ["a fine film", "dull"], 0)
    batch["labels"] = torch.tensor([1, 0])
    opt = m.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    loss = F.cross_entropy(m(batch), batch["labels"])
    loss.backward()
    opt.step()
    assert m.prefix_plus.memory.abs().max() > 0
    path = save_artifact(tmp_path / "p", m.artifact_tensors(), m.artifact_meta())
    m2 = PrefixTuningPlus(
        bb, task=TASK, layers=1, init="file", init_file=str(path), optimizer=optimizer()
    ).eval()
    with torch.no_grad():
        assert torch.equal(m2(batch), m.eval()(batch))


def test_other_architectures_are_refused_by_name():
    with pytest.raises(SptError, match="method=prefix_plus does not support encoder"):
        PrefixTuningPlus(tiny("bert"), task=TASK, optimizer=optimizer())
    bb = tiny("llama")
    bb.model.config.model_type = "gpt2"  # a decoder whose attention is not Llama's
    with pytest.raises(SptError, match="Prefix-Tuning\\+ .* only Llama-architecture decoders"):
        PrefixTuningPlus(bb, task=TASK, optimizer=optimizer())

"""LLaMA-Adapter's gated adaption-prompt attention (spt/backbones/adaption.py) against PEFT's
``AdaptedAttention`` on a tiny grouped-query Llama: equal logits, padded rows included; a
zero gate leaves the model as it was; each batch row reads its own task's prompts."""

from __future__ import annotations

import pytest
import torch

from spt.backbones import tiny
from spt.backbones.adaption import adapted
from spt.errors import SptError

pytestmark = pytest.mark.usefixtures("one_thread")
IDS = torch.tensor([[5, 6, 7, 8, 9], [0, 0, 3, 4, 5]])
MASK = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])  # left padding, as spt's decoders


def peft_adapter(layers=3, adapter_layers=2, length=3):
    """A PEFT adaption-prompt model with random prompts and gates, and those tensors as
    ``[L, length, d]`` prompts and ``[L]`` gates (lowest adapted layer first)."""
    from peft import AdaptionPromptConfig, get_peft_model

    cfg = AdaptionPromptConfig(
        adapter_len=length, adapter_layers=adapter_layers, task_type="CAUSAL_LM"
    )
    pm = get_peft_model(tiny("llama", layers=layers).model, cfg)
    g = torch.Generator().manual_seed(1)
    found = {}
    for name, p in pm.named_parameters():
        if "adaption_" in name:
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g))
            layer = int(name.split("layers.")[1].split(".")[0])
            found.setdefault(layer, {})[name.rsplit(".", 1)[1]] = p.detach().clone()
    order = sorted(found)
    prompts = torch.stack([found[i]["adaption_prompt"][0] for i in order])
    gates = torch.stack([found[i]["adaption_gate"][0] for i in order])
    return pm.eval(), prompts, gates


def test_equal_logits_to_peft_adaption_prompts():
    pm, prompts, gates = peft_adapter()
    model = tiny("llama", layers=3).model.eval()
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # GQA
    with torch.no_grad():
        want = pm(input_ids=IDS, attention_mask=MASK).logits
        with adapted(model, prompts.expand(2, -1, -1, -1), gates.expand(2, -1)):
            got = model(input_ids=IDS, attention_mask=MASK).logits
        plain = model(input_ids=IDS, attention_mask=MASK).logits  # hooks removed
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert (plain - want).abs().max() > 1e-2


def test_a_zero_gate_is_the_frozen_model_and_rows_read_their_own_task():
    model = tiny("llama", layers=3).model.eval()
    _, prompts, gates = peft_adapter()
    with torch.no_grad():
        plain = model(input_ids=IDS, attention_mask=MASK).logits
        zero = torch.zeros_like(gates).expand(2, -1)
        with adapted(model, prompts.expand(2, -1, -1, -1), zero):
            assert torch.equal(model(input_ids=IDS, attention_mask=MASK).logits, plain)
        rows_gates = torch.stack([torch.zeros_like(gates), gates])  # row 0 off, row 1 on
        with adapted(model, prompts.expand(2, -1, -1, -1), rows_gates):
            mixed = model(input_ids=IDS, attention_mask=MASK).logits
        with adapted(model, prompts[None], gates[None]):
            alone = model(input_ids=IDS[1:], attention_mask=MASK[1:]).logits
    torch.testing.assert_close(mixed[0], plain[0], rtol=0, atol=0)
    torch.testing.assert_close(mixed[1], alone[0], rtol=0, atol=1e-6)


def test_the_method_trains_only_its_prompts_and_gates_and_leaves_a_shared_backbone_alone():
    """method=adaption_prompt: only prompts and gates train; after its forward the hooks on
    the backbone are inactive (another method on the same backbone sees the frozen model);
    the gates start at zero, so its first scores are the frozen model's."""
    from spt.methods.adaption_prompt import AdaptionPrompt
    from spt.methods.prompt import PromptTuning
    from tests.test_prompt import TASK, make_batch

    bb = tiny("llama", layers=3)
    m = AdaptionPrompt(bb, task=TASK, length=2, layers=2).eval()
    assert {n for n, p in m.named_parameters() if p.requires_grad} == {
        "adaption.prompts",
        "adaption.gates",
    }
    batch = make_batch(bb, ["a fine film", "dull"], 0)
    other = PromptTuning(bb, task=TASK, length=1, init="uniform").eval()
    with torch.no_grad():
        first = m(batch)
        before = other(make_batch(bb, ["a fine film"], 1))
        m.adaption.gates.fill_(3.0)
        moved = m(batch)
        assert m.terms.rows is None
        after = other(make_batch(bb, ["a fine film"], 1))
    assert torch.equal(before, after) and not torch.allclose(first, moved)
    zero = PromptTuning(bb, task=TASK, length=1, init="uniform").eval()
    with torch.no_grad():  # zero gates: the frozen model's label-word scores
        frozen = zero.class_scores(bb.input_embeddings(batch["input_ids"]), batch["attention_mask"])
    torch.testing.assert_close(first, frozen, rtol=0, atol=0)


def test_a_zero_term_leaves_a_model_with_attention_biases_as_it_was():
    """Llama with attention_bias=True: the layer's output already carries o_proj's bias, so a
    zero gate (adaption prompts) or zero memory (Prefix-Tuning+) adds nothing (calling o_proj
    whole on the term, as PEFT's AdaptedAttention does, adds the bias a second time)."""
    from transformers import LlamaForCausalLM

    from spt.backbones.adaption import LayerTerms
    from spt.backbones.prefix_plus import memory_output
    from spt.backbones.tiny_models import tiny_config

    config = tiny_config("llama", layers=3)
    config.attention_bias = True
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # HF initialises biases to zero
        for layer in model.model.layers:
            layer.self_attn.o_proj.bias.normal_(generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = model(input_ids=IDS, attention_mask=MASK).logits
        with adapted(model, torch.randn(2, 2, 3, 32), torch.zeros(2, 2)):
            assert torch.equal(model(input_ids=IDS, attention_mask=MASK).logits, plain)
        terms = LayerTerms(model, 2, memory_output)
        with terms.holding((torch.zeros(2, 2, 2, 8, 8),)):  # [B, layers, kv heads, hd, hd]
            assert torch.equal(model(input_ids=IDS, attention_mask=MASK).logits, plain)
        terms.remove()


def test_more_adapted_layers_than_the_model_has_is_refused():
    model = tiny("llama", layers=2).model
    with pytest.raises(SptError, match="method.layers to 1..2"):
        with adapted(model, torch.zeros(1, 3, 2, 32), torch.zeros(1, 3)):
            pass

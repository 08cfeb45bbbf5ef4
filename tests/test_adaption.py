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


def test_more_adapted_layers_than_the_model_has_is_refused():
    model = tiny("llama", layers=2).model
    with pytest.raises(SptError, match="method.layers <= 2"):
        with adapted(model, torch.zeros(1, 3, 2, 32), torch.zeros(1, 3)):
            pass

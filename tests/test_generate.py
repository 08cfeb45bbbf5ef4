"""Generation with a soft prompt: cached generation equals step-by-step decoding without a
cache, beam search agrees with and without a cache, and rows of a mixed batch decode as if
alone."""

from __future__ import annotations

import pytest
import torch

from spt import methods
from spt.backbones import tiny
from spt.core.generate import _greedy, _stepper, beam_search, generate, greedy_reference
from spt.data.task import TaskInfo
from spt.errors import SptError
from spt.methods.mpt import MPT
from spt.methods.prefix import PrefixTuning
from spt.methods.prompt import PromptTuning
from spt.methods.ptuning import PTuning
from spt.methods.ptuning_v2 import PTuningV2

TASK = TaskInfo(
    name="t",
    label_names=("neg", "pos"),
    label_words=("bad", "great"),
    metrics=("acc",),
    num_classes=2,
)
TEXTS = ["hello there", "a much longer input goes here", "mid size row"]
N_SOFT = 3


def _method(family: str, cls=PromptTuning):
    """A method whose prompt sits in the input, 3 tasks; each task's prompt is made distinct
    and large so that it steers decoding differently."""
    m = cls(
        tiny(family, hidden=64, seed=3),
        TASK,
        length=N_SOFT,
        n_tasks=3,
        **({} if cls is PTuning else {"init": "uniform"}),
    ).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        if cls is PromptTuning:
            m.prompt.weight.normal_(0, 2, generator=g)
        elif cls is MPT:  # shared prompt times each task's rank-1 update
            m.prompts.shared.normal_(0, 2, generator=g)
            for p in (m.prompts.u, m.prompts.v):
                p.normal_(1, 0.5, generator=g)
        # P-Tuning: its per-task encoder inputs start distinct as they are
    return m


INPUT_METHODS = [methods.get(n).cls for n in methods.names(prompt="input")]  # the registry's


def _batch(m: PromptTuning, texts: list[str], task_ids: list[int]) -> dict:
    tok, left = m.base.tokenizer, m.base.arch == "decoder"
    rows = [tok(t, add_special_tokens=True)["input_ids"] for t in texts]
    width = max(map(len, rows)) + N_SOFT
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    soft = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, r in enumerate(rows):
        n = len(r) + N_SOFT
        off = width - n if left else 0
        ids[i, off + N_SOFT : off + n] = torch.tensor(r)
        mask[i, off : off + n] = 1
        soft[i, off : off + N_SOFT] = True
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "soft_mask": soft,
        "task_ids": torch.tensor(task_ids),
    }


@pytest.mark.parametrize("cls", INPUT_METHODS, ids=lambda c: c.method_name)
@pytest.mark.parametrize("family", ["llama", "t5"])
def test_cached_greedy_equals_uncached_step_by_step(family, cls):
    m = _method(family, cls)
    batch = _batch(m, TEXTS, [2, 0, 1])
    out = m.backbone.generate(
        inputs_embeds=m.embed(batch),
        attention_mask=batch["attention_mask"],
        max_new_tokens=6,
        do_sample=False,
        use_cache=True,
        output_logits=True,
        return_dict_in_generate=True,
        pad_token_id=0,
        eos_token_id=2,
    )
    ref_tokens, ref_logits = greedy_reference(m, batch, max_new_tokens=6)
    cached = generate(m, batch, max_new_tokens=6)
    assert torch.equal(cached[:, : ref_tokens.shape[1]], ref_tokens)
    for step, (got, want) in enumerate(zip(out.logits, ref_logits, strict=True)):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4, msg=f"step {step}")


@pytest.mark.parametrize("cls", INPUT_METHODS, ids=lambda c: c.method_name)
@pytest.mark.parametrize("family", ["llama", "t5"])
def test_beam_search_same_with_and_without_cache(family, cls):
    m = _method(family, cls)
    batch = _batch(m, TEXTS, [0, 1, 2])
    a = generate(m, batch, max_new_tokens=5, num_beams=3)
    b = generate(m, batch, max_new_tokens=5, num_beams=3, use_cache=False)
    assert torch.equal(a, b)


@pytest.mark.parametrize("cls", INPUT_METHODS, ids=lambda c: c.method_name)
@pytest.mark.parametrize("family", ["llama", "t5"])
def test_mixed_task_rows_decode_as_if_alone(family, cls):
    m = _method(family, cls)
    task_ids = [2, 0, 1]
    mixed = generate(m, _batch(m, TEXTS, task_ids), max_new_tokens=5)
    for i, (text, t) in enumerate(zip(TEXTS, task_ids, strict=True)):
        alone = generate(m, _batch(m, [text], [t]), max_new_tokens=5)
        assert torch.equal(mixed[i, : alone.shape[1]], alone[0]), f"row {i}"
    _, first = greedy_reference(m, _batch(m, TEXTS, task_ids), max_new_tokens=1)
    _, other = greedy_reference(m, _batch(m, TEXTS, [0, 1, 2]), max_new_tokens=1)
    assert not torch.allclose(first[0], other[0]), "the task id changes nothing"


HOOK_METHODS = [methods.get(n).cls for n in ("adaption_prompt", "prefix_plus")]


@pytest.mark.parametrize("cls", HOOK_METHODS, ids=lambda c: c.method_name)
def test_attention_hook_methods_decode_as_uncached_and_leave_the_backbone_alone(cls):
    """Adaption prompts and Prefix-Tuning+ add their terms through hooks on the attention
    layers: HF's cached decoding equals the uncached step-by-step reference, rows of mixed
    tasks decode as if alone, and once decoding ends the shared backbone is the frozen model
    again (the rows were held for the whole of decoding and cleared after it)."""
    from tests.test_prompt import make_batch

    bb = tiny("llama", hidden=64, seed=3)
    m = cls(bb, TASK, n_tasks=3).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad:
                p.normal_(0, 1, generator=g)
    batch = make_batch(bb, TEXTS, 0, task_ids=[0, 1, 2])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        plain = bb.model(input_ids=ids, attention_mask=mask).logits
        got = generate(m, batch, max_new_tokens=6)
        assert m.terms.rows is None
        assert torch.equal(bb.model(input_ids=ids, attention_mask=mask).logits, plain)
        want, steps = greedy_reference(m, batch, max_new_tokens=6)
        alone = [
            generate(m, make_batch(bb, [t], 0, task_ids=[i]), max_new_tokens=6)[0]
            for i, t in enumerate(TEXTS)
        ]
    assert torch.equal(got, want)
    for row, one in zip(got, alone, strict=True):
        assert torch.equal(row[: len(one)], one)
    assert (steps[0] - plain[:, -1]).abs().max() > 1e-2  # the terms move the next token's logits


def test_encoder_only_is_refused():
    m = PromptTuning(tiny("bert"), TASK, length=N_SOFT, init="uniform")
    with pytest.raises(SptError, match="decoder"):
        generate(m, _batch(m, TEXTS[:1], [0]))


# -- key/value prompts: prefill the prefix, decode from the cache --------------------------


def _kv_method(cls, family: str, **kw):
    m = cls(tiny(family, hidden=64, seed=3), TASK, length=3, n_tasks=3, hidden=16, **kw).eval()
    with torch.no_grad():
        for p in m.prefix.parameters():
            p.normal_(0, 2, generator=torch.Generator().manual_seed(0))
    return m


def _plain_batch(m, texts, task_ids) -> dict:
    b = _batch(m, texts, task_ids)  # drop the soft slots: KV methods add nothing to the input
    keep = ~b["soft_mask"]
    width = int(keep.sum(1).max())
    left = m.base.arch == "decoder"
    out = {
        k: torch.zeros(len(texts), width, dtype=v.dtype)
        for k, v in b.items()
        if k in ("input_ids", "attention_mask", "soft_mask")
    }
    for i in range(len(texts)):
        ids, mask = b["input_ids"][i][keep[i]], b["attention_mask"][i][keep[i]]
        n = int(mask.sum())
        real = ids[mask.bool()]
        off = width - n if left else 0
        out["input_ids"][i, off : off + n] = real
        out["attention_mask"][i, off : off + n] = 1
    out["task_ids"] = b["task_ids"]
    return out


KV_CASES = [
    (PrefixTuning, "llama", False),
    (PTuningV2, "llama", False),
    (PrefixTuning, "t5", False),
    (PTuningV2, "t5", False),
    (PrefixTuning, "t5", True),
]


@pytest.mark.parametrize(("cls", "family", "cross"), KV_CASES)
def test_kv_prompt_cached_greedy_equals_uncached(cls, family, cross):
    m = _kv_method(cls, family, cross_attention=cross)
    batch = _plain_batch(m, TEXTS, [2, 0, 1])
    embeds = m.embed(batch)
    prefix = m.kv_prefix(batch)
    tok = m.base.tokenizer

    def cached(prefix, steps):
        stepper = _stepper(m, embeds, batch["attention_mask"], prefix, use_cache=True)
        return _greedy(stepper, len(embeds), steps, tok.pad_token_id, tok.eos_token_id)

    got, got_logits = cached(prefix, 6)
    ref, ref_logits = greedy_reference(m, batch, max_new_tokens=6)
    assert torch.equal(got, ref)
    for step, (a, b) in enumerate(zip(got_logits, ref_logits, strict=True)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=f"step {step}")
    # the task's prefix matters, and mixed rows decode as if alone
    _, other_logits = cached(m.kv_prefix({**batch, "task_ids": torch.tensor([0, 0, 0])}), 1)
    assert not torch.allclose(other_logits[0][0], got_logits[0][0])
    for i, t in enumerate([2, 0, 1]):
        alone = generate(m, _plain_batch(m, [TEXTS[i]], [t]), max_new_tokens=6)
        assert torch.equal(got[i, : alone.shape[1]], alone[0]), f"row {i}"


@pytest.mark.parametrize(("cls", "family", "cross"), KV_CASES)
def test_kv_prompt_beam_search_same_with_and_without_cache(cls, family, cross):
    m = _kv_method(cls, family, cross_attention=cross)
    batch = _plain_batch(m, TEXTS, [2, 0, 1])
    a = generate(m, batch, max_new_tokens=6, num_beams=3)
    b = generate(m, batch, max_new_tokens=6, num_beams=3, use_cache=False)
    assert torch.equal(a, b)
    for i, t in enumerate([2, 0, 1]):  # beams of one row never see another row's prefix
        alone = generate(m, _plain_batch(m, [TEXTS[i]], [t]), max_new_tokens=6, num_beams=3)
        assert torch.equal(a[i, : alone.shape[1]], alone[0]), f"row {i}"


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_input_prompts_decode_through_hugging_face_and_prefixes_through_spt(family):
    """generate() hands input-level prompts to HF ``generate`` (which takes
    ``inputs_embeds``) and key/value prompts to spt's own loops (HF cannot start from a
    pre-filled cache); the comparison with HF above is only a comparison if this holds."""
    calls = []
    for cls in (PromptTuning, PrefixTuning):
        m = (
            _method(family)
            if cls is PromptTuning
            else cls(tiny(family, hidden=64, seed=3), TASK, length=2, hidden=8).eval()
        )
        batch = (
            _batch(m, TEXTS[:1], [0]) if cls is PromptTuning else _plain_batch(m, TEXTS[:1], [0])
        )
        hf = m.backbone.generate
        m.backbone.generate = lambda *a, _hf=hf, _cls=cls, **k: calls.append(_cls) or _hf(*a, **k)
        generate(m, batch, max_new_tokens=2)
    assert calls == [PromptTuning]


@pytest.mark.parametrize("family", ["llama", "t5"])
@pytest.mark.parametrize("eos", [None, "frequent"])
def test_own_beam_search_matches_hugging_face(family, eos):
    """spt's beam loop (the one key/value prompts need) agrees with HF generate's beam search
    on an input-level prompt, with and without hypotheses ending early."""
    m = _method(family)
    batch = _batch(m, TEXTS, [0, 1, 2])
    tok = m.base.tokenizer
    if eos == "frequent":  # EOS as a near-copy of a token greedy picks, so beams do finish
        head = m.backbone.get_output_embeddings()  # untied: inputs keep their embeddings
        head.weight = torch.nn.Parameter(head.weight.detach().clone(), requires_grad=False)
        w = head.weight
        with torch.no_grad():
            w[tok.pad_token_id] = 0  # the tiny T5 otherwise only ever emits pad
            common = generate(m, batch, max_new_tokens=3).flatten().mode().values
            w[tok.eos_token_id] = w[common] * 0.999  # the runner-up
    lp = -1.0 if eos == "frequent" else 1.0  # < 0 favours short, finished hypotheses
    ours = beam_search(m, batch, num_beams=3, max_new_tokens=6, length_penalty=lp)
    hf = generate(m, batch, max_new_tokens=6, num_beams=3, length_penalty=lp)
    width = max(ours.shape[1], hf.shape[1])
    pad = tok.pad_token_id
    ours, hf = (
        _after_eos(
            torch.nn.functional.pad(x, (0, width - x.shape[1]), value=pad), tok.eos_token_id, pad
        )
        for x in (ours, hf)
    )
    assert torch.equal(ours, hf)
    if eos == "frequent":
        assert (ours == tok.eos_token_id).any(), "the test should exercise finished beams"


def _after_eos(tokens: torch.Tensor, eos: int, pad: int) -> torch.Tensor:
    """Everything after a row's first EOS set to pad (HF fills it with EOS or pad)."""
    seen = (tokens == eos).long().cumsum(1)
    after = (seen - (tokens == eos).long()) > 0
    return tokens.masked_fill(after, pad)


def test_beam_search_with_one_beam_is_greedy():
    m = _kv_method(PrefixTuning, "llama")
    batch = _plain_batch(m, TEXTS, [0, 1, 2])
    greedy = generate(m, batch, max_new_tokens=5)
    beam = beam_search(m, batch, num_beams=1, max_new_tokens=5)
    assert torch.equal(greedy, beam[:, : greedy.shape[1]])


def test_t5_cross_prefix_alone_is_kept_in_the_cache():
    """A cross-attention prefix with no decoder self-attention prefix: cached decoding keeps
    it (an empty self-attention half must not drop the cache) and equals the uncached path."""
    m = _kv_method(PrefixTuning, "t5", cross_attention=True)
    batch = _plain_batch(m, TEXTS, [2, 0, 1])
    embeds = m.embed(batch)
    enc, _, cross = m.kv_prefix(batch)
    tok = m.base.tokenizer
    out = []
    for use_cache in (True, False):
        stepper = _stepper(m, embeds, batch["attention_mask"], (enc, None, cross), use_cache)
        out.append(_greedy(stepper, len(embeds), 4, tok.pad_token_id, tok.eos_token_id)[1])
    for a, b in zip(*out, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


# -- sampling ----------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_own_sampling_matches_hugging_face(family):
    """spt's sampling loop (the one key/value prompts need) draws the same tokens as HF
    ``generate(do_sample=True)`` from the same seed, with temperature, top-k and top-p."""
    from spt.core.generate import sample

    m = _method(family)
    batch = _batch(m, TEXTS, [0, 1, 2])
    settings = {"temperature": 1.7, "top_p": 0.9, "top_k": 40}
    torch.manual_seed(7)
    ours = sample(m, batch, max_new_tokens=6, **settings)
    torch.manual_seed(8)
    other = sample(m, batch, max_new_tokens=6, **settings)
    assert other.shape != ours.shape or not torch.equal(other, ours), "the seed matters"
    torch.manual_seed(7)
    hf = generate(m, batch, max_new_tokens=6, do_sample=True, **settings)
    tok = m.base.tokenizer
    width = max(ours.shape[1], hf.shape[1])
    ours, hf = (
        _after_eos(
            torch.nn.functional.pad(x, (0, width - x.shape[1]), value=tok.pad_token_id),
            tok.eos_token_id,
            tok.pad_token_id,
        )
        for x in (ours, hf)
    )
    assert torch.equal(ours, hf)


@pytest.mark.parametrize(("cls", "family", "cross"), KV_CASES)
def test_sampling_from_a_tiny_nucleus_is_greedy(cls, family, cross):
    """top_p so small that one token survives: sampling must then be the greedy choice, on
    key/value prompts (spt's loop) and input prompts (HF's)."""
    m = _kv_method(cls, family, cross_attention=cross)
    batch = _plain_batch(m, TEXTS, [1, 0, 1])
    greedy = generate(m, batch, max_new_tokens=5)
    sampled = generate(m, batch, max_new_tokens=5, do_sample=True, top_p=1e-9)
    assert torch.equal(sampled, greedy)
    m2 = _method(family)
    batch2 = _batch(m2, TEXTS, [0, 1, 2])
    assert torch.equal(
        generate(m2, batch2, max_new_tokens=5, do_sample=True, top_p=1e-9),
        generate(m2, batch2, max_new_tokens=5),
    )


@pytest.mark.parametrize(
    ("settings", "names"),
    [
        ({"do_sample": True, "num_beams": 2}, "num_beams=2"),
        ({"do_sample": True, "temperature": 0.0}, "temperature=0.0"),
        ({"do_sample": True, "top_p": 0.0}, "top_p=0.0"),
        ({"do_sample": True, "top_k": -1}, "top_k=-1"),
        ({"max_new_tokens": 0}, "max_new_tokens=0"),
    ],
)
def test_meaningless_decoding_settings_are_refused_by_name(settings, names):
    m = _method("llama")
    with pytest.raises(SptError, match=names):
        generate(m, _batch(m, TEXTS[:1], [0]), **settings)

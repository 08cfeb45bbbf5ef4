"""Prompt Tuning (Lester et al. 2021) on the three tiny families: inits, the frozen-backbone
contract, checkpoints, mixed-task batches, scoring, dtypes and input validation."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from spt.backbones import tiny
from spt.backbones.archs import arch_ops
from spt.backbones.decoder import Decoder
from spt.backbones.encoder_decoder import EncoderDecoder
from spt.core import inits
from spt.core.artifact import save_artifact
from spt.data.task import TaskInfo
from spt.errors import SptError
from spt.methods.prompt import PromptTuning

FAMILIES = ("bert", "llama", "t5")
TASK = TaskInfo(
    name="t",
    label_names=("neg", "pos"),
    label_words=("bad", "great"),
    metrics=("acc",),
    num_classes=2,
)
# One token per label word on the byte-level tiny tokenizer: after a template ending in a space
# the word brings no space byte of its own.
SINGLE_TOKEN_TASK = TaskInfo(
    name="s",
    label_names=("neg", "pos"),
    label_words=("a", "b"),
    metrics=("acc",),
    num_classes=2,
    label_after_space=True,
)
TEXTS = ["a fine film", "dull", "not bad at all, really"]
PAD = 0


pytestmark = pytest.mark.usefixtures("one_thread")


def optimizer():
    return functools.partial(torch.optim.AdamW, lr=0.1)


def build(family="llama", backbone=None, task=TASK, length=4, init="uniform", **kw):
    bb = backbone or tiny(family)
    return PromptTuning(bb, task=task, length=length, init=init, optimizer=optimizer(), **kw)


def make_batch(backbone, texts, length, task_ids=None, labels=None) -> dict:
    """The data module's batch contract: soft slots (pad ids) right after the leading special
    token (if any); left padding for decoders, right padding otherwise."""
    tok = backbone.tokenizer
    rows = []
    for text in texts:
        ids = tok(text)["input_ids"]
        start = 1 if ids and ids[0] == tok.bos_token_id else 0
        rows.append((ids[:start] + [PAD] * length + ids[start:], start))
    b, width = len(rows), max(len(r) for r, _ in rows)
    input_ids = torch.full((b, width), PAD, dtype=torch.long)
    attention = torch.zeros((b, width), dtype=torch.long)
    soft = torch.zeros((b, width), dtype=torch.bool)
    left = backbone.arch == "decoder"
    for i, (ids, start) in enumerate(rows):
        off = width - len(ids) if left else 0
        input_ids[i, off : off + len(ids)] = torch.tensor(ids)
        attention[i, off : off + len(ids)] = 1
        soft[i, off + start : off + start + length] = True
    return {
        "input_ids": input_ids,
        "attention_mask": attention,
        "soft_mask": soft,
        "labels": torch.tensor(labels if labels is not None else [i % 2 for i in range(b)]),
        "task_ids": torch.tensor(task_ids if task_ids is not None else [0] * b),
    }


def test_make_batch_contract():
    for family, left in (("llama", True), ("t5", False), ("bert", False)):
        bb = tiny(family)
        batch = make_batch(bb, ["ab", "abcdef"], 3)
        assert (batch["soft_mask"].sum(1) == 3).all()
        assert bool((batch["attention_mask"].bool() | ~batch["soft_mask"]).all())
        first_col = batch["attention_mask"][:, 0]
        assert (first_col.tolist() == [0, 1]) if left else (first_col.tolist() == [1, 1])


def _rows_in_embedding(rows: torch.Tensor, emb: torch.Tensor) -> list[set[int]]:
    """For each row, the ids of embedding rows exactly equal to it."""
    return [set((emb == r).all(-1).nonzero().flatten().tolist()) for r in rows]


def _pool(m, top_k):
    emb = m.base.input_embeddings.weight
    return set(
        inits.frequent_token_ids(
            m.base.tokenizer, top_k, None, m.base.vocab_sorted_by_frequency, max_id=emb.shape[0]
        ).tolist()
    )


def _label_ids_for_init(bb) -> list[list[int]]:
    """Label words as the class_labels init averages them: decoder-style " word" tokens for
    encoder-only and decoder-only models, the seq2seq target without its eos for T5."""
    words = list(TASK.label_words)
    if bb.arch == "encoder-decoder":
        lists = arch_ops("encoder-decoder").label_tokens(bb.tokenizer, words).lists()
        return [[i for i in ids if i != bb.tokenizer.eos_token_id] for ids in lists]
    return arch_ops("decoder").label_tokens(bb.tokenizer, words).lists()


# -- construction, forward and the inits -------------------------------------------------
@pytest.mark.parametrize("init", ["uniform", "sampled_vocab", "class_labels", "text", "file"])
@pytest.mark.parametrize("family", FAMILIES)
def test_init_and_forward(family, init, tmp_path):
    bb = tiny(family)
    length, top_k = 5, 20
    emb = bb.input_embeddings.weight.detach().float()
    kw = {"vocab_top_k": top_k}
    source = None
    if init == "text":
        kw["init_text"] = "abc"
    if init == "file":
        source = build(backbone=tiny(family), length=length, init="sampled_vocab", seed=3)
        g = torch.Generator().manual_seed(7)
        with torch.no_grad():
            source.prompt.weight.copy_(torch.randn(source.prompt.weight.shape, generator=g))
            if source.objective.head is not None:
                for p in source.objective.head.parameters():
                    p.copy_(torch.randn(p.shape, generator=g))
        kw["init_file"] = str(
            save_artifact(
                tmp_path / "src.safetensors", source.artifact_tensors(), source.artifact_meta()
            )
        )
    m = build(backbone=bb, length=length, init=init, **kw).eval()

    scores = m(make_batch(bb, TEXTS[:2], length))
    assert scores.shape == (2, 2)
    assert torch.isfinite(scores).all()

    w = m.prompt.weight.detach()
    assert w.shape == (1, length, bb.hidden_size) and w.dtype == torch.float32
    rows = w[0]
    if init == "uniform":
        assert rows.min() >= -0.5 and rows.max() <= 0.5
        assert rows.min() < -0.4 and rows.max() > 0.4 and rows.std() > 0.2  # spread, not zeros
    elif init == "sampled_vocab":
        pool = _pool(m, top_k)
        for found in _rows_in_embedding(rows, emb):
            assert found and found <= pool, found
    elif init == "class_labels":
        label_ids = _label_ids_for_init(bb)
        for c, ids in enumerate(label_ids):
            assert torch.allclose(rows[c], emb[ids].mean(0), atol=1e-6), c
        pool = _pool(m, top_k)
        for found in _rows_in_embedding(rows[len(label_ids) :], emb):
            assert found and found <= pool, found
    elif init == "text":
        ids = bb.tokenizer("abc", add_special_tokens=False)["input_ids"]
        assert len(ids) == 3
        expected = emb[[ids[i % 3] for i in range(length)]]
        assert torch.equal(rows, expected)
    else:
        assert torch.equal(w, source.prompt.weight.detach())
        if family == "bert":
            for (n, p), (_, q) in zip(
                m.objective.head.named_parameters(),
                source.objective.head.named_parameters(),
                strict=True,
            ):
                assert torch.equal(p, q), n
        else:
            assert m.objective.head is None


def test_frequent_token_ids_counts_texts():
    tok = tiny("bert").tokenizer
    z = tok("z", add_special_tokens=False)["input_ids"][0]
    q = tok("q", add_special_tokens=False)["input_ids"][0]
    ranked = inits.frequent_token_ids(
        tok, k=10, texts=["zzzzzz", "q zz q", "ab"], sorted_by_frequency=False
    )
    assert ranked.tolist()[:2] == [z, q]  # 8 z's, then 2 q's
    assert len(ranked) == 10 and len(set(ranked.tolist())) == 10  # topped up, no repeats
    assert not set(ranked.tolist()) & set(tok.all_special_ids)
    by_id = inits.frequent_token_ids(tok, k=10, sorted_by_frequency=True)
    assert by_id.tolist() == sorted(by_id.tolist())
    assert not set(by_id.tolist()) & set(tok.all_special_ids)


# -- the frozen-backbone contract under a real optimizer step ---------------------------------
def _trainer(tmp_path, max_steps):
    return L.Trainer(
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
        default_root_dir=str(tmp_path),
        log_every_n_steps=1,
    )


def _loader(batches):
    return DataLoader(batches, batch_size=1, collate_fn=lambda x: x[0])


def _own_keys(family):
    return {"prompt.weight"} | (
        {"objective.head.1.weight", "objective.head.1.bias"} if family == "bert" else set()
    )


@pytest.fixture(scope="module", params=FAMILIES)
def stepped(request, tmp_path_factory):
    """One real AdamW step through Lightning, with the backbone state before and after."""
    family = request.param
    tmp = tmp_path_factory.mktemp(f"fit-{family}")
    bb = tiny(family)
    m = build(backbone=bb, length=4, init="sampled_vocab")
    batches = [
        make_batch(bb, TEXTS[:2], 4, labels=[0, 1]),
        make_batch(bb, TEXTS[1:], 4, labels=[1, 0]),
    ]
    before = {k: v.clone() for k, v in m.backbone.state_dict(keep_vars=False).items()}
    prompt0 = m.prompt.weight.detach().clone()
    head0 = (
        [p.detach().clone() for p in m.objective.head.parameters()]
        if m.objective.head is not None
        else []
    )
    trainer = _trainer(tmp, 1)
    trainer.fit(m, train_dataloaders=_loader(batches))
    ckpt = tmp / "x.ckpt"
    trainer.save_checkpoint(ckpt)
    return {
        "family": family,
        "m": m,
        "bb": bb,
        "before": before,
        "prompt0": prompt0,
        "head0": head0,
        "trainer": trainer,
        "ckpt": ckpt,
        "batches": batches,
        "tmp": tmp,
    }


def test_step_leaves_backbone_untouched(stepped):
    m, before = stepped["m"], stepped["before"]
    assert stepped["trainer"].global_step == 1
    after = m.backbone.state_dict()
    assert after.keys() == before.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, changed
    assert not any(p.requires_grad for p in m.backbone.parameters())
    m.check_frozen()


def test_step_changes_prompt_and_head(stepped):
    m = stepped["m"]
    assert not torch.equal(m.prompt.weight.detach(), stepped["prompt0"])
    if stepped["family"] == "bert":
        assert all(
            not torch.equal(p.detach(), q)
            for p, q in zip(m.objective.head.parameters(), stepped["head0"], strict=True)
        )


def test_checkpoint_holds_only_trainable_state(stepped):
    ckpt, family, m = stepped["ckpt"], stepped["family"], stepped["m"]
    assert ckpt.stat().st_size < 64 * 1024, ckpt.stat().st_size
    state = torch.load(ckpt, weights_only=True, map_location="cpu")["state_dict"]
    assert set(state) == _own_keys(family)
    fresh = build(backbone=tiny(family), length=4, init="uniform", seed=5)
    assert not torch.equal(fresh.prompt.weight, m.prompt.weight)
    fresh.load_state_dict(state)
    for k, v in m.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k


def test_checkpoint_missing_prompt_is_an_error(stepped):
    state = torch.load(stepped["ckpt"], weights_only=True, map_location="cpu")["state_dict"]
    del state["prompt.weight"]
    fresh = build(backbone=tiny(stepped["family"]), length=4)
    with pytest.raises(SptError, match="prompt.weight"):
        fresh.load_state_dict(state)


def test_resume_from_checkpoint(stepped):
    family, ckpt = stepped["family"], stepped["ckpt"]
    saved = torch.load(ckpt, weights_only=True, map_location="cpu")["state_dict"]
    bb = tiny(family)
    m = build(backbone=bb, length=4, init="uniform", seed=9)
    backbone0 = {k: v.clone() for k, v in m.backbone.state_dict().items()}
    seen = {}
    original = m.load_state_dict

    def spy(state_dict, *a, **k):
        seen["keys"] = set(state_dict)
        out = original(state_dict, *a, **k)
        seen["prompt"] = m.prompt.weight.detach().clone()
        return out

    m.load_state_dict = spy
    trainer = _trainer(stepped["tmp"] / "resume", 2)
    trainer.fit(m, train_dataloaders=_loader(stepped["batches"]), ckpt_path=str(ckpt))
    assert seen["keys"] == _own_keys(family)
    assert torch.equal(seen["prompt"], saved["prompt.weight"])  # restored, then trained on
    assert trainer.global_step == 2
    assert not torch.equal(m.prompt.weight.detach(), saved["prompt.weight"])
    assert all(torch.equal(v, m.backbone.state_dict()[k]) for k, v in backbone0.items())


# -- mixed-task batches ------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_mixed_task_rows_equal_rows_alone(family):
    bb = tiny(family)
    length = 3
    m = build(backbone=bb, length=length, n_tasks=3, init="uniform").eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        m.prompt.weight.copy_(torch.randn(m.prompt.weight.shape, generator=g))
    task_ids = [2, 0, 1]
    texts = ["a", "a longer input text", "mid size"]
    with torch.no_grad():
        mixed = m(make_batch(bb, texts, length, task_ids=task_ids))
        alone = torch.cat(
            [
                m(make_batch(bb, [t], length, task_ids=[k]))
                for t, k in zip(texts, task_ids, strict=True)
            ]
        )
        all_task0 = m(make_batch(bb, texts, length, task_ids=[0, 0, 0]))
    assert mixed.shape == (3, 2)
    # atol 1e-5, plus float32 rounding of the summed log-probs (tiny T5 scores are ~ -100)
    torch.testing.assert_close(mixed, alone, atol=1e-5, rtol=1e-6)
    # The task gather matters: rows 0 and 2 (tasks 2 and 1) score differently under task 0.
    assert (mixed[[0, 2]] - all_task0[[0, 2]]).abs().max() > 1e-4


# -- scoring against manual computations ------------------------------------------------------
def _manual_decoder(model, x: torch.Tensor, ids: list[int]) -> torch.Tensor:
    """Sum of log p(label token j | x, label[:j]) on the unpadded sequence."""
    y = model.get_input_embeddings()(torch.tensor(ids))
    logits = model(inputs_embeds=torch.cat([x, y]).unsqueeze(0)).logits[0]
    logp = F.log_softmax(logits.float(), -1)
    n = x.shape[0]
    return sum(logp[n - 1 + j, t] for j, t in enumerate(ids))


def test_decoder_scores_multi_token_match_manual():
    bb = tiny("llama")
    m = build(backbone=bb, length=3, init="sampled_vocab").eval()
    assert not m.objective.labels[0].single_token
    batch = make_batch(bb, TEXTS, 3)
    with torch.no_grad():
        emb = m.embed(batch)
        scores = Decoder().label_scores(
            m.backbone, emb, batch["attention_mask"], m.objective.labels[0]
        )
        assert torch.equal(scores, m(batch))
        for i in range(len(TEXTS)):
            x = emb[i, batch["attention_mask"][i].bool()]
            for c, ids in enumerate(m.objective.labels[0].lists()):
                assert len(ids) > 1
                want = _manual_decoder(m.backbone, x, ids)
                assert abs(scores[i, c] - want) < 1e-4, (i, c, scores[i, c], want)


def test_decoder_scores_single_token_fast_path_match_manual():
    bb = tiny("llama")
    lists = (
        Decoder()
        .label_tokens(bb.tokenizer, list(SINGLE_TOKEN_TASK.label_words), after_space=True)
        .lists()
    )
    assert [len(x) for x in lists] == [1, 1]
    m = build(backbone=bb, task=SINGLE_TOKEN_TASK, length=3, init="sampled_vocab").eval()
    assert m.objective.labels[0].single_token
    batch = make_batch(bb, TEXTS, 3)
    with torch.no_grad():
        emb = m.embed(batch)
        scores = m(batch)
        for i in range(len(TEXTS)):
            x = emb[i, batch["attention_mask"][i].bool()]
            for c, ids in enumerate(lists):
                want = _manual_decoder(m.backbone, x, ids)
                assert abs(scores[i, c] - want) < 1e-4, (i, c, scores[i, c], want)


def test_seq2seq_scores_match_manual():
    bb = tiny("t5")
    m = build(backbone=bb, length=3, init="sampled_vocab").eval()
    batch = make_batch(bb, TEXTS, 3)
    lists = m.objective.labels[0].lists()
    assert lists[0][-1] == bb.tokenizer.eos_token_id and len(lists[0]) != len(lists[1])
    with torch.no_grad():
        emb = m.embed(batch)
        scores = EncoderDecoder().label_scores(
            m.backbone, emb, batch["attention_mask"], m.objective.labels[0]
        )
        assert torch.equal(scores, m(batch))
        for i in range(len(TEXTS)):
            x = emb[i, batch["attention_mask"][i].bool()].unsqueeze(0)
            for c, ids in enumerate(lists):
                out = m.backbone(inputs_embeds=x, labels=torch.tensor([ids]))
                want = -out.loss * len(ids)
                # and by hand: decoder starts from decoder_start_token_id, teacher-forced
                dec = torch.tensor([[bb.config.decoder_start_token_id] + ids[:-1]])
                logits = m.backbone(inputs_embeds=x, decoder_input_ids=dec).logits[0]
                by_hand = F.log_softmax(logits, -1)[torch.arange(len(ids)), ids].sum()
                assert abs(want - by_hand) < 1e-4
                assert abs(scores[i, c] - want) < 1e-4, (i, c, scores[i, c], want)


# -- T5 table, bf16 backbone, dropout flag --------------------------------------------------
def test_t5_prompt_table_fully_used():
    bb = tiny("t5")
    length = 6
    m = build(backbone=bb, length=length, init="sampled_vocab")
    assert tuple(m.prompt.weight.shape) == (1, length, bb.config.d_model)
    batch = make_batch(bb, TEXTS, length, labels=[0, 1, 1])
    loss = F.cross_entropy(m(batch), batch["labels"])
    loss.backward()
    grad = m.prompt.weight.grad
    assert grad is not None
    assert (grad[0].abs().sum(-1) > 0).all(), grad[0].abs().sum(-1)


def test_bf16_backbone_keeps_fp32_prompt():
    bb = tiny("llama")
    bb.model.to(torch.bfloat16)
    m = build(backbone=bb, length=3, init="sampled_vocab")
    assert m.prompt.weight.dtype == torch.float32
    m.check_frozen()
    batch = make_batch(bb, TEXTS, 3, labels=[0, 1, 1])
    scores = m(batch)
    assert scores.shape == (3, 2) and torch.isfinite(scores).all()
    F.cross_entropy(scores.float(), batch["labels"]).backward()
    grad = m.prompt.weight.grad
    assert grad is not None and grad.dtype == torch.float32 and grad.abs().sum() > 0
    assert all(p.dtype == torch.bfloat16 for p in m.backbone.parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_backbone_dropout_is_an_explicit_flag(family):
    m = build(family)
    m.train()
    assert m.training and not m.backbone.training
    assert not any(mod.training for mod in m.backbone.modules())
    if m.objective.head is not None:
        assert m.objective.head.training
    on = build(family, backbone_dropout=True)
    on.train()
    assert on.backbone.training
    on.eval()
    assert not on.backbone.training


# -- bad input ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kw", "key"),
    [
        ({"length": 0}, "method.length"),
        ({"length": -3}, "method.length"),
        ({"init": "nope"}, "method.init"),
        ({"init": "text"}, "method.init_text"),
        ({"init": "file"}, "method.init_file"),
    ],
)
def test_bad_settings_name_the_key(kw, key):
    with pytest.raises(SptError, match=key.replace(".", r"\.")):
        build("llama", **kw)


def test_task_names_must_match_n_tasks():
    with pytest.raises(SptError, match=r"method\.task_names"):
        build("llama", n_tasks=2, task_names=["a", "b", "c"])


def test_batch_with_wrong_number_of_soft_slots():
    bb = tiny("llama")
    m = build(backbone=bb, length=4).eval()
    with pytest.raises(SptError, match=r"data\.n_soft"):
        m(make_batch(bb, TEXTS, 3))


def test_init_file_from_another_base(tmp_path):
    other = build(backbone=tiny("llama", seed=1), length=4)
    path = save_artifact(tmp_path / "p", other.artifact_tensors(), other.artifact_meta())
    bb = tiny("llama", seed=0)
    with pytest.raises(SptError) as err:
        build(backbone=bb, length=4, init="file", init_file=str(path))
    msg = str(err.value)
    assert other.base.identity()["fingerprint"] in msg
    assert bb.identity()["fingerprint"] in msg
    assert msg.count("tiny-llama") >= 2


def test_init_file_of_another_length(tmp_path):
    other = build(backbone=tiny("llama"), length=4)
    path = save_artifact(tmp_path / "p", other.artifact_tensors(), other.artifact_meta())
    with pytest.raises(SptError) as err:
        build(backbone=tiny("llama"), length=5, init="file", init_file=str(path))
    assert "[1, 4, 32]" in str(err.value) and "[1, 5, 32]" in str(err.value)


@pytest.mark.parametrize(
    "template", ["{soft}Review: {sentence} Sentiment:", "{soft}Review: {sentence} Sentiment: "]
)
def test_scorer_and_data_module_tokenise_label_words_alike(template, data_dir):
    """One tokenisation of the verbalizer: the ids the method scores are the ids the data module
    sizes its label reserve by (and CPT builds its context from), also when the template ends
    in a space (the scorer then added a second one)."""
    from spt.build import build
    from tests.test_run import _compose

    cfg = _compose(
        "method=prompt",
        "model=tiny-llama",
        "data=sst2",
        f"data.root={data_dir}",
        "data.train_limit=8",
        "data.dev_limit=8",
        f"data.template='{template}'",
    )
    _, dm, m = build(cfg)
    assert m.objective.labels[0].lists() == dm.label_word_ids()
    assert dm.task.label_after_space == template.endswith(" ")


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_mean_label_score_is_the_per_token_log_probability(family):
    """data.label_score=mean: each class's summed log-probability divided by its number of
    label tokens ("bad" and "great" differ in length on the tiny byte-level tokenizer)."""
    import dataclasses

    mean_task = dataclasses.replace(TASK, label_score="mean")
    a = PromptTuning(tiny(family, hidden=64), TASK, length=4, init="uniform", seed=1).eval()
    b = PromptTuning(tiny(family, hidden=64), mean_task, length=4, init="uniform", seed=1).eval()
    batch = make_batch(a.base, TEXTS, 4)
    lengths = a.objective.labels[0].mask.sum(1)
    assert lengths[0] != lengths[1]
    torch.testing.assert_close(b(batch), a(batch) / lengths.float())


def test_label_score_must_be_sum_or_mean(data_dir):
    from spt.build import build
    from tests.test_run import _compose

    with pytest.raises(SptError, match="data.label_score='max': choose sum or mean"):
        build(
            _compose(
                "model=tiny-llama", "data=sst2", f"data.root={data_dir}", "data.label_score=max"
            )
        )

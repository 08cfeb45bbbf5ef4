"""Table-to-text data (E2E, WebNLG 2017): real files from shared/data, tiny tokenizers, offline."""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
import logging
import os
import re
import time
from pathlib import Path

import pytest
import sacrebleu
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from rouge_score import rouge_scorer

from spt import CONF_DIR
from spt.backbones.tiny_models import tiny_tokenizer
from spt.data import GenerationTaskInfo, TextToTextDataModule, generation_metrics
from spt.data.generation import reference_streams
from spt.data.tables import carve_dev, linearize_mr, linearize_triples
from spt.errors import SptError

REPO = Path(__file__).resolve().parents[1]
CONF = CONF_DIR / "data"
DATA = Path(os.environ.get("SPT_DATA_DIR") or REPO.parent / "shared" / "data")
needs_e2e = pytest.mark.skipif(
    not (DATA / "e2e" / "devset.csv").is_file(), reason=f"E2E data not found under {DATA}"
)
needs_webnlg = pytest.mark.skipif(
    not (DATA / "webnlg2017" / "train.jsonl").is_file(),
    reason=f"WebNLG data not found under {DATA}",
)
E2E_LOCAL = {
    "train": {"path": "e2e/devset.csv"},
    "dev": None,
    "test": {"path": "e2e/testset_w_refs.csv"},
}
WEBNLG_LOCAL = {s: {"path": f"webnlg2017/{s}.jsonl"} for s in ("train", "dev", "test")}
FAMILY_ARCH = {"llama": "decoder", "t5": "encoder-decoder"}
TRAIN_KEYS = {
    "input_ids": torch.long,
    "attention_mask": torch.long,
    "soft_mask": torch.bool,
    "labels": torch.long,
    "task_ids": torch.long,
}
EVAL_KEYS = {
    "input_ids": torch.long,
    "attention_mask": torch.long,
    "soft_mask": torch.bool,
    "ref_index": torch.long,
    "task_ids": torch.long,
}


def e2e(family: str = "llama", **kw) -> TextToTextDataModule:
    args = dict(
        name="e2e",
        tokenizer=tiny_tokenizer(family),
        arch=FAMILY_ARCH.get(family),
        kind="e2e",
        root=str(DATA),
        local=E2E_LOCAL,
        template="{soft}{table} Text:",
        max_source_length=512,
        max_target_length=512,
    )
    args.update(kw)
    return TextToTextDataModule(**args)


def webnlg(family: str = "llama", **kw) -> TextToTextDataModule:
    args = dict(
        name="webnlg",
        tokenizer=tiny_tokenizer(family),
        arch=FAMILY_ARCH.get(family),
        kind="webnlg",
        root=str(DATA),
        local=WEBNLG_LOCAL,
        template="{soft}{table} Text:",
        max_source_length=1024,
        max_target_length=512,
    )
    args.update(kw)
    return TextToTextDataModule(**args)


def train_batch(dm: TextToTextDataModule, n: int = 8) -> tuple[dict, list[int]]:
    """The first ``n`` train rows collated in order (the train loader itself shuffles)."""
    ds = dm._dataset("train")
    return dm.train_dataloader().collate_fn([ds[i] for i in range(n)]), list(range(n))


def _csv_rows(name: str) -> list[dict]:
    with (DATA / "e2e" / name).open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- linearisation
def test_linearisation_examples():
    assert linearize_mr("name[The Vaults], eatType[pub]") == "name : The Vaults | eatType : pub"
    assert (
        linearize_mr("name[The Vaults], priceRange[more than £30], near[Café Adriatic]")
        == "name : The Vaults | priceRange : more than £30 | near : Café Adriatic"
    )
    assert (
        linearize_triples(
            [
                ["Aarhus_Airport", "cityServed", "Aarhus"],
                ["Aarhus", "leaderName", "Jacob_Bundsgaard"],
            ]
        )
        == "Aarhus Airport : cityServed : Aarhus | Aarhus : leaderName : Jacob Bundsgaard"
    )
    with pytest.raises(SptError, match="meaning representation"):
        linearize_mr("name: The Vaults")
    with pytest.raises(SptError, match="triple"):
        linearize_triples([["a", "b"]])


# ---------------------------------------------------------------- E2E splits
@needs_e2e
def test_e2e_split_is_deterministic_mr_disjoint_and_complete():
    dm, again = e2e(), e2e()
    rows = _csv_rows("devset.csv")
    assert len(rows) == 4672 and len({r["mr"] for r in rows}) == 547
    train_mrs = {m["mr"] for m in dm.metadata("train")}
    dev_mrs = [m["mr"] for m in dm.metadata("dev")]
    assert len(dev_mrs) == len(set(dev_mrs)) == 55  # round(10% of 547) MRs, one row each
    assert len(train_mrs) == 492 and not train_mrs & set(dev_mrs)
    assert train_mrs | set(dev_mrs) == {r["mr"] for r in rows}
    # every reference of a dev MR is in dev, none of them in train
    refs_by_mr = collections.defaultdict(list)
    for r in rows:
        refs_by_mr[r["mr"]].append(r["ref"])
    assert dm.references("dev") == [refs_by_mr[m] for m in dev_mrs]
    n_dev_refs = sum(len(r) for r in dm.references("dev"))
    assert dm.num_rows("train") + n_dev_refs == 4672
    assert all(len(r) == 1 for r in dm.references("train"))
    # deterministic across instances; another split_seed gives another partition
    assert dm.metadata("dev") == again.metadata("dev")
    assert dm.sources("train") == again.sources("train")
    other = {m["mr"] for m in e2e(split_seed=1).metadata("dev")}
    assert other != set(dev_mrs) and len(other) == 55
    # train rows in file order, one per (MR, ref)
    expected = [(linearize_mr(r["mr"]), r["ref"]) for r in rows if r["mr"] in train_mrs]
    got = list(zip(dm.sources("train"), (r[0] for r in dm.references("train")), strict=True))
    assert got == expected
    assert dm.sources("train")[0] == "name : Alimentum | area : city centre | familyFriendly : no"


@needs_e2e
def test_e2e_test_split_groups_630_mrs():
    dm = e2e()
    rows = _csv_rows("testset_w_refs.csv")
    assert dm.num_rows("test") == 630 == len({r["mr"] for r in rows})
    refs = dm.references("test")
    assert sum(len(r) for r in refs) == len(rows) == 4693
    assert min(len(r) for r in refs) >= 1 and max(len(r) for r in refs) > 3  # ragged


def test_carve_dev_partitions_whole_entries():
    entries = list(range(20))
    train, dev = carve_dev(entries, 0.25, seed=3)
    assert len(dev) == 5 and sorted(train + dev) == entries and train == sorted(train)
    assert carve_dev(entries, 0.25, seed=3) == (train, dev)


# ---------------------------------------------------------------- WebNLG
@needs_webnlg
def test_webnlg_counts_and_references():
    dm = webnlg()
    entries = {
        s: [json.loads(x) for x in (DATA / "webnlg2017" / f"{s}.jsonl").open()]
        for s in ("train", "dev", "test")
    }
    n_lex = sum(len(e["lexicalizations"]) for e in entries["train"])
    assert dm.num_rows("train") == n_lex == 18102
    assert dm.num_rows("dev") == 872 and dm.num_rows("test") == 1862
    for split in ("dev", "test"):
        assert dm.references(split) == [
            [x["text"] for x in e["lexicalizations"]] for e in entries[split]
        ]
        assert dm.sources(split) == [linearize_triples(e["triples"]) for e in entries[split]]
    assert sum(len(r) for r in dm.references("dev")) == 2268
    assert sum(m["seen_category"] for m in dm.metadata("test")) == 971
    first = entries["train"][0]
    assert dm.sources("train")[: len(first["lexicalizations"])] == [
        linearize_triples(first["triples"])
    ] * len(first["lexicalizations"])
    assert dm.references("train")[0] == [first["lexicalizations"][0]["text"]]


# ---------------------------------------------------------------- batches
@needs_e2e
def test_decoder_labels_mask_prompt_soft_and_pad():
    dm = e2e("llama", n_soft=4, train_limit=64)
    tok = dm.tokenizer
    batch, idx = train_batch(dm)
    assert {k: v.dtype for k, v in batch.items()} == TRAIN_KEYS
    ids, mask, soft, labels = (
        batch[k] for k in ("input_ids", "attention_mask", "soft_mask", "labels")
    )
    assert labels.shape == ids.shape
    assert (mask.sum(1) < mask.shape[1]).any()  # really padded
    sources, refs = dm.sources("train"), dm.references("train")
    for row, i in enumerate(idx):
        prompt = dm.encoder.encode({"table": [sources[i]]}, 4, dm.max_source_length).ids[0]
        target = tok(" " + refs[i][0], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        n = int(mask[row].sum())
        start = ids.shape[1] - n  # left padding
        assert ids[row, start:].tolist() == prompt + target
        assert prompt[0] == tok.bos_token_id and prompt[-1] != tok.eos_token_id
        assert tok.decode(prompt[5:]) == sources[i] + " Text:"
        tgt_pos = torch.zeros_like(mask[row], dtype=torch.bool)
        tgt_pos[start + len(prompt) :] = True
        assert (labels[row][~tgt_pos] == -100).all()  # prompt, soft slots and padding
        assert torch.equal(labels[row][tgt_pos], ids[row][tgt_pos])
        assert labels[row][tgt_pos].tolist() == target
        assert not (soft[row] & tgt_pos).any() and int(soft[row].sum()) == 4
        assert soft[row, start + 1 : start + 5].all()  # right after <s>


@needs_webnlg
def test_encoder_decoder_labels_are_targets_right_padded():
    dm = webnlg("t5", n_soft=3, train_limit=40)
    tok = dm.tokenizer
    batch, idx = train_batch(dm)
    assert {k: v.dtype for k, v in batch.items()} == TRAIN_KEYS
    mask, labels = batch["attention_mask"], batch["labels"]
    refs, sources = dm.references("train"), dm.sources("train")
    assert labels.shape[0] == 8 and labels.shape[1] != batch["input_ids"].shape[1]
    for row, i in enumerate(idx):
        target = tok(refs[i][0], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert labels[row, : len(target)].tolist() == target
        assert (labels[row, len(target) :] == -100).all()
        n = int(mask[row].sum())
        assert mask[row, :n].all() and not mask[row, n:].any()  # right padding
        assert tok.decode(batch["input_ids"][row, 3:n]) == sources[i] + " Text:</s>"
        assert batch["soft_mask"][row, :3].all() and int(batch["soft_mask"][row].sum()) == 3


@needs_webnlg
@pytest.mark.parametrize("family", sorted(FAMILY_ARCH))
def test_eval_batches_carry_prompt_and_ref_index(family):
    dm = webnlg(family, n_soft=2, dev_limit=20, eval_batch_size=8, task_index=2)
    dm.setup("validate")
    batches = list(dm.val_dataloader())
    first = batches[0]
    assert {k: v.dtype for k, v in first.items()} == EVAL_KEYS
    assert torch.cat([b["ref_index"] for b in batches]).tolist() == list(range(20))
    assert (first["task_ids"] == 2).all() and (first["soft_mask"].sum(1) == 2).all()
    mask = first["attention_mask"]
    lengths = mask.sum(1)
    assert lengths.min() < lengths.max()
    assert (first["input_ids"][mask == 0] == 0).all()  # pad id
    left = family == "llama"
    tok, sources = dm.tokenizer, dm.sources("dev")
    for row, n in enumerate(lengths.tolist()):
        expect = torch.zeros_like(mask[row])
        if left:
            expect[-n:] = 1
        else:
            expect[:n] = 1
        assert torch.equal(mask[row], expect)
        real = first["input_ids"][row][mask[row] == 1]
        tail = " Text:" if left else " Text:</s>"  # decoders end on the prompt, T5 on </s>
        assert tok.decode(real).endswith(sources[int(first["ref_index"][row])] + tail)


@needs_e2e
def test_n_soft_set_before_setup_and_retokenized_on_change():
    dm = e2e("llama", dev_limit=6)
    dm.setup("validate")
    plain = next(iter(dm.val_dataloader()))
    assert not plain["soft_mask"].any()
    dm.n_soft = 5
    dm.setup("validate")
    soft = next(iter(dm.val_dataloader()))
    assert soft["input_ids"].shape[1] == plain["input_ids"].shape[1] + 5
    assert (soft["soft_mask"].sum(1) == 5).all()


# ---------------------------------------------------------------- truncation
@needs_e2e
def test_truncation_cuts_table_and_target_and_logs_once_per_split(caplog):
    dm = e2e(
        "llama",
        max_source_length=40,
        max_target_length=30,
        n_soft=3,
        train_limit=100,
        test_limit=50,
    )
    tok = dm.tokenizer
    tail = tok(" Text:", add_special_tokens=False)["input_ids"]
    with caplog.at_level(logging.WARNING, logger="spt.data"):
        dm.setup("fit")
        dm.setup("fit")  # cached: no second warning
        dm.setup("test")
    warnings = [r.getMessage() for r in caplog.records if r.name == "spt.data"]
    assert len(warnings) == 3, warnings
    assert re.fullmatch(
        r"e2e/train: truncated \d+ of 100 sources to max_source_length=40 and "
        r"\d+ of 100 targets to max_target_length=30",
        warnings[0],
    )
    assert warnings[1].startswith("e2e/dev: truncated ") and "of 55 sources" in warnings[1]
    assert warnings[2].startswith("e2e/test: truncated ") and "of 50 sources" in warnings[2]
    ds = dm._dataset("train")
    for ids, labels in zip(ds.ids, ds.labels, strict=True):
        n_prompt = sum(1 for x in labels if x == -100)
        prompt, target = ids[:n_prompt], ids[n_prompt:]
        assert len(prompt) <= 40 and 1 <= len(target) <= 30
        assert prompt[:4] == [1, 0, 0, 0] and prompt[-len(tail) :] == tail  # template survives
    for ids in dm._dataset("test").ids:
        assert len(ids) <= 40 and ids[-len(tail) :] == tail


@needs_e2e
def test_max_source_length_too_small_is_named():
    dm = e2e(max_source_length=8, n_soft=4)
    with pytest.raises(SptError, match="max_source_length=8"):
        dm.setup("validate")


# ---------------------------------------------------------------- metrics
def test_generation_metrics_match_sacrebleu_and_rouge_single_reference():
    preds = ["the cat sat on the mat", "a quick brown fox"]
    refs = [["the cat is on the mat"], ["the quick brown fox jumps"]]
    got = generation_metrics(preds, refs)
    bleu = sacrebleu.corpus_bleu(preds, [[r[0] for r in refs]]).score
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge = [scorer.score(r[0], p)["rougeL"].fmeasure for p, r in zip(preds, refs, strict=True)]
    assert got == pytest.approx({"bleu": bleu, "rougeL": sum(rouge) / 2})
    perfect = generation_metrics([r[0] for r in refs], refs)
    assert perfect == pytest.approx({"bleu": 100.0, "rougeL": 1.0})


def test_generation_metrics_three_and_ragged_references():
    preds = ["the cat sat on the mat", "there is a pub near the river"]
    refs = [
        ["the cat is on the mat", "a cat sat on a mat", "the cat sat on the mat today"],
        ["a pub is by the river", "near the river there is a pub", "the riverside pub"],
    ]
    got = generation_metrics(preds, refs)
    streams = [[r[k] for r in refs] for k in range(3)]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge = [
        max(scorer.score(t, p)["rougeL"].fmeasure for t in r)
        for p, r in zip(preds, refs, strict=True)
    ]
    assert got == pytest.approx(
        {"bleu": sacrebleu.corpus_bleu(preds, streams).score, "rougeL": sum(rouge) / 2}
    )
    assert generation_metrics([r[1] for r in refs], refs) == pytest.approx(
        {"bleu": 100.0, "rougeL": 1.0}
    )
    # ragged: missing references are None (dropped by sacrebleu), never "" (a real empty ref)
    ragged = [refs[0][:1], refs[1]]
    assert reference_streams(ragged) == [
        [refs[0][0], refs[1][0]],
        [None, refs[1][1]],
        [None, refs[1][2]],
    ]
    direct = sacrebleu.corpus_bleu(preds, reference_streams(ragged)).score
    assert generation_metrics(preds, ragged)["bleu"] == pytest.approx(direct)
    per_segment = sacrebleu.BLEU().corpus_score(preds[:1], [[refs[0][0]]]).score
    assert sacrebleu.corpus_bleu(preds[:1], [[refs[0][0]], [None]]).score == per_segment
    with pytest.raises(SptError, match="reference lists"):
        generation_metrics(preds, refs[:1])
    with pytest.raises(SptError, match="no reference"):
        generation_metrics(preds, [refs[0], []])


@needs_webnlg
def test_task_info_and_score():
    dm = webnlg(dev_limit=5)
    task = dm.task
    assert isinstance(task, GenerationTaskInfo)
    assert task == GenerationTaskInfo("webnlg", ("bleu", "rougeL"), 512)
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.name = "x"  # type: ignore[misc]
    refs = dm.references("dev")
    assert dm.score("dev", [r[0] for r in refs]) == pytest.approx({"bleu": 100.0, "rougeL": 1.0})
    assert dm.score("dev", [refs[3][0]], ref_index=[3])["bleu"] == pytest.approx(100.0)
    assert webnlg(metrics=["rougeL"], max_new_tokens=7).task.max_new_tokens == 7


# ---------------------------------------------------------------- limits
@needs_e2e
def test_limits_are_seeded_subsets_of_rows_and_tables():
    a, b, c = (
        e2e(train_limit=30, dev_limit=7, test_limit=9, seed=1),
        e2e(train_limit=30, dev_limit=7, test_limit=9, seed=1),
        e2e(train_limit=30, dev_limit=7, test_limit=9, seed=2),
    )
    assert a.num_rows("train") == 30 and a.num_rows("dev") == 7 and a.num_rows("test") == 9
    assert a.sources("train") == b.sources("train") != c.sources("train")
    assert a.references("test") == b.references("test") != c.references("test")
    full = e2e()
    full_dev = dict(zip(full.sources("dev"), full.references("dev"), strict=True))
    for src, refs in zip(a.sources("dev"), a.references("dev"), strict=True):
        assert full_dev[src] == refs  # a limited eval split keeps whole MRs with every ref
    assert len(a.train_texts(limit=5)) == 5


# ---------------------------------------------------------------- YAML configs
def test_yamls_have_a_comment_on_every_key():
    for name in ("e2e", "webnlg"):
        for line in (CONF / f"{name}.yaml").read_text().splitlines():
            if re.match(r"^\s*[\w\"]+:", line):
                assert "  # " in line, f"{name}.yaml: key without a comment: {line!r}"


@pytest.mark.parametrize(
    ("name", "family", "counts"),
    [
        pytest.param("e2e", "llama", (4265, 55, 630), marks=needs_e2e),
        pytest.param("webnlg", "t5", (18102, 872, 1862), marks=needs_webnlg),
    ],
)
def test_yaml_instantiates_as_the_run_does(name, family, counts, monkeypatch):
    monkeypatch.setenv("SPT_DATA_DIR", str(DATA))
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    assert cfg.root == str(DATA)
    dm = instantiate(cfg, _partial_=True)(
        tokenizer=tiny_tokenizer(family), arch=FAMILY_ARCH[family]
    )
    assert isinstance(dm, TextToTextDataModule) and dm.task.name == name
    assert tuple(dm.num_rows(s) for s in ("train", "dev", "test")) == counts
    dm.n_soft = 2
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    assert {k: v.dtype for k, v in batch.items()} == EVAL_KEYS
    assert batch["input_ids"].shape[1] <= cfg.max_source_length
    assert (batch["soft_mask"].sum(1) == 2).all()


def test_yaml_root_defaults_to_null_without_env(monkeypatch):
    monkeypatch.delenv("SPT_DATA_DIR", raising=False)
    for name in ("e2e", "webnlg"):
        assert OmegaConf.load(CONF / f"{name}.yaml").root is None


# ---------------------------------------------------------------- errors
def test_missing_root_names_path_and_env(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(SptError) as err:
        e2e(root=str(missing))
    assert str(missing) in str(err.value) and "SPT_DATA_DIR" in str(err.value)
    with pytest.raises(SptError) as err:  # root exists, file does not
        e2e(root=str(tmp_path))
    assert str(tmp_path / "e2e" / "devset.csv") in str(err.value)
    assert "SPT_DATA_DIR" in str(err.value)


def test_encoder_arch_is_refused():
    with pytest.raises(SptError, match="needs a decoder"):
        e2e("bert", arch="encoder")
    with pytest.raises(SptError, match="arch"):
        e2e(arch="rnn")


def test_bad_kind_and_template_are_named():
    with pytest.raises(SptError, match="data.kind"):
        e2e(kind="csv")
    with pytest.raises(SptError, match="text_fields"):
        e2e(template="{soft}{mr} Text:")


def test_hub_fallback_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    hub = {
        s: {"path": "GEM/e2e_nlg", "split": h}
        for s, h in (("train", "train"), ("dev", "validation"), ("test", "test"))
    }
    dm = e2e(root=None, hub=hub)
    start = time.monotonic()
    with pytest.raises(SptError) as err:
        dm.setup("fit")
    assert time.monotonic() - start < 10
    msg = str(err.value)
    assert "GEM/e2e_nlg" in msg and "failed" in msg and "offline mode" in msg
    assert "SPT_DATA_DIR=" in msg and "data.root=" in msg


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_lm_loss_equals_the_models_own_loss(family):
    """spt's text-to-text loss (which also takes prefixes) is the usual shifted token
    cross-entropy: with no prompt it equals Hugging Face's ``labels=`` loss on a real batch."""
    from spt.backbones import tiny
    from spt.backbones.archs import arch_ops

    dm = e2e(family)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    backbone = tiny(family, hidden=64, seed=1)
    model = backbone.model.eval()
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    embeds = model.get_input_embeddings()(ids)
    ours = arch_ops(FAMILY_ARCH[family]).lm_loss(model, embeds, mask, labels)
    if family == "llama":
        from spt.backbones.arch import position_ids

        theirs = model(
            input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), labels=labels
        ).loss
    else:
        theirs = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)

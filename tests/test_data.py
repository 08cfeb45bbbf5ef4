"""Text-classification data: real files from shared/data, tiny byte-level tokenizers, offline."""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import re
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from spt import CONF_DIR
from spt.backbones.tiny_models import tiny_tokenizer
from spt.data import TaskInfo, TextClassificationDataModule
from spt.data.loaders import EpochShuffle
from spt.data.template import TemplateEncoder, fit_lengths, space_mode
from spt.errors import SptError

REPO = Path(__file__).resolve().parents[1]
CONF = CONF_DIR / "data"
DATA = Path(os.environ.get("SPT_DATA_DIR") or REPO.parent / "shared" / "data")
needs_data = pytest.mark.skipif(
    not (DATA / "sst2" / "dev.tsv").is_file(), reason=f"benchmark data not found under {DATA}"
)
BATCH_KEYS = {
    "input_ids": torch.long,
    "attention_mask": torch.long,
    "soft_mask": torch.bool,
    "labels": torch.long,
    "task_ids": torch.long,
}
SST2_LOCAL = {
    split: {
        "path": f"sst2/{split}.tsv",
        "format": "tsv",
        "quoting": "none",
        "fields": {"sentence": "sentence"},
        "label": "label",
        "label_map": {0: "negative", 1: "positive"},
    }
    for split in ("train", "dev")
}


def sst2(family: str = "bert", arch: str = "encoder", **kw) -> TextClassificationDataModule:
    args = dict(
        name="sst2",
        tokenizer=tiny_tokenizer(family),
        arch=arch,
        root=str(DATA),
        local=SST2_LOCAL,
        text_fields=["sentence"],
        template="{soft}Review: {sentence} Sentiment:",
        label_names=["negative", "positive"],
        label_words=["negative", "positive"],
    )
    args.update(kw)
    return TextClassificationDataModule(**args)


def first_batch(dm: TextClassificationDataModule, loader: str = "val") -> dict[str, torch.Tensor]:
    return next(iter(getattr(dm, f"{loader}_dataloader")()))


# ---------------------------------------------------------------- the seven YAML configs
EXPECTED = {  # SOURCE.md: train rows, dev rows, dev label counts by label name
    "sst2": (67349, 872, {"negative": 428, "positive": 444}),
    "rte": (2490, 277, {"entailment": 146, "not_entailment": 131}),
    "cb": (250, 56, {"entailment": 23, "contradiction": 28, "neutral": 5}),
    "boolq": (32, 3270, {"false": 1237, "true": 2033}),
    "copa": (400, 100, {"choice1": 55, "choice2": 45}),
    "agnews": (10001, 7600, {"World": 1900, "Sports": 1900, "Business": 1900, "Sci/Tech": 1900}),
    "trec": (5452, 500, {"ABBR": 9, "DESC": 138, "ENTY": 94, "HUM": 65, "LOC": 81, "NUM": 113}),
}
FAMILIES = {"bert": "encoder", "llama": "decoder", "t5": "encoder-decoder"}


def test_every_data_yaml_is_covered_and_commented():
    names = sorted(
        p.stem for p in CONF.glob("*.yaml") if "TextClassificationDataModule" in p.read_text()
    )
    assert names == sorted(EXPECTED)
    for path in CONF.glob("*.yaml"):
        for line in path.read_text().splitlines():
            if re.match(r"^\s*[\w\"]+:", line):
                assert "  # " in line, f"{path.name}: key without a comment: {line!r}"


@needs_data
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_yaml_instantiates_with_documented_rows_and_batch(name, monkeypatch):
    monkeypatch.setenv("SPT_DATA_DIR", str(DATA))
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(config_name=name)
    assert cfg.root == str(DATA)  # ${oc.env:SPT_DATA_DIR,null}
    family = ["bert", "llama", "t5"][sorted(EXPECTED).index(name) % 3]
    dm = instantiate(cfg, tokenizer=tiny_tokenizer(family), arch=FAMILIES[family])
    n_train, n_dev, dev_counts = EXPECTED[name]
    assert dm.num_rows("train") == n_train
    assert dm.num_rows("dev") == n_dev
    task = dm.task
    assert task.num_classes == len(dev_counts) == len(task.label_words)
    assert set(task.label_names) == set(dev_counts)
    if name == "cb":
        assert task.metrics == ("acc", "f1_macro")
    counts = collections.Counter(dm._rows("dev").labels)
    assert {task.label_names[i]: c for i, c in counts.items()} == dev_counts

    dm.n_soft = 3
    dm.setup("validate")
    batch = first_batch(dm)
    assert {k: v.dtype for k, v in batch.items()} == BATCH_KEYS
    b, length = batch["input_ids"].shape
    assert b == min(cfg.eval_batch_size, n_dev) and length <= cfg.max_length
    for key in ("attention_mask", "soft_mask"):
        assert batch[key].shape == (b, length)
    assert batch["labels"].shape == batch["task_ids"].shape == (b,)
    assert (batch["soft_mask"].sum(1) == 3).all()
    assert (batch["task_ids"] == 0).all()
    assert ((batch["labels"] >= 0) & (batch["labels"] < task.num_classes)).all()


def test_yaml_root_defaults_to_null_without_env(monkeypatch):
    monkeypatch.delenv("SPT_DATA_DIR", raising=False)
    assert OmegaConf.load(CONF / "sst2.yaml").root is None


# ---------------------------------------------------------------- template and soft tokens
@needs_data
def test_soft_in_the_middle():
    dm = sst2(template="Review: {sentence} {soft} Sentiment:", n_soft=4)
    dm.setup("validate")
    batch = first_batch(dm)
    tail = dm.tokenizer(" Sentiment:", add_special_tokens=False)["input_ids"] + [2]  # + </s>
    for i in range(batch["input_ids"].shape[0]):
        ids, soft = batch["input_ids"][i], batch["soft_mask"][i]
        pos = soft.nonzero().flatten().tolist()
        assert len(pos) == 4 and pos == list(range(pos[0], pos[0] + 4))  # one contiguous block
        assert (ids[soft] == dm.tokenizer.pad_token_id).all()
        assert batch["attention_mask"][i][soft].all()  # soft slots are attended
        n = int(batch["attention_mask"][i].sum())
        assert ids[pos[-1] + 1 : n].tolist() == tail  # the block sits right before " Sentiment:"
        assert pos[0] > 1 + len(dm.tokenizer("Review: ", add_special_tokens=False)["input_ids"])


@needs_data
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_soft_slots_anywhere_with_counts(family):
    """P-tuning places prompts anywhere: {soft:N} slots, filled in order."""
    dm = sst2(
        family=family,
        arch=FAMILIES[family],
        n_soft=3,
        template="{soft:2}Review: {sentence} {soft:1} Sentiment:",
    )
    dm.setup("validate")
    batch = first_batch(dm)
    tail = dm.tokenizer(" Sentiment:", add_special_tokens=False)["input_ids"]
    for i in range(batch["input_ids"].shape[0]):
        soft, mask = batch["soft_mask"][i], batch["attention_mask"][i]
        pos = soft.nonzero().flatten().tolist()
        first_real = int(mask.nonzero()[0])
        assert len(pos) == 3 and pos[1] == pos[0] + 1 and pos[2] > pos[1] + 1
        assert pos[0] == first_real + (1 if family in ("bert", "llama") else 0)  # after <s>
        after = batch["input_ids"][i, pos[2] + 1 : pos[2] + 1 + len(tail)].tolist()
        assert after == tail


@pytest.mark.parametrize(
    ("template", "n_soft", "needle"),
    [
        ("{soft:2}Review: {sentence} {soft:1} Sentiment:", 4, "add up to 4"),
        ("{soft}Review: {sentence} {soft} Sentiment:", 2, "give each a count"),
        ("{soft:0}Review: {sentence}", 0, "count >= 1"),
    ],
)
def test_bad_soft_slots_are_named(template, n_soft, needle, data_dir):
    with pytest.raises(SptError, match=needle):
        dm = sst2(template=template, n_soft=n_soft)
        dm.setup("validate")


@needs_data
@pytest.mark.parametrize(
    "template", ["{soft}Review: {sentence} Sentiment:", "Review: {sentence} Sentiment:"]
)
def test_soft_at_start_or_implicit_follows_special_prefix(template):
    dm = sst2(template=template)
    dm.n_soft = 5  # set after construction, before setup
    dm.setup("validate")
    soft = first_batch(dm)["soft_mask"]
    assert soft[:, 1:6].all() and soft.sum() == 5 * soft.shape[0]  # right after <s>


@needs_data
def test_n_soft_zero_inserts_nothing_and_n_soft_change_retokenizes():
    dm = sst2(template="{soft}Review: {sentence} Sentiment:")
    dm.setup("validate")
    plain = first_batch(dm)
    assert not plain["soft_mask"].any()
    text = "Review: " + dm._rows("dev").texts["sentence"][0].strip() + " Sentiment:"
    n = int(plain["attention_mask"][0].sum())
    assert plain["input_ids"][0, :n].tolist() == dm.tokenizer(text)["input_ids"]
    dm.n_soft = 2
    dm.setup("validate")
    assert first_batch(dm)["input_ids"].shape[1] == plain["input_ids"].shape[1] + 2


@needs_data
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_padding_side_follows_arch(family):
    dm = sst2(family=family, arch=FAMILIES[family], n_soft=2)
    dm.setup("validate")
    batch = first_batch(dm)
    mask = batch["attention_mask"]
    lengths = mask.sum(1)
    assert lengths.min() < lengths.max()  # the batch really is padded
    assert (batch["input_ids"][mask == 0] == 0).all()  # pad id
    left = family == "llama"
    for i, n in enumerate(lengths.tolist()):
        expect = torch.zeros_like(mask[i])
        if left:
            expect[mask.shape[1] - n :] = 1
        else:
            expect[:n] = 1
        assert torch.equal(mask[i], expect)
        start = mask.shape[1] - n if left else 0  # soft block keeps its place in the row
        bos = 0 if family == "t5" else 1
        assert batch["soft_mask"][i, start + bos : start + bos + 2].all()


# ---------------------------------------------------------------- truncation
def test_fit_lengths_cuts_longest_first():
    assert fit_lengths([10, 3], 8) == [5, 3]
    assert fit_lengths([5, 5], 6) == [3, 3]
    assert fit_lengths([7, 2, 9], 12) == [5, 2, 5]
    assert fit_lengths([10, 10], 5) == [3, 2]
    assert fit_lengths([1, 2], 10) == [1, 2]


@needs_data
def test_truncation_keeps_template_and_logs_once_per_split(caplog):
    dm = sst2(
        family="llama", arch="decoder", max_length=40, n_soft=5, label_reserve=3, train_limit=300
    )
    tok = dm.tokenizer
    head = [1] + [0] * 5 + tok("Review: ", add_special_tokens=False)["input_ids"]
    tail = tok(" Sentiment:", add_special_tokens=False)["input_ids"]
    with caplog.at_level(logging.WARNING, logger="spt.data"):
        dm.setup("fit")
        dm.setup("fit")  # cached: no second warning
    warnings = [r.getMessage() for r in caplog.records if r.name == "spt.data"]
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("sst2/train: truncated ") and "of 300 inputs" in warnings[0]
    assert warnings[1].startswith("sst2/dev: truncated ") and "of 872 inputs" in warnings[1]
    assert all(w.endswith("to max_length=40") for w in warnings)
    for split in ("train", "dev"):
        for ids in dm._dataset(split).ids:
            assert len(ids) + 3 <= 40
            assert ids[: len(head)] == head and ids[-len(tail) :] == tail


@needs_data
def test_truncation_of_two_fields_keeps_both():
    dm = TextClassificationDataModule(
        name="rte",
        tokenizer=tiny_tokenizer("t5"),
        arch="encoder-decoder",
        root=str(DATA),
        local={
            s: {
                "path": f"superglue/rte/{f}.jsonl",
                "label": "label",
                "fields": {"p": "premise", "h": "hypothesis"},
            }
            for s, f in (("train", "train"), ("dev", "val"))
        },
        text_fields=["p", "h"],
        template="{p} Question: {h}",
        label_names=["entailment", "not_entailment"],
        label_words=["yes", "no"],
        max_length=100,
    )
    dm.setup("validate")
    ds = dm._dataset("dev")
    assert max(len(x) for x in ds.ids) == 100
    # row 0: the long premise is cut to make room, the short hypothesis stays whole
    premise, hyp = (dm._rows("dev").texts[f][0].strip() for f in ("p", "h"))
    text = dm.tokenizer.decode(ds.ids[0])
    assert len(ds.ids[0]) == 100 and len(premise) > 100
    assert text.endswith(f" Question: {hyp}</s>")
    assert premise.startswith(text[: text.index(" Question: ")])


@needs_data
def test_template_that_cannot_fit_names_max_length():
    dm = sst2(max_length=12)
    with pytest.raises(SptError, match="max_length=12"):
        dm.setup("validate")


# ---------------------------------------------------------------- whitespace between pieces
def _word_tokenizer(pre, vocab: list[str], norm=None) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["<unk>", *vocab])}, "<unk>"))
    tok.pre_tokenizer = pre
    if norm is not None:
        tok.normalizer = norm
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


@pytest.mark.parametrize("kind", ["byte", "bpe_like", "sentencepiece_like"])
@pytest.mark.parametrize(
    ("template", "fields", "whole"),
    [
        ("Review: {a} Sentiment:", {"a": "great movie "}, "Review: great movie Sentiment:"),
        ("{soft}{a} {b} Sentiment:", {"a": " great", "b": "movie"}, "great movie Sentiment:"),
    ],
)
def test_pieces_join_like_the_whole_string(kind, template, fields, whole):
    words = ["Review", ":", "hello", "world", "great", "movie", "Sentiment"]
    if kind == "byte":
        tok, mode = tiny_tokenizer("llama"), "keep"
    elif kind == "bpe_like":  # GPT-2 style: the space belongs to the next word
        vocab = [*words, "Ġ", *("Ġ" + w for w in words)]
        tok = _word_tokenizer(pre_tokenizers.ByteLevel(add_prefix_space=False), vocab)
        mode = "move"
    else:  # Llama-2 SentencePiece style: every piece gets its own word-start marker
        vocab = ["▁", "▁Review:", "▁Sentiment:", *("▁" + w for w in words)]
        norm = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tok = _word_tokenizer(pre_tokenizers.Metaspace(prepend_scheme="never"), vocab, norm)
        mode = "drop"
    assert space_mode(tok) == mode
    enc = TemplateEncoder(template, list(fields), tok)
    got = enc.encode({k: [v] for k, v in fields.items()}, n_soft=0, max_length=64).ids[0]
    assert got == tok(whole)["input_ids"]
    assert tok.convert_ids_to_tokens(got).count("<unk>") == 0


# ---------------------------------------------------------------- errors
def test_missing_root_names_path_and_env(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(SptError) as err:
        sst2(root=str(missing))
    assert str(missing) in str(err.value) and "SPT_DATA_DIR" in str(err.value)
    with pytest.raises(SptError) as err:  # root exists, file does not
        sst2(root=str(tmp_path))
    assert str(tmp_path / "sst2" / "train.tsv") in str(err.value)
    assert "SPT_DATA_DIR" in str(err.value)


def test_unmapped_label_is_named(tmp_path):
    (tmp_path / "sst2").mkdir()
    for split in ("train", "dev"):
        (tmp_path / "sst2" / f"{split}.tsv").write_text("sentence\tlabel\ngood\t1\nodd\t7\n")
    dm = sst2(root=str(tmp_path))
    with pytest.raises(SptError) as err:
        dm.setup("validate")
    msg = str(err.value)
    assert "'7'" in msg and str(tmp_path / "sst2" / "dev.tsv") in msg
    assert "data.label_names" in msg and "data.local.dev.label_map" in msg


def test_label_words_must_match_label_names():
    with pytest.raises(SptError, match="label_words"):
        sst2(label_words=["bad", "good", "meh"])


def test_bad_template_field_and_arch():
    with pytest.raises(SptError, match="text_fields"):
        sst2(template="{soft}{review} Sentiment:")
    with pytest.raises(SptError, match="arch"):
        sst2(arch="rnn")


def test_hub_fallback_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    dm = sst2(
        root=None,
        hub={
            s: {
                "path": "nyu-mll/glue",
                "name": "sst2",
                "split": s,
                "fields": {"sentence": "sentence"},
                "label": "label",
            }
            for s in ("train", "dev")
        },
    )
    start = time.monotonic()
    with pytest.raises(SptError) as err:
        dm.setup("fit")
    assert time.monotonic() - start < 10
    msg = str(err.value)
    assert "nyu-mll/glue" in msg and "failed" in msg
    assert "SPT_DATA_DIR=" in msg and "data.root=" in msg


# ---------------------------------------------------------------- subsets, task info, loaders
@needs_data
def test_train_limit_is_a_seeded_deterministic_subset():
    a = sst2(train_limit=50, seed=1).train_texts()  # works before setup
    b = sst2(train_limit=50, seed=1).train_texts()
    c = sst2(train_limit=50, seed=2).train_texts()
    assert len(a) == 50 and a == b and a != c
    assert len(sst2(dev_limit=10).train_texts(limit=7)) == 7


@needs_data
def test_train_texts_is_cached_for_setup():
    dm = sst2(train_limit=100)
    texts = dm.train_texts(limit=20)
    assert all(isinstance(t, str) and t for t in texts)
    rows = dm._rows("train")
    dm.setup("fit")
    assert dm._rows("train") is rows and len(dm._dataset("train")) == 100


@needs_data
def test_task_info_and_loaders():
    dm = sst2(
        family="llama",
        arch="decoder",
        train_limit=64,
        batch_size=8,
        task_index=3,
        label_reserve=None,
    )
    task = dm.task
    assert isinstance(task, TaskInfo)
    assert task == TaskInfo("sst2", ("negative", "positive"), ("negative", "positive"), ("acc",), 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.name = "x"  # type: ignore[misc]
    assert dm.label_reserve == max(len(x) for x in dm.label_word_ids()) == len(" positive")
    dm.setup("fit")
    assert isinstance(dm.train_dataloader().sampler, EpochShuffle)  # shuffled, resumable
    assert isinstance(dm.val_dataloader().sampler, torch.utils.data.SequentialSampler)
    val, test = first_batch(dm, "val"), first_batch(dm, "test")
    assert all(torch.equal(val[k], test[k]) for k in val)
    assert val["labels"].tolist() == dm._rows("dev").labels[:8]  # eval batch = batch_size
    assert (first_batch(dm, "train")["task_ids"] == 3).all()
    orders = []
    for seed in (7, 7, 8):  # shuffling follows the run seed (Lightning seeds torch)
        L.seed_everything(seed, verbose=False)
        orders.append(torch.cat([b["labels"] for b in dm.train_dataloader()]).tolist())
    assert orders[0] == orders[1] != orders[2]


def test_epoch_shuffle_is_a_function_of_seed_and_epoch_and_resumes_mid_epoch():
    """Each epoch a new permutation drawn from (seed, epoch) alone; an iterator restored from
    its state continues that epoch, and the next iteration is the next epoch."""
    s = EpochShuffle(10, seed=3)
    first, second = list(s), list(s)
    assert sorted(first) == list(range(10)) and first != second
    assert list(EpochShuffle(10, seed=3)) == first and list(EpochShuffle(10, seed=4)) != first
    it = iter(s)  # epoch 2
    head = [next(it) for _ in range(4)]
    state = it.state_dict()
    fresh = EpochShuffle(10, seed=3)
    resumed = iter(fresh)
    resumed.load_state_dict(state)
    assert head + list(resumed) == s.permutation(2)
    assert list(fresh) == s.permutation(3)


def test_weighted_epoch_shuffle_draws_by_weight_and_resumes():
    weights = torch.tensor([0.0, 1.0, 3.0])
    s = EpochShuffle(3000, seed=1, weights=weights.repeat_interleave(1000))
    draws = torch.tensor(list(s))
    assert not (draws < 1000).any()  # weight 0 never drawn
    share = (draws >= 2000).float().mean().item()
    assert 0.70 < share < 0.80  # 3/4 expected
    it = iter(EpochShuffle(3000, seed=1, weights=weights.repeat_interleave(1000)))
    it.load_state_dict({"epoch": 0, "yielded": 10})
    assert list(it) == draws.tolist()[10:]


def test_length_grouped_epochs_are_permutations_of_full_batches_with_little_padding():
    """group_by_length: every epoch is still a seeded permutation of all rows, cut by the loader
    into batches whose rows come from one length-sorted megabatch (only the last is short),
    and the padded tokens fall from random batches' to nearly the real ones."""
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(3, 60, (1000,), generator=g).tolist()
    grouped = EpochShuffle(1000, seed=3, lengths=lengths, batch_size=32)
    plain = EpochShuffle(1000, seed=3)

    def padded(order):
        return sum(32 * max(lengths[i] for i in order[s : s + 32]) for s in range(0, 1000, 32))

    first, second = list(grouped), list(grouped)
    assert sorted(first) == sorted(second) == list(range(1000)) and first != second
    assert list(EpochShuffle(1000, seed=3, lengths=lengths, batch_size=32)) == first
    batches = [first[s : s + 32] for s in range(0, 1000, 32)]
    assert [len(b) for b in batches] == [32] * 31 + [8]
    assert batches[:3] != sorted(batches[:3], key=lambda b: -lengths[b[0]])  # batches shuffled
    for b in batches[:-1]:  # each batch: a run of one megabatch's length order
        assert [lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True)
    assert padded(first) < 1.1 * sum(lengths) < 1.5 * sum(lengths) < padded(list(plain))


@needs_data
def test_group_by_length_reads_dev_longest_first_with_the_same_rows():
    plain, grouped = sst2(batch_size=16), sst2(batch_size=16, group_by_length=True)
    for dm in (plain, grouped):
        dm.setup("fit")
    assert isinstance(grouped.train_dataloader().sampler, EpochShuffle)
    assert grouped.train_dataloader().sampler.lengths is not None
    widths = [b["input_ids"].shape[1] for b in grouped.val_dataloader()]
    assert widths == sorted(widths, reverse=True)
    rows = {k: [] for k in ("plain", "grouped")}
    for k, dm in (("plain", plain), ("grouped", grouped)):
        for b in dm.val_dataloader():
            rows[k] += [
                tuple(ids[m.bool()].tolist())
                for ids, m in zip(b["input_ids"], b["attention_mask"], strict=True)
            ]
    assert sorted(rows["plain"]) == sorted(rows["grouped"])  # same rows, another order
    assert sum(widths) < sum(b["input_ids"].shape[1] for b in plain.val_dataloader())

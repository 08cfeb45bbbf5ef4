"""Task mixtures: per-row task ids and label sets in the data, per-task scoring, metrics and
heads in every classification method."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir

from spt.backbones import tiny
from spt.backbones.tiny_models import tiny_tokenizer
from spt.build import build
from spt.data import MultiTaskDataModule, TextClassificationDataModule
from spt.errors import SptError
from spt.methods.mpt import MPT
from spt.methods.prefix import PrefixTuning
from spt.methods.prompt import PromptTuning
from spt.methods.ptuning import PTuning
from spt.methods.ptuning_v2 import PTuningV2
from tests.test_run import CONF

ARCH = {"bert": "encoder", "llama": "decoder", "t5": "encoder-decoder"}


def _task(data_dir, name, fields, template, labels, words, path, label_map=None, label="label"):
    spec = {"path": path, "fields": fields, "label": label, "label_map": label_map}
    return functools.partial(
        TextClassificationDataModule,
        name=name,
        template=template,
        text_fields=list(fields),
        label_names=labels,
        label_words=words,
        root=str(data_dir),
        local={"train": spec, "dev": spec},
        train_limit=24,
        dev_limit=12,
        batch_size=4,
    )


def _mixture(data_dir, family: str, **kw) -> MultiTaskDataModule:
    sst2 = _task(
        data_dir,
        "sst2",
        {"sentence": "sentence"},
        "{soft}Review: {sentence} Sentiment:",
        ["negative", "positive"],
        ["bad", "good"],
        "sst2/dev.tsv",
        {0: "negative", 1: "positive"},
    )
    trec = _task(
        data_dir,
        "trec",
        {"question": "text"},
        "{soft}Question: {question} Type:",
        ["ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"],
        ["short", "thing", "how", "who", "where", "number"],
        "trec/train.tsv",
        label="label_coarse",
    )
    return MultiTaskDataModule(
        name="mix",
        tokenizer=tiny_tokenizer(family),
        arch=ARCH[family],
        tasks={"sst2": sst2, "trec": trec},
        batch_size=8,
        **kw,
    )


def test_mixture_batches_carry_each_rows_task(data_dir):
    dm = _mixture(data_dir, "llama")
    dm.n_soft = 2
    dm.setup("fit")
    assert dm.task.names == ["sst2", "trec"] and dm.task.metrics == ("acc",)
    seen = set()
    for batch in dm.train_dataloader():
        for t, y in zip(batch["task_ids"].tolist(), batch["labels"].tolist(), strict=True):
            assert 0 <= y < dm.task.tasks[t].num_classes
            seen.add(t)
        assert batch["soft_mask"].sum(1).eq(2).all()
    assert seen == {0, 1}
    loaders = dm.val_dataloader()
    assert [next(iter(dl))["task_ids"].unique().tolist() for dl in loaders] == [[0], [1]]


def test_temperature_flattens_the_mixture(data_dir):
    dm = _mixture(data_dir, "llama", mixing_temperature=1000.0)
    dm.children[0].limits["train"] = 4  # a 4-row task against a 24-row one
    dm.setup("fit")
    torch.manual_seed(0)
    counts = torch.zeros(2)
    for _ in range(20):
        for batch in dm.train_dataloader():
            counts += torch.bincount(batch["task_ids"], minlength=2)
    share = counts[0] / counts.sum()
    assert 0.4 < share < 0.6, share  # ~uniform over tasks, not 4/28 = 0.14


def test_bad_mixtures_are_named(data_dir):
    with pytest.raises(SptError, match="at least two tasks"):
        MultiTaskDataModule(name="m", tokenizer=tiny_tokenizer("llama"), arch="decoder", tasks={})
    with pytest.raises(SptError, match="mixing_temperature"):
        _mixture(data_dir, "llama", mixing_temperature=0.5)


METHOD_KW = {
    PromptTuning: {"length": 2, "init": "uniform"},
    PrefixTuning: {"length": 2},
    PTuning: {"length": 2},
    PTuningV2: {"length": 2},
    MPT: {"length": 2, "init": "uniform"},
}


@pytest.mark.parametrize("cls", list(METHOD_KW), ids=lambda c: c.method_name)
@pytest.mark.parametrize("family", ["bert", "llama", "t5"])
def test_mixed_rows_score_with_their_own_label_set(cls, family, data_dir):
    """Every mixture-capable method: row i of a batch mixing two tasks (2 and 6 classes) gets
    the scores it gets alone, over its own task's classes only."""
    dm = _mixture(data_dir, family)
    m = cls(tiny(family, hidden=64, seed=2), dm.task, n_tasks=2, **METHOD_KW[cls]).eval()
    if cls is MPT:  # distinct task matrices, so the task id matters
        with torch.no_grad():
            m.prompts.u.normal_(1, 0.5, generator=torch.Generator().manual_seed(0))
    dm.n_soft = m.n_soft_tokens
    dm.setup("fit")
    batch = next(b for b in dm.train_dataloader() if b["task_ids"].unique().numel() == 2)
    with torch.no_grad():
        scores = m(batch)
        assert scores.shape == (len(batch["labels"]), 6)
        for i, t in enumerate(batch["task_ids"].tolist()):
            n = dm.task.tasks[t].num_classes
            assert torch.isinf(scores[i, n:]).all() and torch.isfinite(scores[i, :n]).all()
            alone = m({k: v[i : i + 1] for k, v in batch.items()})
            torch.testing.assert_close(alone[0, :n], scores[i, :n], atol=1e-4, rtol=1e-4)
    assert m.task_names == ["sst2", "trec"]


def test_training_on_a_mixture_logs_each_task_and_their_mean(data_dir):
    dm = _mixture(data_dir, "llama")
    m = PromptTuning(
        tiny("llama", hidden=64, seed=2),
        dm.task,
        n_tasks=2,
        length=2,
        init="uniform",
        optimizer=functools.partial(torch.optim.Adam, lr=0.01),
    )
    dm.n_soft = m.n_soft_tokens
    before = m.prompt.weight.detach().clone()
    trainer = L.Trainer(
        max_steps=3,
        val_check_interval=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        num_sanity_val_steps=0,
    )
    trainer.fit(m, datamodule=dm)
    assert {"val/sst2/acc", "val/trec/acc", "val/acc", "val/acc_best"} <= set(m.last_val)
    mean = (m.last_val["val/sst2/acc"] + m.last_val["val/trec/acc"]) / 2
    assert m.last_val["val/acc"] == pytest.approx(mean)
    assert not torch.equal(m.prompt.weight[0], before[0])
    assert not torch.equal(m.prompt.weight[1], before[1])


def test_n_tasks_must_match_the_mixture(data_dir):
    dm = _mixture(data_dir, "llama")
    with pytest.raises(SptError, match="method.n_tasks=2"):
        PromptTuning(tiny("llama"), dm.task, n_tasks=1, init="uniform")


def test_mixture_yaml_builds_through_the_run(data_dir):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "run",
            overrides=[
                "data=mix_source",
                "model=tiny-llama",
                "method.n_tasks=3",
                "method.init=uniform",
                f"data.tasks.sst2.root={data_dir}",
                f"data.tasks.agnews.root={data_dir}",
                f"data.tasks.trec.root={data_dir}",
            ],
        )
    _, dm, m = build(cfg)
    assert dm.task.names == ["sst2", "agnews", "trec"]
    assert m.prompt.weight.shape[0] == 3


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_class_label_init_uses_each_tasks_own_words(family, data_dir):
    dm = _mixture(data_dir, family)
    m = PromptTuning(
        tiny(family, hidden=64, seed=2), dm.task, n_tasks=2, length=3, init="class_labels"
    )
    alone = [
        PromptTuning(tiny(family, hidden=64, seed=2), info, length=3, init="class_labels")
        for info in dm.task.tasks
    ]
    for t in range(2):  # row t starts from task t's label words, as if trained alone
        torch.testing.assert_close(m.prompt.weight[t], alone[t].prompt.weight[0])
    assert not torch.equal(m.prompt.weight[0], m.prompt.weight[1])

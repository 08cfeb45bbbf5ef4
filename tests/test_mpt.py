"""Multitask Prompt Tuning (Wang et al. 2023): low-rank task prompts, the distilled source stage
on a task mixture, the target stage from the source artifact, and bad input."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch

from spt.backbones import tiny
from spt.core.artifact import save_artifact
from spt.errors import SptError
from spt.methods.mpt import MPT, distill_kl
from spt.methods.prompt import PromptTuning
from spt.modules.low_rank_prompts import LowRankTaskPrompts
from tests.test_multitask import _mixture

ADAM = functools.partial(torch.optim.Adam, lr=0.05)


def _save(m, path) -> str:
    save_artifact(path, m.artifact_tensors(), m.artifact_meta())
    return str(path)


def _teachers(dm, backbone, tmp_path, length=4) -> dict[str, str]:
    out = {}
    for i, info in enumerate(dm.task.tasks):
        t = PromptTuning(backbone, info, length=length, init="uniform", seed=10 + i)
        out[info.name] = _save(t, tmp_path / f"teacher_{info.name}.safetensors")
    return out


def _source(data_dir, tmp_path, family="llama", teachers=True, **kw):
    dm = _mixture(data_dir, family)
    backbone = tiny(family, hidden=64, seed=2)
    t = _teachers(dm, backbone, tmp_path) if teachers else None
    m = MPT(
        backbone,
        dm.task,
        stage="source",
        length=4,
        n_tasks=2,
        init="uniform",
        teachers=t,
        optimizer=ADAM,
        **kw,
    )
    dm.n_soft = m.n_soft_tokens
    dm.setup("fit")
    return m, dm


def test_low_rank_prompts_start_at_the_shared_prompt_and_gather_per_task():
    p = LowRankTaskPrompts(3, 5, 8, rank=2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        p.shared.normal_()
    w = p.task_matrices()
    assert w.shape == (3, 5, 8) and (w - 1).abs().max() < 0.2
    table = p.table()
    torch.testing.assert_close(table, p.shared * w)
    torch.testing.assert_close(p(torch.tensor([2, 0])), table[[2, 0]])


def test_distillation_vanishes_when_the_teacher_is_the_student(data_dir, tmp_path):
    m, dm = _source(data_dir, tmp_path)
    batch = next(b for b in dm.train_dataloader() if b["task_ids"].unique().numel() == 2)
    m.teacher_prompts = m.prompts.table().detach().clone()
    logged = {}
    m.log_dict = lambda d, **_: logged.update({k: float(v) for k, v in d.items()})
    loss = m.training_step(batch, 0)
    assert logged["train/kl"] == pytest.approx(0, abs=1e-6)
    assert logged["train/mse"] == pytest.approx(0, abs=1e-8)
    assert float(loss) == pytest.approx(logged["train/task_loss"], rel=1e-6)


def test_source_stage_distils_from_the_teachers(data_dir, tmp_path):
    m, dm = _source(data_dir, tmp_path, distill_weight=1.0)
    assert m.teacher_names == ["sst2", "trec"] and m.teacher_prompts.shape == (2, 4, 64)
    batch = next(b for b in dm.train_dataloader() if b["task_ids"].unique().numel() == 2)
    logged = {}
    m.log_dict = lambda d, **_: logged.update({k: float(v) for k, v in d.items()})
    loss = m.training_step(batch, 0)
    assert logged["train/kl"] > 0 and logged["train/mse"] > 0
    assert float(loss) == pytest.approx(
        logged["train/task_loss"] + logged["train/kl"] + logged["train/mse"], rel=1e-5
    )
    loss.backward()
    assert all(
        p.grad is not None and p.grad.abs().sum() > 0
        for p in (m.prompts.shared, m.prompts.u, m.prompts.v)
    )
    assert "teacher_prompts" not in m.state_dict(), "teachers are not part of the checkpoint"


def test_kl_ignores_classes_outside_a_rows_task():
    inf = float("-inf")
    teacher = torch.tensor([[0.0, 1.0, inf], [0.5, 0.1, 0.2]])
    student = torch.tensor([[0.0, 1.0, 3.0], [0.5, 0.1, 0.2]])  # same where the task has classes
    assert distill_kl(student, teacher).item() == pytest.approx(0, abs=1e-6)


def test_source_then_target_reads_the_shared_prompt(data_dir, tmp_path):
    m, dm = _source(data_dir, tmp_path, teachers=False)
    trainer = L.Trainer(
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        limit_val_batches=0,
    )
    trainer.fit(m, datamodule=dm)
    src = _save(m, tmp_path / "source.safetensors")
    target_task = dm.task.tasks[0]
    t = MPT(m.base, target_task, stage="target", length=4, source_file=src, optimizer=ADAM)
    torch.testing.assert_close(t.prompts.shared, m.prompts.shared)
    assert (t.prompts.task_matrices() - 1).abs().max() < 0.2  # a fresh update near W = 1
    frozen = MPT(m.base, target_task, stage="target", length=4, source_file=src, train_shared=False)
    assert not frozen.prompts.shared.requires_grad and frozen.prompts.u.requires_grad
    tgt = _save(t, tmp_path / "target.safetensors")
    with pytest.raises(SptError, match="source stage"):
        MPT(m.base, target_task, stage="target", length=4, source_file=tgt)
    with pytest.raises(SptError, match="method.length=4"):
        MPT(m.base, target_task, stage="target", length=6, source_file=src)
    # the materialised prompt serves through plain Prompt Tuning
    served = PromptTuning(m.base, target_task, length=4, init="file", init_file=tgt).eval()
    batch = next(iter(dm.children[0].val_dataloader()))
    with torch.no_grad():
        torch.testing.assert_close(served(batch), t.eval()(batch))


def test_resume_from_an_mpt_artifact(data_dir, tmp_path):
    m, _ = _source(data_dir, tmp_path, teachers=False)
    with torch.no_grad():
        m.prompts.u.mul_(1.5)
    path = _save(m, tmp_path / "mpt.safetensors")
    again = MPT(m.base, m.objective.task, length=4, n_tasks=2, init="file", init_file=path)
    torch.testing.assert_close(again.prompts.table(), m.prompts.table())


def test_teacher_problems_are_named(data_dir, tmp_path):
    dm = _mixture(data_dir, "llama")
    backbone = tiny("llama", hidden=64, seed=2)
    teachers = _teachers(dm, backbone, tmp_path)
    make = functools.partial(MPT, backbone, dm.task, length=4, n_tasks=2, init="uniform")
    with pytest.raises(SptError, match="one Prompt Tuning artifact per task"):
        make(teachers={"sst2": teachers["sst2"]})
    with pytest.raises(SptError, match="method.length=6"):
        MPT(backbone, dm.task, length=6, n_tasks=2, init="uniform", teachers=teachers)
    other = tiny("llama", hidden=64, seed=9)
    (tmp_path / "x").mkdir()
    foreign = _teachers(dm, other, tmp_path / "x")
    with pytest.raises(SptError, match="base model"):
        make(teachers=foreign)
    not_prompt = _save(
        MPT(backbone, dm.task, length=4, n_tasks=2, init="uniform"), tmp_path / "mpt.safetensors"
    )
    with pytest.raises(SptError, match="not a Prompt Tuning artifact"):
        make(teachers={"sst2": not_prompt, "trec": teachers["trec"]})
    bert = _mixture(data_dir, "bert")
    with pytest.raises(SptError, match="encoder-only"):
        MPT(
            tiny("bert"),
            bert.task,
            length=4,
            n_tasks=2,
            init="uniform",
            teachers=_teachers(bert, tiny("bert"), tmp_path),
        )


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"stage": "middle"}, "method.stage"),
        ({"rank": 0}, "method.rank"),
        ({"length": 0}, "method.length"),
        ({"init": "class_labels"}, "method.init"),
        ({"stage": "target"}, "method.source_file"),
        ({"stage": "target", "source_file": "x", "teachers": {"a": "b"}}, "method.teachers"),
        ({"distill_weight": -1}, "method.distill_weight"),
    ],
)
def test_bad_settings_name_the_key(kw, match):
    from spt.data.task import TaskInfo

    task = TaskInfo(
        name="t",
        label_names=("a", "b"),
        label_words=("bad", "good"),
        metrics=("acc",),
        num_classes=2,
    )
    with pytest.raises(SptError, match=match):
        MPT(tiny("llama"), task, **kw)


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_generation_with_task_prompts(family, data_dir, tmp_path):
    """MPT's prompts sit in the input, so spt.generate takes the Hugging Face path: cached
    greedy decoding equals the uncached reference for a batch mixing both tasks."""
    from spt.core.generate import generate, greedy_reference

    m, dm = _source(data_dir, tmp_path, family=family, teachers=False)
    with torch.no_grad():
        m.prompts.shared.normal_(0, 2, generator=torch.Generator().manual_seed(0))
    batch = next(b for b in dm.train_dataloader() if b["task_ids"].unique().numel() == 2)
    m.eval()
    tokens = generate(m, batch, max_new_tokens=4)
    ref, _ = greedy_reference(m, batch, max_new_tokens=4)
    assert torch.equal(tokens[:, : ref.shape[1]], ref)

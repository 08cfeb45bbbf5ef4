"""P-Tuning v1 (Liu et al. 2021): an LSTM/MLP prompt encoder, pseudo-tokens anywhere in the
template, artifacts that keep the encoder so training resumes."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from torch.utils.data import DataLoader

from spt import CONF_DIR
from spt.backbones import tiny
from spt.build import build
from spt.core.artifact import load_artifact, save_artifact
from spt.data.task import TaskInfo
from spt.errors import SptError
from spt.methods.ptuning import PTuning

TASK = TaskInfo(
    name="t",
    label_names=("neg", "pos"),
    label_words=("bad", "great"),
    metrics=("acc",),
    num_classes=2,
)
TEMPLATE = "{soft:2}Review: {sentence} {soft:1} Sentiment:"
CONF = CONF_DIR


def _built(model: str, data_dir, **over):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            config_name="run",
            overrides=[
                "method=ptuning",
                f"model={model}",
                "data=sst2",
                f"data.root={data_dir}",
                "method.length=3",
                f"data.template='{TEMPLATE}'",
                "data.dev_limit=8",
                "data.train_limit=8",
                "data.batch_size=4",
                "data.eval_batch_size=4",
                *[f"{k}={v}" for k, v in over.items()],
            ],
        )
    _, dm, m = build(cfg)
    dm.setup("fit")
    return dm, m


@pytest.mark.parametrize("model", ["tiny-bert", "tiny-llama", "tiny-t5"])
def test_one_step_trains_only_the_encoder(model, data_dir):
    dm, m = _built(model, data_dir)
    batch = next(iter(dm.val_dataloader()))
    assert batch["soft_mask"].sum(1).tolist() == [3] * len(batch["labels"])
    before = {k: v.clone() for k, v in m.backbone.state_dict().items()}
    table = m.prompt_encoder.table().detach().clone()
    trainer = L.Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        limit_val_batches=0,
    )
    trainer.fit(m, train_dataloaders=DataLoader([batch], collate_fn=lambda x: x[0]))
    assert all(torch.equal(v, before[k]) for k, v in m.backbone.state_dict().items())
    assert not torch.equal(m.prompt_encoder.table().detach(), table)
    m.check_frozen()


def test_lstm_runs_once_per_step_on_the_task_table():
    m = PTuning(tiny("llama"), TASK, length=3, n_tasks=2)
    calls = []
    m.prompt_encoder.lstm.register_forward_hook(lambda mod, a, out: calls.append(a[0].shape))
    ids = torch.randint(5, 200, (8, 9))
    soft = torch.zeros_like(ids, dtype=torch.bool)
    soft[:, 1:4] = True
    m(
        {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "soft_mask": soft,
            "task_ids": torch.tensor([0, 1] * 4),
        }
    )
    assert calls == [torch.Size([2, 3, m.base.hidden_size])]


@pytest.mark.parametrize("encoder", ["lstm", "mlp"])
def test_artifact_keeps_encoder_and_materialised_prompt(encoder, tmp_path):
    m = PTuning(
        tiny("t5"),
        TASK,
        length=3,
        encoder=encoder,
        hidden=16,
        optimizer=functools.partial(torch.optim.Adam, lr=1e-3),
    ).eval()
    path = save_artifact(tmp_path / "p.safetensors", m.artifact_tensors(), m.artifact_meta())
    tensors, meta = load_artifact(path)
    assert meta["method"] == "ptuning" and meta["encoder"] == encoder
    torch.testing.assert_close(tensors["prompt"], m.prompt_encoder.table().detach())
    assert any(k.startswith("prompt_encoder.") for k in tensors)
    resumed = PTuning(
        m.base,
        TASK,
        length=3,
        encoder=encoder,
        hidden=16,
        init="file",
        init_file=str(path),
        seed=123,
    ).eval()
    for (n, a), (_, b) in zip(
        m.prompt_encoder.named_parameters(), resumed.prompt_encoder.named_parameters(), strict=True
    ):
        assert torch.equal(a, b), n
    with pytest.raises(SptError, match="shape"):
        PTuning(
            m.base, TASK, length=4, encoder=encoder, hidden=16, init="file", init_file=str(path)
        )


def test_mixed_tasks_rows_equal_rows_alone(data_dir):
    dm, m = _built("tiny-llama", data_dir, **{"method.n_tasks": 3})
    m.eval()
    batch = next(iter(dm.val_dataloader()))
    batch["task_ids"] = torch.tensor([2, 0, 1, 2])
    mixed = m(batch)
    for i in range(4):
        row = {k: v[i : i + 1] for k, v in batch.items()}
        keep = row["attention_mask"][0].bool()  # drop this row's left padding
        row = {k: (v[:, keep] if v.dim() == 2 else v) for k, v in row.items()}
        torch.testing.assert_close(m(row)[0], mixed[i], atol=1e-5, rtol=1e-5)
    # ... and the task id is read: the same rows under other tasks score differently
    batch["task_ids"] = torch.tensor([0, 1, 2, 0])
    assert not torch.allclose(m(batch), mixed, atol=1e-4)


def test_template_counts_must_match_length(data_dir):
    with pytest.raises(SptError, match="add up to"):
        _built("tiny-bert", data_dir, **{"method.length": 5})


@pytest.mark.parametrize(
    "bad", [{"length": 0}, {"encoder": "gru"}, {"hidden": 1}, {"init": "file"}]
)
def test_bad_settings_name_the_key(bad):
    with pytest.raises(SptError, match="method."):
        PTuning(tiny("llama"), TASK, **bad)

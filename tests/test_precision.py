"""Precision and devices (issue 19, point 7): every method of the registry, on every tiny
architecture it supports, trains one step under ``trainer.precision=bf16-mixed`` with its
prompt parameters kept in fp32 (the frozen-backbone contract), a finite loss, an fp32 artifact
and the backbone untouched. On CPU here; ``scripts/gpu_check.sh`` runs the same contract on a
CUDA machine (``SPT_TEST_ACCELERATOR=gpu``)."""

from __future__ import annotations

import math
import os

import lightning as L
import pytest
import torch

from tests.recorded import equivalence

ACCELERATOR = os.environ.get("SPT_TEST_ACCELERATOR", "cpu")
# one classification case per method x supported tiny architecture
CASES = sorted(n for n in equivalence.cases() if n.endswith(("-sst2", "-cifar10_subset")))


class _Losses(L.Callback):
    def __init__(self):
        self.values = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.values.append(float(loss))


@pytest.mark.parametrize("name", CASES)
def test_one_bf16_mixed_step_keeps_prompts_fp32(name, data_dir, one_thread):
    from spt.build import build

    cfg = equivalence.compose(equivalence.cases()[name], data_dir)
    L.seed_everything(0, verbose=False)
    _, dm, m = build(cfg)
    frozen = {k: v.clone() for k, v in m.backbone.state_dict().items()}
    losses = _Losses()
    trainer = L.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator=ACCELERATOR,
        devices=1,
        max_steps=1,
        limit_val_batches=0,
        precision="bf16-mixed",
        callbacks=[losses],
    )
    trainer.fit(m, datamodule=dm)
    assert len(losses.values) == 1 and math.isfinite(losses.values[0]), losses.values
    assert [n for n, p in m.trainable_named_parameters() if p.dtype != torch.float32] == []
    floats = {k: v for k, v in m.artifact_tensors().items() if v.is_floating_point()}
    assert floats and all(v.dtype == torch.float32 for v in floats.values())
    after = m.backbone.state_dict()
    assert all(torch.equal(after[k].cpu(), v.cpu()) for k, v in frozen.items())

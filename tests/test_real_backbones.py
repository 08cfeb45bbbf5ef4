"""Real pretrained backbones on real data (marked ``slow``; the ``ci`` ones run in CI too)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def spt_run(*overrides: str, out: Path, timeout: int = 1500) -> tuple[dict, Path]:
    env = {**os.environ, "SPT_OUTPUT_DIR": str(out), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "spt.run", "logger=csv", *overrides],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = sorted(p.parent for p in (out / "runs").rglob(".hydra"))
    return json.loads((run / "metrics.json").read_text()), run


@pytest.mark.slow
@pytest.mark.ci
def test_minilm_sst2_learns_and_reloads(tmp_path, data_dir):
    """3,200 SST-2 training phrases (100 steps of 32), 200 dev sentences: the tuned prompt + head beat chance clearly, and
    spt.eval of the run directory (the artifact, spt's data config, the run's own values)
    gives the same dev accuracy."""
    common = ["model=minilm", "data=sst2", "data.dev_limit=200", "seed=1"]
    metrics, run = spt_run(
        *common,
        "data.train_limit=3200",
        "data.batch_size=32",
        "trainer.max_steps=100",
        "trainer.val_check_interval=100",
        out=tmp_path / "fit",
    )
    assert metrics["steps"] == 100
    assert metrics["val/acc"] >= 0.70, metrics
    assert metrics["params/trainable_pct"] < 0.1
    assert metrics["artifact_bytes"] < 100_000
    from spt.eval import evaluate  # the run directory alone, in this process

    again, _ = evaluate(run)
    assert again["val/acc"] == metrics["val/acc"] and again["rows"] == 200


@pytest.mark.slow
def test_smollm2_prompt_beats_zero_shot_on_a_dev_subset(tmp_path, data_dir):
    common = ["model=smollm2-135m", "data=sst2", "data.dev_limit=200", "data.eval_batch_size=32"]
    zero, _ = spt_run(*common, "zero_shot=true", out=tmp_path / "zs")
    tuned, _ = spt_run(
        *common,
        "experiment=sst2_smollm2",
        "trainer.max_steps=60",
        "trainer.val_check_interval=60",
        out=tmp_path / "pt",
    )
    assert tuned["val/acc"] > zero["val/acc"], (tuned, zero)

"""``python -m spt.eval``: a trained prompt scored on a dev or test split without training,
equal to what training measured; and the lightning-hydra-template config groups
(hparams_search=, logger=tensorboard, early-stopping and LR-monitor callbacks)."""

from __future__ import annotations

import json

import pytest
import torch

import spt
from spt import eval as spt_eval
from spt.backbones import tiny
from tests.test_run import run_dirs, spt_run

SST2 = "{soft}Review: {sentence} Sentiment:"


def test_eval_of_a_run_directory_equals_the_runs_own_dev_metric(tmp_path, data_dir):
    """The run's config.yaml supplies the plain data values (dev_limit=32 from debug=fast):
    eval reproduces metrics.json's val/acc exactly, from the run directory alone."""
    r = spt_run("model=tiny-llama", "debug=fast", "logger=csv", out=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = run_dirs(tmp_path)
    want = json.loads((run / "metrics.json").read_text())["val/acc"]
    metrics, _ = spt_eval.evaluate(run)
    assert metrics["val/acc"] == want and metrics["rows"] == 32
    ckpt = next((run / "checkpoints").glob("*.ckpt"))
    assert spt_eval.evaluate(run, ckpt=str(ckpt))[0]["val/acc"] == want  # the same last state
    meta = json.loads((run / "prompt.json").read_text())
    assert meta["command"].startswith("python -m spt.run model=tiny-llama debug=fast")


def test_eval_of_a_one_dataset_table_and_what_it_refuses(tmp_path, data_dir, capsys):
    """A table of two rows trained on one dataset (its row 1): the artifact keeps one input
    format for both and eval scores row 1, as the run did. A run config.yaml whose data keys
    spt's config lacks, a checkpoint that is not one, and classes in another order are one
    spt: error line each."""
    r = spt_run("model=tiny-llama", "debug=fast", "logger=csv", "method.n_tasks=2",
                "data.task_index=1", out=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = run_dirs(tmp_path)
    want = json.loads((run / "metrics.json").read_text())["val/acc"]
    assert spt_eval.evaluate(run)[0]["val/acc"] == want
    import yaml

    text = (run / "config.yaml").read_text()
    saved = yaml.safe_load(text)
    saved["data"]["old_key"] = 1  # a run from another spt version
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    assert spt_eval.main([str(run)]) == 2
    assert "do not fit spt's data=sst2 config" in capsys.readouterr().err
    (run / "config.yaml").write_text(text)
    (tmp_path / "x.ckpt").write_bytes(b"not a checkpoint")
    assert spt_eval.main([str(run), "--ckpt", str(tmp_path / "x.ckpt")]) == 2
    assert "not a Lightning checkpoint of this run" in capsys.readouterr().err
    prompt = spt.prompt_model(tiny("llama"), method="prompt", length=2, template=SST2,
                              labels=["positive", "negative"], task="sst2")  # fmt: skip
    flipped = prompt.save(tmp_path / "flipped.safetensors")
    assert spt_eval.main([str(flipped), "--set", "data.label_names=[negative,positive]"]) == 2
    assert "are not data=sst2's" in capsys.readouterr().err


def test_eval_of_an_artifact_applies_its_format_and_matches_classify(tmp_path, data_dir, capsys):
    """An artifact made in Python (template and label words of its own) on SST-2 dev: eval's
    accuracy is the one classify() gives on the same rows."""
    torch.manual_seed(0)
    prompt = spt.prompt_model(
        tiny("llama"), method="prompt", length=4, init="uniform", template=SST2,
        labels=["negative", "positive"], label_words=["bad", "good"], task="sst2",
    )  # fmt: skip
    path = prompt.save(tmp_path / "p.safetensors")
    out = tmp_path / "m.json"
    args = [str(path), "--set", "data.dev_limit=24", "--out", str(out)]
    assert spt_eval.main(args) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("spt: sst2 dev (24 rows): acc ")
    metrics = json.loads(out.read_text())
    rows = [line.split("\t") for line in (data_dir / "sst2/dev.tsv").read_text().splitlines()[1:]]
    import random

    picks = sorted(random.Random("0:dev").sample(range(len(rows)), 24))  # dev_limit's subset
    texts = [rows[i][0].strip() for i in picks]
    gold = [int(rows[i][1]) for i in picks]
    labels = [r["label"] for r in prompt.classify(texts)]
    acc = sum((y == "positive") == (g == 1) for y, g in zip(labels, gold, strict=True)) / 24
    assert metrics["val/acc"] == pytest.approx(acc)


def test_eval_on_the_e2e_test_split_writes_predictions_with_inputs(tmp_path, data_dir):
    prompt = spt.prompt_model(tiny("llama"), method="prefix", generation=True, length=2,
                              hidden=8, template="{soft}{table} Text:", task="e2e")  # fmt: skip
    path = prompt.save(tmp_path / "p.safetensors")
    preds = tmp_path / "preds.jsonl"
    sets = ["--set", "data.test_limit=3", "--set", "data.max_new_tokens=3"]
    assert spt_eval.main([str(path), "--split", "test", *sets, "--predictions", str(preds)]) == 0
    rows = [json.loads(x) for x in preds.read_text().splitlines()]
    assert len(rows) == 3 and rows[0]["input"].startswith("name : ") and rows[0]["references"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--split", "train"], "--split 'train': dev or test"),
        (["--split", "test"], "no labelled test split"),
        (["--data", "nope"], "no spt/conf/data/nope.yaml"),
        (["--set", "seed=3"], "give data.KEY=VALUE"),
    ],
)
def test_eval_errors_are_one_line(tmp_path, capsys, data_dir, args, message):
    prompt = spt.prompt_model(tiny("llama"), method="prompt", length=2, template=SST2,
                              labels=["negative", "positive"], task="sst2")  # fmt: skip
    path = prompt.save(tmp_path / "p.safetensors")
    assert spt_eval.main([str(path), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


# -- lightning-hydra-template's groups -----------------------------------------------------


def test_early_stopping_stops_when_the_dev_metric_stalls(tmp_path, data_dir):
    r = spt_run(
        "model=tiny-bert", "debug=fast", "logger=csv", "callbacks=early_stopping",
        "callbacks.early_stopping.patience=1", "trainer.max_steps=40",
        "trainer.val_check_interval=2", "method.optimizer.lr=1e-9", "method.head.lr=1e-9",
        out=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = run_dirs(tmp_path)
    assert json.loads((run / "metrics.json").read_text())["steps"] == 4  # best at 2, stall at 4


def test_lr_monitor_and_tensorboard_log_the_learning_rate(tmp_path, data_dir):
    r = spt_run(
        "model=tiny-llama", "debug=fast", "logger=tensorboard", "callbacks=[lr_monitor]",
        "method.scheduler.name=linear", "method.scheduler.warmup_steps=2", out=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = run_dirs(tmp_path)
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    (csv,) = run.rglob("metrics.csv")
    header = csv.read_text().splitlines()[0].split(",")
    assert any(h.startswith("lr-") for h in header), header
    r = spt_run("model=tiny-llama", "debug=fast", "logger=none", "callbacks=lr_monitor",
                out=tmp_path / "none")  # fmt: skip
    assert r.returncode == 2
    assert "spt: error: callbacks.lr_monitor logs learning rates" in r.stderr


def test_an_optuna_search_runs_trials_and_reports_the_best(tmp_path, data_dir):
    r = spt_run(
        "-m", "hparams_search=prompt_optuna", "model=tiny-bert", "debug=fast", "logger=csv",
        "hydra.sweeper.n_trials=3", "hydra.sweeper.sampler.n_startup_trials=2",
        out=tmp_path, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    (result,) = (tmp_path / "multirun").glob("*/optimization_results.yaml")
    import yaml

    best = yaml.safe_load(result.read_text())
    assert set(best["best_params"]) == {"method.optimizer.lr", "method.length", "method.init"}
    values = [
        json.loads(p.read_text())["val/acc"]
        for p in (tmp_path / "multirun").glob("*/*/metrics.json")
    ]
    assert len(values) == 3 and best["best_value"] == max(values)
    assert (result.parent / "summary.csv").read_text().count("\n") == 4  # header + 3 trials

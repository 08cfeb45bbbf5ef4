"""The run table (spt.compare) and the served-parameter count each method reports."""

from __future__ import annotations

import csv
import json
import shutil
import sys

import pytest

from spt.backbones import tiny
from spt.data.task import TaskInfo
from spt.errors import SptError
from spt.methods.mpt import MPT
from spt.methods.prefix import PrefixTuning
from spt.methods.prompt import PromptTuning
from spt.methods.ptuning import PTuning
from spt.methods.ptuning_v2 import PTuningV2
from spt.tools.compare import aggregate, collect, main, plot
from spt.tools.compare import columns as main_columns

TASK = TaskInfo(
    name="t", label_names=("a", "b"), label_words=("bad", "good"), metrics=("acc",), num_classes=2
)


@pytest.mark.parametrize(
    ("cls", "kw"),
    [
        (PromptTuning, {"init": "uniform"}),
        (PrefixTuning, {}),
        (PTuning, {}),
        (PTuningV2, {}),
        (MPT, {"init": "uniform"}),
    ],
    ids=lambda x: getattr(x, "method_name", ""),
)
@pytest.mark.parametrize("family", ["bert", "llama"])
def test_served_parameters_are_the_materialised_prompt_and_head(cls, kw, family):
    m = cls(tiny(family, hidden=64), TASK, length=4, **kw)
    tensors = m.artifact_tensors()
    table = tensors["prefix" if "prefix" in tensors else "prompt"]
    head = 64 * 2 + 2 if family == "bert" else 0
    assert m.served_parameters(tensors) == table.numel() + head


def _flat(table: str) -> str:
    """A Markdown table with its column padding collapsed: ``| sst2   | m |`` -> ``| sst2 | m |``."""
    return "\n".join(" ".join(line.split()) for line in table.splitlines())


def _fake_run(
    root,
    name,
    method,
    acc,
    trainable,
    backbone=1000,
    meta=None,
    config=None,
    seed=None,
    fit_seconds=1.5,
):
    d = root / name
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(
        json.dumps(
            {
                "val/acc": acc,
                "val/acc_best": 0.99,
                "method": method,
                "model": "m",
                "data": "sst2",
                "steps": 10,
                "fit_seconds": fit_seconds,
                "params/trainable": trainable,
                "params/backbone": backbone,
                "params/trainable_pct": 100 * trainable / (backbone + trainable),
                **({"seed": seed} if seed is not None else {}),
            }
        )
    )
    if meta is not None:
        (d / "prompt.json").write_text(json.dumps(meta))
    if config is not None:
        from omegaconf import OmegaConf

        OmegaConf.save(config, d / "config.yaml")


def test_compare_tabulates_runs_and_writes_csv(tmp_path, capsys):
    _fake_run(tmp_path, "a", "prompt", 0.8, 20)
    _fake_run(tmp_path, "b/c", "prefix", 0.7, 500, meta={"served_parameters": 40})
    rows = collect([tmp_path])
    assert [r["method"] for r in rows] == ["prefix", "prompt"]
    assert rows[0]["served_params"] == 40 and rows[1]["served_params"] == 20
    assert "val/acc_best" not in rows[0]
    assert main([str(tmp_path), "--csv", str(tmp_path / "t.csv")]) == 0
    out = _flat(capsys.readouterr().out)
    assert "| sst2 | m | prefix |" in out
    with open(tmp_path / "t.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["val/acc"] for r in table] == ["0.7", "0.8"]


def test_compare_names_a_wrong_directory(tmp_path, capsys):
    with pytest.raises(SptError, match="no metrics.json"):
        collect([tmp_path])
    assert main([str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_older_runs_count_served_parameters_from_the_artifact(tmp_path):
    """Runs written before spt recorded served parameters: counted from the artifact's tensor
    shapes with the method's own rule (the prefix, not its MLP)."""
    from omegaconf import OmegaConf

    from spt.core.artifact import save_artifact

    m = PrefixTuning(tiny("llama", hidden=64), TASK, length=4)
    _fake_run(tmp_path, "old", "prefix", 0.7, m.parameter_counts()["params/trainable"])
    save_artifact(
        tmp_path / "old" / "prompt.safetensors", m.artifact_tensors(), {"method": "prefix"}
    )
    (tmp_path / "old" / "prompt.json").unlink(missing_ok=True)
    OmegaConf.save(
        {"method": {"_target_": "spt.methods.prefix.PrefixTuning"}},
        tmp_path / "old" / "config.yaml",
    )
    (row,) = collect([tmp_path])
    assert row["served_params"] == m.prefix.table().numel() < row["trainable"]


def test_rows_name_seed_regularizer_and_the_prompts_mean_norm(tmp_path):
    from omegaconf import OmegaConf

    from spt.core.artifact import save_artifact

    m = PromptTuning(tiny("llama", hidden=64), TASK, length=4, init="uniform")
    for name, reg in (("plain", None), ("nem", "spt.regularizers.nemesis.Nemesis")):
        _fake_run(tmp_path, name, "prompt", 0.7, 256)
        save_artifact(
            tmp_path / name / "prompt.safetensors", m.artifact_tensors(), {"method": "prompt"}
        )
        OmegaConf.save(
            {
                "method": {"_target_": "spt.methods.prompt.PromptTuning"},
                "regularizer": {"_target_": reg} if reg else {},
            },
            tmp_path / name / "config.yaml",
        )
    rows = {r["run"].rsplit("/", 1)[-1]: r for r in collect([tmp_path])}
    assert rows["plain"]["regularizer"] == "none" and rows["nem"]["regularizer"] == "nemesis"
    want = m.prompt.weight.detach().norm(dim=-1).mean().item()
    assert rows["nem"]["prompt_norm"] == pytest.approx(want, abs=1e-4)


def _config(method="prompt", length=20, init="class_labels", shots=None, seed=0):
    return {
        "method": {"_target_": f"spt.methods.{method}.X", "length": length, "init": init},
        "data": {"name": "sst2", "shots": shots},
        "model": {"name": "m"},
        "regularizer": {},
        "seed": seed,
    }


def _seeds(root, lengths=(4,), accs=((0.80, 0.82, 0.84),), method="prompt"):
    """Three seeds per prompt length, each a finished run with a config.yaml."""
    for length, by_seed in zip(lengths, accs, strict=True):
        for seed, acc in enumerate(by_seed):
            _fake_run(
                root,
                f"{method}-{length}/{seed}",
                method,
                acc,
                20,
                seed=seed,
                fit_seconds=10.0 + seed,
                config=_config(method, length, seed=seed),
            )


def test_config_values_become_columns(tmp_path, capsys):
    _fake_run(tmp_path, "a", "prompt", 0.8, 20, config=_config(length=20, shots=16))
    _fake_run(tmp_path, "b", "prompt", 0.7, 20, config={"method": {"length": 5}})
    _fake_run(tmp_path, "c", "prompt", 0.6, 20)  # no config.yaml at all
    rows = {
        r["run"].rsplit("/", 1)[-1]: r
        for r in collect([tmp_path], keys=["method.length", "method.init", "data.shots"])
    }
    assert rows["a"]["method.length"] == 20 and rows["a"]["method.init"] == "class_labels"
    assert rows["a"]["data.shots"] == 16
    assert rows["b"]["method.length"] == 5 and rows["b"]["method.init"] is None
    assert rows["c"]["method.length"] is None
    assert (
        main(
            [str(tmp_path), "--keys", "method.length,data.shots", "--csv", str(tmp_path / "t.csv")]
        )
        == 0
    )
    header = _flat(capsys.readouterr().out.splitlines()[0])
    assert "| regularizer | method.length | data.shots | seed |" in header
    with open(tmp_path / "t.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["method.length"] for r in table] == ["20", "5", ""]
    assert all(r["status"] == "done" for r in table)


def test_a_config_key_no_run_has_is_named_with_what_exists(tmp_path, capsys):
    _fake_run(tmp_path, "a", "prompt", 0.8, 20, config=_config())
    with pytest.raises(SptError, match=r"'method\.lenght'.*top-level keys are method, data"):
        collect([tmp_path], keys=["method.lenght"])
    assert main([str(tmp_path), "--keys", "method.lenght"]) == 2
    assert "method.lenght" in capsys.readouterr().err


def test_mean_std_and_n_over_seeds(tmp_path, capsys):
    _seeds(tmp_path, lengths=(4, 8), accs=((0.80, 0.82, 0.84), (0.9,)))
    agg = aggregate(collect([tmp_path]), ["method", "method.length"])
    assert [(g["method"], g["method.length"], g["n"]) for g in agg] == [
        ("prompt", 4, 3),
        ("prompt", 8, 1),
    ]
    assert agg[0]["val/acc_mean"] == pytest.approx(0.82)
    assert agg[0]["val/acc_std"] == pytest.approx(0.02)  # sample std (ddof=1)
    assert agg[0]["fit_seconds_mean"] == pytest.approx(11.0)
    assert agg[0]["fit_seconds_std"] == pytest.approx(1.0)
    assert agg[1]["val/acc_mean"] == pytest.approx(0.9) and agg[1]["val/acc_std"] is None
    assert agg[0]["prompt_norm_n"] == 0 and agg[0]["prompt_norm_mean"] is None

    assert (
        main(
            [
                str(tmp_path),
                "--mean",
                "--keys",
                "method.length",
                "--csv",
                str(tmp_path / "mean.csv"),
            ]
        )
        == 0
    )
    out = _flat(capsys.readouterr().out)
    assert "| sst2 | m | prompt | none | 4 | done | 0.8200 ± 0.0200 (n=3) |" in out
    assert "| 0.9000 (n=1) |" in out
    with open(tmp_path / "mean.csv") as f:
        table = list(csv.DictReader(f))
    assert list(table[0])[:9] == [
        "data",
        "model",
        "method",
        "regularizer",
        "method.length",
        "status",
        "n",
        "val/acc_mean",
        "val/acc_std",
    ]
    assert table[0]["n"] == "3" and float(table[0]["val/acc_std"]) == pytest.approx(0.02)
    assert table[1]["val/acc_std"] == ""


def test_group_by_implies_mean_and_names_an_unknown_column(tmp_path, capsys):
    _seeds(tmp_path)
    assert main([str(tmp_path), "--group-by", "method.length"]) == 0
    assert "| 4 | 0.8200 ± 0.0200 (n=3) |" in _flat(capsys.readouterr().out)
    with pytest.raises(SptError, match=r"'method\.width' is neither a column .* config key"):
        aggregate(collect([tmp_path]), ["data", "method.width"])
    assert main([str(tmp_path), "--mean", "--group-by", "data,method.width"]) == 2
    assert "method.width" in capsys.readouterr().err


def test_plot_writes_a_png_with_a_log_axis_for_wide_lengths(tmp_path):
    from PIL import Image

    lengths = (1, 5, 20, 100, 150)
    _seeds(tmp_path / "p", lengths, [(0.6 + i / 20, 0.62 + i / 20) for i in range(5)])
    _seeds(tmp_path / "q", lengths, [(0.7,)] * 5, method="prefix")
    rows = collect([tmp_path])
    fig = plot(rows, "method.length", "val/acc", hue="method", out=tmp_path / "plot.png")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert ax.get_xlabel().startswith("method.length") and "val/acc" in ax.get_ylabel()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["method=prefix", "method=prompt"]
    assert len(ax.get_lines()) >= 2
    with Image.open(tmp_path / "plot.png") as image:
        assert image.format == "PNG" and image.size[0] > 100
    narrow = plot(
        [r for r in rows if r["method.length"] in (5, 20, 100)],
        "method.length",
        "val/acc",
        hue="method",
    )
    assert narrow.axes[0].get_xscale() == "linear"  # 100 / 5 = 20: not wider than 20x
    categorical = plot(rows, "method", "val/acc", hue="method.length")
    assert [t.get_text() for t in categorical.axes[0].get_xticklabels()] == ["prefix", "prompt"]


def test_a_categorical_plot_shows_every_seed_as_a_point_and_the_baselines(tmp_path):
    """Categories are points, never joined by a line; every run is its own dot (a failed
    seed stays visible beside the mean); baselines are dashed lines in the legend."""
    _seeds(tmp_path / "p", (4,), [(0.80, 0.82, 0.51)])  # one seed failed
    _seeds(tmp_path / "q", (4,), [(0.70, 0.72, 0.71)], method="prefix")
    rows = collect([tmp_path])
    fig = plot(rows, "method", "val/acc", baselines={"majority class": 0.509})
    ax = fig.axes[0]
    from matplotlib.collections import PathCollection

    dots = [
        tuple(xy) for c in ax.collections if type(c) is PathCollection for xy in c.get_offsets()
    ]
    assert len(dots) == 6 and min(y for _, y in dots) == pytest.approx(0.51)
    means = [line for line in ax.get_lines() if line.get_marker() == "o"]
    assert means and all(line.get_linestyle() == "None" for line in means)  # no joining line
    dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert len(dashed) == 1 and dashed[0].get_ydata()[0] == pytest.approx(0.509)
    assert "majority class (0.509)" in [t.get_text() for t in ax.get_legend().get_texts()]
    numeric = plot(collect([tmp_path / "p"]), "method.length", "val/acc")
    assert any(line.get_linestyle() == "-" for line in numeric.axes[0].get_lines())


def test_a_committed_runs_csv_plots_again_and_curves_come_from_csv_logs(tmp_path, capsys):
    from spt.tools.compare import curves, read_rows, write_csv

    _seeds(tmp_path / "runs", (4, 8), [(0.8, 0.82), (0.9, 0.91)])
    rows = collect([tmp_path / "runs"], keys=["method.length"])
    write_csv(rows, tmp_path / "runs.csv")
    again = read_rows(tmp_path / "runs.csv")
    assert [(r["method.length"], r["seed"], r["val/acc"]) for r in again] == [
        (r["method.length"], r["seed"], r["val/acc"]) for r in rows
    ]
    args = [str(tmp_path / "runs.csv"), "--plot", "method.length", "--metric", "val/acc"]
    out = tmp_path / "again.png"
    assert main([*args, "--out", str(out), "--baseline", "chance=0.5"]) == 0 and out.exists()
    with pytest.raises(SystemExit):
        main([*args, "--out", str(out), "--baseline", "nonsense"])
    log = tmp_path / "runs" / "prompt-4" / "0" / "csv"
    log.mkdir(parents=True)
    (log / "metrics.csv").write_text(
        "epoch,step,train/loss,val/acc\n0,1,0.9,\n0,2,0.7,\n0,2,,0.6\n0,3,0.5,\n0,4,0.4,\n0,4,,0.8\n"
    )
    fig = curves([tmp_path / "runs"], "val/acc", out=tmp_path / "curves.png")
    loss_ax, metric_ax = fig.axes
    assert list(metric_ax.get_lines()[0].get_ydata()) == [0.6, 0.8]
    assert list(loss_ax.get_lines()[0].get_ydata()) == [0.9, 0.7, 0.5, 0.4]
    assert main([str(tmp_path / "runs"), "--curves", "--out", str(tmp_path / "c.png")]) == 0
    assert main([str(tmp_path / "nothing.csv"), "--curves", "--out", str(tmp_path / "c.png")]) == 2


def test_plot_refuses_an_absent_metric_and_mixed_runs(tmp_path, capsys):
    _seeds(tmp_path / "p", (4, 8), [(0.8, 0.82), (0.9, 0.91)])
    _seeds(tmp_path / "q", (4,), [(0.7,)], method="prefix")
    rows = collect([tmp_path])
    with pytest.raises(SptError, match=r"no run reports 'val/f1': choose one of val/acc"):
        plot(rows, "method.length", "val/f1")
    with pytest.raises(SptError, match=r"differ in method .*--hue method"):
        plot(rows, "method.length", "val/acc")  # prompt and prefix at length 4
    out = tmp_path / "cli.png"
    assert (
        main(
            [
                str(tmp_path),
                "--plot",
                "method.length",
                "--metric",
                "val/acc",
                "--hue",
                "method",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert out.stat().st_size > 0 and "wrote" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--plot", "method.length"])  # --metric and --out missing


def _crashed_run(root, name, version=None):
    """A run killed while fitting: Hydra's config and the CSVLogger's file, no metrics.json."""
    from omegaconf import OmegaConf

    d = root / name
    (d / ".hydra").mkdir(parents=True)
    OmegaConf.save(_config(length=8, seed=3), d / ".hydra" / "config.yaml")
    OmegaConf.save(
        {"hydra": {"runtime": {"choices": {"method": "prompt", "model": "tiny"}}}},
        d / ".hydra" / "hydra.yaml",
    )
    logs = d / "csv" / (version or "")
    logs.mkdir(parents=True)
    (logs / "metrics.csv").write_text(
        "epoch,params/trainable,step,train/loss,val/acc,val/acc_best,val/f1\n"
        ",20,0,,,,\n"
        "0,,19,0.6,,,\n"
        "0,,49,,0.61,0.61,0.5\n"
        "1,,79,0.4,,,\n"
        "1,,99,,0.65,0.65,\n"
        "2,,119,0.3,,,\n"
    )
    return d


def test_an_unfinished_run_is_a_row_with_its_last_logged_values(tmp_path, capsys):
    _fake_run(tmp_path, "done", "prompt", 0.8, 20, config=_config())
    _crashed_run(tmp_path, "crashed")
    _crashed_run(tmp_path, "resumed", version="version_1")
    rows = {r["run"].rsplit("/", 1)[-1]: r for r in collect([tmp_path], keys=["method.length"])}
    assert rows["done"]["status"] == "done"
    for name in ("crashed", "resumed"):
        row = rows[name]
        assert row["status"] == "incomplete"
        assert (row["data"], row["model"], row["method"], row["seed"]) == ("sst2", "m", "prompt", 3)
        assert row["val/acc"] == pytest.approx(0.65) and row["val/f1"] == pytest.approx(0.5)
        assert "val/acc_best" not in row and "train/loss" not in row
        assert row["steps"] == 119 and row["trainable"] == 20 and row["method.length"] == 8
        assert row["fit_seconds"] is None
    # the mean never averages a half-trained run with finished ones
    agg = aggregate(list(rows.values()))
    assert [(g["method.length"], g["status"], g["n"]) for g in agg] == [
        (8, "incomplete", 2),
        (20, "done", 1),
    ]  # groups sorted by value, numbers numerically
    assert agg[0]["fit_seconds_n"] == 0

    assert main([str(tmp_path)]) == 0
    assert _flat(capsys.readouterr().out).count("| incomplete |") == 2


def test_done_only_drops_unfinished_runs(tmp_path, capsys):
    _fake_run(tmp_path, "done", "prompt", 0.8, 20)
    _crashed_run(tmp_path, "crashed")
    assert [r["status"] for r in collect([tmp_path], done_only=True)] == ["done"]
    assert main([str(tmp_path), "--done-only", "--csv", str(tmp_path / "t.csv")]) == 0
    assert "incomplete" not in capsys.readouterr().out
    with open(tmp_path / "t.csv") as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["done"]
    with pytest.raises(SptError, match="no metrics.json"):
        collect([tmp_path / "crashed"], done_only=True)


# -- W&B runs -----------------------------------------------------------------------------------
def test_a_run_logged_to_wandb_is_read_from_its_csv_log(tmp_path, data_dir, capsys):
    """logger=wandb also writes the CSV log: killed before metrics.json, spt.compare reads its
    last dev values and progress from spt's own files (not W&B's binary offline log)."""
    from tests.test_run import run_dirs, spt_run

    r = spt_run(
        "model=tiny-bert",
        "debug=fast",
        "logger=wandb",
        "seed=5",
        out=tmp_path,
        env={"WANDB_MODE": "offline"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = run_dirs(tmp_path)
    assert list((run / "wandb").glob("offline-run-*"))
    acc = json.loads((run / "metrics.json").read_text())["val/acc"]
    (run / "metrics.json").unlink()  # as if killed after the last validation
    (row,) = collect([tmp_path])
    assert row["status"] == "incomplete" and row["val/acc"] == pytest.approx(acc)
    assert (row["method"], row["data"], row["seed"]) == ("prompt", "sst2", 5)
    assert row["steps"] == 4 and row["trainable"] > 0
    assert collect([tmp_path], keys=["method.length"])[0]["method.length"] == 20
    shutil.rmtree(run / "csv")  # no log at all yet: still a row, without metrics
    (row,) = collect([tmp_path])
    assert row["status"] == "incomplete" and "val/acc" not in row and row["seed"] == 5


class _ApiRun:
    def __init__(self, i, acc, state="finished", method="prompt"):
        self.id, self.group, self.tags, self.state = f"r{i}", "study", ["t"], state
        self.config = {
            "_wandb": {},
            "seed": i,
            "data": {"name": "sst2"},
            "model": {"name": "m"},
            "method": {"_target_": f"spt.methods.{method}.X", "length": 5 * i},
            "regularizer": None,
        }
        self.summary = (
            {
                "_runtime": 3,
                "val/acc": acc,
                "steps": 10,
                "params/trainable": 20,
                "params/backbone": 980,
                "params/trainable_pct": 2.0,
                "params/served": 20,
                "fit_seconds": 1.0,
            }
            if state == "finished"
            else {"val/acc": acc, "trainer/global_step": 3}
        )


def test_wandb_api_runs_become_rows(monkeypatch, capsys):
    """wandb:entity/project/group reads the study's runs through wandb.Api (a stand-in here:
    there is no network): finished runs from their summary, unfinished as incomplete."""
    import wandb

    calls = []

    class Api:
        def runs(self, path, filters=None):
            calls.append((path, filters))
            return [_ApiRun(1, 0.7), _ApiRun(2, 0.8), _ApiRun(3, 0.6, state="running")]

    monkeypatch.setattr(wandb, "Api", Api)
    rows = collect(["wandb:me/spt/prompt/m/sst2"], keys=["method.length"])
    assert calls == [("me/spt", {"group": "prompt/m/sst2"})]  # the default study has slashes
    assert [(r["run"], r["status"], r["val/acc"], r["seed"], r["method.length"]) for r in rows] == [
        ("wandb:me/spt/r1", "done", 0.7, 1, 5),
        ("wandb:me/spt/r2", "done", 0.8, 2, 10),
        ("wandb:me/spt/r3", "incomplete", 0.6, 3, 15),
    ]
    assert rows[0]["method"] == "prompt" and rows[0]["served_pct"] == 2.0
    assert rows[2]["steps"] == 3 and "_config" not in main_columns(rows)
    assert [r["run"] for r in collect(["wandb:me/spt"], done_only=True)] == [
        "wandb:me/spt/r1",
        "wandb:me/spt/r2",
    ]
    assert calls[-1] == ("me/spt", None)
    assert main(["wandb:me/spt/study", "--done-only", "--mean", "--group-by", "method"]) == 0
    assert "0.7500 ± 0.0707 (n=2)" in capsys.readouterr().out


def test_wandb_api_failures_are_named(monkeypatch, capsys):
    import wandb

    class Offline:
        def runs(self, path, filters=None):
            raise ConnectionError("no route to api.wandb.ai")

    monkeypatch.setattr(wandb, "Api", Offline)
    assert main(["wandb:me/spt"]) == 2
    err = capsys.readouterr().err
    assert "could not list the runs (ConnectionError: no route" in err and "wandb login" in err
    with pytest.raises(SptError, match="entity/project or wandb:entity/project/group"):
        collect(["wandb:justone"])


def test_a_terminal_gets_a_rich_table_and_a_pipe_markdown(tmp_path, capsys, monkeypatch):
    import io

    from rich.console import Console

    from spt.tools.compare import aggregate, markdown, rich_table

    _seeds(tmp_path, lengths=(4, 8), accs=((0.80, 0.82, 0.84), (0.7, 0.9, 0.8)))
    rows = collect([tmp_path], keys=["method.length"])
    out = io.StringIO()
    Console(file=out, width=250).print(rich_table(rows))
    text = out.getvalue()
    assert "method.length" in text and "0.82" in text and "|" not in text  # a box, not Markdown
    assert text.count("done") == 6
    agg = aggregate(rows, ["method.length"])
    assert [a["method.length"] for a in agg] == [4, 8]
    assert agg[1]["val/acc_mean"] == pytest.approx(0.8) and agg[1]["val/acc_std"] == pytest.approx(
        0.1
    )
    assert markdown(rows).splitlines()[1].startswith("|--")  # GitHub Markdown when piped
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    assert main([str(tmp_path), "--mean", "--group-by", "method.length"]) == 0
    shown = capsys.readouterr().out
    assert "0.8000 ± 0.1000 (n=3)" in shown and "|--" not in shown


def test_a_runs_csv_keeps_its_text_and_floats(tmp_path):
    from spt.tools.compare import read_rows

    (tmp_path / "r.csv").write_text(
        "run,status,method,seed,prompt_norm,fit_seconds,val/acc\n"
        "a,done,NA,1,7.0,12.0,0.5\nb,done,None,,3.5,,0.75\n"
    )
    a, b = read_rows(tmp_path / "r.csv")
    assert (a["method"], b["method"]) == ("NA", "None")  # text, not missing
    assert a["seed"] == 1 and b["seed"] is None and isinstance(a["prompt_norm"], float)
    assert a["fit_seconds"] == 12.0 and isinstance(a["fit_seconds"], float)

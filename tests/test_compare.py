"""The run table (spt.compare) and the served-parameter count each method reports."""

from __future__ import annotations

import csv
import json

import pytest

from spt.backbones import tiny
from spt.compare import collect, main
from spt.core.errors import SptError
from spt.data.task import TaskInfo
from spt.methods.mpt import MPT
from spt.methods.prefix import PrefixTuning
from spt.methods.prompt import PromptTuning
from spt.methods.ptuning import PTuning
from spt.methods.ptuning_v2 import PTuningV2

TASK = TaskInfo(name="t", label_names=("a", "b"), label_words=("bad", "good"),
                metrics=("acc",), num_classes=2)


@pytest.mark.parametrize(("cls", "kw"), [
    (PromptTuning, {"init": "uniform"}), (PrefixTuning, {}), (PTuning, {}), (PTuningV2, {}),
    (MPT, {"init": "uniform"}),
], ids=lambda x: getattr(x, "method_name", ""))
@pytest.mark.parametrize("family", ["bert", "llama"])
def test_served_parameters_are_the_materialised_prompt_and_head(cls, kw, family):
    m = cls(tiny(family, hidden=64), TASK, length=4, **kw)
    tensors = m.artifact_tensors()
    table = tensors["prefix" if "prefix" in tensors else "prompt"]
    head = 64 * 2 + 2 if family == "bert" else 0
    assert m.served_parameters(tensors) == table.numel() + head


def _fake_run(root, name, method, acc, trainable, backbone=1000, meta=None):
    d = root / name
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({
        "val/acc": acc, "val/acc_best": 0.99, "method": method, "model": "m", "data": "sst2",
        "steps": 10, "fit_seconds": 1.5, "params/trainable": trainable,
        "params/backbone": backbone, "params/trainable_pct": 100 * trainable / (backbone + trainable),
    }))
    if meta is not None:
        (d / "prompt.json").write_text(json.dumps(meta))


def test_compare_tabulates_runs_and_writes_csv(tmp_path, capsys):
    _fake_run(tmp_path, "a", "prompt", 0.8, 20)
    _fake_run(tmp_path, "b/c", "prefix", 0.7, 500, meta={"served_parameters": 40})
    rows = collect([tmp_path])
    assert [r["method"] for r in rows] == ["prefix", "prompt"]
    assert rows[0]["served_params"] == 40 and rows[1]["served_params"] == 20
    assert "val/acc_best" not in rows[0]
    assert main([str(tmp_path), "--csv", str(tmp_path / "t.csv")]) == 0
    out = capsys.readouterr().out
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
    save_artifact(tmp_path / "old" / "prompt.safetensors", m.artifact_tensors(),
                  {"method": "prefix"})
    (tmp_path / "old" / "prompt.json").unlink(missing_ok=True)
    OmegaConf.save({"method": {"_target_": "spt.methods.prefix.PrefixTuning"}},
                   tmp_path / "old" / "config.yaml")
    (row,) = collect([tmp_path])
    assert row["served_params"] == m.prefix.table().numel() < row["trainable"]


def test_rows_name_seed_regularizer_and_the_prompts_mean_norm(tmp_path):
    from omegaconf import OmegaConf

    from spt.core.artifact import save_artifact

    m = PromptTuning(tiny("llama", hidden=64), TASK, length=4, init="uniform")
    for name, reg in (("plain", None), ("nem", "spt.regularizers.nemesis.Nemesis")):
        _fake_run(tmp_path, name, "prompt", 0.7, 256)
        save_artifact(tmp_path / name / "prompt.safetensors", m.artifact_tensors(),
                      {"method": "prompt"})
        OmegaConf.save({"method": {"_target_": "spt.methods.prompt.PromptTuning"},
                        "regularizer": {"_target_": reg} if reg else {}},
                       tmp_path / name / "config.yaml")
    rows = {r["run"].rsplit("/", 1)[-1]: r for r in collect([tmp_path])}
    assert rows["plain"]["regularizer"] == "none" and rows["nem"]["regularizer"] == "nemesis"
    want = m.prompt.weight.detach().norm(dim=-1).mean().item()
    assert rows["nem"]["prompt_norm"] == pytest.approx(want, abs=1e-4)

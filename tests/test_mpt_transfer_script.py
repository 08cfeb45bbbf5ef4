"""experiments/mpt_transfer/predictions.py: bad input is one ``spt: error:`` line naming the fix
(status 2), before any model loads; its per-class statistics are right."""

from __future__ import annotations

import importlib.util
import json

import pytest
from omegaconf import OmegaConf


@pytest.fixture(scope="module")
def script(repo):
    path = repo / "experiments" / "mpt_transfer" / "predictions.py"
    spec = importlib.util.spec_from_file_location("mpt_predictions", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_class_stats(script):
    s = script.class_stats(
        ["entailment", "not_entailment", "not_entailment", "entailment"],
        ["entailment", "entailment", "not_entailment", "not_entailment"],
    )
    assert s == {"acc": 0.5, "pred_pos": 0.5, "recall_pos": 0.5, "recall_neg": 0.5, "balanced": 0.5}


def _study(tmp_path, labels):
    """A study folder with one finished baseline run whose data config points at a dev file."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "dev.jsonl").write_text(
        "".join(
            json.dumps({"premise": "p", "hypothesis": "h", "label": lab}) + "\n" for lab in labels
        )
    )
    run = tmp_path / "mpt" / "baseline_rte" / "seed1"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text("{}")
    (run / "config.yaml").write_text(
        OmegaConf.to_yaml(
            {
                "data": {
                    "root": str(data),
                    "text_fields": ["premise", "hypothesis"],
                    "label_names": ["entailment", "not_entailment"],
                    "local": {
                        "dev": {
                            "path": "dev.jsonl",
                            "fields": {"premise": "premise", "hypothesis": "hypothesis"},
                            "label": "label",
                            "label_map": None,
                        }
                    },
                }
            }
        )
    )
    return tmp_path / "mpt", data


def test_bad_input_is_one_line_naming_the_fix(script, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SPT_DATA_DIR", raising=False)
    assert script.main([str(tmp_path / "nothing")]) == 2
    assert "no finished target runs" in capsys.readouterr().err

    study, data = _study(tmp_path, ["entailment", "entailment", "not_entailment"])
    assert script.main([str(study), "--limit", "2"]) == 2
    err = capsys.readouterr().err
    assert "fewer than two classes" in err and "--limit" in err

    assert script.main([str(study), "--data-root", str(tmp_path / "elsewhere")]) == 2
    err = capsys.readouterr().err
    assert "data file not found" in err and "SPT_DATA_DIR" in err

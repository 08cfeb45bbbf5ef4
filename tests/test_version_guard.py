"""The T5 prefix routes hook transformers internals (spt.backbones.t5_prefix); outside the
transformers releases the tests passed on they refuse to run instead of silently ignoring the
prefix, as 5.24's rename of past_key_values= to cache= made them do (issue 17)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import transformers

from spt.backbones import t5_prefix, tiny
from spt.backbones.t5_prefix import TESTED_TRANSFORMERS, UNTESTED_ENV, check_transformers
from spt.data.task import TaskInfo
from spt.errors import SptError
from spt.methods.prefix import PrefixTuning

REPO = Path(__file__).resolve().parents[1]
TASK = TaskInfo(
    name="t",
    label_names=("neg", "pos"),
    label_words=("bad", "great"),
    metrics=("acc",),
    num_classes=2,
)


def test_the_locked_transformers_is_in_the_tested_range():
    check_transformers()  # no error, no warning
    assert transformers.__version__ == t5_prefix.installed_transformers() == "5.24.0"


def test_an_untested_release_is_refused_naming_both_versions(monkeypatch):
    monkeypatch.delenv(UNTESTED_ENV, raising=False)
    with pytest.raises(SptError) as err:
        check_transformers("5.25.0")
    assert "5.25.0 is installed" in str(err.value) and TESTED_TRANSFORMERS in str(err.value)
    assert UNTESTED_ENV in str(err.value)


def test_the_override_warns_once(monkeypatch):
    monkeypatch.setenv(UNTESTED_ENV, "1")
    monkeypatch.setattr(t5_prefix, "_warned", False)
    with pytest.warns(UserWarning, match="5.25.0 is outside"):
        check_transformers("5.25.0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_transformers("5.25.0")  # the second time: silent


def test_a_forward_without_the_hooked_keywords_is_refused_even_in_range(monkeypatch):
    monkeypatch.setenv(UNTESTED_ENV, "1")

    def old_forward(self, hidden_states, mask=None, past_key_values=None):  # 5.23's name
        return hidden_states

    with pytest.raises(SptError, match="no cache keyword"):
        check_transformers("5.24.0", forward=old_forward)


def test_a_t5_prefix_method_checks_at_construction(monkeypatch):
    monkeypatch.delenv(UNTESTED_ENV, raising=False)
    monkeypatch.setattr(t5_prefix, "installed_transformers", lambda: "5.99.0")
    with pytest.raises(SptError, match="5.99.0 is installed"):
        PrefixTuning(tiny("t5"), TASK, length=2, hidden=8)
    PrefixTuning(tiny("llama"), TASK, length=2, hidden=8)  # no T5 internals: no check


def test_cli_gives_one_error_line_on_an_untested_release(tmp_path):
    code = (
        "import sys, runpy, spt.backbones.t5_prefix as t; "
        "t.installed_transformers = lambda: '5.99.0'; "
        "sys.argv = ['spt.run', *sys.argv[1:]]; runpy.run_module('spt.run', run_name='__main__')"
    )
    env = {**os.environ, "SPT_OUTPUT_DIR": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    env.pop(UNTESTED_ENV, None)
    r = subprocess.run(
        [sys.executable, "-c", code, "method=prefix", "model=tiny-t5", "debug=fast", "logger=none"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("spt: error:")]
    assert len(errors) == 1 and "5.99.0 is installed" in errors[0]
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("config.yaml"))

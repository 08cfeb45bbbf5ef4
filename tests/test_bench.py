"""The benchmark's quick mode runs (CI keeps it working); its numbers are not asserted here: speed
is shown by the benchmark's own side-by-side ratios, never by timed unit tests."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.test_run import REPO


def test_quick_benchmark_writes_every_contender_and_ratio(tmp_path, data_dir):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "-m", "spt.bench", "--quick", "--repeats", "2",
                        "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads(out.read_text())
    assert set(results["train"]) == {"spt prompt", "peft prompt", "floor", "spt prefix",
                                     "peft prefix", "spt ptuning", "peft ptuning"}
    assert set(results["infer"]) == {"spt mixed 8 tasks", "spt single task", "peft 8 adapters"}
    assert all(v > 0 for v in results["ratios"].values())
    assert "| train prompt spt/peft |" in r.stdout

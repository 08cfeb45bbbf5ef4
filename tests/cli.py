"""``python -m spt.run ARGS`` inside the test process: the same entry (argv -> Hydra -> spt's
handler) without a new interpreter's seconds of imports, for runs that fail before or right
after the model loads (the bad-input table). Runs that train, and tests of signals, kills and
the process's own exit status, start a real process (tests/test_run.py's ``spt_run``)."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def run_in_process(*args: str, out, monkeypatch, capsys) -> Result:
    import spt.run

    monkeypatch.setattr(sys, "argv", ["spt.run", *args])
    monkeypatch.setenv("SPT_OUTPUT_DIR", str(out))
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # cli() sets it; restored after the test
    monkeypatch.setattr(spt.run, "_JOB_STARTED", False)
    capsys.readouterr()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        spt.run.cli()
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    finally:  # Hydra's job logging points handlers at this test's captured streams: undo it
        for h in root.handlers:
            if h not in handlers:
                root.removeHandler(h)
                h.close()
        root.setLevel(level)
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)
